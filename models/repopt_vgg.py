"""RepOpt-VGG (Ding et al., ICLR 2023, "Re-parameterizing Your Optimizers rather than Architectures"), the
plain encoder FedRepOpt (Lau et al., ACCV 2024) trains on edge devices.

Why: a plain stack of 3x3 conv + BN + ReLU is the fastest, leanest network to
run on a small device, but trained as is it learns worse than a multi-branch
one. RepOpt keeps the plain network and moves the multi-branch structure into
the optimiser: a *CSLA* block (constant-scale linear addition: a 3x3 conv and a
1x1 conv, each followed by a constant per-channel scale, plus an identity
branch with a trainable per-channel scale, then BN) is linear before its BN, so
one SGD step on it equals one SGD step on its merged 3x3 kernel whose gradient
is multiplied element-wise by (scale_3x3^2 everywhere, + scale_1x1^2 at the
kernel centre, + 1 at the centre of the diagonal for the identity's trainable
scale). :mod:`models.repopt` builds those multipliers and the optimiser.

Blocks by ``mode`` (as in the authors' model file):

* ``target``: the plain block, 3x3 conv (no bias) + BN + ReLU; what RepOpt trains and a device runs;
* ``csla``: the CSLA block, conv scales constant (what the multipliers reproduce);
* ``hs``: the same block with every scale trainable (the hyper-search that produces the scales);
* ``repvgg``: RepVGG's structural re-parameterisation (a BN after each branch), the multi-branch baseline.

Widths and depths: ``depths`` blocks per stage, ``widths`` channels; the first
block of a stage has stride ``strides[i]``. The conv scales start as the
authors' (1 for a stage's first block, sqrt(2 / i) for its i-th). Adaptation:
CIFAR-sized inputs (32 px images, 32x32 spectrograms) get a stride-1 stem, as the
project's CIFAR ResNets; the classifier is timm's ``num_classes=0`` convention
(pooled features out).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

MODES = ("target", "csla", "hs", "repvgg")


class ChannelScale(nn.Module):
    """Per-channel multiplication (the authors' ScaleLayer without bias)."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class PlainBlock(nn.Module):
    """3x3 conv + BN + ReLU: the target block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class LinearAddBlock(nn.Module):
    """scale_conv * conv3x3(x) + scale_1x1 * conv1x1(x) [+ scale_identity * x], then BN + ReLU.

    ``constant_scales``: the CSLA block (conv scales fixed, identity scale trained); else the hyper-search block.
    """

    def __init__(self, cin: int, cout: int, stride: int, conv_scale: float, constant_scales: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.scale_conv = ChannelScale(cout, conv_scale)
        self.conv_1x1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.scale_1x1 = ChannelScale(cout, conv_scale)
        self.scale_identity = ChannelScale(cout, 1.0) if cin == cout and stride == 1 else None
        self.bn = nn.BatchNorm2d(cout)
        if constant_scales:
            self.scale_conv.requires_grad_(False)
            self.scale_1x1.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if self.scale_identity is not None:
            out = out + self.scale_identity(x)
        return F.relu(self.bn(out))

    def merged_kernel(self) -> torch.Tensor:
        """The single 3x3 kernel this block equals before its BN (what the target block's conv holds)."""
        identity = None if self.scale_identity is None else self.scale_identity.weight
        return csla_kernel(self.conv.weight, self.scale_conv.weight, self.conv_1x1.weight, self.scale_1x1.weight,
                           identity)


def csla_kernel(conv_3x3: torch.Tensor, scale_conv: torch.Tensor, conv_1x1: torch.Tensor, scale_1x1: torch.Tensor,
                scale_identity: torch.Tensor | None) -> torch.Tensor:
    """``scale_conv W3 + scale_1x1 pad(W1) [+ diag-centre(scale_identity)]``: a CSLA block's one 3x3 kernel."""
    kernel = conv_3x3 * scale_conv.view(-1, 1, 1, 1) + F.pad(conv_1x1 * scale_1x1.view(-1, 1, 1, 1), [1, 1, 1, 1])
    if scale_identity is not None:
        channels = kernel.shape[0]
        eye = torch.eye(channels, dtype=kernel.dtype).reshape(channels, channels, 1, 1)
        kernel = kernel + F.pad(eye * scale_identity.view(-1, 1, 1, 1), [1, 1, 1, 1])
    return kernel


class RepVGGBlock(nn.Module):
    """RepVGG's training-time block: BN after the 3x3, the 1x1 and the identity branch, summed, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_3x3 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn_3x3 = nn.BatchNorm2d(cout)
        self.conv_1x1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.bn_1x1 = nn.BatchNorm2d(cout)
        self.bn_identity = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_3x3(self.conv_3x3(x)) + self.bn_1x1(self.conv_1x1(x))
        if self.bn_identity is not None:
            out = out + self.bn_identity(x)
        return F.relu(out)


def conv_scale_init(index_in_stage: int) -> float:
    """The authors' initial conv scale: 1 for a stage's first block, sqrt(2 / i) for its i-th."""
    return 1.0 if index_in_stage == 0 else math.sqrt(2.0 / index_in_stage)


def make_block(mode: str, cin: int, cout: int, stride: int, index_in_stage: int) -> nn.Module:
    if mode == "target":
        return PlainBlock(cin, cout, stride)
    if mode == "repvgg":
        return RepVGGBlock(cin, cout, stride)
    if mode in ("csla", "hs"):
        return LinearAddBlock(cin, cout, stride, conv_scale_init(index_in_stage), constant_scales=mode == "csla")
    raise ValueError(f"RepOpt-VGG mode {mode!r} is unknown; valid: {', '.join(MODES)}")


class RepOptVGG(nn.Module):
    """Stem block + stages of blocks + global average pooling (+ an optional linear classifier)."""

    def __init__(self, depths: tuple[int, ...], widths: tuple[int, ...], strides: tuple[int, ...],
                 stem_width: int, mode: str = "target", in_chans: int = 3, num_classes: int = 0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"RepOpt-VGG mode {mode!r} is unknown; valid: {', '.join(MODES)}")
        self.mode = mode
        self.stem = make_block(mode, in_chans, stem_width, 1, 0)
        stages, cin = [], stem_width
        for depth, width, stride in zip(depths, widths, strides, strict=True):
            blocks = [make_block(mode, cin if i == 0 else width, width, stride if i == 0 else 1, i)
                      for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()

    def blocks(self) -> list[nn.Module]:
        """Every block, stem first, in forward order (the order scales are stored in)."""
        return [self.stem, *(block for stage in self.stages.children() for block in stage.children())]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


# A small RepOpt-VGG for CIFAR-sized inputs: 1 + 2+2+4+1 blocks at 32-64-128-256 (about the half-width
# ResNet-18's widths, so the two are compared at a similar size), stride 1 / 2 / 2 / 2.
_TINY_DEPTHS, _TINY_WIDTHS, _TINY_STRIDES, _TINY_STEM = (2, 2, 4, 1), (32, 64, 128, 256), (1, 2, 2, 2), 32


def _build(mode: str, kwargs: dict) -> RepOptVGG:
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return RepOptVGG(_TINY_DEPTHS, _TINY_WIDTHS, _TINY_STRIDES, _TINY_STEM, mode=mode,
                     in_chans=kwargs.pop("in_chans", 3),
                     num_classes=kwargs.pop("num_classes", 0))


@register_model
def repopt_vgg_tiny_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """The plain target network (train it with ``optimizer='repopt-sgd'`` and a scales file)."""
    return _build("target", kwargs)


@register_model
def repopt_vgg_tiny_cifar_csla(pretrained: bool = False, **kwargs) -> nn.Module:
    """The CSLA network RepOpt's multipliers are equivalent to (constant conv scales)."""
    return _build("csla", kwargs)


@register_model
def repopt_vgg_tiny_cifar_hs(pretrained: bool = False, **kwargs) -> nn.Module:
    """The hyper-search network: every scale trained; its trained scales feed ``repopt-scales``."""
    return _build("hs", kwargs)


@register_model
def repopt_vgg_tiny_cifar_repvgg(pretrained: bool = False, **kwargs) -> nn.Module:
    """RepVGG's multi-branch training-time network, the structural re-parameterisation baseline."""
    return _build("repvgg", kwargs)
