"""Waveform -> normalised log-mel "image" that the vision encoder takes.

Decision: the spectrogram is one channel, expanded (a view, no copy) to the
encoder's three input channels, so images keep their colour and the same
encoder weights serve both modalities unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchaudio.transforms as T

SAMPLE_RATE = 16_000
# Fixed normalisation of dB values (measured on the embedded spoken digits);
# fixed rather than per-sample so loudness stays information and gain
# augmentation means something.
DB_MEAN, DB_STD = -30.0, 22.0


class LogMelFrontEnd(nn.Module):
    def __init__(self, n_mels: int, hop_ms: float, win_ms: float, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        win = int(round(sample_rate * win_ms / 1000))
        n_fft = 1 << (win - 1).bit_length()
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win,
            hop_length=int(round(sample_rate * hop_ms / 1000)), n_mels=n_mels, power=2.0,
        )
        self.to_db = T.AmplitudeToDB(stype="power", top_db=80.0)

    @torch.no_grad()
    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        """``waves`` (B, T) float in [-1, 1] -> (B, 1, n_mels, frames)."""
        db = self.to_db(self.mel(waves.float()) + 1e-10)
        return ((db - DB_MEAN) / DB_STD).unsqueeze(1)


def to_encoder_channels(spec: torch.Tensor, channels: int = 3) -> torch.Tensor:
    return spec.expand(-1, channels, -1, -1)
