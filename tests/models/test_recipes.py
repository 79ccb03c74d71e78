"""Training recipes per encoder family and the per-round learning-rate schedule."""

import math

import pytest

from models.encoders import create_encoder
from models.recipes import RECIPES, Recipe, encoder_family, resolve_recipe, round_learning_rate


@pytest.mark.parametrize("name, family", [("resnet18_half_cifar", "convnet"), ("vit_tiny_cifar", "transformer")])
def test_family_follows_the_network(name, family):
    assert encoder_family(create_encoder(name)) == family


def test_auto_takes_the_family_recipe_and_numbers_override_it():
    vit = create_encoder("vit_tiny_cifar")
    assert resolve_recipe(vit, "auto", "auto", "auto", 16) == Recipe("adamw", 2e-4, 0.05)
    custom = resolve_recipe(vit, "sgd", 0.3, 0.0, 64)  # a given rate is not scaled
    assert (custom.optimizer, custom.learning_rate, custom.weight_decay) == ("sgd", 0.3, 0.0)


def test_the_transformer_rate_scales_with_the_batch_and_the_convnet_rate_does_not():
    vit, cnn = create_encoder("vit_tiny_cifar"), create_encoder("resnet18_half_cifar")
    assert resolve_recipe(vit, "auto", "auto", "auto", 256).learning_rate == pytest.approx(8e-4)  # x sqrt(16)
    assert resolve_recipe(vit, "auto", "auto", "auto", 4).learning_rate == pytest.approx(1e-4)  # x sqrt(1/4)
    assert resolve_recipe(cnn, "auto", "auto", "auto", 256) == RECIPES["convnet"]
    assert resolve_recipe(cnn, "auto", "auto", "auto", 8) == RECIPES["convnet"]


def test_warm_up_then_cosine_never_reaching_zero():
    rates = [round_learning_rate(1.0, r, 6, "cosine", 1) for r in range(1, 7)]
    assert rates[0] == pytest.approx(0.5) and rates[1] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(rates[1:], rates[2:]))  # strictly decaying after the warm-up
    assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 5)))
    assert rates[-1] > 0


def test_constant_schedule_and_no_warm_up():
    assert [round_learning_rate(0.1, r, 4, "constant", 0) for r in range(1, 5)] == [0.1] * 4
    assert [round_learning_rate(0.1, r, 4, "constant", 2) for r in range(1, 5)] == pytest.approx(
        [0.1 / 3, 0.2 / 3, 0.1, 0.1])


def test_rounds_past_the_last_keep_the_last_rate():
    last = round_learning_rate(0.1, 6, 6, "cosine", 1)
    assert round_learning_rate(0.1, 9, 6, "cosine", 1) == pytest.approx(last) and last > 0

