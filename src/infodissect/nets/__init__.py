"""Networks: the lab's ResNet-10 with named read-out layers."""

from .resnet import READOUT_LAYERS, ResNet10, Sum, build_model, network_input, readout_modules

__all__ = ["READOUT_LAYERS", "ResNet10", "Sum", "build_model", "network_input", "readout_modules"]
