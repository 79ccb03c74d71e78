"""Plots of a suite (matplotlib, Agg backend, small PNGs).

- :func:`accuracy_per_round`: kNN and linear-probe accuracy per modality
  against the round, from each run's ``metrics.jsonl``: one line per entry,
  the mean over its seeds, with a band of +-1 sample standard deviation;
- :func:`tsne_panels`: t-SNE (scikit-learn) of held-out image and audio
  features of one encoder at chosen rounds, both modalities in one embedding:
  colour = class, marker = modality.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.metrics_file import read_records  # noqa: E402

METRICS = (("probe-image", "image, linear probe"), ("probe-audio", "audio, linear probe"),
           ("knn-image", "image, kNN"), ("knn-audio", "audio, kNN"))


def eval_series(metrics_file: Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(round, value)] of every evaluated round of a run (a torn last line is skipped)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in read_records(metrics_file):
        for key, value in record.get("eval", {}).items():
            out.setdefault(key, []).append((int(record["round"]), float(value)))
    return out


Series = dict[str, list[tuple[int, float]]]  # metric -> [(round, accuracy)] of one run


def mean_band(runs: list[Series], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean, sample std) of ``metric`` over runs (seeds), per round; std 0 where one run has it."""
    by_round: dict[int, list[float]] = {}
    for run in runs:
        for r, value in run.get(metric, []):
            by_round.setdefault(int(r), []).append(float(value))
    rounds = np.array(sorted(by_round), dtype=int)
    values = [np.asarray(by_round[r]) for r in rounds]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return rounds, mean, std


def accuracy_per_round(series: dict[str, list[Series] | Series], path: Path, title: str = "") -> Path:
    """``series``: line label -> one run's series or a list of them (one per seed: mean line, +-std band);
    writes a 2x2 grid PNG."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    styles = ["-o", "--s", "-.^", ":v", "-D", "--x", "-.P", ":*"]
    for ax, (metric, name) in zip(axes.flat, METRICS):
        for i, (label, runs) in enumerate(series.items()):
            rounds, mean, std = mean_band(runs if isinstance(runs, list) else [runs], metric)
            if len(rounds):
                color = f"C{i % 10}"  # one colour per line in every panel, whichever lines a panel lacks
                ax.plot(rounds, mean, styles[i % len(styles)], color=color, label=label, markersize=4, linewidth=1.2)
                if std.any():
                    ax.fill_between(rounds, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:]:  # runs without image (or audio) curves still need a legend entry
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) - 1) // 4), 1, 0.97))
    return _save(fig, path)


def tsne_embedding(image_x: np.ndarray, audio_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of both modalities' (L2-normalised) features together; images first."""
    from sklearn.manifold import TSNE

    x = np.concatenate([image_x, audio_x]).astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(x)


def tsne_panels(panels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], path: Path,
                title: str = "", classes: tuple[str, ...] = (), seed: int = 0) -> Path:
    """``panels``: panel title (e.g. 'round 0') -> (image_x, image_y, audio_x, audio_y)."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, (ix, iy, ax_, ay)) in zip(axes[0], panels.items()):
        emb = tsne_embedding(ix, ax_, seed)
        img, aud = emb[: len(ix)], emb[len(ix):]
        ax.scatter(img[:, 0], img[:, 1], c=[cmap(int(c) % 10) for c in iy], marker="o", s=9, alpha=0.75,
                   linewidths=0)
        ax.scatter(aud[:, 0], aud[:, 1], c=[cmap(int(c) % 10) for c in ay], marker="^", s=14, alpha=0.85,
                   edgecolors="black", linewidths=0.3)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color="grey", label="image"),
               Line2D([], [], marker="^", linestyle="", color="grey", markeredgecolor="black", label="audio")]
    labels = classes or tuple(str(c) for c in range(10))
    handles += [Line2D([], [], marker="s", linestyle="", color=cmap(i % 10), label=str(labels[i]))
                for i in range(min(10, len(labels)))]
    fig.legend(handles=handles, loc="lower center", ncol=12, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
