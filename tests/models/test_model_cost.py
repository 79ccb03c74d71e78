"""Parameter and FLOP counts of the encoders against known values and a hand count."""

import timm
import torch
import torch.nn as nn

import models.encoders  # noqa: F401  (registers resnet18_cifar, vit_tiny_cifar)
from app_config.run_config import RunConfig
from experiments.encoder_cost import encoder_cost, forward_flops, parameter_count

# ResNet-18 (11,689,512 with its 1000-way fc) minus the fc (513,000) with the CIFAR 3x3 stem
# (1,728 instead of 9,408 weights): 11,168,832. Its 32x32 cost is the usual "0.56 GMACs".
RESNET18_CIFAR_PARAMS = 11_168_832
RESNET18_CIFAR_FLOPS_32PX = 1_110_835_200  # = 2 x 555,417,600 multiply-adds


def hand_count(model: nn.Module, example: torch.Tensor) -> int:
    """2 x multiply-adds of every conv and linear layer, from their output shapes."""
    total = []

    def conv(m, _inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total.append(2 * out.numel() * k)

    def linear(m, _inp, out):
        total.append(2 * out.numel() * m.in_features)

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model.eval()(example)
    for h in hooks:
        h.remove()
    return sum(total)


def test_resnet18_cifar_params_and_flops_match_known_values():
    encoder = timm.create_model("resnet18_cifar", num_classes=0)
    example = torch.zeros(1, 3, 32, 32)
    assert parameter_count(encoder) == RESNET18_CIFAR_PARAMS
    flops = forward_flops(encoder, example)
    assert flops == RESNET18_CIFAR_FLOPS_32PX
    assert flops == hand_count(encoder, example)


def test_vit_attention_matmuls_are_counted():
    encoder = timm.create_model("vit_tiny_cifar", num_classes=0)
    example = torch.zeros(1, 3, 16, 16)
    linear_only = hand_count(encoder, example)
    tokens, dim, depth = (16 // 4) ** 2 + 1, 192, 12
    attention = depth * 2 * (2 * tokens * tokens * dim)  # q @ k^T and attn @ v, 2 FLOPs per multiply-add
    assert forward_flops(encoder, example) == linear_only + attention
    assert all(getattr(m, "fused_attn", True) for m in encoder.modules() if hasattr(m, "fused_attn"))


def test_encoder_cost_uses_the_evaluation_input_sizes():
    cost = encoder_cost(RunConfig(encoder="resnet18_cifar", image_size=32, audio_n_mels=32))
    assert cost["input-image"] == "3x32x32" and cost["input-audio"] == "3x32x32"
    assert cost["params"] == RESNET18_CIFAR_PARAMS
    assert cost["params-with-head"] > cost["params"]
    assert cost["flops-image"] == RESNET18_CIFAR_FLOPS_32PX == cost["flops-audio"]
    small = encoder_cost(RunConfig(encoder="resnet18_cifar", image_size=16))
    assert small["input-image"] == "3x16x16" and small["flops-image"] == RESNET18_CIFAR_FLOPS_32PX // 4


def test_the_per_modality_layout_counts_both_encoders_and_each_modalitys_own_flops():
    shared = encoder_cost(RunConfig(encoder="resnet18_cifar", image_size=32, audio_n_mels=32))
    split = encoder_cost(RunConfig(encoder="resnet18_cifar", image_size=32, audio_n_mels=32,
                                   encoder_layout="per-modality", strategy="modality-wise"))
    assert split["params"] == 2 * RESNET18_CIFAR_PARAMS and split["params-with-head"] == 2 * shared["params-with-head"]
    assert split["flops-image"] == split["flops-audio"] == RESNET18_CIFAR_FLOPS_32PX  # one encoder per sample
