"""Crafted dataset layouts: readers refuse or skip and count, never block, allocate without bound or read outside."""

from __future__ import annotations

import csv
import os
import struct
import time

import numpy as np
import pytest

from data_partition.datasets import load_splits, skipped_files
from data_partition.readers import common
from data_partition.readers.common import LayoutError, load_wav, read_lines
from tests import make_fixture_root as fx


def _esc50_rows(folder):
    with open(folder / "meta" / "esc50.csv", newline="") as fh:
        return list(csv.reader(fh))


def _write_esc50_rows(folder, rows):
    with open(folder / "meta" / "esc50.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_esc50_skips_fifos_paths_outside_and_out_of_range_class_ids(tmp_path):
    folder = fx.write_esc50(tmp_path / "root", num_classes=2)
    (tmp_path / "secret.wav").write_bytes((folder / "audio" / _esc50_rows(folder)[1][0]).read_bytes())
    os.mkfifo(folder / "audio" / "1-fifo-A-0.wav")
    rows = _esc50_rows(folder)
    rows += [["1-fifo-A-0.wav", "1", "0", "sound_0", "True", "x.ogg", "A"],     # a FIFO: would block the open
             ["../../secret.wav", "2", "1", "sound_1", "True", "x.ogg", "A"],   # a file outside the dataset
             [rows[1][0], "3", "-1", "sound_x", "True", "x.ogg", "A"],          # a negative class id
             [rows[1][0], "3", "100000000", "sound_y", "True", "x.ogg", "A"]]   # 1e8 classes
    _write_esc50_rows(folder, rows)
    started = time.perf_counter()
    splits = load_splits("esc50", tmp_path / "root")
    assert time.perf_counter() - started < 60
    assert splits.train.classes == ("sound_0", "sound_1") and set(splits.train.y.tolist()) <= {0, 1}
    skipped = skipped_files("esc50", tmp_path / "root")["skipped"]
    assert skipped == {"unreadable": 1, "outside-dataset": 1, "bad-csv-row": 2}, skipped


def _wav_header(rate: int, frames: int = 400) -> bytes:
    data = np.zeros(frames, np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def test_a_sample_rate_header_cannot_make_the_resampler_allocate_gigabytes(tmp_path):
    odd = tmp_path / "odd.wav"
    odd.write_bytes(_wav_header(16_001))  # before: a 16001 -> 16000 kernel of about 2 GB
    started = time.perf_counter()
    wave = load_wav(odd, 16_000)
    assert wave.shape == (16_000,) and time.perf_counter() - started < 10
    huge = tmp_path / "huge.wav"
    huge.write_bytes(_wav_header(1_000_003))
    with pytest.raises(ValueError, match="sample rate 1000003 Hz outside"):
        load_wav(huge, 16_000)
    assert common._resampler.cache_info().currsize <= 8


def test_images_open_only_in_the_layouts_formats(tmp_path):
    eps = tmp_path / "fake.JPEG"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(Exception) as err:
        common.load_image(eps, 8)
    assert "ghostscript" not in str(err.value).lower()


def test_list_files_must_be_regular_utf8_files_of_bounded_size(tmp_path):
    bad = tmp_path / "wnids.txt"
    bad.write_bytes(b"n01\xff\xfe\n")
    with pytest.raises(LayoutError, match="not UTF-8") as err:
        read_lines(bad)
    assert "\n" not in str(err.value)
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(LayoutError, match="not a regular file"):
        read_lines(tmp_path / "fifo.txt")


def test_vggsound_rows_with_an_infinite_start_or_a_huge_field_are_refused_in_one_line(tmp_path):
    folder = fx.write_vggsound(tmp_path, per_label_train=2, per_label_test=1, seconds=1.0)
    with open(folder / "vggsound.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["abc", "inf", fx.VGGSOUND_LABELS[0], "train"])
    splits = load_splits("vggsound-audio", tmp_path)
    assert len(splits.train) > 0
    assert skipped_files("vggsound-audio", tmp_path)["skipped"].get("bad-csv-row") == 1
    with open(folder / "vggsound.csv", "a", newline="") as fh:
        fh.write("x" * 140_000 + ",0,dog barking,train\n")  # beyond csv's field limit
    from data_partition.readers.vggsound import read_csv
    with pytest.raises(LayoutError, match="vggsound.csv") as err:
        read_csv(folder / "vggsound.csv", common.Skips())
    assert "\n" not in str(err.value)


def test_tiny_imagenet_and_speech_commands_keep_list_paths_inside_the_dataset(tmp_path):
    fx.write_tiny_imagenet(tmp_path, num_classes=2, per_class=2, val=2)
    folder = tmp_path / "tiny-imagenet-200"
    wnid = read_lines(folder / "wnids.txt")[0]
    with open(folder / "val" / "val_annotations.txt", "a") as fh:
        fh.write(f"../../../../etc/hostname\t{wnid}\t0\t0\t1\t1\n")
    load_splits("tiny-imagenet", tmp_path)
    assert skipped_files("tiny-imagenet", tmp_path)["skipped"].get("outside-dataset") == 1
