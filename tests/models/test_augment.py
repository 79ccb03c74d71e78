"""SimCLR needs a fresh random draw per sample, not one per batch."""

import torch

from models.audio_frontend import LEVEL_MEAN, LEVEL_STD, LogMelFrontEnd
from models.augment import AudioViews, ImageViews, random_time_shift


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


def _spoken_like(n: int = 8) -> torch.Tensor:
    """A 0.4 s tone burst with a falling pitch inside 1 s of silence, as int16."""
    t = torch.arange(6400) / 16000
    burst = torch.sin(2 * torch.pi * (600 - 400 * t) * t) * torch.hann_window(6400)
    wave = torch.zeros(16000)
    wave[4800:11200] = burst
    return (wave * 12000).to(torch.int16).repeat(n, 1)


def test_front_end_does_not_depend_on_the_recording_level():
    waves = _spoken_like(2).float() / 32768
    frontend = LogMelFrontEnd(32, 32, 64)
    loud, quiet = frontend(waves), frontend(waves * 0.01)  # 40 dB quieter
    assert torch.allclose(loud, quiet, atol=1e-4)
    assert loud.min() == 0.0 and loud.amax(dim=(-2, -1)).eq(1.0).all()  # floor = silence, peak = 1


def test_mixing_keeps_each_clip_dominant():
    from models.audio_frontend import levels_to_power
    from models.augment import mix_other_clips

    torch.manual_seed(0)
    levels = torch.rand(6, 1, 8, 8)
    mixed = levels_to_power(mix_other_clips(levels, 0.4))
    own, other = levels_to_power(levels), levels_to_power(levels.roll(1, dims=0))
    assert ((mixed - own).abs() <= (mixed - other).abs() + 1e-6).all()  # at most 40 % of the power is the other's
    assert not torch.allclose(mixed, own)
    assert torch.allclose(mix_other_clips(levels, 0.0), levels, atol=1e-5)


def test_stretch_is_drawn_per_sample_and_pads_with_silence():
    torch.manual_seed(2)
    views = AudioViews(LogMelFrontEnd(32, 32, 64), 32, mix_ratio=0.0, stretch=0.25, noise_p=0.0)
    views.freq_mask = torch.nn.Identity()
    views.time_masks = torch.nn.Identity()
    out = views(_spoken_like(8))[:, 0]
    levels = out * LEVEL_STD + LEVEL_MEAN  # undo the fixed normalisation
    distinct = {tuple(v.flatten().round(decimals=3).tolist()) for v in levels}
    assert len(distinct) == 8
    assert levels.min() > -1e-4  # padding and masks are silence (level 0), never below it


def _hue_spread(hue: float) -> float:
    """Spread of the mean hue angle (as the red-green-blue order) over views of one saturated red image."""
    torch.manual_seed(5)
    red = torch.zeros(64, 8, 8, 3, dtype=torch.uint8)
    red[..., 0] = 220
    views = ImageViews(8, min_crop_scale=1.0, hflip=False, hue=hue, grayscale_p=0.0)
    out = views.augment(red.permute(0, 3, 1, 2).float() / 255)  # before normalisation: RGB in [0, 1]
    dominant = out.mean(dim=(2, 3)).argmax(dim=1)
    return float((dominant != 0).float().mean())


def test_image_hue_jitter_reaches_other_colours_only_when_asked():
    # +-0.1 of the hue circle keeps a red image red; 0.5 (any hue) turns about two thirds of views green or blue
    assert _hue_spread(0.1) == 0.0
    assert _hue_spread(0.5) > 0.3


def test_image_grayscale_probability_is_the_configured_one():
    torch.manual_seed(6)
    colour = torch.randint(0, 256, (400, 8, 8, 3), dtype=torch.uint8)
    out = ImageViews(8, min_crop_scale=1.0, hflip=False, grayscale_p=0.5).augment(
        colour.permute(0, 3, 1, 2).float() / 255)
    grey = (out.amax(dim=1) - out.amin(dim=1)).amax(dim=(1, 2)) < 1e-6
    assert 0.4 < float(grey.float().mean()) < 0.6


def test_audio_stretch_key_sets_the_views_stretch_range():
    from app_config.run_config import RunConfig
    from models.factory import training_views

    def views(stretch: float):
        return training_views(RunConfig.from_mapping({"audio-stretch": stretch}), torch.device("cpu"))["audio"]

    assert views(0.0).stretch is None
    torch.manual_seed(0)
    scales = views(0.5).stretch.forward_parameters(torch.Size([2000, 1, 32, 32]))["scale"]
    assert scales.min() >= 1 / 1.5 - 1e-6 and scales.max() <= 1.5 + 1e-6
    assert scales.min() < 1 / 1.4 and scales.max() > 1.4  # the range is used, not the default +-25 %
