"""Per-sample random augmentations for SimCLR views, batched on the training device.

torchvision's v2 transforms draw ONE set of parameters for a whole (B, C, H, W)
tensor; SimCLR needs a fresh draw per sample, so images use kornia's batched
augmentations (per-sample parameters) and audio uses per-sample shifts, noise
levels, mixing, kornia stretches and torchaudio's ``iid_masks`` masking.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn as nn
import torchaudio.transforms as T

from models.audio_frontend import (
    LogMelFrontEnd,
    levels_to_power,
    normalise_levels,
    power_to_levels,
    to_encoder_channels,
)

IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


def images_to_tensor(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float in [0, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)


def normalise_images(x: torch.Tensor) -> torch.Tensor:
    return (x - IMAGE_MEAN) / IMAGE_STD


class ImageViews(nn.Module):
    """SimCLR image pipeline: random resized crop, flip, colour jitter, grayscale."""

    def __init__(self, size: int, min_crop_scale: float = 0.2, hflip: bool = True, hue: float = 0.1,
                 grayscale_p: float = 0.2) -> None:
        super().__init__()
        self.augment = K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=(min_crop_scale, 1.0)),
            K.RandomHorizontalFlip(p=0.5 if hflip else 0.0),
            K.ColorJitter(0.4, 0.4, 0.4, hue, p=0.8),
            K.RandomGrayscale(p=grayscale_p),
        )

    def forward(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        return normalise_images(self.augment(images_to_tensor(batch_uint8)))


class ImageEval(nn.Module):
    """Deterministic preprocessing for evaluation."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        x = images_to_tensor(batch_uint8)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return normalise_images(x)


def waves_to_tensor(batch_int16: torch.Tensor) -> torch.Tensor:
    return batch_int16.float().div_(32768.0)


def random_time_shift(waves: torch.Tensor, max_fraction: float) -> torch.Tensor:
    """Shift each clip by its own random offset, filling with silence (no wrap-around)."""
    b, t = waves.shape
    max_shift = int(t * max_fraction)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 1), device=waves.device)
    src = torch.arange(t, device=waves.device).unsqueeze(0) - shifts
    valid = (src >= 0) & (src < t)
    return torch.gather(waves, 1, src.clamp(0, t - 1)) * valid


def random_noise(waves: torch.Tensor, snr_db_range: tuple[float, float], p: float) -> torch.Tensor:
    """Mix white noise at a per-sample random SNR into a random subset of clips."""
    b = waves.shape[0]
    snr_db = torch.empty(b, 1, device=waves.device).uniform_(*snr_db_range)
    signal_power = waves.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-10)
    noise = torch.randn_like(waves) * torch.sqrt(signal_power / torch.pow(10.0, snr_db / 10.0))
    apply = (torch.rand(b, 1, device=waves.device) < p).float()
    return waves + apply * noise


def mix_other_clips(levels: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """BYOL-A's mixup: add another clip of the batch at a random share in [0, max_ratio) of the power.

    The word of the clip stays dominant while the background changes, so the two
    views agree on content rather than on the recording around it.
    """
    ratio = torch.rand(levels.shape[0], 1, 1, 1, device=levels.device) * max_ratio
    mixed = (1 - ratio) * levels_to_power(levels) + ratio * levels_to_power(levels.roll(1, dims=0))
    return power_to_levels(mixed)


class AudioViews(nn.Module):
    """Audio SimCLR views aimed at the spoken content rather than the voice or the recording.

    Waveform: random time shift and white noise at a random SNR. Log-mel
    (peak-referenced, so level-invariant): mixing in another clip (BYOL-A),
    per-sample stretch of the frequency axis (≈ pitch: another voice) and of the
    time axis (≈ tempo: another speaking rate) with a random time offset, as
    BYOL-A's random resized crop; then torchaudio's per-sample time and
    frequency masks. Every draw is per sample (kornia, ``iid_masks``).
    """

    def __init__(self, frontend: LogMelFrontEnd, n_mels: int, mix_ratio: float = 0.4, stretch: float = 0.25,
                 max_shift: float = 0.15, noise_snr_db: tuple[float, float] = (5.0, 30.0),
                 noise_p: float = 0.5) -> None:
        super().__init__()
        self.frontend = frontend
        self.max_shift, self.mix_ratio = max_shift, mix_ratio
        self.noise_snr_db, self.noise_p = noise_snr_db, noise_p
        scale = (1.0 / (1.0 + stretch), 1.0 + stretch)
        self.stretch = K.RandomAffine(degrees=0.0, translate=(0.1, 0.0), scale=(*scale, *scale),
                                      padding_mode="zeros", p=1.0) if stretch > 0 else None
        self.freq_mask = T.FrequencyMasking(freq_mask_param=max(1, n_mels // 5), iid_masks=True)
        self.time_masks: T.TimeMasking | None = None

    def forward(self, batch_int16: torch.Tensor) -> torch.Tensor:
        waves = random_time_shift(waves_to_tensor(batch_int16), self.max_shift)
        waves = random_noise(waves, self.noise_snr_db, self.noise_p)
        levels = self.frontend(waves)
        if self.mix_ratio > 0:
            levels = mix_other_clips(levels, self.mix_ratio)
        if self.stretch is not None:
            levels = self.stretch(levels)
        time_masks = self.time_masks
        if time_masks is None:
            time_masks = self.time_masks = T.TimeMasking(time_mask_param=max(1, levels.shape[-1] // 5),
                                                         iid_masks=True)
        levels = time_masks(self.freq_mask(levels))  # masks fill with 0: silence
        return to_encoder_channels(normalise_levels(levels))


class AudioEval(nn.Module):
    def __init__(self, frontend: LogMelFrontEnd) -> None:
        super().__init__()
        self.frontend = frontend

    def forward(self, batch_int16: torch.Tensor) -> torch.Tensor:
        return to_encoder_channels(normalise_levels(self.frontend(waves_to_tensor(batch_int16))))
