"""The project's vocabulary of data: the two modalities, their order, and the three kinds of client.

Every loop over modalities, every record and every table uses ``MODALITIES``'
order (images first); a client's kind says which modalities it holds.
"""

from __future__ import annotations

from typing import Literal

IMAGE, AUDIO = "image", "audio"
Modality = Literal["image", "audio"]
MODALITIES: tuple[str, ...] = (IMAGE, AUDIO)

VISUAL, AUDIO_ONLY, AUDIOVISUAL = "visual", "audio", "audiovisual"
CLIENT_KINDS = (VISUAL, AUDIO_ONLY, AUDIOVISUAL)
KIND_MODALITIES: dict[str, tuple[str, ...]] = {VISUAL: (IMAGE,), AUDIO_ONLY: (AUDIO,),
                                                    AUDIOVISUAL: (IMAGE, AUDIO)}
