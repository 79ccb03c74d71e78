"""Encoders from the registry: the projection head is sized from what each one really outputs."""

import pytest

PROJECT_ENCODERS = ["resnet18_cifar", "resnet18_half_cifar", "vit_tiny_cifar", "repopt_vgg_tiny_cifar",
                    "repopt_vgg_tiny_cifar_csla", "repopt_vgg_tiny_cifar_hs", "repopt_vgg_tiny_cifar_repvgg",
                    "repopt_ghostnet_tiny_cifar", "repopt_ghostnet_tiny_cifar_csla", "repopt_ghostnet_tiny_cifar_hs",
                    "repopt_ghostnet_tiny_cifar_rep",
                    "audio_inceptionnext_tiny", "audio_repinceptionnext_tiny", "audio_inceptionnext_base",
                    "audio_repinceptionnext_base"]


def test_the_list_holds_every_encoder_the_project_registers():
    import timm

    import models.encoders  # noqa: F401 -- registers them

    registered = {name for module in ("encoders", "repopt_vgg", "repopt_ghostnet", "audio_inceptionnext")
                  for name in timm.list_models(module=module)}
    assert registered == set(PROJECT_ENCODERS)


@pytest.mark.parametrize("name", [*PROJECT_ENCODERS, "test_resnet", "repghostnet_050", "inception_next_atto",
                                  "mobilenetv3_small_050"])
def test_the_projection_head_takes_the_encoders_real_output_width(name):
    """timm's num_features is not every model's pooled output (pre-logits stages): a forward pass decides."""
    import torch

    from models.encoders import create_encoder, output_width
    from models.ssl_model import SSLModel

    encoder = create_encoder(name).eval()
    with torch.no_grad():
        out = encoder(torch.zeros(2, 3, 32, 32))
    assert output_width(encoder) == out.shape[1]
    model = SSLModel(name, 32, 16).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
