"""Waveform -> normalised log-mel "image" that the vision encoder takes.

Decisions:
- The spectrogram is one channel, expanded (a view, no copy) to the encoder's
  three input channels, so images keep their colour and the same encoder
  weights serve both modalities unchanged.
- Decibels are taken relative to each clip's own peak (as librosa's
  ``power_to_db(ref=np.max)``) and floored 80 dB below it, so the features do
  not depend on the recording level. With a fixed dB reference, held-out
  voices played 20 dB quieter fell to chance (kNN 0.10, README "Training
  recipe"); real microphones differ in level far more than that.
- The floor maps to 0 (silence) and the peak to 1 before the fixed
  normalisation: spectrogram augmentations that pad or mask (stretching,
  masking) fill with 0, which is then silence, not a loud band.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchaudio.transforms as T

SAMPLE_RATE = 16_000
TOP_DB = 80.0
# Fixed normalisation of the [0, 1] peak-referenced levels (measured on the embedded spoken digits).
LEVEL_MEAN, LEVEL_STD = 0.25, 0.32


class LogMelFrontEnd(nn.Module):
    """``waves`` (B, T) in [-1, 1] -> peak-referenced log-mel levels (B, 1, n_mels, frames) in [0, 1]."""

    def __init__(self, n_mels: int, hop_ms: float, win_ms: float, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        win = int(round(sample_rate * win_ms / 1000))
        n_fft = 1 << (win - 1).bit_length()
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win,
            hop_length=int(round(sample_rate * hop_ms / 1000)), n_mels=n_mels, power=2.0,
        )

    @torch.no_grad()
    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        power = self.mel(waves.float())
        peak = power.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)  # an all-silent clip stays silent
        return power_to_levels(power / peak).unsqueeze(1)


def levels_to_power(levels: torch.Tensor) -> torch.Tensor:
    """[0, 1] levels -> power relative to the peak (for mixing clips)."""
    return torch.pow(10.0, (levels * TOP_DB - TOP_DB) / 10.0)


def power_to_levels(power: torch.Tensor) -> torch.Tensor:
    """Power relative to the peak -> [0, 1] levels (the 80 dB floor is 0)."""
    db = 10.0 * torch.log10(power.clamp_min(10.0 ** (-TOP_DB / 10.0)))
    return (db + TOP_DB) / TOP_DB


def normalise_levels(levels: torch.Tensor) -> torch.Tensor:
    return (levels - LEVEL_MEAN) / LEVEL_STD


def to_encoder_channels(spec: torch.Tensor, channels: int = 3) -> torch.Tensor:
    return spec.expand(-1, channels, -1, -1)
