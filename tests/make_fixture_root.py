"""Write a small data root holding synthetic datasets in the real datasets' standard layouts.

The readers in ``data_partition/readers/`` cannot be tried on the real datasets
offline, so this writes tiny stand-ins with the same file formats and folder
layouts (CIFAR pickles, Tiny ImageNet JPEGs, Speech Commands / ESC-50 /
VGGSound WAVs and their lists), optionally with the damage real collections
have (an unreadable WAV, a truncated JPEG, a VGGSound clip never extracted).
Images carry a class-dependent colour and audio a class-dependent tone, so the
labels are learnable. The tests use these functions; the command builds a root
for an end-to-end run:

    python -m tests.make_fixture_root /tmp/fixture-root --datasets cifar10,speech-commands --damaged
    python -m experiments.launch --run-config "image-dataset='cifar10' audio-dataset='speech-commands' \\
        data-root='/tmp/fixture-root'"
"""

from __future__ import annotations

import argparse
import csv
import pickle
import sys
from pathlib import Path

import numpy as np

ALL = ("cifar10", "cifar100", "tiny-imagenet", "speech-commands", "esc50", "vggsound")


def _images(rng: np.random.Generator, labels: np.ndarray, side: int, num_classes: int) -> np.ndarray:
    """uint8 (N, side, side, 3): noise around a colour that depends on the label."""
    hues = np.linspace(0, 1, num_classes, endpoint=False)
    base = np.stack([np.sin(2 * np.pi * (hues + k / 3)) * 0.4 + 0.5 for k in range(3)], axis=1) * 255
    noise = rng.normal(0, 40, (len(labels), side, side, 3))
    return np.clip(base[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _tone(rng: np.random.Generator, label: int, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """float32 (T,) or (T, channels): a noisy tone whose pitch depends on the label."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 90 * label) * t) + 0.05 * rng.standard_normal(t.size)
    wave = wave.astype(np.float32)
    return wave if channels == 1 else np.repeat(wave[:, None], channels, axis=1)


def _write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, rate, subtype="PCM_16")


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=90)


def corrupt_wav(path: Path) -> None:
    """A file named .wav that no decoder accepts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(64)))


def truncate_file(path: Path, keep: float = 0.4) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


# --- CIFAR --------------------------------------------------------------------------------------------
def _cifar_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(root: Path, per_batch: int = 10, test: int = 10, seed: int = 0) -> Path:
    """``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` with ``per_batch`` rows each."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        labels = rng.integers(0, 10, n)
        batch = {"batch_label": name, "labels": labels.tolist(), "data": _cifar_rows(_images(rng, labels, 32, 10)),
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))
    return folder


def write_cifar100(root: Path, train: int = 40, test: int = 20, seed: int = 0) -> Path:
    """``cifar-100-python/{train,test,meta}`` with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        fine = rng.integers(0, 100, n)
        batch = {"fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                 "data": _cifar_rows(_images(rng, fine, 32, 100)), "filenames": [f"{name}_{i}" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


# --- Tiny ImageNet ------------------------------------------------------------------------------------
def write_tiny_imagenet(root: Path, num_classes: int = 3, per_class: int = 4, val: int = 6, side: int = 64,
                        truncated: int = 0, seed: int = 0) -> Path:
    """``tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images,val/images,val/val_annotations.txt}``.

    ``truncated`` training JPEGs (the first of each of the first classes) are cut short.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{1440764 + 17 * i:08d}" for i in range(num_classes)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(wnids)))
    for c, wnid in enumerate(wnids):
        images = _images(rng, np.full(per_class, c), side, num_classes)
        for i, img in enumerate(images):
            _write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", img)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    for c in range(min(truncated, num_classes)):
        truncate_file(folder / "train" / wnids[c] / "images" / f"{wnids[c]}_0.JPEG")
    labels = np.arange(val) % num_classes
    lines = []
    for i, (label, img) in enumerate(zip(labels, _images(rng, labels, side, num_classes))):
        _write_jpeg(folder / "val" / "images" / f"val_{i}.JPEG", img)
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t{side - 1}\t{side - 1}")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


# --- Speech Commands ----------------------------------------------------------------------------------
def write_speech_commands(root: Path, words: tuple[str, ...] = ("down", "go", "yes"), per_word: int = 6,
                          corrupt: int = 0, seed: int = 0) -> Path:
    """``speech_commands_v0.02/<word>/*.wav`` + validation/testing lists + ``_background_noise_``.

    Per word: clip 0 is in testing_list.txt, clip 1 in validation_list.txt, the
    rest train. Clips are 0.5-0.9 s at 16 kHz. ``corrupt`` training WAVs (one per
    word, from the first word) are made unreadable.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "speech_commands_v0.02"
    testing, validation = [], []
    for label, word in enumerate(words):
        for i in range(per_word):
            rel = f"{word}/spk{i:03d}_nohash_0.wav"
            _write_wav(folder / rel, _tone(rng, label, rng.uniform(0.5, 0.9), 16_000), 16_000)
            if i == 0:
                testing.append(rel)
            elif i == 1:
                validation.append(rel)
    for word in words[:corrupt]:
        corrupt_wav(folder / word / f"spk{per_word - 1:03d}_nohash_0.wav")
    _write_wav(folder / "_background_noise_" / "white_noise.wav", 0.1 * rng.standard_normal(32_000), 16_000)
    (folder / "testing_list.txt").write_text("\n".join(testing) + "\n")
    (folder / "validation_list.txt").write_text("\n".join(validation) + "\n")
    (folder / "LICENSE").write_text("CC-BY-4.0\n")
    return folder


# --- ESC-50 -------------------------------------------------------------------------------------------
def write_esc50(root: Path, num_classes: int = 3, seconds: float = 1.0, rate: int = 44_100, corrupt: int = 0,
                folder_name: str = "ESC-50-master", seed: int = 0) -> Path:
    """``ESC-50-master/{audio/*.wav,meta/esc50.csv}``: one clip per class and fold (folds 1-5), stereo 44.1 kHz.

    ``corrupt`` fold-1 clips are made unreadable.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / folder_name
    rows = []
    for fold in range(1, 6):
        for target in range(num_classes):
            name = f"{fold}-{100000 + 10 * target + fold}-A-{target}.wav"
            _write_wav(folder / "audio" / name, _tone(rng, target, seconds, rate, channels=2), rate)
            rows.append([name, fold, target, f"sound_{target}", str(target < 2), f"{100000 + target}.ogg", "A"])
    for target in range(min(corrupt, num_classes)):
        corrupt_wav(folder / "audio" / f"1-{100000 + 10 * target + 1}-A-{target}.wav")
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    with open(folder / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return folder


# --- VGGSound -----------------------------------------------------------------------------------------
VGGSOUND_LABELS = ("dog barking", "people whistling, humming", "playing acoustic guitar")


def write_vggsound(root: Path, per_label_train: int = 3, per_label_test: int = 1, rate: int = 48_000,
                   seconds: float = 1.5, missing: int = 0, frames_per_clip: int = 3, side: int = 48,
                   seed: int = 0) -> Path:
    """``vggsound/{vggsound.csv,audio/<ytid>_<start:06d>.wav,frames/<ytid>_<start:06d>/*.jpg}``.

    The csv has no header and a label with a comma. The last ``missing`` clips of
    the csv are listed but have neither audio nor frames.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "vggsound"
    rows = []
    for label_id, label in enumerate(VGGSOUND_LABELS):
        for i in range(per_label_train + per_label_test):
            ytid = f"yt{label_id}x{i:02d}-_A"
            rows.append((ytid, 10 * i, label, "train" if i < per_label_train else "test", label_id))
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    for n, (ytid, start, _, _, label_id) in enumerate(rows):
        if n >= len(rows) - missing:
            break
        stem = f"{ytid}_{start:06d}"
        _write_wav(folder / "audio" / f"{stem}.wav", _tone(rng, label_id, seconds, rate), rate)
        for f, img in enumerate(_images(rng, np.full(frames_per_clip, label_id), side, len(VGGSOUND_LABELS))):
            _write_jpeg(folder / "frames" / stem / f"{f:04d}.jpg", img[:, : side * 3 // 4])  # not square
    with open(folder / "vggsound.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([(ytid, start, label, split) for ytid, start, label, split, _ in rows])
    return folder


WRITERS = {  # name -> writer(root, scale, damaged)
    "cifar10": lambda root, scale, damaged: write_cifar10(root, per_batch=12 * scale, test=20 * scale),
    "cifar100": lambda root, scale, damaged: write_cifar100(root, train=60 * scale, test=20 * scale),
    "tiny-imagenet": lambda root, scale, damaged: write_tiny_imagenet(
        root, num_classes=5, per_class=4 * scale, val=10 * scale, truncated=int(damaged)),
    "speech-commands": lambda root, scale, damaged: write_speech_commands(
        root, words=("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes"), per_word=3 + 4 * scale,
        corrupt=int(damaged)),
    "esc50": lambda root, scale, damaged: write_esc50(root, num_classes=5, corrupt=int(damaged)),
    "vggsound": lambda root, scale, damaged: write_vggsound(root, per_label_train=2 * scale, per_label_test=scale,
                                                            missing=int(damaged)),
}


def main(argv: list[str] | None = None) -> int:
    from app_config.log_setup import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="data root to write (created if absent)")
    parser.add_argument("--datasets", default="cifar10,speech-commands", help=f"comma-separated, from {','.join(ALL)}")
    parser.add_argument("--scale", type=int, default=5, help="multiplies the number of samples per dataset")
    parser.add_argument("--damaged", action="store_true",
                        help="add one unreadable WAV / truncated JPEG / missing VGGSound clip where the dataset "
                             "has them")
    args = parser.parse_args(argv)
    wanted = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(wanted) - set(WRITERS))
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; valid: {', '.join(ALL)}")
    for name in wanted:
        print(f"{name}: {WRITERS[name](args.root, args.scale, args.damaged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
