"""RepOpt-GhostNet: k SGD steps of the plain network with multipliers equal k steps of the CSLA network, merged."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models.repopt import RepOptSGD, extract_scales, gradient_multipliers, load_scales, reinitialise_target, save_scales
from models.repopt_ghostnet import RepOptGhostNet
from tests.models.regression_steps import train_steps

TINY = (((3, 8, 8, 0.0, 1), (3, 12, 8, 0.0, 1)), ((3, 16, 12, 0.25, 2),))  # 3 bottlenecks, 6 Ghost modules


def _csla_with_random_scales(seed: int) -> RepOptGhostNet:
    torch.manual_seed(seed)
    model = RepOptGhostNet(TINY, head_width=16, mode="csla", in_chans=4)
    for module in model.ghost_modules():
        module.cheap_scale.weight.data.uniform_(0.5, 1.5)
        module.fusion_scale.weight.data.uniform_(0.5, 1.5)
    return model


def _target_from(csla: RepOptGhostNet) -> RepOptGhostNet:
    """The target with every other weight equal and each depth-wise kernel the CSLA module's merged kernel."""
    target = RepOptGhostNet(TINY, head_width=16, mode="target", in_chans=4)
    state = {k: v for k, v in csla.state_dict().items() if "_scale" not in k}
    missing = target.load_state_dict(state, strict=False)
    assert not missing.missing_keys and not missing.unexpected_keys
    with torch.no_grad():
        for plain, module in zip(target.ghost_modules(), csla.ghost_modules(), strict=True):
            plain.cheap.weight.copy_(module.merged_kernel())
    return target


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    train_steps(model, optimizer, steps, (8, 4, 8, 8), 16)


def _largest_kernel_gap(csla: RepOptGhostNet, target: RepOptGhostNet) -> float:
    return max(float((module.merged_kernel() - plain.cheap.weight).abs().max().detach())
               for module, plain in zip(csla.ghost_modules(), target.ghost_modules(), strict=True))


def test_the_merged_csla_module_gives_the_csla_output():
    csla = _csla_with_random_scales(1).eval()
    target = _target_from(csla).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert (csla(x) - target(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_k_steps_of_the_target_with_multipliers_equal_k_steps_of_csla_then_merging(momentum):
    csla = _csla_with_random_scales(0)
    target = _target_from(csla)
    scales = extract_scales(csla)
    trainable = [p for p in csla.parameters() if p.requires_grad]
    _train(csla, torch.optim.SGD(trainable, lr=0.05, momentum=momentum), steps=5)
    _train(target, RepOptSGD(target.parameters(), gradient_multipliers(target, scales), lr=0.05, momentum=momentum),
           steps=5)
    assert _largest_kernel_gap(csla, target) < 1e-5
    moved = max(float((m.merged_kernel() - p.cheap.weight).abs().max()) for m, p in
                zip(csla.ghost_modules(), _target_from(_csla_with_random_scales(0)).ghost_modules(), strict=True))
    assert moved > 1e-3  # the kernels did move: the equality is not that of untrained weights


def test_without_the_centre_term_the_steps_differ():
    """Multipliers missing the fusion scale's +1 at the centre: the check above would fail."""
    csla = _csla_with_random_scales(0)
    target = _target_from(csla)
    wrong = gradient_multipliers(target, extract_scales(csla))
    for mask in wrong.values():
        mask[:, 0, 1, 1] -= 1.0
    _train(csla, torch.optim.SGD([p for p in csla.parameters() if p.requires_grad], lr=0.05), steps=5)
    _train(target, RepOptSGD(target.parameters(), wrong, lr=0.05), steps=5)
    assert _largest_kernel_gap(csla, target) > 1e-4  # 10x the tolerance of the equivalence


def test_scales_round_trip_and_a_file_for_another_network_is_refused(tmp_path):
    hs = RepOptGhostNet(TINY, head_width=16, mode="hs", in_chans=4)
    path = tmp_path / "scales.pt"
    save_scales(extract_scales(hs), path)
    target = RepOptGhostNet(TINY, head_width=16, mode="target", in_chans=4)
    scales = load_scales(path, target)
    assert len(scales) == len(target.ghost_modules()) == 6
    # the authors' initial conv scales: sqrt(2 / (n + 1)) for the n-th module of a stage
    assert torch.allclose(scales[0][1], torch.full((8,), (2 / 2) ** 0.5))
    assert torch.allclose(scales[1][1], torch.full((8,), (2 / 3) ** 0.5))
    reinitialise_target(target, scales, seed=3)
    other = RepOptGhostNet(mode="target")
    with pytest.raises(ValueError, match="^repopt-scales: .* 6 module scales; the encoder has 14 Ghost modules"):
        load_scales(path, other)
    with pytest.raises(ValueError, match="plain 'target' RepOpt-GhostNet"):
        gradient_multipliers(hs, scales)


def test_the_target_reinitialised_from_scales_carries_the_fusion_scale_at_the_centre():
    target = RepOptGhostNet(TINY, head_width=16, mode="target", in_chans=4)
    scales = [(torch.full((m.cheap.out_channels,), 2.0), torch.zeros(m.cheap.out_channels))
              for m in target.ghost_modules()]
    reinitialise_target(target, scales, seed=0)
    for module in target.ghost_modules():  # conv scale 0: only the fusion scale's centre tap is left
        expected = torch.zeros_like(module.cheap.weight)
        expected[:, 0, 1, 1] = 2.0
        assert torch.equal(module.cheap.weight, expected)
