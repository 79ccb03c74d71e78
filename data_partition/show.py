"""Print and plot a federation plan (who holds which modality and labels) before spending GPU hours on it.

    python -m data_partition.show --num-partitions 500 --run-config "partitioner='pathological'" --out partition.png

The run config is the app's defaults (pyproject.toml) plus ``--run-config``
overrides, exactly as ``flwr run`` would see it. The plan is the one the
clients will use: it is built from the same settings and seed and stored in
``<data-root>/partitions``, so the run reuses it. Printed per modality: clients
per kind, samples per client (min / median / max), mean number of classes per
client, and the label skew as the mean total-variation distance between a
client's label distribution and the global one (0 = same mix as the whole
dataset, 1 = disjoint), next to the value an IID split of the same sizes gives.
The PNG shows the label mix of every client (stacked bars, or a heatmap above
20 classes) and each client's modality.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import numpy as np

from app_config.log_setup import setup_logging
from app_config.modalities import AUDIO_ONLY, AUDIOVISUAL, VISUAL
from app_config.modalities import CLIENT_KINDS as KINDS
from data_partition.partition import ClientPart, PartitionError, PlanSettings

PROJECT = Path(__file__).resolve().parents[1]
KIND_COLOURS = {VISUAL: "#4c72b0", AUDIOVISUAL: "#8172b3", AUDIO_ONLY: "#dd8452"}
MODALITY_OF = {"image": "image_indices", "audio": "audio_indices"}


def load_config(run_config: str):
    """The run config ``flwr run --run-config`` would give: pyproject defaults plus overrides."""
    from app_config.overrides import parse_overrides
    from app_config.run_config import RunConfig

    defaults = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return RunConfig.from_mapping({**defaults, **parse_overrides(run_config)})


def label_counts(plan: list[ClientPart], modality: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(clients, classes)`` sample counts of one modality (rows of zeros for clients without it)."""
    attr = MODALITY_OF[modality]
    return np.stack([np.bincount(labels[getattr(p, attr)], minlength=num_classes) for p in plan])


