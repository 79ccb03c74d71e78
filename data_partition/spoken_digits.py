"""Spoken digits "zero".."nine" synthesised offline with eSpeak NG.

Why: the default experiment needs real, labelled speech without any download.
eSpeak NG (GPL-3.0, via the optional ``espeakng-loader`` wheel) is only used to
*generate* the clips once; the rest of the project reads the cached arrays.
eSpeak NG keeps hidden state between utterances, so output is identical only
for the same sequence of calls in a fresh process: :func:`synthesise_isolated`
runs the whole sequence in a child process, which also keeps the GPL library
out of long-lived training workers.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # every clip is cut or padded to exactly 1 s

# Voice = language variant + eSpeak voice variant (timbre). The last two are the
# held-out speakers of the evaluation split.
TRAIN_VOICES = (
    "en+m1", "en+f1", "en-us+m3", "en-us+f2", "en-gb-scotland+m4", "en-029+f4",
    "en-gb-x-rp+m7", "en-us+klatt2", "en-gb-x-gbclan+f3", "en+m5",
)
HELDOUT_VOICES = ("en-us+m2", "en-gb-x-rp+f5")
RATES_WPM = (130, 170, 210)
PITCHES = (30, 50, 70)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Utterance:
    word_index: int
    voice: str
    rate: int
    pitch: int


class EspeakSynth:
    """Thin ctypes wrapper around libespeak-ng's synchronous API."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:  # optional, GPL-licensed extra
            raise RuntimeError(
                "generating the embedded spoken-digits set needs eSpeak NG: "
                "pip install 'fssuavl[audio-gen]' (or point audio-dataset at another dataset)"
            ) from err
        self._lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.native_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.native_rate <= 0:
            raise RuntimeError("eSpeak NG failed to initialise; reinstall espeakng-loader")
        self._chunks: list[np.ndarray] = []

        def _collect(wav, num_samples, _events):
            if num_samples > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
            return 0

        self._callback = _SYNTH_CALLBACK(_collect)  # keep a reference alive
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    def say(self, text: str, voice: str, rate: int, pitch: int, seed: int) -> np.ndarray:
        """Return int16 samples at ``native_rate``."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        self._lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
        self._lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
        self._lib.espeak_ng_SetRandSeed(seed)
        self._chunks = []
        encoded = text.encode() + b"\0"
        self._lib.espeak_Synth(encoded, len(encoded), 0, 0, 0, 0, None, None)
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def utterances(voices: tuple[str, ...], rates: tuple[int, ...] = RATES_WPM,
               pitches: tuple[int, ...] = PITCHES) -> list[Utterance]:
    return [
        Utterance(w, v, r, p)
        for v in voices for w in range(len(DIGIT_WORDS)) for r in rates for p in pitches
    ]


def _fit_to_clip(wave: np.ndarray) -> np.ndarray:
    """Trim silence edges, then centre-pad (or centre-cut) to one second."""
    wave = trim_silence(wave)
    out = np.zeros(CLIP_SAMPLES, np.float32)
    if wave.size >= CLIP_SAMPLES:
        start = (wave.size - CLIP_SAMPLES) // 2
        out[:] = wave[start: start + CLIP_SAMPLES]
    else:
        start = (CLIP_SAMPLES - wave.size) // 2
        out[start: start + wave.size] = wave
    return out


def synthesise(voices: tuple[str, ...], seed: int = 0, rates: tuple[int, ...] = RATES_WPM,
               pitches: tuple[int, ...] = PITCHES) -> tuple[np.ndarray, np.ndarray]:
    """Return (int16 waveforms (N, 16000) at 16 kHz, int64 labels (N,)), in :func:`utterances` order."""
    import torch
    import torchaudio.functional as AF

    with _LOCK:
        synth = EspeakSynth()
        raw = [
            synth.say(DIGIT_WORDS[u.word_index], u.voice, u.rate, u.pitch, seed + i)
            for i, u in enumerate(utterances(voices, rates, pitches))
        ]
    items = utterances(voices, rates, pitches)
    waves = np.zeros((len(items), CLIP_SAMPLES), np.int16)
    for i, samples in enumerate(raw):
        if samples.size == 0:
            raise RuntimeError(f"eSpeak NG produced no audio for {items[i]}")
        x = torch.from_numpy(samples.astype(np.float32) / 32768.0)
        x = AF.resample(x, synth.native_rate, SAMPLE_RATE).numpy()
        waves[i] = np.round(np.clip(_fit_to_clip(x), -1, 1) * 32767).astype(np.int16)
    labels = np.array([u.word_index for u in items], np.int64)
    return waves, labels


def trim_silence(wave: np.ndarray) -> np.ndarray:
    """The utterance without its silent edges (float waveform)."""
    loud = np.flatnonzero(np.abs(wave) > 0.01)
    return wave[loud[0]: loud[-1] + 1] if loud.size else wave


def synthesise_isolated(voices: tuple[str, ...], out_file: str, seed: int = 0, rates: tuple[int, ...] = RATES_WPM,
                        pitches: tuple[int, ...] = PITCHES) -> None:
    """Synthesise in a fresh interpreter and write ``x``/``y`` to ``out_file`` (.npz)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "data_partition.spoken_digits", out_file, str(seed),
           ",".join(map(str, rates)), ",".join(map(str, pitches)), *voices]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise RuntimeError(f"spoken-digits synthesis failed: {last}")


if __name__ == "__main__":
    import sys

    _out, _seed, _rates, _pitches, *_voices = sys.argv[1:]
    _x, _y = synthesise(tuple(_voices), int(_seed), tuple(map(int, _rates.split(","))),
                        tuple(map(int, _pitches.split(","))))
    with open(_out, "wb") as fh:
        np.savez(fh, x=_x, y=_y)
