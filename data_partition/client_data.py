"""A client's samples per modality as tensors: what the local trainer batches from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from app_config.modalities import MODALITIES


@dataclass
class LocalData:
    """A client's samples per modality, as tensors ready for batching (uint8 / int16)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    # class labels per modality: the supervised ceiling's targets; ModalityMirror's phase 2 reads them only to
    # pair each clip with an image of the same class (ssl_method.mirror_training), never as a target
    labels: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.tensors and len(self.tensors[m]) >= 2)

    def count(self, modality: str) -> int:
        return len(self.tensors[modality]) if modality in self.tensors else 0

    def total(self) -> int:
        """Samples over every modality held: a reply's ``num-examples``."""
        return sum(self.count(m) for m in self.modalities)
