"""AudioInceptionNeXt / AudioRepInceptionNeXt: shapes, kernel keys, and the merged form equal to the branches."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from app_config.run_config import ConfigError, RunConfig
from models.audio_inceptionnext import RepAxis, merge_branches
from models.factory import build_model


def _randomise_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters away from their initial values, so a merge that ignored
    any of them would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def test_merged_axis_equals_its_branches_and_identity_along_time_and_frequency():
    torch.manual_seed(0)
    for axis in ("time", "freq"):
        rep = RepAxis(6, (3, 5, 9), axis)
        _randomise_batch_norms(rep)
        rep.eval()
        x = torch.randn(2, 6, 12, 20)
        before = rep(x)
        rep.merge()
        assert rep.merged is not None and len(rep.branches) == 0
        assert tuple(rep.merged.weight.shape[-2:]) == ((1, 9) if axis == "time" else (9, 1))
        assert (rep(x) - before).abs().max().item() < 1e-5, axis


def test_merged_repinceptionnext_gives_the_unmerged_output_within_1e_5():
    config = RunConfig(encoder="audio_repinceptionnext_tiny", inceptionnext_time_kernels="3,7,11",
                       inceptionnext_freq_kernels="3,5,7")
    encoder = build_model(config).encoder
    _randomise_batch_norms(encoder)
    encoder.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        unmerged = encoder(x)
        merged_model = merge_branches(encoder)
        merged = merged_model(x)
        # float32: equal up to rounding, relative to the outputs' scale (the randomised BNs make them ~100)
        assert unmerged.shape == (3, 256)
        assert ((merged - unmerged).abs().max() / unmerged.abs().max()).item() < 1e-5
        # float64: equal within 1e-5 absolutely (the merge is exact; only rounding differs)
        merged64 = merge_branches(encoder.double())(x.double())
        assert (merged64 - encoder(x.double())).abs().max().item() < 1e-5
        encoder.float()
    assert sum(isinstance(m, RepAxis) and m.merged is not None for m in merged_model.modules()) == 16
    # the merge replaced three convs per axis by one: fewer parameters, the original untouched
    assert sum(p.numel() for p in merged_model.parameters()) < sum(p.numel() for p in encoder.parameters())
    assert all(m.merged is None for m in encoder.modules() if isinstance(m, RepAxis))


def test_a_wrong_merge_is_caught_by_the_equivalence_check():
    """Leaving out the identity (what the authors add separately) changes the output: the check can fail."""
    rep = RepAxis(4, (3, 5), "time")
    _randomise_batch_norms(rep)
    rep.eval()
    x = torch.randn(1, 4, 6, 10)
    before = rep(x)
    kernel, bias = rep.merged_kernel_bias()
    kernel[:, 0, 0, 2] -= 1.0  # drop the identity tap
    wrong = torch.relu(torch.nn.functional.conv2d(x, kernel, bias, padding=(0, 2), groups=4))
    assert (wrong - before).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", ["audio_inceptionnext_tiny", "audio_repinceptionnext_tiny"])
def test_kernel_keys_reach_the_encoder(name):
    model = build_model(RunConfig(encoder=name, inceptionnext_time_kernels="3,9",
                                  inceptionnext_freq_kernels="1,5"))
    time_sizes = {tuple(m.kernel_size) for m in model.encoder.modules()
                  if isinstance(m, nn.Conv2d) and m.groups > 1 and m.kernel_size[0] == 1}
    freq_sizes = {tuple(m.kernel_size) for m in model.encoder.modules()
                  if isinstance(m, nn.Conv2d) and m.groups > 1 and m.kernel_size[1] == 1}
    assert {(1, 3), (1, 9)} <= time_sizes and {(5, 1)} <= freq_sizes
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 128)


@pytest.mark.parametrize("over, key", [
    ({"inceptionnext_time_kernels": "3,4"}, "inceptionnext-time-kernels:"),
    ({"inceptionnext_freq_kernels": "3,x"}, "inceptionnext-freq-kernels"),
    ({"inceptionnext_time_kernels": "3,5", "inceptionnext_freq_kernels": "3"}, "inceptionnext-freq-kernels:"),
    ({"inceptionnext_time_kernels": "3,5,7,9,11"}, "inceptionnext-time-kernels"),
])
def test_bad_kernel_keys_are_one_line_errors_naming_the_key(over, key):
    with pytest.raises(ConfigError) as err:
        RunConfig(**over)
    assert key in str(err.value) and "\n" not in str(err.value)
