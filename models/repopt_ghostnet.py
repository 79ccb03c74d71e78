"""RepOpt-GhostNet (FedRepOpt, Lau et al., ACCV 2024): GhostNet's bottlenecks with RepGhost's re-parameterised
Ghost module, trained plain with RepOptimizer's gradient multipliers.

Written from the paper and the authors' model file (StevenLauHKHK/FedRepOpt, ``repoptghostnet_model.py``, which
builds on RepGhost, Chen et al. 2022). A Ghost module is a 1x1 "primary" conv (+ BN, + ReLU) followed by a cheap
3x3 depth-wise conv; RepGhost adds the primary output back through a per-channel branch (an identity with BN),
which can be merged into the depth-wise kernel's centre. By ``mode``:

* ``target``: ``BN(dwconv(x1))``, the plain module a device runs and RepOptimizer trains;
* ``csla``: ``BN(s_conv * dwconv(x1) + s_fuse * x1)``, the conv scale constant, the fusion scale trained;
* ``hs``: the same with both scales trained (the hyper-search); the conv scale starts at
  ``sqrt(2 / (n + 1))`` for a module that is the n-th of its stage, as the authors';
* ``rep``: RepGhost's training-time module, ``BN(dwconv(x1)) + BN(x1)``, the structural re-parameterisation.

Every module is linear between the primary conv's output and its final BN, so one SGD step on the CSLA module
equals one step on the merged depth-wise kernel ``s_conv W + s_fuse delta`` with its gradient multiplied by
``s_conv^2`` everywhere and ``+ 1`` at the centre (the trainable fusion scale): :mod:`models.repopt` applies that.

Adaptations, stated: CIFAR-sized inputs get a stride-1 stem (as the project's other encoders); the ``tiny``
configuration keeps GhostNet's first four stages (k, expansion, out, SE, stride as in GhostNet 1.0x, 7
bottlenecks) and a 256-wide head instead of 1280, so that it fits a CPU; the authors' "org" mode (GhostNet's
concatenation) is not offered.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from models.repopt_vgg import ChannelScale

MODES = ("target", "csla", "hs", "rep")

# GhostNet 1.0x's first four stages: (kernel, expansion width, output width, SE ratio, stride) per bottleneck.
TINY_CFG = (((3, 16, 16, 0.0, 1),), ((3, 48, 24, 0.0, 2), (3, 72, 24, 0.0, 1)),
            ((5, 72, 40, 0.25, 2), (5, 120, 40, 0.25, 1)), ((3, 240, 80, 0.0, 2), (3, 200, 80, 0.0, 1)))
TINY_HEAD = 256


class SqueezeExcite(nn.Module):
    """GhostNet's squeeze-and-excitation with a hard-sigmoid gate."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        reduced = max(4, int(channels * ratio + 2) // 4 * 4)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(F.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * F.hardsigmoid(gate)


class GhostModule(nn.Module):
    """Primary 1x1 conv + BN (+ ReLU), then the cheap depth-wise 3x3 stage in the form of ``mode``."""

    def __init__(self, cin: int, cout: int, relu: bool, mode: str, index_in_stage: int = 1) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"RepOpt-GhostNet mode {mode!r} is unknown; valid: {', '.join(MODES)}")
        self.mode, self.relu = mode, relu
        self.primary = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(inplace=True) if relu else nn.Identity())
        self.cheap = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False)
        self.cheap_scale: ChannelScale | None = None
        self.fusion_scale: ChannelScale | None = None
        self.cheap_bn: nn.BatchNorm2d | None = None
        self.fusion_bn: nn.BatchNorm2d | None = None
        self.final_bn: nn.BatchNorm2d | None = None
        if mode == "rep":
            self.cheap_bn, self.fusion_bn = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        else:
            self.final_bn = nn.BatchNorm2d(cout)
        if mode in ("csla", "hs"):
            init = math.sqrt(2.0 / (index_in_stage + 1)) if mode == "hs" else 1.0
            self.cheap_scale, self.fusion_scale = ChannelScale(cout, init), ChannelScale(cout, 1.0)
            if mode == "csla":
                self.cheap_scale.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        if self.mode == "rep":
            assert self.cheap_bn is not None and self.fusion_bn is not None
            out = self.cheap_bn(self.cheap(x1)) + self.fusion_bn(x1)
        else:
            assert self.final_bn is not None
            out = self.cheap(x1)
            if self.cheap_scale is not None and self.fusion_scale is not None:
                out = self.cheap_scale(out) + self.fusion_scale(x1)
            out = self.final_bn(out)
        return F.relu(out) if self.relu else out

    def merged_kernel(self) -> torch.Tensor:
        """The one depth-wise kernel a CSLA / hyper-search module equals before its final BN."""
        if self.cheap_scale is None or self.fusion_scale is None:
            raise ValueError(f"only 'csla' and 'hs' modules merge into a target kernel, not {self.mode!r}")
        return ghost_kernel(self.cheap.weight, self.cheap_scale.weight, self.fusion_scale.weight)


