"""The lab's ResNet-10 face-identity network, with stable names for read-out.

Stem: 7x7 convolution, stride 2, batch norm, ReLU, 3x3 max-pool with stride 2 (or,
for small inputs, ``stem="small"``: 3x3 convolution with stride 1, then the max-pool). Then four
basic blocks of ``width * (1, 2, 4, 8)`` channels with strides 1, 2, 2, 2 and 1x1
projection shortcuts, global average pooling and a linear classifier.

Read-out layers (:data:`READOUT_LAYERS`): the 9 ReLU outputs ``relu_stem``,
``block{k}_relu1`` (inside block k) and ``block{k}_out`` (after the residual sum),
the pooled vector ``pool`` and the ``logits``. Every ReLU is its own module (none
reused), the residual sum is a :class:`Sum` module and blocks keep torchvision's
attribute names (``conv1, bn1, relu, conv2, bn2, downsample``), so forward hooks see
each layer once and LRP canonizers (zennit) can merge batch norms and treat the sum.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

READOUT_LAYERS: tuple[str, ...] = (
    "relu_stem",
    "block1_relu1", "block1_out",
    "block2_relu1", "block2_out",
    "block3_relu1", "block3_out",
    "block4_relu1", "block4_out",
    "pool",
    "logits",
)


class Sum(nn.Module):
    """Sum of a stacked tensor over its last dim (the residual addition, as a module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(-1)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())
        self.sum = Sum()
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu_out(self.sum(torch.stack([out, self.downsample(x)], -1)))


class ResNet10(nn.Module):
    """ResNet-10 classifier over ``classes`` categories of a (B, C, H, W) image batch in [0, 1]."""

    def __init__(self, classes: int, width: int = 64, stem: str = "large", in_channels: int = 3) -> None:
        super().__init__()
        if stem not in ("large", "small"):
            raise ValueError(f"stem must be 'large' or 'small', not {stem!r}")
        self.classes, self.width, self.stem_kind = classes, width, stem
        # Registration order = forward order (conv then its batch norm), which
        # sequential batch-norm merging (e.g. zennit's canonizers) relies on.
        if stem == "large":
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [width, width * 2, width * 4, width * 8]
        self.block1 = BasicBlock(width, chans[0], 1)
        self.block2 = BasicBlock(chans[0], chans[1], 2)
        self.block3 = BasicBlock(chans[1], chans[2], 2)
        self.block4 = BasicBlock(chans[2], chans[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(chans[3], classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for block in (self.block1, self.block2, self.block3, self.block4):
            nn.init.zeros_(block.bn2.weight)  # each block starts as its shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def readout_modules(model: ResNet10) -> dict[str, nn.Module]:
    """The module whose output is each read-out layer, by read-out name."""
    mods = {"relu_stem": model.relu, "pool": model.flatten, "logits": model.fc}
    for k in range(1, 5):
        block = getattr(model, f"block{k}")
        mods[f"block{k}_relu1"] = block.relu
        mods[f"block{k}_out"] = block.relu_out
    return {name: mods[name] for name in READOUT_LAYERS}


def network_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (b, H, W, C) as the network's input: float (b, C, H, W) in [0, 1], on the images' device."""
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def build_model(classes: int, width: int = 64, stem: str = "large", in_channels: int = 3) -> ResNet10:
    """A freshly initialised ResNet-10 (seed torch first for reproducible weights)."""
    return ResNet10(classes, width=width, stem=stem, in_channels=in_channels)
