"""AudioInceptionNeXt and AudioRepInceptionNeXt: multi-scale depth-wise time-then-frequency kernels.

From Lau et al., "AudioInceptionNeXt" (2023) and "AudioRepInceptionNeXt" (2024), written from the papers
and the authors' code (StevenLauHKHK/AudioInceptionNeXt, /AudioRepInceptionNeXt). Both are ResNet-style
stages of one block type over a log-mel spectrogram (here laid out as the project's front end gives it:
height = mel bins, width = frames, so a *time* kernel is ``1 x k`` and a *frequency* kernel ``k x 1``):

``audio_inceptionnext_*`` (one block, as AudioInceptionNeXt's ``MSThreeWayDWBottleneckTransform``)::

    h = BN(conv1x1(x, stride))
    y = sum over branches b:  ReLU(BN(dwconv_freq_b(ReLU(BN(dwconv_time_b(h))))))
    out = ReLU(shortcut(x) + BN(conv1x1(BN(conv1x1_expand(y)))))

``audio_repinceptionnext_*`` (as AudioRepInceptionNeXt's training form): the branches of each axis are
linear (conv + BN each) and summed with an identity before one ReLU, so that at inference each axis is
*one* depth-wise conv::

    h = ReLU(BN(conv1x1(x, stride)))
    t = ReLU(h + sum_b BN(dwconv_time_b(h)))          -> merged: ReLU(dwconv_time_merged(h) + bias)
    f = ReLU(t + sum_b BN(dwconv_freq_b(t)))          -> merged: ReLU(dwconv_freq_merged(t) + bias)
    out = ReLU(shortcut(x) + BN(conv1x1(ReLU(BN(conv1x1_expand(f))))))

:func:`merge_branches` folds each BN into its kernel, zero-pads the smaller kernels to the largest and sums
them (RepVGG's rule); the identity is folded in as a centre tap of 1 (the authors keep it as a separate
addition; the result is the same).

Adaptations, stated: the stem is a 3x3 stride-1 conv (the project's CIFAR-sized inputs, 32 mels x 32
frames by default; the papers use a 5x7 stride-2 stem on 128 x 512 spectrograms), and the kernel sizes
are run-config keys (``inceptionnext-time-kernels``, ``inceptionnext-freq-kernels``): the papers' 3 / 11 /
21 would be near-global on a 1 s clip at this resolution. The ``_tiny`` variants have 2 blocks per stage at
32-64-128-256 channels (for a CPU), the ``_base`` variants the papers' 3-4-6-3 blocks at 64-128-256-512.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

DEFAULT_KERNELS = (3, 5, 7)  # small / medium / large, for 32 x 32 spectrograms (see the module docstring)


def check_kernels(kernels: tuple[int, ...], key: str = "kernels") -> tuple[int, ...]:
    """The kernel sizes, or a one-line ValueError: 1 to 4 odd sizes from 1 to 63."""
    if not 1 <= len(kernels) <= 4 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > 63
                                         or k % 2 == 0 for k in kernels):
        raise ValueError(f"{key}: 1 to 4 odd kernel sizes from 1 to 63 (e.g. '3,5,7'), got {kernels!r}")
    return tuple(kernels)


def _dw(channels: int, kernel: int, axis: str) -> nn.Conv2d:
    """A depth-wise conv along ``axis`` ('time' = width, 'freq' = height) keeping the size."""
    size, pad = ((1, kernel), (0, kernel // 2)) if axis == "time" else ((kernel, 1), (kernel // 2, 0))
    return nn.Conv2d(channels, channels, size, padding=pad, groups=channels, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class InceptionNeXtBlock(nn.Module):
    """AudioInceptionNeXt's block: parallel (time -> frequency) depth-wise branches, then an expand-project."""

    def __init__(self, cin: int, cout: int, stride: int, time_kernels: tuple[int, ...],
                 freq_kernels: tuple[int, ...], expansion: int = 4) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.branches = nn.ModuleList(
            nn.Sequential(_dw(cout, kt, "time"), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                          _dw(cout, kf, "freq"), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            for kt, kf in zip(time_kernels, freq_kernels, strict=True))
        self.expand = nn.Sequential(nn.Conv2d(cout, cout * expansion, 1, bias=False),
                                    nn.BatchNorm2d(cout * expansion))
        self.project = nn.Sequential(nn.Conv2d(cout * expansion, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        y = sum(branch(h) for branch in self.branches)
        return F.relu(self.shortcut(x) + self.project(self.expand(y)))


class RepAxis(nn.Module):
    """``ReLU(x + sum_b BN(dwconv_b(x)))`` along one axis; after :meth:`merge`, ``ReLU(dwconv(x) + bias)``."""

    def __init__(self, channels: int, kernels: tuple[int, ...], axis: str) -> None:
        super().__init__()
        self.axis = axis
        self.channels = channels
        self.kernel = max(kernels)
        self.branches = nn.ModuleList(nn.Sequential(_dw(channels, k, axis), nn.BatchNorm2d(channels))
                                      for k in kernels)
        self.merged: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged is not None:
            return F.relu(self.merged(x))
        return F.relu(x + sum(branch(x) for branch in self.branches))

    def merged_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one depth-wise kernel (channels, 1, kh, kw) and bias equal to the branches plus identity."""
        big = self.kernel
        shape = (self.channels, 1, 1, big) if self.axis == "time" else (self.channels, 1, big, 1)
        like = next(iter(self.branches.parameters()))
        kernel = torch.zeros(shape, dtype=like.dtype, device=like.device)
        bias = torch.zeros(self.channels, dtype=like.dtype, device=like.device)
        for branch in self.branches:
            conv, bn = tuple(branch.children())
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            assert bn.running_var is not None and bn.running_mean is not None
            std = torch.sqrt(bn.running_var + bn.eps)
            scale = (bn.weight / std).reshape(-1, 1, 1, 1)
            k = conv.weight.shape[-1] if self.axis == "time" else conv.weight.shape[-2]
            pad = (big - k) // 2
            padding = (pad, pad, 0, 0) if self.axis == "time" else (0, 0, pad, pad)
            kernel = kernel + F.pad(conv.weight * scale, padding)
            bias = bias + bn.bias - bn.running_mean * bn.weight / std
        centre = (0, big // 2) if self.axis == "time" else (big // 2, 0)
        kernel[:, 0, centre[0], centre[1]] += 1.0  # the identity
        return kernel.detach(), bias.detach()

    def merge(self) -> None:
        kernel, bias = self.merged_kernel_bias()
        size = (int(kernel.shape[-2]), int(kernel.shape[-1]))
        conv = nn.Conv2d(self.channels, self.channels, size, padding=(size[0] // 2, size[1] // 2),
                         groups=self.channels, bias=True, dtype=kernel.dtype, device=kernel.device)
        conv.weight.data.copy_(kernel)
        assert conv.bias is not None
        conv.bias.data.copy_(bias)
        self.merged = conv
        self.branches = nn.ModuleList()


class RepInceptionNeXtBlock(nn.Module):
    """AudioRepInceptionNeXt's block: re-parameterisable time and frequency stages, then an expand-project."""

    def __init__(self, cin: int, cout: int, stride: int, time_kernels: tuple[int, ...],
                 freq_kernels: tuple[int, ...], expansion: int = 4) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True))
        self.time = RepAxis(cout, time_kernels, "time")
        self.freq = RepAxis(cout, freq_kernels, "freq")
        self.expand = nn.Sequential(nn.Conv2d(cout, cout * expansion, 1, bias=False),
                                    nn.BatchNorm2d(cout * expansion), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(cout * expansion, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.freq(self.time(self.head(x)))
        return F.relu(self.shortcut(x) + self.project(self.expand(y)))


class AudioInceptionNeXt(nn.Module):
    """Stem + four stages + global average pooling (a headless timm-style backbone)."""

    def __init__(self, depths: tuple[int, ...], widths: tuple[int, ...], reparameterisable: bool,
                 time_kernels: tuple[int, ...] = DEFAULT_KERNELS, freq_kernels: tuple[int, ...] = DEFAULT_KERNELS,
                 in_chans: int = 3, num_classes: int = 0) -> None:
        super().__init__()
        time_kernels = check_kernels(tuple(time_kernels), "inceptionnext-time-kernels")
        freq_kernels = check_kernels(tuple(freq_kernels), "inceptionnext-freq-kernels")
        if len(time_kernels) != len(freq_kernels):
            raise ValueError(f"inceptionnext-time-kernels and inceptionnext-freq-kernels: one size per branch "
                             f"on each axis, got {len(time_kernels)} and {len(freq_kernels)}")
        block = RepInceptionNeXtBlock if reparameterisable else InceptionNeXtBlock
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for index, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            stride = 1 if index == 0 else 2
            stages.append(nn.Sequential(*(block(cin if i == 0 else width, width, stride if i == 0 else 1,
                                                time_kernels, freq_kernels) for i in range(depth))))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def merge_branches(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every re-parameterisable axis merged into one conv (for inference; the
    copy's state dict has other names, so train and aggregate the unmerged form)."""
    merged = copy.deepcopy(model).eval()
    for module in merged.modules():
        if isinstance(module, RepAxis) and module.merged is None:
            module.merge()
    return merged


_TINY = (2, 2, 2, 2), (32, 64, 128, 256)
_BASE = (3, 4, 6, 3), (64, 128, 256, 512)


def _build(shape: tuple[tuple[int, ...], tuple[int, ...]], reparameterisable: bool, kwargs: dict) -> nn.Module:
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return AudioInceptionNeXt(*shape, reparameterisable=reparameterisable,
                              time_kernels=tuple(kwargs.pop("time_kernels", DEFAULT_KERNELS)),
                              freq_kernels=tuple(kwargs.pop("freq_kernels", DEFAULT_KERNELS)),
                              in_chans=kwargs.pop("in_chans", 3), num_classes=kwargs.pop("num_classes", 0))


@register_model
def audio_inceptionnext_tiny(pretrained: bool = False, **kwargs) -> nn.Module:
    """AudioInceptionNeXt, 2 blocks per stage at 32-64-128-256 channels."""
    return _build(_TINY, False, kwargs)


@register_model
def audio_repinceptionnext_tiny(pretrained: bool = False, **kwargs) -> nn.Module:
    """AudioRepInceptionNeXt (training form; :func:`merge_branches` for inference), tiny."""
    return _build(_TINY, True, kwargs)


@register_model
def audio_inceptionnext_base(pretrained: bool = False, **kwargs) -> nn.Module:
    """AudioInceptionNeXt at the papers' depth and width (3-4-6-3 blocks, 64-128-256-512 channels)."""
    return _build(_BASE, False, kwargs)


@register_model
def audio_repinceptionnext_base(pretrained: bool = False, **kwargs) -> nn.Module:
    """AudioRepInceptionNeXt at the papers' depth and width."""
    return _build(_BASE, True, kwargs)


def is_inceptionnext(name: str) -> bool:
    """Whether ``name`` is one of these encoders (they take the kernel-size keys)."""
    return name.startswith(("audio_inceptionnext_", "audio_repinceptionnext_"))
