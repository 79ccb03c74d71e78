"""RepOptimizer for RepOpt-VGG: gradient multipliers and the target's initialisation from CSLA scales.

Why: SGD on a CSLA block's 3x3 kernel W3 (constant scale s3), 1x1 kernel W1
(constant scale s1) and per-channel identity scale a (trainable) moves the
merged kernel W' = s3 W3 + s1 pad(W1) + diag(a) by

    dW' = -lr (s3^2 G + s1^2 G_centre + [diagonal centre] G)

where G is the gradient with respect to W'. Multiplying the plain network's
gradient by M = s3^2 (+ s1^2 at the centre, + 1 at the diagonal's centre)
therefore takes exactly the CSLA network's steps; momentum is linear in the
gradient, so it carries over too. The plain network starts from the merged
kernel of a freshly initialised CSLA network (:func:`reinitialise_target`).
Rules as in the authors' RepOptimizer code (``RepOptVGGHandler``,
``RepOptimizerSGD``): multipliers of order 2 for SGD, weight decay added
to the multiplied gradient. Weight decay on W' is not CSLA's decay on W3 and
W1 (it also decays the identity): the equivalence holds without it, as in the
paper's derivation; a test checks k steps of both within 1e-5.

Scales come from the hyper-search network (``mode='hs'``) trained centrally
(``python -m experiments.repopt_search``), saved as a file of one
``(scale_identity | None, scale_1x1, scale_conv)`` triple per block, and named by
the run-config key ``repopt-scales``.

RepOpt-GhostNet (:mod:`models.repopt_ghostnet`) follows the same rules on each Ghost module's depth-wise
kernel: W' = s_conv W + diag-centre(s_fuse), multiplier s_conv^2 everywhere + 1 at the centre (the trainable
fusion scale); its file holds one ``(scale_fusion, scale_conv)`` pair per Ghost module.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from models.repopt_ghostnet import GhostModule, RepOptGhostNet, ghost_kernel
from models.repopt_vgg import LinearAddBlock, PlainBlock, RepOptVGG, csla_kernel

Scales = list[tuple]  # RepOpt-VGG, per block: (identity | None, 1x1, 3x3); RepOpt-GhostNet, per module: (fusion, conv)
RepOptNetwork = RepOptVGG | RepOptGhostNet
NETWORKS = (RepOptVGG, RepOptGhostNet)


def extract_scales(model: RepOptNetwork) -> Scales:
    """The per-block scales of a CSLA or hyper-search network, stem first."""
    if isinstance(model, RepOptGhostNet):
        return _ghost_scales(model)
    scales: Scales = []
    for block in model.blocks():
        if not isinstance(block, LinearAddBlock):
            raise ValueError(f"scales come from a 'csla' or 'hs' RepOpt-VGG, not mode {model.mode!r}")
        identity = None if block.scale_identity is None else block.scale_identity.weight.detach().clone()
        scales.append((identity, block.scale_1x1.weight.detach().clone(), block.scale_conv.weight.detach().clone()))
    return scales


def save_scales(scales: Scales, path: Path) -> None:
    """Write ``scales`` atomically (a crash leaves the old file or none, never half of one)."""
    from file_io.atomic import atomic_write

    atomic_write(path, lambda out: torch.save([tuple(triple) for triple in scales], out))


def _channel_scale(value: object, channels: int) -> bool:
    """Whether ``value`` is a finite per-channel scale of ``channels`` entries."""
    return isinstance(value, torch.Tensor) and value.shape == (channels,) and bool(torch.isfinite(value).all())


def _entries(raw: object, expected: int, entry: str, units: str, path: Path) -> list | tuple:
    """``raw`` if it is a list of ``expected`` entries (one per block / Ghost module), else a one-line error."""
    if not isinstance(raw, (list, tuple)) or len(raw) != expected:
        raise ValueError(f"repopt-scales: {path} holds {len(raw) if isinstance(raw, (list, tuple)) else 'no'} "
                         f"{entry} scales; the encoder has {expected} {units}")
    return raw


def load_scales(path: Path, model: RepOptNetwork) -> Scales:
    """Scales from ``path``, checked block by block against ``model``'s channels (one-line error otherwise)."""
    path = Path(path).expanduser()  # as preflight checks it
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user error
        raise ValueError(f"repopt-scales: {path} is not a scales file ({type(exc).__name__}: {exc})") from None
    if isinstance(model, RepOptGhostNet):
        return _checked_ghost_scales(raw, model, path)
    blocks = model.blocks()
    entries = _entries(raw, len(blocks), "block", "blocks", path)
    scales: Scales = []
    for index, (triple, block) in enumerate(zip(entries, blocks, strict=True)):
        conv = block.conv
        assert isinstance(conv, nn.Conv2d)
        channels, has_identity = conv.out_channels, conv.in_channels == conv.out_channels and conv.stride == (1, 1)
        fits = isinstance(triple, (list, tuple)) and len(triple) == 3
        if fits:
            identity, scale_1x1, scale_conv = triple
            identity_fits = _channel_scale(identity, channels) if has_identity else identity is None
            fits = identity_fits and _channel_scale(scale_1x1, channels) and _channel_scale(scale_conv, channels)
        if not fits:
            raise ValueError(f"repopt-scales: block {index} of {path} does not fit the encoder "
                             f"({channels} channels, identity branch {'yes' if has_identity else 'no'})")
        scales.append((None if identity is None else identity.float(), scale_1x1.float(), scale_conv.float()))
    return scales


