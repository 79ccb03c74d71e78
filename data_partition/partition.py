"""Federation plan: which modality each client holds and which samples it gets.

Clients are visual-only, audio-only or audio-visual in configured fractions.
Each modality's training split is divided among the clients holding that
modality with flwr-datasets' partitioners, then each client keeps
``*-data-share`` of its part:

- ``iid``: equal random shares;
- ``dirichlet``: label skew, each class spread over clients by Dirichlet(alpha)
  (smaller alpha = fewer classes per client), redrawn until every client has
  ``min-partition-size`` samples;
- ``pathological``: each client holds exactly ``classes-per-client`` classes
  (client i always has class i mod C, the others are drawn at random), each
  class split evenly among the clients holding it;
- ``resample``: for scale tests only, **not a disjoint split**: each client
  draws its own random subset of the whole pool (clients overlap), of
  ``max(min-partition-size, pool / clients)`` samples, so any number of
  clients (e.g. 1,000 on the embedded sets) can be simulated.

The samples are shuffled with the seed before splitting (flwr-datasets' IID
partitioner cuts contiguous shards, and real datasets are stored sorted by
class). The plan is a pure function of its settings, labels and seed; it is
stored on disk, so it is computed once and reused every round (whoever needs
it repeatedly keeps it: ``data_partition.federation.Federation``). A split
that cannot be made raises :class:`PartitionError` with one line naming the
settings to change.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from app_config.modalities import AUDIO_ONLY, AUDIOVISUAL, CLIENT_KINDS, VISUAL
from data_partition.public_set import PublicSetError, public_pairs
from file_io.atomic import atomic_write

PARTITIONERS = ("iid", "dirichlet", "pathological", "resample")


class PartitionError(ValueError):
    """The requested split cannot be made from the data."""


@dataclass(frozen=True)
class PlanSettings:
    num_partitions: int
    frac_visual: float
    frac_audio: float
    frac_audiovisual: float
    partitioner: str  # one of PARTITIONERS
    alpha: float
    min_partition_size: int
    visual_share: float
    audio_share: float
    seed: int
    classes_per_client: int = 2  # pathological partitioner only
    public_size: int = 0  # CreamFL's public pairs held apart from every client (data_partition.public_set)

    @classmethod
    def from_config(cls, config, num_partitions: int) -> PlanSettings:
        """The plan settings of a :class:`app_config.run_config.RunConfig` for ``num_partitions`` clients."""
        return cls(
            num_partitions=num_partitions, frac_visual=config.frac_visual_clients, frac_audio=config.frac_audio_clients,
            frac_audiovisual=config.frac_audiovisual_clients, partitioner=config.partitioner,
            alpha=config.dirichlet_alpha, min_partition_size=config.min_partition_size,
            visual_share=config.visual_data_share, audio_share=config.audio_data_share, seed=config.seed,
            classes_per_client=config.classes_per_client,
            public_size=config.creamfl_public_size if config.strategy == "creamfl" else 0,
        )


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
    fractions = (settings.frac_visual, settings.frac_audio, settings.frac_audiovisual)
    counts = kind_counts(settings.num_partitions, fractions)
    kinds = np.array([k for k, c in zip(CLIENT_KINDS, counts) for _ in range(c)])
    return np.random.default_rng(settings.seed).permutation(kinds).tolist()


def _partitioner(settings: PlanSettings, num_parts: int, seed: int):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if settings.partitioner == "iid":
        return IidPartitioner(num_partitions=num_parts)
    if settings.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_parts, partition_by="label", alpha=settings.alpha,
            min_partition_size=settings.min_partition_size, self_balancing=True, shuffle=True, seed=seed,
        )
    if settings.partitioner == "pathological":
        return PathologicalPartitioner(
            num_partitions=num_parts, partition_by="label", num_classes_per_partition=settings.classes_per_client,
            class_assignment_mode="first-deterministic", shuffle=True, seed=seed,
        )
    raise PartitionError(f"partitioner: unknown value {settings.partitioner!r}; valid: {', '.join(PARTITIONERS)}")


def _impossible(settings: PlanSettings, what: str, num_parts: int, labels: np.ndarray) -> PartitionError:
    """One line saying why this split cannot be made and which settings to change."""
    if settings.partitioner == "dirichlet":
        return PartitionError(
            f"{what}: no Dirichlet split with dirichlet-alpha={settings.alpha} gives every one of {num_parts} "
            f"clients min-partition-size={settings.min_partition_size} ({len(labels)} samples, "
            f"{len(labels) / num_parts:.1f} per client); raise dirichlet-alpha, lower min-partition-size "
            "or use fewer clients"
        )
    if settings.partitioner != "pathological":
        return PartitionError(f"{what}: {len(labels)} samples cannot give {num_parts} clients "
                              f"min-partition-size={settings.min_partition_size} each; use fewer clients")
    per_class = np.bincount(labels)
    per_class = per_class[per_class > 0]
    return PartitionError(
        f"{what}: sharing each class among the clients given it leaves some of the {num_parts} clients below "
        f"min-partition-size={settings.min_partition_size} (classes-per-client={settings.classes_per_client}, "
        f"{len(labels)} samples, smallest class {per_class.min()}); raise classes-per-client, lower "
        "min-partition-size or use fewer clients"
    )


def resample_parts(num_samples: int, num_parts: int, min_size: int, seed: int) -> list[np.ndarray]:
    """Each client's own random draw from the whole pool (overlapping clients; scale tests only)."""
    if num_samples == 0:
        raise PartitionError("resample: the pool is empty")
    size = min(num_samples, max(min_size, 1, num_samples // num_parts))
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(num_samples, size=size, replace=False)).astype(np.int64) for _ in range(num_parts)]


