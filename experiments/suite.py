"""Run an experiment suite from YAML and write its comparison table and plots.

    python -m experiments.suite experiments/suites/default.yaml
    python -m experiments.suite experiments/suites/paper.yaml --dry-run   # check everything, list the jobs

A suite lists *entries* (method x encoder x strategy, optionally a sweep over one
setting); each entry is a row of the table and needs one or two training *jobs*
per seed; identical jobs are run once and reused. Methods:

- ``fssuavl``: the shared encoder, visual-only, audio-only and audio-visual clients as configured;
- ``fvssl`` / ``fassl``: only the image- / audio-holding clients of that federation, with exactly the
  data they hold there, one modality only;
- ``separate``: the FVSSL and FASSL encoders used together; parameters = both encoders;
- ``centralized``: ``experiments.centralized`` on the pooled data of the FSSUAVL federation with the
  sample budget its clients really spent (same seed).
- ``supervised``: the ceiling: the same encoder trained with labels (cross-entropy, linear classifier
  per modality) on the same pooled data, views and sample budget (``experiments.supervised_ceiling``).

Every table also has reference rows per seed: the untrained initial weights and the raw-input floor
(the evaluation transform's output flattened), and a section with every trained row's paired
difference to both.

Seeds: every training job runs once per seed of the top-level ``seeds`` list
(default: the run config's ``seed``); each table cell is ``mean ± std (n=K)`` over
seeds, baselines and FSSUAVL are compared paired by seed (95 % t interval of the
per-seed difference), and only differences whose interval excludes 0 are bold
and listed under "Where FSSUAVL loses / wins". The accuracy-per-round plot shows
the mean over seeds with a ±std band; t-SNE uses the first seed; ``results.json``
keeps every seed's numbers. Output: ``<results>/<suite>/{table.md,
accuracy_per_round.png, tsne-*.png, results.json}``; training runs go to
``<work-dir>/<suite>/<job>/`` (job ids include the seed) and are reused on a
later call unless ``--fresh``.

``--dry-run`` builds and validates every job's full run config (dataset layouts
under the data root included) and the evaluation datasets, then lists entries
and jobs.
SIGTERM / SIGINT are passed on to the running job, which
stops its SuperLink; the suite then exits with 128 + the signal number.

YAML keys (anything else is an error naming the key; schema in ``experiments/suite_spec.py``):

    name: default                  # results/<name>/ (default: the file name)
    description: free text
    seeds: [0, 1, 2]               # every job once per seed (default: [the run config's seed])
    runner:                        # how federated jobs are launched (experiments.launch)
      num-supernodes: 6            # clients of the FSSUAVL federation
      client-cpus: 2
      client-gpus: 0.0
      timeout: 3600                # seconds per federated run
      flwr-home: /tmp/fssuavl-suite-flwr
      superlink-port: 39491
      control-port: 39493
    defaults: {run-config key: value, ...}   # every job (app_config/run_config.py); not run-dir/save-every
    evaluation:
      knn-k: 10
      out-of-domain: ["digits:invert", "spoken-digits:noise0db", "cifar100"]
      fusion: true
      fusion-image-dataset: vggsound-frames   # fuse these sets (default: the in-domain ones; classes must match)
      fusion-audio-dataset: vggsound-audio
      max-train-samples: 0         # cap per split for big datasets (0 = all)
      max-test-samples: 0
      image-dataset: digits        # in-domain sets (default: each job's datasets)
      audio-dataset: spoken-digits
      untrained-reference: true    # also a row per encoder for the initial, untrained weights
    plots:
      tsne-rounds: [0, 3]          # rounds whose checkpoints are shown (save-every is set to reach them)
      tsne-methods: [fssuavl]
      tsne-max-points: 200         # per modality
    entries:
      - method: fssuavl            # fssuavl | fvssl | fassl | separate | centralized | supervised
        encoder: [resnet18_cifar, vit_tiny_cifar]   # a name or a list (cartesian product)
        strategy: [fedavg, ldawa]
        overrides: {run-config key: value}          # this entry only (not seed)
        num-supernodes: 6
        sweep: {audio-data-share: [0.25, 0.5, 1.0]} # one key: a run-config key or num-supernodes
        label: free text
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from app_config.log_setup import setup_logging
from experiments.common import PROJECT
from experiments.suite_eval import evaluate_suite, make_tsne
from experiments.suite_jobs import finished_run, forwarding_signals, run_job
from experiments.suite_plan import METHOD_NAMES, Suite, all_jobs, entry_jobs, load_suite
from experiments.suite_report import suite_notes, write_report
from experiments.suite_spec import SuiteError
from file_io.atomic import write_text

log = logging.getLogger("fssuavl.suite")


def train_all(suite: Suite, work: Path, fresh: bool) -> tuple[dict[str, Path], list[str]]:
    """Run (or reuse) every job; job id -> run folder, and one line per failed job."""
    runs: dict[str, Path] = {}
    failures = []
    jobs = all_jobs(suite)
    for job in tqdm(jobs, desc="training", unit="job", disable=None):
        if job.budget_job is not None and job.budget_job.id not in runs:
            failures.append(f"{job.id}: its budget run {job.budget_job.id} failed")
            continue
        try:
            runs[job.id] = run_job(suite, job, work, runs, fresh)
        except (RuntimeError, OSError, ValueError) as err:
            log.error("%s", err)
            failures.append(str(err))
    return runs, failures


def run_suite(suite: Suite, results_dir: Path, work_dir: Path, fresh: bool = False) -> Path:
    """Train, evaluate, plot and write the report; returns the path of table.md."""
    from experiments.plots import accuracy_per_round

    started = time.perf_counter()
    out_dir = results_dir / suite.name
    out_dir.mkdir(parents=True, exist_ok=True)
    work = work_dir / suite.name
    reused = {job.id for job in all_jobs(suite) if not fresh and finished_run(work / job.id) is not None}
    with logging_redirect_tqdm():
        runs, failures = train_all(suite, work, fresh)
        train_seconds = {job_id: json.loads((work / job_id / "job.json").read_text())["seconds"] for job_id in runs}
        eval_started = time.perf_counter()
        rows, series = evaluate_suite(suite, runs)
        plots = [accuracy_per_round(series, out_dir / "accuracy_per_round.png",
                                    f"suite {suite.name}: central evaluation per round (mean ± std over "
                                    f"{len(suite.seeds)} seed{'s' if len(suite.seeds) > 1 else ''})")]
        for entry in suite.entries:
            job = entry_jobs(suite, entry, suite.seeds[0])[-1]
            if entry.method in suite.plots.tsne_methods and suite.plots.tsne_rounds and job.id in runs:
                path = make_tsne(suite, entry, runs[job.id], out_dir)
                if path is not None:
                    plots.append(path)
        eval_seconds = time.perf_counter() - eval_started
    for row in rows:
        failures += [f"{row.method} {row.encoder} {row.strategy} {row.setting}: seed {seed}: {why}"
                     for seed, why in row.missing.items()]
    notes = suite_notes(suite, train_seconds, eval_seconds, time.perf_counter() - started, failures,
                        len(reused & set(runs)))
    write_text(out_dir / "results.json", json.dumps(
        {"suite": suite.name, "seeds": suite.seeds, "rows": [asdict(r) for r in rows],
         "runs": {k: str(v) for k, v in runs.items()}, "train-seconds": train_seconds,
         "eval-seconds": eval_seconds, "failures": failures},
        indent=2, sort_keys=True, default=str))
    path = write_report(suite, rows, out_dir, plots, notes)
    log.info("wrote %s (%.0fs)", path, time.perf_counter() - started)
    return path


def print_plan(suite: Suite) -> None:
    print(f"suite {suite.name}: {len(suite.entries)} entries x {len(suite.seeds)} seeds "
          f"({', '.join(map(str, suite.seeds))})")
    for e in suite.entries:
        print(f"  {METHOD_NAMES[e.method]:24s} {e.encoder:16s} {e.strategy:8s} {e.setting_text}")
    jobs = all_jobs(suite)
    print(f"{len(jobs)} training jobs (every run config validated)")
    for j in jobs:
        print(f"  {j.id}: {j.kind}, {j.describe()}")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description="Run a YAML experiment suite; write a comparison table and plots")
    parser.add_argument("suite", type=Path, help="e.g. experiments/suites/default.yaml")
    parser.add_argument("--results", type=Path, default=PROJECT / "results",
                        help="table and plots go to <results>/<name>/")
    parser.add_argument("--work-dir", type=Path, default=PROJECT / "runs" / "suites",
                        help="training runs go to <work-dir>/<name>/<job>/ (reused unless --fresh)")
    parser.add_argument("--fresh", action="store_true", help="retrain jobs even when a finished run exists")
    parser.add_argument("--dry-run", action="store_true", help="check the suite and list its entries and jobs")
    args = parser.parse_args(argv)
    try:
        suite = load_suite(args.suite)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print_plan(suite)
        return 0
    with forwarding_signals():
        run_suite(suite, args.results.resolve(), args.work_dir.resolve(), args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
