"""Evaluating a suite's trained encoders: one table row per entry, numbers per seed.

Every entry's global encoder of every seed is evaluated by
``experiments.frozen_eval`` (kNN and linear probe per modality, out-of-domain
sets, class-paired fusion) with that seed's evaluation draws. The untrained
reference (the seeded initial weights each run starts from) and the raw-input
floor (the evaluation transform's output flattened, scored the same way) are
evaluated per seed too, once per distinct run config (rows of a data-share sweep copy them).
Seed by seed, features are cached while later entries still need the same encoder and
dropped afterwards, so memory stays at one seed's encoders at most.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from experiments.suite_plan import METHOD_NAMES, Entry, Suite, entry_jobs, fssuavl_job

log = logging.getLogger("fssuavl.suite")
UNTRAINED_METHOD, UNTRAINED_STRATEGY = "Untrained (initial weights)", "- (no training)"
FLOOR_METHOD, FLOOR_ENCODER, FLOOR_STRATEGY = "Raw input (floor)", "- (none)", "- (raw input)"


@dataclass
class Row:
    """One line of the comparison table: the entry's numbers per seed."""

    method: str
    encoder: str
    strategy: str
    setting: str = "-"
    per_seed: dict[int, dict] = field(default_factory=dict)  # seed -> frozen_eval.evaluate() output
    params: int = 0
    flops_image: int = 0
    flops_audio: int = 0
    status: str = "ok"
    label: str = ""
    missing: dict[int, str] = field(default_factory=dict)  # seed -> why it has no numbers

    @classmethod
    def from_json(cls, row: dict) -> Row:
        """A row as ``results.json`` stores it (seeds as strings), read back as the suite holds it."""
        keep = ("setting", "params", "flops_image", "flops_audio", "status", "label")
        return cls(str(row.get("method", "")), str(row.get("encoder", "")), str(row.get("strategy", "")),
                   **{k: row[k] for k in keep if k in row},
                   per_seed={int(seed): values for seed, values in row.get("per_seed", {}).items()})

    @property
    def reference(self) -> bool:
        """An untrained or raw-input row (what every trained row is measured against)."""
        return self.strategy in (UNTRAINED_STRATEGY, FLOOR_STRATEGY)

    @property
    def ours(self) -> bool:
        """An FSSUAVL row (the method the others are compared with)."""
        return self.method.split(" (")[0] == METHOD_NAMES["fssuavl"]

    def values(self, key: str) -> dict[int, float]:
        """seed -> value of one metric, for the seeds that have it."""
        return {s: float(m[key]) for s, m in self.per_seed.items()
                if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)}


def eval_settings(suite: Suite, config):
    from experiments.frozen_eval import EvalSettings

    ev = suite.evaluation
    return EvalSettings(
        knn_k=ev.knn_k or config.knn_k, out_of_domain=tuple(ev.out_of_domain), fusion=ev.fusion,
        fusion_image_dataset=ev.fusion_image_dataset, fusion_audio_dataset=ev.fusion_audio_dataset,
        max_train_samples=ev.max_train_samples, max_test_samples=ev.max_test_samples,
        image_dataset=ev.image_dataset if ev.image_dataset is not None else config.image_dataset,
        audio_dataset=ev.audio_dataset if ev.audio_dataset is not None else config.audio_dataset,
        seed=config.seed,
    )


def empty_row(entry: Entry) -> Row:
    return Row(METHOD_NAMES[entry.method] + (f" ({entry.label})" if entry.label else ""), entry.encoder,
               f"- ({entry.strategy} budget)" if entry.method in ("centralized", "supervised") else entry.strategy,
               entry.setting_text, label=entry.label)


def evaluate_seed(suite: Suite, entry: Entry, seed: int, row: Row, runs: dict[str, Path], cache,
                  encoders: dict) -> None:
    """Add one seed's numbers (and the encoder's cost) to ``row``; a seed whose run failed is noted."""
    from experiments.encoder_cost import encoder_cost
    from experiments.frozen_eval import evaluate, load_encoder

    jobs = entry_jobs(suite, entry, seed)
    missing = [j.id for j in jobs if j.id not in runs]
    if missing:
        row.missing[seed] = f"{missing[0]} failed"
        return

    def enc(job):
        if runs[job.id] not in encoders:
            encoders[runs[job.id]] = load_encoder(runs[job.id])
        return encoders[runs[job.id]]

    image_encoder, audio_encoder = (enc(jobs[0]), enc(jobs[1])) if entry.method == "separate" else \
        (enc(jobs[-1]), enc(jobs[-1]))
    base_config = fssuavl_job(suite, entry, seed).config()  # in-domain sets: the FSSUAVL federation's
    row.per_seed[seed] = evaluate(image_encoder, audio_encoder, eval_settings(suite, base_config), cache)
    cost_image, cost_audio = encoder_cost(image_encoder.config), encoder_cost(audio_encoder.config)
    row.params = cost_image["params"] + (cost_audio["params"] if entry.method == "separate" else 0)
    row.flops_image, row.flops_audio = cost_image["flops-image"], cost_audio["flops-audio"]


