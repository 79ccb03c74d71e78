"""Federation plan: which modality each client holds and which samples it gets.

Clients are visual-only, audio-only or audio-visual in configured fractions.
Each modality's training split is divided among the clients holding that
modality with flwr-datasets' partitioners (IID or Dirichlet label skew), then
each client keeps ``*-data-share`` of its part. The plan is a pure function of
its settings and seed; it is memoised per process and stored on disk, so it is
computed once and reused every round.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

VISUAL, AUDIO_ONLY, AUDIOVISUAL = "visual", "audio", "audiovisual"
KINDS = (VISUAL, AUDIO_ONLY, AUDIOVISUAL)


class PartitionError(ValueError):
    """The requested split cannot be made from the data."""


@dataclass(frozen=True)
class PlanSettings:
    num_partitions: int
    frac_visual: float
    frac_audio: float
    frac_audiovisual: float
    partitioner: str  # "iid" | "dirichlet"
    alpha: float
    min_partition_size: int
    visual_share: float
    audio_share: float
    seed: int


@dataclass(frozen=True)
class ClientPart:
    kind: str
    image_indices: np.ndarray
    audio_indices: np.ndarray


def kind_counts(num: int, fractions: tuple[float, float, float]) -> list[int]:
    """Largest-remainder rounding of ``num * fractions``; sums to ``num``."""
    raw = np.asarray(fractions) * num
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: num - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def assign_kinds(settings: PlanSettings) -> list[str]:
    counts = kind_counts(settings.num_partitions, (settings.frac_visual, settings.frac_audio, settings.frac_audiovisual))
    kinds = np.array([k for k, c in zip(KINDS, counts) for _ in range(c)])
    return np.random.default_rng(settings.seed).permutation(kinds).tolist()


def split_labels(labels: np.ndarray, num_parts: int, settings: PlanSettings, what: str) -> list[np.ndarray]:
    """Divide sample indices among ``num_parts`` clients by label (flwr-datasets)."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if num_parts == 0:
        return []
    if num_parts * max(settings.min_partition_size, 1) > len(labels):
        raise PartitionError(
            f"{what}: {len(labels)} samples cannot give {num_parts} clients min-partition-size="
            f"{settings.min_partition_size} each; use fewer clients or a smaller min-partition-size"
        )
    table = Dataset.from_dict({"label": labels.tolist(), "index": np.arange(len(labels)).tolist()})
    if settings.partitioner == "iid":
        partitioner = IidPartitioner(num_partitions=num_parts)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=num_parts, partition_by="label", alpha=settings.alpha,
            min_partition_size=settings.min_partition_size, self_balancing=True, shuffle=True, seed=settings.seed,
        )
    partitioner.dataset = table
    try:
        parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(num_parts)]
    except ValueError as err:
        raise PartitionError(
            f"{what}: no Dirichlet split with dirichlet-alpha={settings.alpha} gives every one of {num_parts} "
            f"clients min-partition-size={settings.min_partition_size}; raise dirichlet-alpha, lower "
            "min-partition-size or use fewer clients"
        ) from err
    return parts


def _keep_share(parts: list[np.ndarray], share: float) -> list[np.ndarray]:
    return [p[: int(round(share * len(p)))] for p in parts]


def build_plan(settings: PlanSettings, image_labels: np.ndarray | None, audio_labels: np.ndarray | None) -> list[ClientPart]:
    kinds = assign_kinds(settings)
    holders = {
        "image": [i for i, k in enumerate(kinds) if k in (VISUAL, AUDIOVISUAL)],
        "audio": [i for i, k in enumerate(kinds) if k in (AUDIO_ONLY, AUDIOVISUAL)],
    }
    per_client = {m: [np.zeros(0, np.int64)] * settings.num_partitions for m in holders}
    for modality, labels, share in (("image", image_labels, settings.visual_share),
                                    ("audio", audio_labels, settings.audio_share)):
        if not holders[modality]:
            continue
        if labels is None:
            raise PartitionError(f"{len(holders[modality])} clients hold {modality} data but no {modality} dataset is set")
        parts = _keep_share(split_labels(labels, len(holders[modality]), settings, f"{modality} split"), share)
        for client, part in zip(holders[modality], parts):
            per_client[modality][client] = part
    return [ClientPart(k, per_client["image"][i], per_client["audio"][i]) for i, k in enumerate(kinds)]


_PLANS: dict[str, list[ClientPart]] = {}


def _plan_key(settings: PlanSettings, image_labels, audio_labels) -> str:
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for labels in (image_labels, audio_labels):
        h.update(b"-" if labels is None else np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


def load_or_build_plan(settings: PlanSettings, image_labels, audio_labels, cache_dir: Path | None) -> list[ClientPart]:
    """The plan for these settings and labels: memoised, then read from / written to ``cache_dir``."""
    key = _plan_key(settings, image_labels, audio_labels)
    if key in _PLANS:
        return _PLANS[key]
    path = Path(cache_dir) / f"plan-{key}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path) as z:
            plan = [ClientPart(str(z[f"kind_{i}"]), z[f"image_{i}"], z[f"audio_{i}"]) for i in range(settings.num_partitions)]
    else:
        plan = build_plan(settings, image_labels, audio_labels)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **{f"{name}_{i}": arr for i, p in enumerate(plan)
                                for name, arr in (("kind", np.array(p.kind)), ("image", p.image_indices), ("audio", p.audio_indices))})
            os.replace(tmp, path)
    _PLANS[key] = plan
    return plan
