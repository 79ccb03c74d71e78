"""Per-sample random augmentations for SimCLR views, batched on the training device.

torchvision's v2 transforms draw ONE set of parameters for a whole (B, C, H, W)
tensor; SimCLR needs a fresh draw per sample, so images use kornia's batched
augmentations (per-sample parameters) and audio uses per-sample shifts, gains,
noise levels and torchaudio's ``iid_masks`` masking.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn as nn
import torchaudio.transforms as T

from models.audio_frontend import LogMelFrontEnd, to_encoder_channels

IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


def images_to_tensor(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float in [0, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)


def normalise_images(x: torch.Tensor) -> torch.Tensor:
    return (x - IMAGE_MEAN) / IMAGE_STD


class ImageViews(nn.Module):
    """SimCLR image pipeline: random resized crop, flip, colour jitter, grayscale."""

    def __init__(self, size: int, min_crop_scale: float = 0.2, hflip: bool = True) -> None:
        super().__init__()
        self.augment = K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=(min_crop_scale, 1.0)),
            K.RandomHorizontalFlip(p=0.5 if hflip else 0.0),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
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


def random_gain(waves: torch.Tensor, max_db: float) -> torch.Tensor:
    gain_db = (torch.rand(waves.shape[0], 1, device=waves.device) * 2 - 1) * max_db
    return waves * torch.pow(10.0, gain_db / 20.0)


def random_noise(waves: torch.Tensor, snr_db_range: tuple[float, float], p: float) -> torch.Tensor:
    """Mix white noise at a per-sample random SNR into a random subset of clips."""
    b = waves.shape[0]
    snr_db = torch.empty(b, 1, device=waves.device).uniform_(*snr_db_range)
    signal_power = waves.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-10)
    noise = torch.randn_like(waves) * torch.sqrt(signal_power / torch.pow(10.0, snr_db / 10.0))
    apply = (torch.rand(b, 1, device=waves.device) < p).float()
    return waves + apply * noise


class AudioViews(nn.Module):
    """Audio SimCLR pipeline: time shift, gain, noise, log-mel, time/frequency masks."""

    def __init__(self, frontend: LogMelFrontEnd, n_mels: int, max_shift: float = 0.15,
                 max_gain_db: float = 6.0, noise_snr_db: tuple[float, float] = (5.0, 30.0),
                 noise_p: float = 0.5) -> None:
        super().__init__()
        self.frontend = frontend
        self.max_shift, self.max_gain_db = max_shift, max_gain_db
        self.noise_snr_db, self.noise_p = noise_snr_db, noise_p
        self.freq_mask = T.FrequencyMasking(freq_mask_param=max(1, n_mels // 5), iid_masks=True)
        self.time_masks = None

    def forward(self, batch_int16: torch.Tensor) -> torch.Tensor:
        waves = waves_to_tensor(batch_int16)
        waves = random_time_shift(waves, self.max_shift)
        waves = random_gain(waves, self.max_gain_db)
        waves = random_noise(waves, self.noise_snr_db, self.noise_p)
        spec = self.frontend(waves)
        if self.time_masks is None:
            self.time_masks = T.TimeMasking(time_mask_param=max(1, spec.shape[-1] // 5), iid_masks=True)
        spec = self.time_masks(self.freq_mask(spec))
        return to_encoder_channels(spec)


class AudioEval(nn.Module):
    def __init__(self, frontend: LogMelFrontEnd) -> None:
        super().__init__()
        self.frontend = frontend

    def forward(self, batch_int16: torch.Tensor) -> torch.Tensor:
        return to_encoder_channels(self.frontend(waves_to_tensor(batch_int16)))
