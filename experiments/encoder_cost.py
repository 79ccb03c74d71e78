"""Parameter count and FLOPs of an encoder, for the comparison table.

Parameters are the sum of ``numel`` over the encoder's parameters (the network
that is kept and probed; the SimCLR projection head is counted separately).
FLOPs come from PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``
(no extra package): one forward pass of one sample, counting a multiply-add
as 2 FLOPs (so ResNet-18 with the CIFAR stem on a 32x32 image is 1.11 GFLOPs =
0.556 GMACs, the figure usually quoted as "0.56 G"). Attention matmuls of
timm ViTs are counted too (see :func:`forward_flops`).

Command: ``python -m experiments.model_cost --encoder resnet18_cifar --image-size 32``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def parameter_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


@torch.no_grad()
def forward_flops(module: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``example`` (a batch; pass one sample for per-sample cost)."""
    was_training = module.training
    # The CPU kernel of fused scaled-dot-product attention has no FLOP formula in the
    # counter; timm attention blocks fall back to explicit matmuls while counting.
    fused = [m for m in module.modules() if getattr(m, "fused_attn", False) is True]
    module.eval()
    try:
        for m in fused:
            m.fused_attn = False
        with FlopCounterMode(display=False) as counter:
            module(example)
    finally:
        for m in fused:
            m.fused_attn = True
        module.train(was_training)
    return int(counter.get_total_flops())


def input_shapes(config) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) the encoder sees at evaluation for each modality under ``config``.

    Images: the evaluation transform resizes to ``image-size``. Audio: a 1 s clip
    (the embedded set's length) through the log-mel front end, as 3 channels.
    """
    from models.factory import eval_transforms

    transforms = eval_transforms(config, torch.device("cpu"))
    image = transforms["image"](torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    audio = transforms["audio"](torch.zeros(1, 16_000, dtype=torch.int16))
    return {"image": tuple(image.shape[1:]), "audio": tuple(audio.shape[1:])}


def encoder_cost(config, shapes: dict[str, tuple[int, int, int]] | None = None) -> dict[str, object]:
    """Params (the encoders, and with their projection heads) and per-sample FLOPs per modality (each through
    the encoder that handles it: the shared one, or its own in the per-modality layout)."""
    from models.factory import build_model

    model = build_model(config)
    shapes = shapes or input_shapes(config)
    branches = {modality: model.branch(modality) for modality in shapes}  # one network, or one per modality
    encoders = {id(branch.encoder): branch.encoder for branch in branches.values()}
    out: dict[str, object] = {
        "params": sum(parameter_count(encoder) for encoder in encoders.values()),
        "params-with-head": parameter_count(model),
    }
    for modality, shape in shapes.items():
        out[f"flops-{modality}"] = forward_flops(branches[modality].encoder, torch.zeros(1, *shape))
        out[f"input-{modality}"] = "x".join(str(s) for s in shape)
    return out
