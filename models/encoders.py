"""Encoders, registered in timm's model registry so ``timm.create_model`` builds them.

``resnet18_cifar``: ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool),
the usual choice for 32 px inputs. ``vit_tiny_cifar``: ViT-Tiny with 4 px patches
and dynamic input size, so one model takes 32x32 images and other-sized
spectrograms (sides that are not a multiple of 4, e.g. 101 frames of a 1 s clip
at a 10 ms hop, are zero-padded up to one). Any other timm model name works too
(always ``pretrained=False``).
"""

from __future__ import annotations

import timm
import torch.nn as nn
from timm.models import register_model


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    model = timm.create_model("resnet18", pretrained=pretrained, **kwargs)
    model.conv1 = nn.Conv2d(model.conv1.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model
def vit_tiny_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    kwargs = {"img_size": 32, "patch_size": 4, "dynamic_img_size": True, "dynamic_img_pad": True, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", pretrained=pretrained, **kwargs)


def create_encoder(name: str) -> nn.Module:
    """A headless timm backbone (``num_classes=0``) returning pooled features."""
    if name not in timm.list_models():
        raise ValueError(
            f"encoder {name!r} is not a timm model: use 'resnet18_cifar', 'vit_tiny_cifar' "
            "or a name from timm.list_models()"
        )
    return timm.create_model(name, pretrained=False, num_classes=0)
