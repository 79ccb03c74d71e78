"""Real-dataset readers on tiny fixtures written in each dataset's standard layout.

The fixtures come from tests/make_fixture_root.py: the same files and
folders as the real downloads, a few samples each, with damaged files where
the real collections have them.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_partition.datasets import DATASETS, layout_problem, load_splits, skipped_files
from data_partition.readers import cifar
from data_partition.readers.common import LayoutError
from tests import make_fixture_root as fx


def _dominant_hz(wave: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(wave.astype(np.float64)))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def _tone_hz(label: int) -> float:
    return 200 + 90 * label  # make_fixture_root._tone


# --- CIFAR -------------------------------------------------------------------------------------------
def test_cifar10_images_labels_and_classes(tmp_path):
    folder = fx.write_cifar10(tmp_path, per_batch=4, test=5)
    splits = load_splits("cifar10", tmp_path)
    batches = [pickle.loads((folder / f"data_batch_{i}").read_bytes()) for i in range(1, 6)]
    test = pickle.loads((folder / "test_batch").read_bytes())
    assert splits.train.x.shape == (20, 32, 32, 3) and splits.train.x.dtype == np.uint8
    assert splits.test.x.shape == (5, 32, 32, 3)
    assert splits.train.y.dtype == np.int64
    assert splits.train.y.tolist() == sum((b["labels"] for b in batches), [])
    assert splits.test.y.tolist() == test["labels"]
    rows = np.concatenate([b["data"] for b in batches])
    np.testing.assert_array_equal(splits.train.x[:, :, :, 0].reshape(20, -1), rows[:, :1024])  # red plane
    np.testing.assert_array_equal(splits.train.x[:, :, :, 2].reshape(20, -1), rows[:, 2048:])  # blue plane
    assert splits.train.classes[:3] == ("airplane", "automobile", "bird") and len(splits.train.classes) == 10
    assert skipped_files("cifar10", tmp_path)["skipped-total"] == 0


def test_cifar100_uses_fine_labels(tmp_path):
    folder = fx.write_cifar100(tmp_path, train=12, test=6)
    splits = load_splits("cifar100", tmp_path)
    written = pickle.loads((folder / "train").read_bytes())
    assert splits.train.x.shape == (12, 32, 32, 3) and splits.test.x.shape == (6, 32, 32, 3)
    assert splits.train.y.tolist() == written["fine_labels"]
    assert len(splits.train.classes) == 100 and splits.train.classes[7] == "fine7"


def test_cifar_damaged_batch_is_skipped_and_counted(tmp_path):
    folder = fx.write_cifar10(tmp_path, per_batch=3, test=4)
    fx.truncate_file(folder / "data_batch_2", keep=0.5)
    splits = load_splits("cifar10", tmp_path)
    assert len(splits.train) == 12  # four intact batches of three
    summary = skipped_files("cifar10", tmp_path)
    assert summary["skipped"] == {"unreadable": 1} and summary["kept"] == {"train": 12, "test": 4}
    assert "data_batch_2" in summary["skipped-examples"]["unreadable"][0]


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "evil").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        cifar.read_pickle(tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()


# --- Tiny ImageNet -----------------------------------------------------------------------------------
def test_tiny_imagenet_labels_shapes_and_truncated_jpeg(tmp_path):
    fx.write_tiny_imagenet(tmp_path, num_classes=3, per_class=3, val=6, truncated=1)
    splits = load_splits("tiny-imagenet", tmp_path)
    assert splits.train.x.shape == (8, 64, 64, 3) and splits.train.x.dtype == np.uint8  # 9 written, 1 truncated
    assert splits.train.y.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert splits.test.y.tolist() == [0, 1, 2, 0, 1, 2]  # from val_annotations.txt
    assert splits.train.classes == ("thing 0", "thing 1", "thing 2")  # words.txt, first synonym
    assert skipped_files("tiny-imagenet", tmp_path)["skipped"] == {"unreadable": 1}
    # the class colour survives JPEG: each class's mean colour is nearest to its own class mean
    means = np.stack([splits.train.x[splits.train.y == c].mean(axis=(0, 1, 2)) for c in range(3)])
    for img, label in zip(splits.test.x, splits.test.y):
        assert np.linalg.norm(means - img.mean(axis=(0, 1)), axis=1).argmin() == label


# --- Speech Commands ---------------------------------------------------------------------------------
def test_speech_commands_splits_labels_and_bad_wav(tmp_path):
    fx.write_speech_commands(tmp_path, words=("down", "go", "yes"), per_word=5, corrupt=1)
    splits = load_splits("speech-commands", tmp_path)
    # per word: clip 0 -> testing list, clip 1 -> validation list (left out), clips 2-4 train; one "down" clip is bad
    assert splits.train.classes == ("down", "go", "yes")  # _background_noise_ is not a class
    assert splits.train.y.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert splits.test.y.tolist() == [0, 1, 2]
    assert splits.train.x.shape == (8, 16_000) and splits.train.x.dtype == np.int16
    assert skipped_files("speech-commands", tmp_path)["skipped"] == {"unreadable": 1}
    for wave, label in zip(splits.test.x, splits.test.y):
        assert abs(_dominant_hz(wave[:9_000]) - _tone_hz(label)) < 5
    assert (splits.train.x[:, -1_600:] == 0).all()  # clips of 0.5-0.9 s are zero-padded at the end
    assert np.abs(splits.train.x[:, :9_000]).max() > 5_000


# --- ESC-50 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("folder_name", ["ESC-50-master", "esc50"])
def test_esc50_folds_resampling_and_bad_wav(tmp_path, folder_name):
    fx.write_esc50(tmp_path, num_classes=3, seconds=1.0, rate=44_100, corrupt=1, folder_name=folder_name)
    splits = load_splits("esc50", tmp_path)
    assert splits.train.x.shape == (11, 80_000) and splits.train.x.dtype == np.int16  # 12 in folds 1-4, 1 bad
    assert splits.test.y.tolist() == [0, 1, 2]  # fold 5
    assert splits.train.classes == ("sound_0", "sound_1", "sound_2")
    assert skipped_files("esc50", tmp_path)["skipped"] == {"unreadable": 1}
    for wave, label in zip(splits.test.x, splits.test.y):  # 44.1 kHz stereo -> 16 kHz mono keeps the pitch
        assert abs(_dominant_hz(wave[:16_000]) - _tone_hz(label)) < 3
        assert np.all(wave[16_100:] == 0)  # 1 s clip padded to 5 s


# --- VGGSound ----------------------------------------------------------------------------------------
def test_vggsound_audio_and_frames_with_a_missing_clip(tmp_path):
    fx.write_vggsound(tmp_path, per_label_train=2, per_label_test=1, missing=1, seconds=1.5, rate=48_000)
    audio = load_splits("vggsound-audio", tmp_path)
    frames = load_splits("vggsound-frames", tmp_path)
    classes = tuple(sorted(fx.VGGSOUND_LABELS))
    assert audio.train.classes == classes and frames.train.classes == classes  # label with a comma kept whole
    assert audio.train.x.shape == (6, 160_000) and audio.train.x.dtype == np.int16
    assert frames.train.x.shape == (6, 64, 64, 3) and frames.train.x.dtype == np.uint8
    assert audio.train.y.tolist() == frames.train.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert audio.test.y.tolist() == frames.test.y.tolist() == [0, 1]  # the last test clip was never extracted
    for name in ("vggsound-audio", "vggsound-frames"):
        assert skipped_files(name, tmp_path)["skipped"] == {"missing": 1}
    for wave, label in zip(audio.test.x, audio.test.y):
        true_label = fx.VGGSOUND_LABELS.index(classes[label])
        assert abs(_dominant_hz(wave[:16_000]) - _tone_hz(true_label)) < 3


# --- errors, cache -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
    ("cifar100", "cifar-100-python/{train,test,meta}"),
    ("tiny-imagenet", "tiny-imagenet-200/{wnids.txt"),
    ("speech-commands", "speech_commands_v0.02/{<word>/*.wav,validation_list.txt,testing_list.txt}"),
    ("esc50", "ESC-50-master/{audio/*.wav,meta/esc50.csv}"),
    ("vggsound-audio", "vggsound/{vggsound.csv,audio/"),
    ("vggsound-frames", "vggsound/{vggsound.csv,frames/"),
])
def test_missing_source_is_one_line_naming_the_layout(tmp_path, name, expected):
    problem = layout_problem(name, tmp_path)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"data-root {tmp_path} has no ") and expected in problem
    with pytest.raises(LayoutError, match="has no"):
        load_splits(name, tmp_path)
    assert "does not exist" in layout_problem(name, tmp_path / "nope")


def test_incomplete_or_nested_layout_is_explained(tmp_path):
    folder = fx.write_cifar10(tmp_path, per_batch=2, test=2)
    (folder / "data_batch_4").unlink()
    assert "(missing data_batch_4)" in layout_problem("cifar10", tmp_path)
    fx.write_speech_commands(tmp_path / "sc", per_word=3)
    problem = layout_problem("speech-commands", tmp_path / "sc" / "speech_commands_v0.02")
    assert f"set it to {tmp_path / 'sc'}" in problem


def test_run_config_reports_layout_before_the_run(tmp_path):
    from app_config.run_config import ConfigError
    from server_app.preflight import checked_run_config

    with pytest.raises(ConfigError) as err:
        checked_run_config({"image-dataset": "cifar10", "data-root": str(tmp_path)})
    assert str(err.value).startswith("image-dataset='cifar10': data-root ") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^audio-dataset='esc50': "):
        checked_run_config({"audio-dataset": "esc50", "data-root": str(tmp_path)})
    fx.write_cifar10(tmp_path, per_batch=2, test=2)
    fx.write_esc50(tmp_path, num_classes=2)
    checked_run_config({"image-dataset": "cifar10", "audio-dataset": "esc50", "data-root": str(tmp_path)})


def test_cache_is_built_once_and_outlives_the_source(tmp_path):
    folder = fx.write_speech_commands(tmp_path, per_word=3)
    first = load_splits("speech-commands", tmp_path)
    shutil.rmtree(folder)
    assert layout_problem("speech-commands", tmp_path) is None  # the cache is enough
    again = load_splits("speech-commands", tmp_path)
    assert isinstance(again.train.x, np.memmap)
    np.testing.assert_array_equal(np.asarray(first.train.x), np.asarray(again.train.x))
    cache = tmp_path / "cache" / "speech-commands"
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "test_x.npy", "test_y.npy", "train_x.npy",
                                                        "train_y.npy"]
    assert json.loads((cache / "meta.json").read_text())["summary"]["kept"] == {"train": 3, "test": 3}


def test_nothing_readable_is_a_clear_error(tmp_path):
    folder = fx.write_speech_commands(tmp_path, words=("go",), per_word=3)
    fx.corrupt_wav(folder / "go" / "spk002_nohash_0.wav")  # the only training clip
    with pytest.raises(LayoutError, match="speech-commands: no readable train samples \\(1 unreadable\\)"):
        load_splits("speech-commands", tmp_path)
    assert not (tmp_path / "cache" / "speech-commands").exists()


def test_every_real_dataset_is_registered_with_a_layout_check():
    real = {"cifar10", "cifar100", "tiny-imagenet", "speech-commands", "esc50", "vggsound-audio", "vggsound-frames"}
    assert real <= set(DATASETS)
    for name in real:
        assert DATASETS[name].needs_source and DATASETS[name].check_layout is not None
    assert {DATASETS[n].modality for n in ("speech-commands", "esc50", "vggsound-audio")} == {"audio"}


def test_fixture_root_command_writes_loadable_datasets(tmp_path):
    assert fx.main([str(tmp_path), "--datasets", ",".join(fx.ALL), "--scale", "1", "--damaged"]) == 0
    for name in DATASETS:
        if DATASETS[name].needs_source:
            assert layout_problem(name, tmp_path) is None, name
    splits = load_splits("speech-commands", tmp_path)
    assert (len(splits.train), len(splits.test)) == (49, 10)  # 10 words x 5 train clips, one unreadable
    assert skipped_files("speech-commands", tmp_path)["skipped"] == {"unreadable": 1}


# --- CIFAR pickles are parsed, never executed ------------------------------------------------------------
def _py2_batch(rows: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle (protocol 2) wrote CIFAR: STRING opcodes, numpy.core globals."""
    import struct

    raw = rows.astype(np.uint8).tobytes()
    shape = b"K" + bytes([rows.shape[0]]) + b"M" + struct.pack("<H", rows.shape[1]) + b"\x86"
    data = (b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87Rq\x05"
            b"(K\x01" + shape + b"cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07"
            b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" + struct.pack("<I", len(raw)) + raw
            + b"tb")
    items = b"".join(b"K" + bytes([y]) for y in labels)
    return (b"\x80\x02}q\x01(U\x04dataq\x02" + data + b"U\x06labelsq\x08]q\t(" + items + b"e"
            b"U\x0bbatch_labelq\nU\x0etraining batchq\x0bu.")