def untrained_entries(suite: Suite) -> list[Entry]:
    """One FSSUAVL entry per encoder and setting: whose initial weights the reference rows evaluate."""
    out, done = [], set()
    for entry in suite.entries:
        if entry.method == "fssuavl" and (entry.encoder, entry.setting_text) not in done:
            done.add((entry.encoder, entry.setting_text))
            out.append(entry)
    return out


def evaluate_untrained(suite: Suite, entry: Entry, seed: int, row: Row, cache) -> None:
    """The seeded initial weights a run of this seed starts from, evaluated like a trained encoder."""
    import torch

    from experiments.encoder_cost import encoder_cost
    from experiments.frozen_eval import Encoder, evaluate
    from models.device import resolve_device
    from models.factory import build_model

    config = fssuavl_job(suite, entry, seed).config()
    torch.manual_seed(config.seed)  # as the ServerApp draws the initial global model
    model = build_model(config).to(resolve_device(config.device)).eval()
    encoder = Encoder(config, model, key=f"initial:{config.encoder}:{config.seed}:{entry.setting_text}")
    row.per_seed[seed] = evaluate(encoder, encoder, eval_settings(suite, config), cache)
    cost = encoder_cost(config)
    row.params, row.flops_image, row.flops_audio = cost["params"], cost["flops-image"], cost["flops-audio"]


def floor_entries(suite: Suite) -> list[Entry]:
    """One FSSUAVL entry per setting: whose evaluation transform the raw-input floor rows use."""
    out, done = [], set()
    for entry in untrained_entries(suite):
        if entry.setting_text not in done:
            done.add(entry.setting_text)
            out.append(entry)
    return out


def evaluate_floor(suite: Suite, entry: Entry, seed: int, row: Row, cache) -> None:
    """The raw input (the evaluation transform's output flattened) under the same kNN, probe and draws."""
    from experiments.frozen_eval import Encoder, evaluate
    from models.device import resolve_device
    from ssl_method.feature_eval import RawInput

    config = fssuavl_job(suite, entry, seed).config()
    encoder = Encoder(config, RawInput().to(resolve_device(config.device)),
                      key=f"raw-input:{config.image_size}:{config.audio_n_mels}:{entry.setting_text}")
    row.per_seed[seed] = evaluate(encoder, encoder, eval_settings(suite, config), cache)


# Keys that only decide how much of its part a client keeps (data_partition/partition.py): neither the
# initial weights nor the evaluation depend on them, so reference rows that differ only there are equal.
TRAINING_SHARE_KEYS = ("visual-data-share", "audio-data-share")


def reference_signature(suite: Suite, entry: Entry, seed: int) -> str:
    """What an untrained or raw-input row's numbers depend on: the FSSUAVL job's run config, less the
    clients' data shares (a low-data sweep would otherwise evaluate the same reference once per share)."""
    mapping = fssuavl_job(suite, entry, seed).config().as_mapping()
    return json.dumps({k: v for k, v in mapping.items() if k not in TRAINING_SHARE_KEYS}, sort_keys=True, default=str)


def copy_seed(source: Row, row: Row, seed: int) -> None:
    """One seed's numbers (and the encoder's cost) of a reference row that were already evaluated."""
    row.per_seed[seed] = dict(source.per_seed[seed])
    row.params, row.flops_image, row.flops_audio = source.params, source.flops_image, source.flops_audio


def _release(cache, encoders: dict, run: Path) -> None:
    """Forget a run's encoder and features once no later entry of this seed needs them."""
    encoder = encoders.pop(run, None)
    if encoder is not None:
        for key in [k for k in cache.store if k[0] == encoder.key]:
            del cache.store[key]


