"""The stimulus figures from a rendered store, or from a design rendered in memory at the figure's resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..store import StoreError
from .store import open_stimuli, render_in_memory


def stimulus_figure(kind: Literal["factors", "identities", "portraits"], out: str | Path, *,
                    stimuli: str | Path | None = None, design: str | Path | None = None,
                    spec: dict[str, Any] | None = None, resolution: int | None = None) -> Path:
    """Draw a stimulus figure into ``out``.

    Parameters
    ----------
    kind
        ``factors`` (every factor swept, from a sweep set), ``identities`` (a gallery of
        portraits) or ``portraits`` (large portraits, one image pixel per figure pixel).
    stimuli
        A rendered sweeps or portraits store; or
    design
        a sweeps or portraits design, rendered in memory with the render ``spec``, at
        ``resolution`` when given.
    """
    from ..figures.stimuli import factor_sweeps, identity_gallery, portrait_sheet

    if design is not None:
        if spec is None:
            raise ValueError(f"{design}: a design is rendered for a figure with a render spec; none was given")
        ds, source = render_in_memory(design, spec, resolution), design
    elif stimuli is not None:
        ds, source = open_stimuli(stimuli, require=("image",)), stimuli
    else:
        raise ValueError("stimulus_figure: give a stimulus store or a design")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if kind == "factors":
        if "sweep_factor" not in ds.coords:
            raise StoreError(f"{source}: not a sweep set (no sweep_factor coordinate)")
        factor_sweeps(ds, out)
    elif kind == "portraits":
        portrait_sheet(ds, out)
    else:
        identity_gallery(ds, out)
    return Path(out)
