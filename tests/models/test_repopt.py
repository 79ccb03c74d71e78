"""RepOptimizer: k SGD steps of the plain network with multipliers equal k steps of the CSLA network, merged."""

import pytest
import timm
import torch
import torch.nn as nn

from models.repopt import RepOptSGD, extract_scales, gradient_multipliers, load_scales, reinitialise_target, save_scales
from models.repopt_vgg import LinearAddBlock, PlainBlock, RepOptVGG
from tests.models.regression_steps import train_steps

TINY = {"depths": (2,), "widths": (4,), "strides": (1,), "stem_width": 4}  # stem + 2 blocks, all with identity


def _csla_with_random_scales(seed: int) -> RepOptVGG:
    torch.manual_seed(seed)
    model = RepOptVGG(**TINY, mode="csla", in_chans=4)
    for block in model.blocks():
        assert isinstance(block, LinearAddBlock)
        block.scale_conv.weight.data.uniform_(0.5, 1.5)
        block.scale_1x1.weight.data.uniform_(0.2, 1.2)
        if block.scale_identity is not None:
            block.scale_identity.weight.data.uniform_(0.5, 1.5)
    return model


def _target_from(csla: RepOptVGG) -> RepOptVGG:
    target = RepOptVGG(**TINY, mode="target", in_chans=4)
    with torch.no_grad():
        for plain, block in zip(target.blocks(), csla.blocks(), strict=True):
            plain.conv.weight.copy_(block.merged_kernel())
            plain.bn.load_state_dict(block.bn.state_dict())
    return target


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    train_steps(model, optimizer, steps, (8, 4, 6, 6), 4)


def _largest_kernel_gap(csla: RepOptVGG, target: RepOptVGG) -> float:
    return max(float((block.merged_kernel() - plain.conv.weight).abs().max().detach())
               for block, plain in zip(csla.blocks(), target.blocks(), strict=True))


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
    x = torch.randn(3, 4, 6, 6)
    csla.eval(), target.eval()
    assert torch.allclose(csla(x), target(x), atol=1e-5)


def test_the_equivalence_needs_the_multipliers():
    # the same 5 steps with plain SGD (or the order-1 multipliers of Adam's rule) leave the kernels apart:
    # the equivalence test above would fail with a wrong multiplier
    csla = _csla_with_random_scales(0)
    plain_sgd, order_one = _target_from(csla), _target_from(csla)
    scales = extract_scales(csla)
    _train(csla, torch.optim.SGD([p for p in csla.parameters() if p.requires_grad], lr=0.05), steps=5)
    _train(plain_sgd, torch.optim.SGD(plain_sgd.parameters(), lr=0.05), steps=5)
    wrong = {p: m.sqrt() for p, m in gradient_multipliers(order_one, scales).items()}
    _train(order_one, RepOptSGD(order_one.parameters(), wrong, lr=0.05), steps=5)
    assert _largest_kernel_gap(csla, plain_sgd) > 1e-3
    assert _largest_kernel_gap(csla, order_one) > 1e-3


def test_multipliers_are_the_squared_scales_plus_the_identity_at_the_diagonal_centre():
    csla = _csla_with_random_scales(1)
    target = _target_from(csla)
    (identity, s1, s3), *_ = extract_scales(csla)
    mask = gradient_multipliers(target, extract_scales(csla))[target.stem.conv.weight]
    assert torch.allclose(mask[2, 1, 0, 0], s3[2] ** 2)                  # off-centre: the 3x3 scale only
    assert torch.allclose(mask[2, 1, 1, 1], s3[2] ** 2 + s1[2] ** 2)     # centre: + the 1x1's
    assert torch.allclose(mask[2, 2, 1, 1], s3[2] ** 2 + s1[2] ** 2 + 1)  # diagonal centre: + the identity's


def test_reinitialised_target_equals_a_fresh_csla_block_merged():
    csla = _csla_with_random_scales(2)
    scales = extract_scales(csla)
    target = RepOptVGG(**TINY, mode="target", in_chans=4)
    reinitialise_target(target, scales, seed=3)
    torch.manual_seed(3)  # the CSLA kernels reinitialise_target draws, redrawn in the same order
    for plain, (identity, s1, s3) in zip(target.blocks(), scales, strict=True):
        assert isinstance(plain, PlainBlock)
        w3 = nn.Conv2d(4, 4, 3, bias=False).weight
        w1 = nn.Conv2d(4, 4, 1, bias=False).weight
        expected = w3 * s3.view(-1, 1, 1, 1)
        expected[:, :, 1, 1] += w1[:, :, 0, 0] * s1.view(-1, 1)
        expected[torch.arange(4), torch.arange(4), 1, 1] += identity
        assert torch.allclose(plain.conv.weight, expected, atol=1e-6)


def test_scales_file_round_trips_and_a_mismatched_one_is_refused_in_one_line(tmp_path):
    csla = _csla_with_random_scales(4)
    path = tmp_path / "scales.pt"
    save_scales(extract_scales(csla), path)
    target = RepOptVGG(**TINY, mode="target", in_chans=4)
    loaded = load_scales(path, target)
    assert all(torch.equal(a[2], b[2]) for a, b in zip(loaded, extract_scales(csla), strict=True))
    wider = RepOptVGG(depths=(2,), widths=(8,), strides=(1,), stem_width=8, mode="target", in_chans=4)
    with pytest.raises(ValueError, match="block 0 .* does not fit"):
        load_scales(path, wider)
    (tmp_path / "junk.pt").write_bytes(b"not a file torch reads")
    with pytest.raises(ValueError, match="is not a scales file"):
        load_scales(tmp_path / "junk.pt", target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


@pytest.mark.parametrize("name", ["repopt_vgg_tiny_cifar", "repopt_vgg_tiny_cifar_csla", "repopt_vgg_tiny_cifar_hs",
                                  "repopt_vgg_tiny_cifar_repvgg"])
def test_registered_repopt_encoders_build_headless_with_their_width(name):
    model = timm.create_model(name, pretrained=False, num_classes=0)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, model.num_features) == (2, 256)


def test_a_scales_path_with_a_tilde_is_read_as_preflight_checks_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    save_scales(extract_scales(_csla_with_random_scales(5)), tmp_path / "scales.pt")
    assert len(load_scales("~/scales.pt", RepOptVGG(**TINY, mode="target", in_chans=4))) == 3


@pytest.mark.parametrize("over, key", [
    ({"encoder": "resnet18_half_cifar"}, "optimizer:"),
    ({"encoder": "repopt_vgg_tiny_cifar_csla"}, "optimizer:"),
    ({"encoder": "repopt_ghostnet_tiny_cifar_rep"}, "optimizer:"),
    ({"repopt_scales": ""}, "repopt-scales:"),
    ({"dp": "client-fixed"}, "dp:"),
    ({"strategy": "fedprox"}, "strategy:"),
])
def test_combinations_that_break_the_equivalence_are_refused_in_one_line_naming_the_key(over, key):
    from app_config.run_config import ConfigError, RunConfig

    base = {"optimizer": "repopt-sgd", "encoder": "repopt_ghostnet_tiny_cifar", "repopt_scales": "scales.pt"}
    assert RunConfig(**base).optimizer == "repopt-sgd"
    with pytest.raises(ConfigError) as err:
        RunConfig(**{**base, **over})
    assert str(err.value).startswith(key) and "\n" not in str(err.value)
