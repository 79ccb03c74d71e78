"""The raw-input floor of a finished suite, without training anything again.

A suite run before its table had floor rows can still be read against its
floor: this evaluates the raw input (the evaluation transform's output
flattened) seed by seed with the suite's own evaluation settings and draws,
exactly as a new suite run does, and prints the floor rows and every trained
row's paired difference to the floor and to its initial weights as Markdown.
The trained rows come from the suite's ``results.json``.

    python -m experiments.suite_references experiments/suites/default.yaml results/default/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app_config.log_setup import setup_logging
from experiments.suite_errors import SuiteError
from experiments.suite_eval import FLOOR_ENCODER, FLOOR_METHOD, FLOOR_STRATEGY, Row, evaluate_floor, floor_entries
from experiments.suite_plan import load_suite
from experiments.suite_report import accuracy_columns, cell, reference_lines


def stored_rows(results: dict) -> list[Row]:
    """The rows of a suite's results.json, as the suite holds them."""
    return [Row.from_json(row) for row in results["rows"]]


def floor_rows(suite) -> list[Row]:
    from experiments.frozen_eval import FeatureCache

    rows = []
    for entry in floor_entries(suite):
        row = Row(FLOOR_METHOD, FLOOR_ENCODER, FLOOR_STRATEGY, entry.setting_text)
        for seed in suite.seeds:
            evaluate_floor(suite, entry, seed, row, FeatureCache())
        rows.append(row)
    return rows


def report(suite, rows: list[Row], floors: list[Row]) -> list[str]:
    ood = list(suite.evaluation.out_of_domain)
    columns = accuracy_columns(ood)
    lines = [f"# Suite `{suite.name}`: raw-input floor", "",
             "The evaluation transform's output flattened, under the suite's kNN, probe, samples and draws per "
             f"seed ({', '.join(map(str, suite.seeds))}); accuracy in %, mean ± sample std over seeds.", "",
             "| method | setting | " + " | ".join(t for _, t in columns) + " |",
             "|---|---|" + "|".join("---" for _ in columns) + "|"]
    lines += [f"| {r.method} | {r.setting} | " + " | ".join(cell(r, k) for k, _ in columns) + " |" for r in floors]
    lines += ["", "## Against the raw input and the initial weights", "",
              "Trained row − reference, percentage points, mean [95 % interval] over paired seeds; **bold ... "
              "below**: clearly below the raw input.", ""]
    return lines + reference_lines(rows + floors, ood)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description="Raw-input floor rows of a finished suite (no training)")
    parser.add_argument("suite", type=Path, help="the suite's YAML")
    parser.add_argument("results", type=Path, help="its results.json")
    args = parser.parse_args(argv)
    try:
        suite = load_suite(args.suite)
        rows = [r for r in stored_rows(json.loads(args.results.read_text())) if r.strategy != FLOOR_STRATEGY]
    except (SuiteError, OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(report(suite, rows, floor_rows(suite))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
