"""Encoders, registered in timm's model registry so ``timm.create_model`` builds them.

``resnet18_cifar``: ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool),
the usual choice for 32 px inputs (11.2M parameters).
``resnet18_half_cifar``: the same network at half width (32-64-128-256 channels,
2.8M parameters, about 4x fewer FLOPs): the default, because on a CPU it makes
about four times as many SimCLR steps in the same time and, per second of
training, learns more than the full-width network (README, "Training recipe").
``vit_tiny_cifar``: ViT-Tiny with 4 px patches and dynamic input size, so one
model takes small images and other-sized spectrograms (sides that are not a
multiple of 4, e.g. 101 frames of a 1 s clip at a 10 ms hop, are zero-padded
up to one), and features averaged over the patch tokens rather than read from
the class token: at initialisation that gives kNN 0.631 instead of 0.486 on the
embedded digits, and it stays ahead after training (README, "Training recipe").
``repopt_vgg_tiny_cifar`` (+ ``_csla``, ``_hs``, ``_repvgg``): RepOpt-VGG, the plain
network FedRepOpt trains for small devices (:mod:`models.repopt_vgg`); ``repopt_ghostnet_tiny_cifar``
(+ ``_csla``, ``_hs``, ``_rep``): its GhostNet counterpart (:mod:`models.repopt_ghostnet`).
``audio_inceptionnext_{tiny,base}``, ``audio_repinceptionnext_{tiny,base}``: multi-scale depth-wise
time-then-frequency kernels for spectrograms, the second merged into one branch per axis for inference
(:mod:`models.audio_inceptionnext`; kernel sizes from ``inceptionnext-*-kernels``).
Any other timm model name works too (always ``pretrained=False``).
"""

from __future__ import annotations

import timm
import torch.nn as nn
from timm.models import register_model

import models.audio_inceptionnext  # noqa: F401 -- registers audio_(rep)inceptionnext_* in timm's registry
import models.repopt_ghostnet  # noqa: F401 -- registers RepOpt-GhostNet (repopt_ghostnet_*) in timm's registry
import models.repopt_vgg  # noqa: F401 -- registers the RepOpt-VGG encoders (repopt_vgg_*) in timm's registry


def _cifar_stem(model: nn.Module, in_chans: int, width: int) -> nn.Module:
    """3x3 stride-1 stem without max-pool: small inputs keep their resolution."""
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    model = timm.create_model("resnet18", pretrained=pretrained, **kwargs)
    conv1 = model.conv1
    assert isinstance(conv1, nn.Conv2d)
    return _cifar_stem(model, conv1.in_channels, 64)


@register_model
def resnet18_half_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    # timm's plain stem is always 64 wide; its "deep" stem is 2 x stem_width wide, replaced below.
    model = timm.create_model("resnet18", pretrained=pretrained, channels=(32, 64, 128, 256),
                              stem_type="deep", stem_width=16, **kwargs)
    return _cifar_stem(model, kwargs.get("in_chans", 3), 32)


@register_model
def vit_tiny_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    kwargs = {"img_size": 32, "patch_size": 4, "dynamic_img_size": True, "dynamic_img_pad": True,
              "global_pool": "avg", **kwargs}
    return timm.create_model("vit_tiny_patch16_224", pretrained=pretrained, **kwargs)


def is_encoder_name(name: str) -> bool:
    return timm.is_model(name)


def create_encoder(name: str, **options) -> nn.Module:
    """A headless timm backbone (``num_classes=0``) returning pooled features; ``options`` go to the
    model's constructor (e.g. the kernel sizes of the InceptionNeXt encoders)."""
    if not is_encoder_name(name):
        raise ValueError(
            f"encoder {name!r} is not a timm model: use 'resnet18_half_cifar', 'resnet18_cifar', "
            "'vit_tiny_cifar' or a name from timm.list_models()"
        )
    return timm.create_model(name, pretrained=False, num_classes=0, **options)


def output_width(encoder: nn.Module) -> int:
    """The width of a headless timm encoder's pooled output, what the projection head takes.

    Not always ``num_features``: models with a pre-logits stage keep it with ``num_classes=0``
    (``repghostnet_050``: 1280 out, ``num_features`` 480; ``inception_next_atto``: 960 and 320), and timm
    reports that width as ``head_hidden_size``. A test checks this against a forward pass for every
    encoder the project registers and for such models.
    """
    width = getattr(encoder, "head_hidden_size", None) or getattr(encoder, "num_features", None)
    if not isinstance(width, int) or width <= 0:
        raise ValueError(f"{type(encoder).__name__} reports no output width (head_hidden_size / num_features)")
    return width