def ghost_kernel(cheap: torch.Tensor, scale_conv: torch.Tensor, scale_fusion: torch.Tensor) -> torch.Tensor:
    """``scale_conv W + centre(scale_fusion)``: a CSLA Ghost module's one depth-wise 3x3 kernel."""
    kernel = cheap * scale_conv.view(-1, 1, 1, 1)
    centre = torch.zeros_like(kernel)
    centre[:, 0, 1, 1] = scale_fusion
    return kernel + centre


class GhostBottleneck(nn.Module):
    """Ghost module (expansion, ReLU) [-> strided depth-wise conv + BN] [-> SE] -> Ghost module (projection)."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, se_ratio: float, mode: str,
                 index_in_stage: int) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, True, mode, 2 * index_in_stage - 1)
        self.downsample = nn.Sequential(nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                                        nn.BatchNorm2d(mid)) if stride > 1 else nn.Identity()
        self.se = SqueezeExcite(mid, se_ratio) if se_ratio > 0 else nn.Identity()
        self.ghost2 = GhostModule(mid, cout, False, mode, 2 * index_in_stage)
        self.shortcut: nn.Module = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cin, kernel, stride, kernel // 2, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.downsample(self.ghost1(x)))) + self.shortcut(x)


class RepOptGhostNet(nn.Module):
    """Stem + Ghost bottlenecks + 1x1 conv + global pooling + 1x1 head conv (timm's pre-logits width)."""

    def __init__(self, cfg=TINY_CFG, head_width: int = TINY_HEAD, mode: str = "target", in_chans: int = 3,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.mode = mode
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))
        blocks, cin, index = [], 16, 0
        for stage in cfg:
            for kernel, mid, cout, se_ratio, stride in stage:
                index = index + 1 if stride == 1 and cin == cout else 1  # the authors' count for the scale init
                blocks.append(GhostBottleneck(cin, mid, cout, kernel, stride, se_ratio, mode, index))
                cin = cout
        last = 2 * cfg[-1][-1][1]
        self.blocks = nn.Sequential(*blocks, nn.Sequential(nn.Conv2d(cin, last, 1, bias=False),
                                                           nn.BatchNorm2d(last), nn.ReLU(inplace=True)))
        self.conv_head = nn.Conv2d(last, head_width, 1)
        self.num_features = last
        self.head_hidden_size = head_width
        self.classifier = nn.Linear(head_width, num_classes) if num_classes > 0 else nn.Identity()

    def ghost_modules(self) -> list[GhostModule]:
        """Every Ghost module in forward order (the order scales are stored in)."""
        return [m for m in self.modules() if isinstance(m, GhostModule)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.blocks(self.stem(x)).mean(dim=(2, 3), keepdim=True)
        return self.classifier(F.relu(self.conv_head(pooled)).flatten(1))


def _build(mode: str, kwargs: dict) -> RepOptGhostNet:
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return RepOptGhostNet(mode=mode, in_chans=kwargs.pop("in_chans", 3), num_classes=kwargs.pop("num_classes", 0))


@register_model
def repopt_ghostnet_tiny_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """The plain target network (train it with ``optimizer='repopt-sgd'`` and a scales file)."""
    return _build("target", kwargs)


@register_model
def repopt_ghostnet_tiny_cifar_csla(pretrained: bool = False, **kwargs) -> nn.Module:
    """The CSLA network RepOpt's multipliers are equivalent to."""
    return _build("csla", kwargs)


@register_model
def repopt_ghostnet_tiny_cifar_hs(pretrained: bool = False, **kwargs) -> nn.Module:
    """The hyper-search network whose trained scales feed ``repopt-scales``."""
    return _build("hs", kwargs)


@register_model
def repopt_ghostnet_tiny_cifar_rep(pretrained: bool = False, **kwargs) -> nn.Module:
    """RepGhost's multi-branch training-time network, the structural re-parameterisation baseline."""
    return _build("rep", kwargs)
