"""The suite's report: comparison table (mean ± std over seeds), paired comparisons, notes.

Every accuracy cell is ``mean ± std (n=K)`` over the seeds (sample std; one seed:
``value (n=1)``). Each baseline row is compared with the FSSUAVL rows of the same
encoder and setting and the same strategy (the centralized row: the strategy whose
budget it used; the untrained reference: every strategy), per column and paired by
seed (``experiments.suite_stats``). Only differences whose 95 % interval excludes 0
are bold and listed under "Where FSSUAVL loses / wins".
"""

from __future__ import annotations

import re
from pathlib import Path

from experiments.suite_eval import FLOOR_STRATEGY, UNTRAINED_STRATEGY, Row
from experiments.suite_plan import Job, Suite, holders
from experiments.suite_stats import Paired, paired_difference, summarize
from file_io.atomic import write_text

ACCURACY_COLUMNS = (("probe-image", "image probe"), ("knn-image", "image kNN"), ("probe-audio", "audio probe"),
                    ("knn-audio", "audio kNN"), ("fusion-probe", "fusion probe"))


def accuracy_columns(ood: list[str]) -> list[tuple[str, str]]:
    return list(ACCURACY_COLUMNS) + [(f"ood-probe-{name}", f"OOD {name} probe") for name in ood]


def cell(row: Row, key: str) -> str:
    summary = summarize(row.values(key).values())
    return summary.text() if summary else "n/a"


def _base_strategy(strategy: str) -> str:
    found = re.fullmatch(r"- \((.+) budget\)", strategy)
    return found.group(1) if found else strategy


def references(rows: list[Row], row: Row) -> list[int]:
    """Indices of the FSSUAVL rows a baseline row is compared with."""
    if row.ours or row.status != "ok":
        return []
    return [i for i, r in enumerate(rows) if r.ours and r.status == "ok" and r.setting == row.setting
            and (row.strategy == FLOOR_STRATEGY or r.encoder == row.encoder)
            and (row.strategy in (UNTRAINED_STRATEGY, FLOOR_STRATEGY) or r.strategy == _base_strategy(row.strategy))]


def measured_against(rows: list[Row], row: Row, strategy: str) -> Row | None:
    """The reference row (``UNTRAINED_STRATEGY`` or ``FLOOR_STRATEGY``) a trained row is measured against."""
    for r in rows:
        if r.strategy == strategy and r.status == "ok" and r.setting == row.setting and (
                strategy == FLOOR_STRATEGY or r.encoder == row.encoder):
            return r
    return None


