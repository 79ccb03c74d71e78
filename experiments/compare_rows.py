"""Compare any two rows of a finished suite seed by seed: an ablation's two settings, two strategies, ...

The suite's own report compares FSSUAVL with its baselines; this compares the
two rows you name (each picked by text that occurs in exactly one row's
"method encoder strategy setting", e.g. ``update-dtype='float16'``), metric by
metric: first - second, mean and 95 % t interval over the seeds both have
(``experiments.suite_stats.paired_difference``), and whether the interval
excludes 0.

    python -m experiments.compare_rows results/compact-updates/results.json \\
        "update-dtype='float16'" "update-dtype='float32'"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app_config.log_setup import setup_logging
from experiments.suite_eval import Row
from experiments.suite_stats import paired_difference, summarize

ACCURACY = ("knn", "probe", "ood-", "fusion-knn", "fusion-probe", "paired-")  # per-seed keys that are accuracies


def row_label(row: dict) -> str:
    return " ".join(str(row.get(k, "")) for k in ("method", "encoder", "strategy", "setting")).strip()


def pick_row(rows: list[dict], text: str) -> dict:
    """The one row whose label contains ``text``; a one-line error otherwise."""
    found = [row for row in rows if text in row_label(row)]
    if len(found) != 1:
        labels = "; ".join(row_label(row) for row in rows)
        raise ValueError(f"{text!r} matches {len(found)} rows (need exactly one); rows: {labels}")
    return found[0]


def per_metric(row: dict) -> dict[str, dict[int, float]]:
    """metric -> {seed: value} for the accuracy metrics of one row (read as the suite reads its rows)."""
    table_row = Row.from_json(row)
    metrics = {metric for values in table_row.per_seed.values() for metric in values if metric.startswith(ACCURACY)}
    return {metric: table_row.values(metric) for metric in metrics}


def compare(first: dict, second: dict) -> list[str]:
    """One line per metric both rows have: means, first - second [95 % CI], clear or not."""
    a, b = per_metric(first), per_metric(second)
    lines = []
    for metric in sorted(set(a) & set(b)):
        diff = paired_difference(a[metric], b[metric])
        if diff is None:
            continue
        sa, sb = summarize(a[metric].values()), summarize(b[metric].values())
        verdict = "clear" if diff.clear else "no clear difference"
        lines.append(f"{metric:<34} {sa.text():>20} {sb.text():>20}   {diff.text()}   {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a suite's results.json")
    parser.add_argument("first", help="text that names the first row")
    parser.add_argument("second", help="text that names the second row")
    args = parser.parse_args(argv)
    try:
        rows = json.loads(args.results.read_text())["rows"]
        first, second = pick_row(rows, args.first), pick_row(rows, args.second)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"first:  {row_label(first)}\nsecond: {row_label(second)}")
    lines = compare(first, second)
    if not lines:
        print("error: the two rows share no metric on a common seed", file=sys.stderr)
        return 1
    print(f"{'metric':<34} {'first':>20} {'second':>20}   first - second")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
