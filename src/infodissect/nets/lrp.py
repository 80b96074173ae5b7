"""Layer-wise relevance propagation (LRP) for :class:`.resnet.ResNet10`, native and batched.

The rules are those of zennit (Anders et al., arXiv:2106.13200), written out for this
network so that they run on any PyTorch (zennit's ``MergeBatchNorm`` canonizer sets
``eps=0``, which PyTorch >= 2.10 refuses, and its ``ResNetCanonizer`` knows only
torchvision's blocks) and in one explicit backward sweep (no hooks):

- batch norm is folded into the convolution before it (:func:`fold_batchnorm`; outputs
  unchanged to float precision);
- ReLU passes relevance through, max-pooling routes it to each window's maximum (its
  gradient), global average pooling and the residual sum split it in proportion to each
  input's contribution (zennit's ``Norm``);
- convolutions and the classifier use the composite's rules (:data:`COMPOSITES`):

  ========================  ==================  ===============  ==========
  composite                 first convolution   convolutions     classifier
  ========================  ==================  ===============  ==========
  ``epsilon_plus_flat``     flat                z+               epsilon
  ``epsilon_gamma_box``     z-box in [0, 1]     gamma (0.25)     epsilon
  ``lrp0``                  LRP-0               LRP-0            LRP-0
  ========================  ==================  ===============  ==========

Denominators are stabilised as zennit does, ``z + eps * sign(z)`` (sign 0 = +1), with
``eps = 1e-6``; LRP-0 divides exactly (a zero denominator passes no relevance). With
zero biases LRP-0 equals gradient x input, and the input relevance sums to the logit.
``gradient_x_input`` is the baseline method.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input

from .resnet import BasicBlock, ResNet10

Composite = Literal["epsilon_plus_flat", "epsilon_gamma_box", "lrp0"]
Method = Literal["epsilon_plus_flat", "epsilon_gamma_box", "lrp0", "gradient_x_input"]
COMPOSITES: tuple[str, ...] = ("epsilon_plus_flat", "epsilon_gamma_box", "lrp0")
METHODS: tuple[str, ...] = COMPOSITES + ("gradient_x_input",)
EPSILON = 1e-6
GAMMA = 0.25
TRACE: tuple[str, ...] = ("logits", "pool", "block4_out", "block3_out", "block2_out", "block1_out", "relu_stem",
                          "input")  # where lrp(trace=...) records the total relevance, output to input


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``conv`` followed by ``bn`` (eval mode) as one convolution with a bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        out.weight.copy_(conv.weight * scale[:, None, None, None])
        out.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return out


def fold_batchnorm(model: ResNet10) -> ResNet10:
    """A copy of ``model`` (eval mode) with every batch norm folded into its convolution.

    The copy's batch norms are :class:`torch.nn.Identity`; its outputs equal the original's
    to float precision. The original is not changed.
    """
    m = copy.deepcopy(model).eval()
    pairs: list[tuple[nn.Module, str, str]] = [(m, "conv1", "bn1")]
    for block in (m.block1, m.block2, m.block3, m.block4):
        pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2")]
        if isinstance(block.downsample, nn.Sequential):
            pairs.append((block.downsample, "0", "1"))
    for parent, conv, bn in pairs:
        norm = getattr(parent, bn)
        if isinstance(norm, nn.BatchNorm2d):
            setattr(parent, conv, _folded(getattr(parent, conv), norm))
            setattr(parent, bn, nn.Identity())
    return m


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """zennit's stabiliser: ``z + eps`` where ``z >= 0``, ``z - eps`` elsewhere."""
    return z + eps * (2.0 * (z >= 0).to(z.dtype) - 1.0)