def gradient_multipliers(model: RepOptNetwork, scales: Scales) -> dict[torch.Tensor, torch.Tensor]:
    """Each target conv kernel's multiplier M (shape of the kernel)."""
    if isinstance(model, RepOptGhostNet):
        return _ghost_multipliers(model, scales)
    multipliers: dict[torch.Tensor, torch.Tensor] = {}
    for block, (identity, scale_1x1, scale_conv) in zip(model.blocks(), scales, strict=True):
        if not isinstance(block, PlainBlock):
            raise ValueError(f"RepOptimizer trains the plain 'target' RepOpt-VGG, not mode {model.mode!r}")
        kernel = block.conv.weight
        mask = torch.ones_like(kernel) * (scale_conv ** 2).view(-1, 1, 1, 1)
        mask[:, :, 1, 1] += (scale_1x1 ** 2).view(-1, 1)
        if identity is not None:
            channels = torch.arange(kernel.shape[0])
            mask[channels, channels, 1, 1] += 1.0
        multipliers[kernel] = mask.detach()
    return multipliers


@torch.no_grad()
def reinitialise_target(target: RepOptNetwork, scales: Scales, seed: int | None = None) -> None:
    """Set every target kernel to the merged kernel of a fresh CSLA block with these scales.

    The CSLA block's own kernels are drawn as PyTorch initialises convolutions
    (from ``seed`` when given); the identity branch enters with its scale, as
    the authors' ``use_identity_scales_for_reinit``.
    """
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        if isinstance(target, RepOptGhostNet):
            _reinitialise_ghost(target, scales)
            return
        for block, (identity, scale_1x1, scale_conv) in zip(target.blocks(), scales, strict=True):
            assert isinstance(block, PlainBlock)
            cin, cout = block.conv.in_channels, block.conv.out_channels
            conv_3x3 = nn.Conv2d(cin, cout, 3, bias=False).weight
            conv_1x1 = nn.Conv2d(cin, cout, 1, bias=False).weight
            block.conv.weight.copy_(csla_kernel(conv_3x3, scale_conv, conv_1x1, scale_1x1, identity))
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)


# --------------------------------------------------------------------------- RepOpt-GhostNet
def _ghost_scales(model: RepOptGhostNet) -> Scales:
    scales: Scales = []
    for module in model.ghost_modules():
        if module.fusion_scale is None or module.cheap_scale is None:
            raise ValueError(f"scales come from a 'csla' or 'hs' RepOpt-GhostNet, not mode {model.mode!r}")
        scales.append((module.fusion_scale.weight.detach().clone(), module.cheap_scale.weight.detach().clone()))
    return scales


def _checked_ghost_scales(raw: object, model: RepOptGhostNet, path: Path) -> Scales:
    modules = model.ghost_modules()
    entries = _entries(raw, len(modules), "module", "Ghost modules", path)
    scales: Scales = []
    for index, (pair, module) in enumerate(zip(entries, modules, strict=True)):
        channels = module.cheap.out_channels
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(_channel_scale(value, channels) for value in pair)):
            raise ValueError(f"repopt-scales: Ghost module {index} of {path} does not fit the encoder "
                             f"({channels} channels; a (fusion, conv) pair per module)")
        scales.append((pair[0].float(), pair[1].float()))
    return scales


def _ghost_target_modules(model: RepOptGhostNet) -> list[GhostModule]:
    modules = model.ghost_modules()
    if any(module.mode != "target" for module in modules):
        raise ValueError(f"RepOptimizer trains the plain 'target' RepOpt-GhostNet, not mode {model.mode!r}")
    return modules


def _ghost_multipliers(model: RepOptGhostNet, scales: Scales) -> dict[torch.Tensor, torch.Tensor]:
    multipliers: dict[torch.Tensor, torch.Tensor] = {}
    for module, (_fusion, scale_conv) in zip(_ghost_target_modules(model), scales, strict=True):
        kernel = module.cheap.weight
        mask = torch.ones_like(kernel) * (scale_conv ** 2).view(-1, 1, 1, 1)
        mask[:, 0, 1, 1] += 1.0  # the trainable fusion scale sits on the centre tap
        multipliers[kernel] = mask.detach()
    return multipliers


def _reinitialise_ghost(target: RepOptGhostNet, scales: Scales) -> None:
    for module, (fusion, scale_conv) in zip(_ghost_target_modules(target), scales, strict=True):
        channels = module.cheap.out_channels
        fresh = nn.Conv2d(channels, channels, 3, groups=channels, bias=False).weight
        module.cheap.weight.copy_(ghost_kernel(fresh, scale_conv, fusion))


class RepOptSGD(torch.optim.SGD):
    """SGD whose gradient of each multiplied kernel is scaled element-wise before the step.

    The scaling happens in place on ``.grad`` and then torch's own SGD runs (weight decay and
    momentum as usual), so the update is the authors' ``RepOptimizerSGD`` without a hand-written step.
    """

    def __init__(self, params, multipliers: dict[torch.Tensor, torch.Tensor], **sgd_args) -> None:
        super().__init__(params, **sgd_args)
        self.multipliers = multipliers

    @torch.no_grad()
    def step(self, closure=None):
        for parameter, mask in self.multipliers.items():
            if parameter.grad is not None:
                parameter.grad.mul_(mask.to(parameter.grad.device, parameter.grad.dtype))
        return super().step(closure)
