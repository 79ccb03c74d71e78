"""SimCLR needs a fresh random draw per sample, not one per batch."""

import torch

from client_app.augment import AudioViews, ImageViews, random_time_shift
from models.audio_frontend import LogMelFrontEnd


def test_image_views_differ_per_sample_for_identical_inputs():
    torch.manual_seed(0)
    one = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
    batch = one.repeat(8, 1, 1, 1)  # eight copies of the same image
    out = ImageViews(16)(batch)
    assert out.shape == (8, 3, 16, 16)
    distinct = {tuple(v.flatten().round(decimals=4).tolist()) for v in out}
    assert len(distinct) == 8  # a batch-wide draw would give one distinct view


def test_two_calls_give_two_different_views_of_the_same_batch():
    torch.manual_seed(1)
    batch = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    views = ImageViews(16)
    assert not torch.allclose(views(batch), views(batch))


def test_audio_views_differ_per_sample_for_identical_inputs():
    torch.manual_seed(0)
    t = torch.arange(16000) / 16000
    tone = (torch.sin(2 * torch.pi * 440 * t) * 8000).to(torch.int16)
    batch = tone.repeat(8, 1)
    out = AudioViews(LogMelFrontEnd(32, 32, 64), 32)(batch)
    assert out.shape[:2] == (8, 3) and out.shape[2] == 32
    distinct = {tuple(v[0].flatten().round(decimals=3).tolist()) for v in out}
    assert len(distinct) == 8


def test_time_shift_moves_each_clip_by_its_own_offset_without_wrapping():
    torch.manual_seed(3)
    waves = torch.zeros(16, 100)
    waves[:, 50] = 1.0  # a click in the middle
    shifted = random_time_shift(waves, 0.3)
    positions = shifted.argmax(dim=1)
    assert len(set(positions.tolist())) > 4  # per-sample offsets
    assert ((positions - 50).abs() <= 30).all()
    assert torch.allclose(shifted.sum(dim=1), torch.ones(16))  # nothing wrapped or lost