def _ratio(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``r / stab(z)``; with ``eps == 0`` an exact division that is 0 where ``z`` is 0."""
    if eps:
        return r / _stab(z, eps)
    return torch.where(z == 0, torch.zeros_like(r), r / torch.where(z == 0, torch.ones_like(z), z))


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, c: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)


def _conv_t(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, c: nn.Conv2d) -> torch.Tensor:
    """The gradient of ``_conv(x, w, ...)`` with respect to ``x`` for output gradient ``s``."""
    return conv2d_input(x.shape, w, s, c.stride, c.padding, c.dilation, c.groups)


def conv_relevance(c: nn.Conv2d, x: torch.Tensor, r: torch.Tensor, rule: str, eps: float = EPSILON,
                   gamma: float = GAMMA, low: float = 0.0, high: float = 1.0, out: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Relevance of the input ``x`` of convolution ``c`` given the relevance ``r`` of its output.

    ``rule``: ``epsilon`` (``eps = 0``: LRP-0), ``zplus``, ``gamma``, ``flat`` or ``zbox``
    (inputs bounded by ``low`` and ``high``), each as zennit defines it. ``out``: ``c(x)``
    when the forward pass kept it (not computed again).
    """
    w, b = c.weight, c.bias
    if rule == "epsilon":
        s = _ratio(r, _conv(x, w, b, c) if out is None else out, eps)
        return x * _conv_t(x, w, s, c)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    bp = b.clamp(min=0) if b is not None else None
    bn = b.clamp(max=0) if b is not None else None
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    signed = bool((x < 0).any())  # after a ReLU the negative part is 0 and its terms are skipped (exactly 0)
    if rule == "zplus":
        z = _conv(xp, wp, bp, c) + _conv(xn, wn, None, c) if signed else _conv(xp, wp, bp, c)
        s = r / _stab(z, EPSILON)
        out = xp * _conv_t(x, wp, s, c)
        return out + xn * _conv_t(x, wn, s, c) if signed else out
    if rule == "gamma":
        gp, gn = w + gamma * wp, w + gamma * wn
        out = _conv(x, w, b, c) if out is None else out
        bgp = b + gamma * bp if b is not None else None
        bgn = b + gamma * bn if b is not None else None
        zp, zn = _conv(xp, gp, bgp, c), _conv(xp, gn, bgn, c)
        if signed:
            zp, zn = zp + _conv(xn, gn, None, c), zn + _conv(xn, gp, None, c)
        sp = (out > 0).to(r.dtype) * r / _stab(zp, EPSILON)
        sn = (out < 0).to(r.dtype) * r / _stab(zn, EPSILON)
        rel = xp * (_conv_t(x, gp, sp, c) + _conv_t(x, gn, sn, c))
        return rel + xn * (_conv_t(x, gn, sp, c) + _conv_t(x, gp, sn, c)) if signed else rel
    if rule == "flat":
        ones, wo = torch.ones_like(x), torch.ones_like(w)
        s = r / _stab(_conv(ones, wo, None, c), EPSILON)
        return _conv_t(x, wo, s, c)
    if rule == "zbox":
        lo, hi = torch.full_like(x, low), torch.full_like(x, high)
        z = _conv(x, w, b, c) - _conv(lo, wp, bp, c) - _conv(hi, wn, bn, c)
        s = r / _stab(z, EPSILON)
        return x * _conv_t(x, w, s, c) - lo * _conv_t(x, wp, s, c) - hi * _conv_t(x, wn, s, c)
    raise ValueError(f"rule must be epsilon, zplus, gamma, flat or zbox, not {rule!r}")


_RULES: dict[str, tuple[str, str, float]] = {  # composite: (first conv rule, conv rule, eps of epsilon rules)
    "epsilon_plus_flat": ("flat", "zplus", EPSILON),
    "epsilon_gamma_box": ("zbox", "gamma", EPSILON),
    "lrp0": ("epsilon", "epsilon", 0.0),
}


def _block_forward(block: BasicBlock, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A folded block's input, first convolution's output before and after its ReLU, two branches and output
    (the block's forward, kept)."""
    pre = block.conv1(x)
    h = F.relu(pre)
    main = block.conv2(h)
    short = block.downsample(x)
    return x, pre, h, main, short, F.relu(main + short)


def _block_relevance(block: BasicBlock, kept: tuple[torch.Tensor, ...], r: torch.Tensor, rule: str, eps: float
                     ) -> torch.Tensor:
    """Relevance of a folded block's input from that of its output (sum split in proportion, Norm)."""
    x, pre, h, main, short, _ = kept
    s = _ratio(r, main + short, eps)
    r_main, r_short = main * s, short * s
    r_h = conv_relevance(block.conv2, h, r_main, rule, eps, out=main)
    r_x = conv_relevance(block.conv1, x, r_h, rule, eps, out=pre)
    if isinstance(block.downsample, nn.Sequential):
        r_short = conv_relevance(block.downsample[0], x, r_short, rule, eps, out=short)
    return r_x + r_short


@torch.no_grad()
def lrp(folded: ResNet10, x: torch.Tensor, target: torch.Tensor, composite: Composite = "epsilon_plus_flat",
        trace: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input relevance (B, C, H, W) of logit ``target`` (B,) for images ``x`` in [0, 1], and the logits (B, K).

    ``folded`` comes from :func:`fold_batchnorm`. Relevance starts as the target logit
    itself (the other logits 0) and is propagated with the composite's rules (module
    docstring). ``trace``, when given, receives the total relevance (B,) at each layer of
    :data:`TRACE` (conservation: each equals the logit where no bias or stabiliser absorbs any).
    """
    def note(name: str, r: torch.Tensor) -> None:
        if trace is not None:
            trace[name] = r.flatten(1).sum(1)

    if composite not in _RULES:
        raise ValueError(f"composite must be one of {list(_RULES)}, not {composite!r}")
    first, rule, eps = _RULES[composite]
    m = folded
    a = F.relu(m.conv1(x))
    with torch.enable_grad():
        a_req = a.detach().requires_grad_(True)
        pooled_map = m.maxpool(a_req)
    kept = [_block_forward(m.block1, pooled_map.detach())]
    for block in (m.block2, m.block3, m.block4):
        kept.append(_block_forward(block, kept[-1][-1]))
    top = kept[-1][-1]
    pooled = top.mean((2, 3))
    logits = m.fc(pooled)
    r = torch.zeros_like(logits).scatter_(1, target.view(-1, 1), logits.gather(1, target.view(-1, 1)))
    note("logits", r)
    s = _ratio(r, logits, eps)
    r_pooled = pooled * (s @ m.fc.weight)
    note("pool", r_pooled)
    area = top.shape[2] * top.shape[3]
    r = top * (_ratio(r_pooled, pooled, eps) / area)[:, :, None, None]
    for k, block, kb in zip((4, 3, 2, 1), (m.block4, m.block3, m.block2, m.block1), reversed(kept)):
        note(f"block{k}_out", r)
        r = _block_relevance(block, kb, r, rule, eps)
    with torch.enable_grad():
        (r_a,) = torch.autograd.grad(pooled_map, a_req, r)
    note("relu_stem", r_a)
    out = conv_relevance(m.conv1, x, r_a, first, eps)
    note("input", out)
    return out, logits


def gradient_x_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of logit ``target`` (B,) times the input ``x`` (B, C, H, W), and the logits (B, K)."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        (g,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), xr)
    return (g * xr).detach(), logits.detach()


def relevance(model: ResNet10, folded: ResNet10, x: torch.Tensor, target: torch.Tensor, method: Method
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input relevance of ``method`` (:data:`METHODS`) and the logits; ``folded`` = ``fold_batchnorm(model)``."""
    if method == "gradient_x_input":
        return gradient_x_input(model, x, target)
    return lrp(folded, x, target, method)