def evaluate_suite(suite: Suite, runs: dict[str, Path]) -> tuple[list[Row], dict[str, list]]:
    """All table rows (entries, then untrained references) and the per-round series of every entry
    (label -> one series per seed), seed by seed, with a progress bar."""
    from experiments.frozen_eval import FeatureCache
    from experiments.plots import eval_series

    rows = [empty_row(e) for e in suite.entries]
    references = untrained_entries(suite) if suite.evaluation.untrained_reference else []
    ref_rows = [Row(UNTRAINED_METHOD, e.encoder, UNTRAINED_STRATEGY, e.setting_text) for e in references]
    floors = floor_entries(suite) if suite.evaluation.untrained_reference else []
    floor_rows = [Row(FLOOR_METHOD, FLOOR_ENCODER, FLOOR_STRATEGY, e.setting_text) for e in floors]
    series: dict[str, list] = {}
    steps = len(suite.seeds) * (len(suite.entries) + len(references) + len(floors))
    with tqdm(total=steps, desc="evaluating", unit="model", disable=None) as bar:
        shown = 0

        def show(text: str) -> None:
            nonlocal shown
            shown += 1
            if bar.disable:  # not a terminal (a log file): a line per model instead of the bar
                log.info("evaluating %d/%d: %s", shown, steps, text)
            else:
                bar.set_postfix_str(text)

        for seed in suite.seeds:
            cache, encoders = FeatureCache(), {}
            needed = [[runs.get(j.id) for j in entry_jobs(suite, e, seed)] for e in suite.entries]
            for i, (entry, row) in enumerate(zip(suite.entries, rows)):
                show(f"seed {seed}: {row.method} {entry.encoder} {entry.strategy}")
                evaluate_seed(suite, entry, seed, row, runs, cache, encoders)
                last = entry_jobs(suite, entry, seed)[-1]
                if entry.method != "separate" and last.id in runs:
                    series.setdefault(series_label(entry, row), []).append(eval_series(runs[last.id] / "metrics.jsonl"))
                for run in {r for r in needed[i] if r is not None} - {r for later in needed[i + 1:] for r in later}:
                    _release(cache, encoders, run)
                bar.update()
            evaluated: dict[tuple[str, str], Row] = {}
            kinds = (("untrained", references, ref_rows, evaluate_untrained),
                     ("raw input", floors, floor_rows, evaluate_floor))
            for kind, entries, rows_of_kind, evaluate_reference in kinds:
                for entry, row in zip(entries, rows_of_kind):
                    signature = (kind, reference_signature(suite, entry, seed))
                    same = evaluated.get(signature)
                    again = " = an earlier row" if same is not None else ""
                    show(f"seed {seed}: {kind} {entry.encoder} ({entry.setting_text}){again}")
                    if same is not None:
                        copy_seed(same, row, seed)
                    else:
                        evaluate_reference(suite, entry, seed, row, cache)
                        evaluated[signature] = row
                    bar.update()
    for row in rows:
        if not row.per_seed:
            row.status = f"not trained ({next(iter(row.missing.values()), 'no run')})"
    return rows + ref_rows + floor_rows, series


def series_label(entry: Entry, row: Row) -> str:
    return f"{row.method} {entry.encoder} {row.strategy}" + (f" {entry.setting_text}" if entry.setting else "")


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def make_tsne(suite: Suite, entry: Entry, run: Path, out_dir: Path) -> Path | None:
    """t-SNE panels of the entry's first-seed run at the suite's chosen rounds."""
    from experiments.frozen_eval import heldout_features, load_encoder
    from experiments.plots import tsne_panels

    panels, classes = {}, ()
    job = entry_jobs(suite, entry, suite.seeds[0])[-1]
    rounds = job.config().num_server_rounds
    for r in suite.plots.tsne_rounds:
        name = f"round-{r:04d}.pt"
        if not (run / name).exists() and r == rounds:
            name = "final_model.pt"
        if not (run / name).exists():
            log.warning("t-SNE: %s has no %s; skipped", run.name, name)
            continue
        encoder = load_encoder(run, name)
        feats = heldout_features(encoder, eval_settings(suite, job.config()), suite.plots.tsne_max_points)
        if "image" not in feats or "audio" not in feats:
            return None
        panels[f"round {r}"] = (feats["image"].test_x, feats["image"].test_y, feats["audio"].test_x,
                                feats["audio"].test_y)
        classes = feats["image"].classes
    if not panels:
        return None
    setting = f" ({entry.setting_text})" if entry.setting else ""
    title = f"{METHOD_NAMES[entry.method]} {entry.encoder} {entry.strategy}{setting}, seed {suite.seeds[0]}: " \
        "held-out features (o image, ^ audio)"
    tag = _slug(f"{entry.method}-{entry.encoder}-{entry.strategy}-{entry.setting_text if entry.setting else ''}")
    return tsne_panels(panels, out_dir / f"tsne-{tag}.png", title, classes, seed=job.config().seed)