def test_python2_batch_layout_parses_like_pickle_does(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (3, 3072))
    blob = _py2_batch(rows, [4, 0, 9])
    (tmp_path / "b").write_bytes(blob)
    ours = cifar.read_pickle(tmp_path / "b")
    theirs = pickle.loads(blob, encoding="latin1")
    assert sorted(ours) == sorted(theirs) == ["batch_label", "data", "labels"]
    np.testing.assert_array_equal(ours["data"], theirs["data"])
    assert ours["data"].dtype == np.uint8 and ours["labels"] == [4, 0, 9] and ours["batch_label"] == "training batch"


def test_protocol_5_arrays_parse(tmp_path):
    batch = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2], "names": ["a", b"b"]}
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=5))
    back = cifar.read_pickle(tmp_path / "b")
    np.testing.assert_array_equal(back["data"], batch["data"])
    assert back["labels"] == [1, 2] and back["names"] == ["a", b"b"]


class _Reduce:
    """Pickles as ``reduced`` (func, args[, state]): a file of any content, written by pickle itself."""

    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def _reconstruct():
    return np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever this numpy keeps it


# numpy.dtype('O8') rebuilt with flags 0 no longer says it holds objects, so the array takes raw bytes
# as its object pointers (0x4141...): reading it segfaults.
_FORGED_DTYPE = _Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))
HOSTILE = {
    "forged-pointer": lambda: {"data": _Reduce(_reconstruct(), (np.ndarray, (0,), b"b"),
                                               (1, (4,), _FORGED_DTYPE, False, b"A" * 32)), "labels": [0]},
    # ~100 bytes asking numpy for 12 GB
    "huge-array": lambda: {"data": _Reduce(_reconstruct(), (np.ndarray, (12 * 2**30,), b"b")), "labels": [0]},
    "eval": lambda: {"data": _Reduce(eval, ("__import__('pathlib').Path('pwned').touch()",))},
    "os-system": lambda: {"data": _Reduce(__import__("os").system, ("touch pwned",))},
    "size-lie": lambda: {"data": _Reduce(_reconstruct(), (np.ndarray, (0,), b"b"),
                                         (1, (10**6, 3072), np.dtype(np.uint8), False, b"\0" * 30))},
}
READ = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
from data_partition.readers import cifar
try:
    batch = cifar.read_pickle(sys.argv[1])
    print("READ", repr(batch["data"])[:200])
