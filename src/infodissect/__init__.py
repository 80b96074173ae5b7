"""infodissect: what each layer, unit and pixel of a deep network carries about the
factors that generated its input."""

__version__ = "0.1.0"