def split_labels(labels: np.ndarray, num_parts: int, settings: PlanSettings, what: str,
                 seed: int | None = None) -> list[np.ndarray]:
    """Divide sample indices among ``num_parts`` clients by label (flwr-datasets), seeded by ``seed``."""
    from datasets import Dataset

    if num_parts == 0:
        return []
    labels = np.asarray(labels, dtype=np.int64)
    if settings.partitioner == "resample":
        if settings.min_partition_size > len(labels):
            raise PartitionError(f"{what}: {len(labels)} samples cannot give any client "
                                 f"min-partition-size={settings.min_partition_size}; lower min-partition-size")
        return resample_parts(len(labels), num_parts, settings.min_partition_size,
                              settings.seed if seed is None else seed)
    if num_parts * max(settings.min_partition_size, 1) > len(labels):
        raise PartitionError(
            f"{what}: {len(labels)} samples cannot give {num_parts} clients min-partition-size="
            f"{settings.min_partition_size} each; use fewer clients or a smaller min-partition-size"
        )
    num_classes = len(np.unique(labels))
    if settings.partitioner == "pathological" and not 1 <= settings.classes_per_client <= num_classes:
        raise PartitionError(
            f"{what}: classes-per-client={settings.classes_per_client} must be between 1 and the "
            f"{num_classes} classes present"
        )
    seed = settings.seed if seed is None else seed
    order = np.random.default_rng(seed).permutation(len(labels))
    table = Dataset.from_dict({"label": labels[order], "index": order})
    partitioner = _partitioner(settings, num_parts, seed)
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():  # retries and unused classes are reported by the checks here
            warnings.simplefilter("ignore")
            parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(num_parts)]
    except ValueError as err:
        raise _impossible(settings, what, num_parts, labels) from err
    if min(len(p) for p in parts) < settings.min_partition_size:
        raise _impossible(settings, what, num_parts, labels)
    return parts


def _keep_share(parts: list[np.ndarray], share: float, min_size: int) -> list[np.ndarray]:
    """The first ``share`` of each (shuffled) part, never cut below ``min_size`` samples."""
    return [p[: max(int(round(share * len(p))), min(len(p), min_size))] for p in parts]


def held_apart(settings: PlanSettings, image_labels: np.ndarray | None,
               audio_labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per modality, the training indices no client gets: CreamFL's public pairs (none otherwise)."""
    none = np.zeros(0, np.int64)
    if not settings.public_size:
        return {"image": none, "audio": none}
    if image_labels is None or audio_labels is None:
        raise PartitionError("creamfl-public-size: the public set pairs images with clips; set both image-dataset "
                             "and audio-dataset")
    try:
        image_idx, audio_idx = public_pairs(image_labels, audio_labels, settings.public_size, settings.seed)
    except PublicSetError as err:
        raise PartitionError(str(err)) from err
    return {"image": image_idx, "audio": audio_idx}


def build_plan(settings: PlanSettings, image_labels: np.ndarray | None,
               audio_labels: np.ndarray | None) -> list[ClientPart]:
    kinds = assign_kinds(settings)
    public = held_apart(settings, image_labels, audio_labels)
    holders = {
        "image": [i for i, k in enumerate(kinds) if k in (VISUAL, AUDIOVISUAL)],
        "audio": [i for i, k in enumerate(kinds) if k in (AUDIO_ONLY, AUDIOVISUAL)],
    }
    per_client = {m: [np.zeros(0, np.int64)] * settings.num_partitions for m in holders}
    # each modality has its own seed, so an audio-visual client's two label sets are drawn independently
    for modality, labels, share, seed in (("image", image_labels, settings.visual_share, settings.seed),
                                          ("audio", audio_labels, settings.audio_share, settings.seed + 1)):
        if not holders[modality]:
            continue
        if labels is None:
            raise PartitionError(f"{len(holders[modality])} clients hold {modality} data but no {modality} "
                                 "dataset is set")
        pool = np.setdiff1d(np.arange(len(labels), dtype=np.int64), public[modality])  # all, without the public set
        parts = split_labels(np.asarray(labels)[pool], len(holders[modality]), settings, f"{modality} split", seed)
        parts = _keep_share([pool[p] for p in parts], share, settings.min_partition_size)
        for client, part in zip(holders[modality], parts):
            per_client[modality][client] = part
    return [ClientPart(k, per_client["image"][i], per_client["audio"][i]) for i, k in enumerate(kinds)]


_PLAN_VERSION = 2  # bump when the splitting itself changes, so stored plans are not reused


def _plan_key(settings: PlanSettings, image_labels, audio_labels) -> str:
    fields = asdict(settings)
    if not fields["public_size"]:  # plans without a public set keep the keys they had before it existed
        del fields["public_size"]
    h = hashlib.sha256(json.dumps({**fields, "version": _PLAN_VERSION}, sort_keys=True).encode())
    for labels in (image_labels, audio_labels):
        h.update(b"-" if labels is None else np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


def load_or_build_plan(settings: PlanSettings, image_labels, audio_labels, cache_dir: Path | None) -> list[ClientPart]:
    """The plan for these settings and labels: read from ``cache_dir``, else built and written there."""
    key = _plan_key(settings, image_labels, audio_labels)
    path = Path(cache_dir) / f"plan-{key}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path) as z:
            plan = [ClientPart(str(z[f"kind_{i}"]), z[f"image_{i}"], z[f"audio_{i}"])
                    for i in range(settings.num_partitions)]
    else:
        plan = build_plan(settings, image_labels, audio_labels)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays = {f"{name}_{i}": arr for i, p in enumerate(plan)
                      for name, arr in (("kind", np.array(p.kind)), ("image", p.image_indices),
                                        ("audio", p.audio_indices))}
            atomic_write(path, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]  # numpy's stub misreads **kwds
    return plan
