"""A run's folder: resolved config, per-round metrics (JSON lines), final model."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from server_app.atomic_file import atomic_write


class RunOutput:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.metrics_file = folder / "metrics.jsonl"

    @classmethod
    def create(cls, run_dir: str, config, run_id: int) -> "RunOutput":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = Path(run_dir).expanduser().resolve() / f"{stamp}-{config.strategy}-{run_id}"
        folder.mkdir(parents=True, exist_ok=False)
        out = cls(folder)
        out.write_json("config.json", {k.replace("_", "-"): v for k, v in asdict(config).items()})
        return out

    def write_json(self, name: str, payload: dict) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True).encode()
        atomic_write(self.folder / name, lambda fh: fh.write(data))

    def append_round(self, record: dict) -> None:
        with open(self.metrics_file, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def save_model(self, state_dict: dict, name: str = "final_model.pt") -> Path:
        return atomic_write(self.folder / name, lambda fh: torch.save(state_dict, fh))


def format_round(record: dict) -> str:
    """One readable line per round."""
    parts = [f"round {record['round']:>3}"]
    train = record.get("train", {})
    if train:
        parts.append(
            f"loss img {train.get('loss-image', float('nan')):.3f} aud {train.get('loss-audio', float('nan')):.3f}"
            f" | {int(train.get('clients', 0))} clients"
        )
        if "learning-rate" in train:
            parts.append(f"lr {train['learning-rate']:.3g}")
    if "round-seconds" in record:
        parts.append(f"{record['round-seconds']:.1f}s")
    ev = record.get("eval", {})
    for metric in ("knn", "probe"):
        cells = [f"{m} {ev[f'{metric}-{m}']:.3f}" for m in ("image", "audio") if f"{metric}-{m}" in ev]
        if cells:
            parts.append(f"{metric} " + " ".join(cells))
    return " | ".join(parts)