def total_variation(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row: 0.5 * sum |p_row - p_ref| between normalised label distributions."""
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    q = reference / reference.sum()
    return 0.5 * np.abs(p - q).sum(axis=1)


def iid_reference(sizes: np.ndarray, labels: np.ndarray, num_classes: int, seed: int) -> float:
    """Mean TV distance an IID split with the same client sizes gives (small clients are never at 0)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    cuts = np.cumsum(sizes)[:-1]
    chunks = np.split(order[: sizes.sum()], cuts)
    counts = np.stack([np.bincount(labels[chunk], minlength=num_classes) for chunk in chunks])
    return float(total_variation(counts, np.bincount(labels, minlength=num_classes)).mean())


def modality_stats(plan: list[ClientPart], modality: str, labels: np.ndarray, num_classes: int, seed: int) -> dict:
    """Statistics over the clients whose kind holds ``modality`` (a client may have been given no samples)."""
    counts = label_counts(plan, modality, labels, num_classes)
    kinds = (VISUAL, AUDIOVISUAL) if modality == "image" else (AUDIO_ONLY, AUDIOVISUAL)
    assigned = np.array([p.kind in kinds for p in plan])
    per_kind = {k: sum(p.kind == k for p in plan) for k in kinds}
    if not assigned.any():
        return {"clients": 0, "per-kind": per_kind}
    sizes = counts[assigned].sum(axis=1)
    filled = counts[assigned][sizes > 0]
    classes = (filled > 0).sum(axis=1)
    tv = total_variation(filled, np.bincount(labels, minlength=num_classes))
    return {
        "clients": int(assigned.sum()), "per-kind": per_kind, "empty": int((sizes == 0).sum()),
        "samples-min": int(sizes.min()), "samples-median": float(np.median(sizes)), "samples-max": int(sizes.max()),
        "samples-total": int(sizes.sum()), "train-size": int(len(labels)),
        "classes-mean": float(classes.mean()), "classes-min": int(classes.min()), "classes-max": int(classes.max()),
        "tv-mean": float(tv.mean()), "tv-iid": iid_reference(sizes[sizes > 0], labels, num_classes, seed),
    }


def format_stats(settings: PlanSettings, plan: list[ClientPart], stats: dict[str, dict], names: dict[str, str],
                 num_classes: dict[str, int]) -> str:
    kinds = {k: sum(p.kind == k for p in plan) for k in KINDS}
    how = {"iid": "", "dirichlet": f" dirichlet-alpha={settings.alpha:g}",
           "pathological": f" classes-per-client={settings.classes_per_client}"}[settings.partitioner]
    lines = [
        f"plan: {settings.num_partitions} clients, partitioner={settings.partitioner}{how} "
        f"min-partition-size={settings.min_partition_size} seed={settings.seed}",
        "clients per kind: " + ", ".join(f"{k} {n}" for k, n in kinds.items()),
    ]
    for modality, s in stats.items():
        share = settings.visual_share if modality == "image" else settings.audio_share
        head = (f"{modality} ({names[modality]}, {num_classes[modality]} classes, data share {share:g}): "
                f"{s['clients']} clients")
        if not s["clients"]:
            lines.append(head)
            continue
        by_kind = ", ".join(f"{k} {n}" for k, n in s["per-kind"].items() if n)
        empty = f", {s['empty']} of them given no samples" if s["empty"] else ""
        lines += [
            f"{head} ({by_kind}){empty}",
            f"  samples/client: min {s['samples-min']}  median {s['samples-median']:g}  max {s['samples-max']}  "
            f"(total {s['samples-total']} of {s['train-size']} train samples)",
            f"  classes/client: mean {s['classes-mean']:.2f}  min {s['classes-min']}  max {s['classes-max']}",
            f"  label skew: mean TV distance to the global label mix {s['tv-mean']:.3f} "
            f"(an IID split of the same sizes: {s['tv-iid']:.3f})",
        ]
    return "\n".join(lines)


def format_clients(plan: list[ClientPart], labels: dict[str, np.ndarray], limit: int) -> str:
    rows = []
    for i, part in enumerate(plan[:limit]):
        cells = [f"client {i:>4} {part.kind:<11}"]
        for modality, attr in MODALITY_OF.items():
            idx = getattr(part, attr)
            if len(idx):
                hist = np.bincount(labels[modality][idx])
                cells.append(f"{modality} {len(idx)} [" + " ".join(f"{c}:{n}" for c, n in enumerate(hist) if n) + "]")
        rows.append("  ".join(cells))
    if len(plan) > limit:
        rows.append(f"... {len(plan) - limit} more clients (--per-client N to list more)")
    return "\n".join(rows)


def plot(plan: list[ClientPart], labels: dict[str, np.ndarray], classes: dict[str, tuple[str, ...]],
         names: dict[str, str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    modalities = list(labels)
    counts = {m: label_counts(plan, m, labels[m], len(classes[m])) for m in modalities}
    # clients grouped by kind, then by their most frequent classes, so the skew is visible as blocks
    dominant = np.stack([counts[m].argmax(axis=1) for m in modalities], axis=1)
    order = sorted(range(len(plan)), key=lambda i: (KINDS.index(plan[i].kind), *dominant[i], i))
    fig, axes = plt.subplots(len(modalities) + 1, 1, figsize=(14, 3.2 * len(modalities) + 1.6), sharex=True,
                             gridspec_kw={"height_ratios": [4] * len(modalities) + [0.6]}, squeeze=False)
    axes = axes[:, 0]
    x = np.arange(len(plan))
    for ax in axes[:-1]:
        ax.set_xlim(-0.5, len(plan) - 0.5)
    for ax, modality in zip(axes, modalities):
        ordered = counts[modality][order]
        if len(classes[modality]) <= 20:
            cmap = plt.get_cmap("tab10" if len(classes[modality]) <= 10 else "tab20")
            edges = np.append(x, len(plan)) - 0.5  # one step per client: a stacked bar chart in C polygons
            top = np.cumsum(ordered, axis=1)
            for c, name in enumerate(classes[modality]):
                low = top[:, c] - ordered[:, c]
                ax.fill_between(edges, np.append(low, low[-1]), np.append(top[:, c], top[-1, c]), step="post",
                                color=cmap(c), label=name, linewidth=0)
            ax.legend(ncol=1 + len(classes[modality]) // 11, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            ax.set_ylabel(f"{modality} samples\nper class")
        else:
            share = ordered / np.maximum(ordered.sum(axis=1, keepdims=True), 1)
            image = ax.imshow(share.T, aspect="auto", interpolation="nearest", cmap="viridis",
                              extent=(-0.5, len(plan) - 0.5, len(classes[modality]) - 0.5, -0.5))
            fig.colorbar(image, ax=ax, pad=0.01, label="share of client's samples")
            ax.set_ylabel(f"{modality} class")
        ax.set_title(f"{modality}: {names[modality]}", fontsize=9, loc="left")
    strip = axes[-1]
    kind_ids = np.array([[KINDS.index(plan[i].kind) for i in order]])
    strip.imshow(kind_ids, aspect="auto", interpolation="nearest", extent=(-0.5, len(plan) - 0.5, 0, 1),
                 cmap=ListedColormap([KIND_COLOURS[k] for k in KINDS]), vmin=0, vmax=len(KINDS) - 1)
    strip.set_yticks([])
    strip.set_xlim(-0.5, len(plan) - 0.5)
    strip.set_xlabel("client (grouped by modality kind, then by most frequent class)")
    strip.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in KINDS], ncol=3, fontsize=7,
                 loc="upper center", bbox_to_anchor=(0.5, -1.2), frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-partitions", type=int, required=True, help="number of clients (supernodes)")
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"partitioner='iid' data-root='/data'\"")
    parser.add_argument("--out", type=Path, default=Path("partition.png"), help="PNG to write")
    parser.add_argument("--per-client", type=int, default=10, help="list the first N clients' label counts")
    args = parser.parse_args(argv)
    setup_logging()

    from data_partition.datasets import load_splits, resolve_data_root
    from data_partition.partition import load_or_build_plan

    try:
        config = load_config(args.run_config)
        if args.num_partitions < 1:
            raise PartitionError("--num-partitions: must be >= 1")
        root = resolve_data_root(config.data_root)
        settings = PlanSettings.from_config(config, args.num_partitions)
        data = {m: load_splits(name, root).train for m, name in (("image", config.image_dataset),
                                                                   ("audio", config.audio_dataset)) if name}
        plan = load_or_build_plan(settings, data["image"].y if "image" in data else None,
                                  data["audio"].y if "audio" in data else None, root / "partitions")
    except (ValueError, tomllib.TOMLDecodeError) as err:  # ConfigError, LayoutError, PartitionError
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = {"image": config.image_dataset, "audio": config.audio_dataset}
    labels = {m: d.y for m, d in data.items()}
    classes = {m: d.classes for m, d in data.items()}
    stats = {m: modality_stats(plan, m, labels[m], len(classes[m]), settings.seed) for m in data}
    text = format_stats(settings, plan, stats, names, {m: len(c) for m, c in classes.items()})
    print(text)
    if args.per_client:
        print(format_clients(plan, labels, args.per_client))
    plot(plan, labels, classes, names, text.splitlines()[0], args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