def reference_lines(rows: list[Row], ood: list[str]) -> list[str]:
    """Every trained row's difference to the raw-input floor and to its initial weights, per column
    (trained - reference, paired by seed), as Markdown table lines; a row clearly below its floor says so."""
    head = ["method", "encoder", "strategy", "vs", *[t for _, t in accuracy_columns(ood)]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        if row.reference or row.status != "ok":
            continue
        strategy = row.strategy + (f", {row.setting}" if row.setting != "-" else "")
        for label, ref_strategy in (("raw input", FLOOR_STRATEGY), ("initial weights", UNTRAINED_STRATEGY)):
            ref = measured_against(rows, row, ref_strategy)
            if ref is None:
                continue
            cells = []
            for key, _ in accuracy_columns(ood):
                diff = paired_difference(row.values(key), ref.values(key))
                if diff is None:
                    cells.append("n/a")
                    continue
                text = _interval(diff) if diff.n >= 2 else f"{100 * diff.mean:+.1f} (n=1)"
                below = diff.clear and diff.mean < 0 and ref_strategy == FLOOR_STRATEGY
                cells.append(f"**{text}** below" if below else text)
            lines.append(f"| {row.method} | {row.encoder} | {strategy} | {label} | " + " | ".join(cells) + " |")
    return lines


def comparisons(rows: list[Row], ood: list[str]) -> dict[int, dict]:
    """FSSUAVL row index -> {"against": [baseline methods], "diffs": [(method, column title, baseline -
    FSSUAVL paired by seed)], "losses": [clearly positive diffs], "wins": [clearly negative diffs]}."""
    out: dict[int, dict] = {i: {"against": [], "diffs": []} for i, r in enumerate(rows) if r.ours}
    for row in rows:
        for ref in references(rows, row):
            out[ref]["against"].append(row.method)
            for key, title in accuracy_columns(ood):
                diff = paired_difference(row.values(key), rows[ref].values(key))
                if diff is not None:
                    out[ref]["diffs"].append((row.method, title, diff))
    for compared in out.values():
        compared["losses"] = [d for d in compared["diffs"] if d[2].clear and d[2].mean > 0]
        compared["wins"] = [d for d in compared["diffs"] if d[2].clear and d[2].mean < 0]
    return out


def _bold_columns(rows: list[Row], compared: dict[int, dict], row: Row) -> set[str]:
    """Column titles where this baseline row is clearly above an FSSUAVL row it is compared with."""
    return {title for ref in references(rows, row) for method, title, _ in compared[ref]["losses"]
            if method == row.method}


def render_table(rows: list[Row], ood: list[str]) -> list[str]:
    """The comparison table as Markdown lines (accuracies in %, mean ± std over seeds; a baseline cell
    clearly above an FSSUAVL row in bold)."""
    columns = accuracy_columns(ood)
    with_setting = any(r.setting != "-" for r in rows)
    head = ["method", "encoder", "strategy"] + (["setting"] if with_setting else []) + [t for _, t in columns] + \
        ["params (M)", "GFLOPs image / audio", "FSSUAVL loses to (clear, points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    compared = comparisons(rows, ood)
    for i, row in enumerate(rows):
        cells = [row.method, row.encoder, row.strategy] + ([row.setting] if with_setting else [])
        if row.status != "ok":
            cells += [row.status] + [""] * (len(columns) - 1) + ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        bold = _bold_columns(rows, compared, row)
        for key, title in columns:
            text = cell(row, key)
            cells.append(f"**{text}**" if title in bold else text)
        cells.append(f"{row.params / 1e6:.2f}")
        cells.append(f"{row.flops_image / 1e9:.3f} / {row.flops_audio / 1e9:.3f}")
        cells.append(_losses_cell(compared[i]) if row.ours else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _interval(diff: Paired) -> str:
    return f"{100 * diff.mean:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}]"


def _losses_cell(compared: dict) -> str:
    """'FVSSL: image probe +1.2 [+0.3, +2.1]; Centralized: ...', 'no clear difference (vs ...)' or
    'no baseline in this suite'."""
    by_method: dict[str, list[str]] = {}
    for method, title, diff in compared["losses"]:
        by_method.setdefault(method, []).append(f"{title} {_interval(diff)}")
    if by_method:
        return "; ".join(f"{m}: {', '.join(items)}" for m, items in by_method.items())
    if compared["against"]:
        return f"no clear difference (vs {', '.join(compared['against'])})"
    return "no baseline in this suite"


def _signed(summary) -> str:
    text = f"{100 * summary.mean:+.1f}"
    return (f"{text} ± {100 * summary.std:.1f}" if summary.n > 1 else text) + f" (n={summary.n})"


def render_fusion(rows: list[Row]) -> list[str]:
    lines = ["| method | encoder | strategy | image alone | audio alone | image + audio | gain over best single |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        fusion, image, audio = (row.values(k) for k in ("fusion-probe", "paired-probe-image", "paired-probe-audio"))
        seeds = [s for s in fusion if s in image and s in audio]
        if row.status != "ok" or not seeds:
            continue
        gain = summarize([fusion[s] - max(image[s], audio[s]) for s in seeds])
        strategy = row.strategy + (f", {row.setting}" if row.setting != "-" else "")
        lines.append(f"| {row.method} | {row.encoder} | {strategy} | {cell(row, 'paired-probe-image')} | "
                     f"{cell(row, 'paired-probe-audio')} | {cell(row, 'fusion-probe')} | {_signed(gain)} |")
    return lines


def _where(row: Row) -> str:
    return f"FSSUAVL {row.encoder} {row.strategy}" + (f" ({row.setting})" if row.setting != "-" else "")


def _no_clear_difference(compared: dict) -> str:
    n = max((d.n for _, _, d in compared["diffs"]), default=0)
    why = f"n={n} paired seeds" if n >= 2 else f"n={n} paired seed: no confidence interval"
    return f"no clear difference (vs {', '.join(compared['against'])}; {why})"


def _summary(rows: list[Row], ood: list[str], kind: str) -> list[str]:
    out = []
    for i, compared in comparisons(rows, ood).items():
        items = [f"{m} {t} {(d if kind == 'losses' else d.flipped()).text()}" for m, t, d in compared[kind]]
        if items:
            verb = "loses to" if kind == "losses" else "wins over"
            out.append(f"- {_where(rows[i])} {verb}: {'; '.join(items)}.")
        elif compared["against"]:
            out.append(f"- {_where(rows[i])}: {_no_clear_difference(compared)}.")
        else:
            out.append(f"- {_where(rows[i])}: no baseline with this encoder, strategy and setting in this suite "
                       "(not compared).")
    return out


def loss_summary(rows: list[Row], ood: list[str]) -> list[str]:
    """Per FSSUAVL row: baselines clearly above it (baseline - FSSUAVL, mean [95 % CI] over paired seeds)."""
    return _summary(rows, ood, "losses")


def win_summary(rows: list[Row], ood: list[str]) -> list[str]:
    """Per FSSUAVL row: baselines clearly below it (FSSUAVL - baseline, mean [95 % CI] over paired seeds)."""
    return _summary(rows, ood, "wins")


def write_report(suite: Suite, rows: list[Row], out_dir: Path, plots: list[Path], notes: list[str]) -> Path:
    from experiments.eval_sets import describe, parse_eval_set

    ood = list(suite.evaluation.out_of_domain)
    lines = [f"# Suite `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += [f"Accuracy in % on held-out data (frozen encoder): mean ± sample std over the seeds "
              f"({', '.join(map(str, suite.seeds))}); n = seeds with numbers. Baselines are compared with the "
              "FSSUAVL rows of the same encoder and setting and the same strategy (the untrained reference: every "
              "strategy), paired by seed. **Bold**: a baseline cell whose 95 % t interval of the per-seed "
              "difference lies entirely above 0 (needs at least two seeds). The last column lists those "
              "differences in percentage points: mean [95 % interval].", ""]
    lines += render_table(rows, ood)
    fusion = render_fusion(rows)
    if len(fusion) > 2:
        ev = suite.evaluation
        sets = (f"{ev.fusion_image_dataset or 'the in-domain images'} + "
                f"{ev.fusion_audio_dataset or 'the in-domain audio'}")
        lines += ["", "## Fusion (class-paired held-out samples, linear probe)", "",
                  f"Sets: {sets}. Each held-out image is paired with a randomly drawn (seeded) held-out clip of "
                  "the same class, "
                  "and likewise for the probe's training pairs; the two recordings are **not** co-recorded, only "
                  "class-paired. Features: each modality's L2-normalised encoder output, concatenated.", ""]
        lines += fusion
    against = reference_lines(rows, ood)
    if len(against) > 2:
        lines += ["", "## Against the raw input and the initial weights", "",
                  "Trained row − reference, percentage points, mean [95 % interval] over paired seeds. The raw "
                  "input is the evaluation transform's output flattened, under the same kNN, probe and samples; "
                  "**bold ... below**: the trained encoder is clearly below its raw input on that column and has "
                  "learned nothing worth reporting there.", ""] + against
    lines += ["", "## Where FSSUAVL loses", "", "Baseline − FSSUAVL, mean [95 % interval] over paired seeds; only "
              "differences whose interval excludes 0.", ""] + loss_summary(rows, ood)
    lines += ["", "## Where FSSUAVL wins", "", "FSSUAVL − baseline, mean [95 % interval] over paired seeds; only "
              "differences whose interval excludes 0.", ""] + win_summary(rows, ood)
    if ood:
        lines += ["", "## Out-of-domain sets", ""]
        lines += [f"- `{name}`: {describe(parse_eval_set(name))}; probe fitted on its own training split."
                  for name in ood]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return write_text(out_dir / "table.md", "\n".join(lines) + "\n")


def suite_notes(suite: Suite, train_seconds: dict, eval_seconds: float, wall: float, failures: list[str],
                reused: int = 0) -> list[str]:
    first = next((e for e in suite.entries if e.method == "fssuavl"), suite.entries[0])
    overrides = {**dict(first.overrides), "seed": suite.seeds[0]}
    config = Job("federated", "fssuavl", tuple(sorted(overrides.items())), first.num_supernodes).config()
    images, audios = holders(dict(first.overrides), first.num_supernodes)
    notes = [
        f"Federation: {first.num_supernodes} clients ({config.frac_visual_clients:g} visual-only / "
        f"{config.frac_audio_clients:g} audio-only / {config.frac_audiovisual_clients:g} audio-visual), "
        f"{config.partitioner} partition (alpha {config.dirichlet_alpha:g}), {config.num_server_rounds} rounds, "
        f"at most {config.max_local_steps or 'unlimited'} local steps of {config.batch_size} samples per modality, "
        f"{config.image_dataset} images at {config.image_size} px and {config.audio_dataset} "
        f"({config.audio_n_mels} mels).",
        f"Seeds: {', '.join(map(str, suite.seeds))}. Every training job ran once per seed (the seed sets the "
        "federation plan, the initial weights, local training and the evaluation's draws); cells are mean ± "
        "sample std over seeds, comparisons are paired by seed with a 95 % interval from the t distribution "
        "(n-1 degrees of freedom).",
        f"FVSSL / FASSL: the {images} image-holding / {audios} audio-holding clients of that federation, each with "
        "exactly the data it holds there, one modality only. Separate = both of these encoders used together "
        "(images through FVSSL's, audio through FASSL's); its parameter count is their sum. FVSSL and FASSL rows "
        "also report the modality they never trained on (cross-modal use of one encoder).",
        "Centralized: one model on the pooled data of the FSSUAVL federation, same encoder, augmentations and "
        "per-modality batch size, processing exactly as many images and clips per round as that run's clients did "
        "(`summary.json` of the run records the budget).",
        "Params: encoder only (the projection head used in training is not counted). GFLOPs: one forward pass of "
        "one sample at the evaluation input size (torch.utils.flop_counter; a multiply-add = 2 FLOPs).",
        "Probe: standardised features + logistic regression; kNN: cosine, distance-weighted, "
        f"k={suite.evaluation.knn_k or config.knn_k}; both on backbone features.",
        f"Wall time: {wall / 60:.1f} min in this call; the {len(train_seconds)} training runs took "
        f"{sum(train_seconds.values()) / 60:.1f} min" + (f" ({reused} of them reused from an earlier call)"
                                                          if reused else "")
        + f", evaluation and plots {eval_seconds / 60:.1f} min.",
    ]
    if suite.evaluation.untrained_reference:
        notes.append("Raw input (floor): the evaluation transform's output flattened (pixels after resizing and "
                     "normalisation; the log-mel spectrogram), scored by the same kNN and probe on the same samples "
                     "and draws; compared with the FSSUAVL rows of every encoder and strategy of that setting.")
        notes.append("Untrained: the seeded initial weights every run of that seed starts from (round 0), evaluated "
                     "the same way; compared with the FSSUAVL rows of every strategy. A random network already gives "
                     "useful features on small sets, so a trained model's gain is measured against it.")
    notes += [f"FAILED: {f}" for f in failures]
    return notes