except Exception as err:
    print("REFUSED", type(err).__name__, err)
"""


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_crafted_cifar_files_are_refused_without_side_effects(tmp_path, name):
    """Each file is read in a child process (a segfault or an allocation must not take pytest down)."""
    import subprocess
    import sys

    from tests.conftest import PROJECT

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(HOSTILE[name](), protocol=2))
    if name == "huge-array":
        assert path.stat().st_size < 200
    done = subprocess.run([sys.executable, "-c", READ, str(path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**__import__("os").environ, "PYTHONPATH": str(PROJECT)})
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.startswith("REFUSED PickleRefused"), done.stdout
    assert "\n" not in done.stdout.strip()
    assert not (tmp_path / "pwned").exists()


def test_crafted_batch_is_skipped_and_counted_beside_real_ones(tmp_path):
    folder = fx.write_cifar10(tmp_path, per_batch=3, test=4)
    (folder / "data_batch_3").write_bytes(pickle.dumps(HOSTILE["forged-pointer"](), protocol=2))
    splits = load_splits("cifar10", tmp_path)
    assert len(splits.train) == 12
    summary = skipped_files("cifar10", tmp_path)
    assert summary["skipped"] == {"unreadable": 1} and "PickleRefused" in summary["skipped-examples"]["unreadable"][0]


def test_shared_references_cannot_blow_a_small_file_up_into_billions_of_items(tmp_path):
    """One 3,000-item list referenced by 3,000 keys through the memo: a file of about 40 kB describing 9M items."""
    inner = list(range(3000))
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({f"k{i}": inner for i in range(3000)}, protocol=2))
    assert path.stat().st_size < 60_000
    with pytest.raises(cifar.PickleRefused, match="through shared references"):
        cifar.read_pickle(path)
    # 2 MB of pickle describing 1e10 items: refused after work of the order of the file's size
    big = list(range(100_000))
    path.write_bytes(pickle.dumps({f"k{i}": big for i in range(100_000)}, protocol=2))
    with pytest.raises(cifar.PickleRefused, match="through shared references"):
        cifar.read_pickle(path)
    assert cifar.reference_budget(path.stat().st_size) == 1000 + path.stat().st_size < cifar.MAX_REFERENCED
    # a value the memo shares a few times is still read, and converted once
    path.write_bytes(pickle.dumps({"labels": inner, "fine_labels": inner}, protocol=2))
    back = cifar.read_pickle(path)
    assert back["labels"] == inner and back["labels"] is back["fine_labels"]


def test_a_file_of_more_opcodes_than_any_cifar_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_OPCODES", 100)
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02N" + b"q\x00" * 200 + b".")  # NONE, then BINPUT 0 over and over
    with pytest.raises(cifar.PickleRefused, match="more than 100 opcodes"):
        cifar.read_pickle(path)


def test_a_float_data_batch_is_skipped_and_counted_not_read_as_black_images(tmp_path):
    folder = fx.write_cifar10(tmp_path, per_batch=3, test=4)
    rows = np.random.default_rng(0).random((3, 3072))  # floats in [0, 1): uint8 of them is all zeros
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": rows, "labels": [0, 1, 2]}, protocol=2))
    splits = load_splits("cifar10", tmp_path)
    assert len(splits.train) == 12
    summary = skipped_files("cifar10", tmp_path)
    assert summary["skipped"] == {"unreadable": 1} and "uint8" in summary["skipped-examples"]["unreadable"][0]


@pytest.mark.parametrize("meta", [{"num_vis": 3072}, {"label_names": "airplane"}, {"label_names": [1, 2, 3]}])
def test_a_meta_file_without_class_names_is_a_one_line_error(tmp_path, meta):
    folder = fx.write_cifar10(tmp_path, per_batch=3, test=4)
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(LayoutError, match="no 'label_names' list of class names") as err:
        load_splits("cifar10", tmp_path)
    assert "\n" not in str(err.value)
