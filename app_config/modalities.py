"""The names of the two modalities, shared by data, models, trainer and evaluation."""

from __future__ import annotations

from typing import Literal

IMAGE, AUDIO = "image", "audio"
Modality = Literal["image", "audio"]
