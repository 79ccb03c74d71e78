"""Run an experiment suite from YAML and write its comparison table and plots.

    python -m experiments.suite experiments/suites/default.yaml
    python -m experiments.suite experiments/suites/ablation.yaml --dry-run

A suite lists *entries* (method x encoder x strategy, optionally a sweep over
one setting). Each entry needs one or two training *jobs*; identical jobs are
run once and reused (e.g. the separate-models baseline reuses the FVSSL and
FASSL runs, the centralized baseline takes its sample budget from the matching
FSSUAVL run). Methods:

- ``fssuavl``: the shared encoder, visual-only, audio-only and audio-visual
  clients as configured;
- ``fvssl``: only the image-holding clients of that federation, with exactly
  the image data they hold there (the plan's image split does not depend on the
  audio clients) and no audio;
- ``fassl``: the same for the audio-holding clients and audio;
- ``separate``: the FVSSL and FASSL encoders used together (images through the
  first, audio through the second); parameters = both encoders;
- ``centralized``: ``experiments.centralized`` on the pooled data of the FSSUAVL
  federation with the sample budget its clients really spent.

Every job's global encoder is then evaluated by ``experiments.evaluate_encoder``
(kNN and linear probe per modality, out-of-domain sets, class-paired fusion),
and the suite writes ``<results>/<suite>/table.md`` (comparison table; every
cell where a baseline beats the FSSUAVL row of the same encoder, strategy and
setting is bold and listed), ``accuracy_per_round.png``, ``tsne-*.png`` and
``results.json``. Training runs go to ``<work-dir>/<suite>/<job>/`` and are
reused on a later call unless ``--fresh``.

The suite holds an exclusive ``flock`` on ``$FSSUAVL_RUN_LOCK`` (default
``/tmp/fssuavl-cpu.lock``; ``''`` disables it) from start to end (``run_suite``
used as a library takes it per training job and for the evaluation), so heavy
jobs of different people do not overlap on one machine (only one local
SuperLink can run at a time anyway) and the reported times are not inflated
by other work.

YAML keys (anything else is an error naming the key):

    name: default                  # results/<name>/
    description: free text
    runner:                        # how federated jobs are launched (experiments.launch)
      num-supernodes: 6            # clients of the FSSUAVL federation
      client-cpus: 2
      client-gpus: 0.0
      timeout: 3600                # seconds per federated run
      flwr-home: /tmp/fssuavl-suite-flwr
      superlink-port: 39491
      control-port: 39493
    defaults: {run-config key: value, ...}   # applied to every job (see app_config/run_config.py)
    evaluation:
      knn-k: 10
      out-of-domain: ["digits:invert", "spoken-digits:noise0db", "cifar10"]
      fusion: true
      max-train-samples: 0         # cap per split for big datasets (0 = all)
      max-test-samples: 0
      image-dataset: digits        # in-domain sets (default: the defaults' datasets)
      audio-dataset: spoken-digits
      untrained-reference: true    # also a row per encoder for the initial, untrained weights
    plots:
      tsne-rounds: [0, 3]          # rounds whose checkpoints are shown (save-every is set to reach them)
      tsne-methods: [fssuavl]
      tsne-max-points: 200         # per modality
    entries:
      - method: fssuavl            # fssuavl | fvssl | fassl | separate | centralized
        encoder: [resnet18_cifar, vit_tiny_cifar]   # a name or a list (cartesian product)
        strategy: [fedavg, ldawa]
        overrides: {run-config key: value}          # this entry only
        num-supernodes: 6
        sweep: {audio-data-share: [0.25, 0.5, 1.0]} # one key: a run-config key or num-supernodes
        label: free text
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
METHODS = ("fssuavl", "fvssl", "fassl", "separate", "centralized")
METHOD_NAMES = {"fssuavl": "FSSUAVL", "fvssl": "FVSSL", "fassl": "FASSL",
                "separate": "Separate (FVSSL+FASSL)", "centralized": "Centralized"}
TOP_KEYS = ("name", "description", "runner", "defaults", "evaluation", "plots", "entries")
RUNNER_DEFAULTS = {"num-supernodes": 6, "client-cpus": 2, "client-gpus": 0.0, "timeout": 3600,
                   "flwr-home": "/tmp/fssuavl-suite-flwr", "superlink-port": 39491, "control-port": 39493}
EVAL_DEFAULTS = {"knn-k": 0, "out-of-domain": [], "fusion": True, "max-train-samples": 0, "max-test-samples": 0,
                 "image-dataset": None, "audio-dataset": None, "untrained-reference": True}
PLOT_DEFAULTS = {"tsne-rounds": [], "tsne-methods": ["fssuavl"], "tsne-max-points": 200}
ENTRY_KEYS = ("method", "encoder", "strategy", "overrides", "num-supernodes", "sweep", "label")
SUITE_SET_KEYS = ("run-dir", "save-every")  # the suite sets these per job


class SuiteError(ValueError):
    """A suite file that cannot run; the message is one line naming the file, entry and key."""


# --------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Entry:
    method: str
    encoder: str
    strategy: str
    setting: tuple[tuple[str, object], ...]  # what the table shows besides encoder/strategy
    overrides: tuple[tuple[str, object], ...]  # run-config overrides of the FSSUAVL federation
    num_supernodes: int
    label: str = ""

    @property
    def setting_text(self) -> str:
        return ", ".join(f"{k}={_literal(v)}" for k, v in self.setting) or "-"

    @property
    def key(self) -> tuple:
        """Entries with the same key are compared with each other."""
        return (self.encoder, self.strategy, self.setting)


@dataclass
class Suite:
    name: str
    description: str
    runner: dict
    defaults: dict
    evaluation: dict
    plots: dict
    entries: list[Entry]
    source: str = ""


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def _check_keys(where: str, mapping, allowed) -> None:
    if not isinstance(mapping, dict):
        raise SuiteError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise SuiteError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(allowed)}")


def _check_type(where: str, value, default) -> None:
    if default is None or isinstance(default, list):
        return
    expected = type(default)
    ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
    if not ok or (expected in (int, float) and isinstance(value, bool)):
        raise SuiteError(f"{where}: expected {expected.__name__}, got {value!r}")


def _run_config_keys() -> dict:
    from app_config.run_config import RunConfig

    return RunConfig.keys()


def _check_overrides(where: str, overrides) -> dict:
    keys = _run_config_keys()
    _check_keys(where, overrides, tuple(keys))
    for key in overrides:
        if key in SUITE_SET_KEYS:
            raise SuiteError(f"{where}: {key!r} is set by the suite (results go to --work-dir; "
                             "save-every follows plots.tsne-rounds)")
    return dict(overrides)


def _as_list(where: str, value, kind=str) -> list:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise SuiteError(f"{where}: expected {kind.__name__} or a list of them, got {v!r}")
    return values


def parse_suite(text: str, source: str = "<suite>") -> Suite:
    """Parse and check a suite (YAML text); SuiteError (one line) on any problem."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SuiteError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from err
    _check_keys(source, raw, TOP_KEYS)
    if "entries" not in raw or not raw["entries"]:
        raise SuiteError(f"{source}: 'entries' is missing or empty")
    name = str(raw.get("name") or Path(source).stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SuiteError(f"{source}: name {name!r} must be letters, digits, '.', '_' or '-'")
    runner = {**RUNNER_DEFAULTS}
    for section, defaults, target in (("runner", RUNNER_DEFAULTS, runner),):
        given = raw.get(section) or {}
        _check_keys(f"{source}: {section}", given, tuple(defaults))
        for k, v in given.items():
            _check_type(f"{source}: {section}.{k}", v, defaults[k])
        target.update(given)
    evaluation = {**EVAL_DEFAULTS, **_section(raw, "evaluation", EVAL_DEFAULTS, source)}
    plots = {**PLOT_DEFAULTS, **_section(raw, "plots", PLOT_DEFAULTS, source)}
    defaults = _check_overrides(f"{source}: defaults", raw.get("defaults") or {})

    from experiments.evaluate_encoder import parse_eval_set

    evaluation["out-of-domain"] = _as_list(f"{source}: evaluation.out-of-domain", evaluation["out-of-domain"])
    for text_set in evaluation["out-of-domain"]:
        try:
            parse_eval_set(text_set)
        except ValueError as err:
            raise SuiteError(f"{source}: evaluation.out-of-domain: {err}") from err
    plots["tsne-rounds"] = _as_list(f"{source}: plots.tsne-rounds", plots["tsne-rounds"], int)
    plots["tsne-methods"] = _as_list(f"{source}: plots.tsne-methods", plots["tsne-methods"])
    for m in plots["tsne-methods"]:
        if m not in METHODS:
            raise SuiteError(f"{source}: plots.tsne-methods: unknown method {m!r}; valid: {', '.join(METHODS)}")

    if not isinstance(raw["entries"], list):
        raise SuiteError(f"{source}: entries: expected a list of mappings")
    entries: list[Entry] = []
    for i, item in enumerate(raw["entries"], start=1):
        entries.extend(_expand_entry(f"{source}: entries[{i}]", item, defaults, runner))
    suite = Suite(name, str(raw.get("description") or "").strip(), runner, defaults, evaluation, plots, entries, source)
    try:
        jobs = all_jobs(suite)
        for job in jobs:  # every job's full run config must validate now, not after an hour
            job.config()
    except SuiteError as err:
        raise SuiteError(f"{source}: {err}") from err
    _check_eval_data(suite, jobs[0].config(), source)
    return suite


def _check_eval_data(suite: Suite, config, source: str) -> None:
    """Evaluation datasets must be registered and, for real datasets, laid out under the data root."""
    from data_partition.datasets import DATASETS, layout_problem
    from experiments.evaluate_encoder import parse_eval_set

    names = [(f"evaluation.out-of-domain: {t}", parse_eval_set(t).dataset) for t in suite.evaluation["out-of-domain"]]
    for key, modality in (("image-dataset", "image"), ("audio-dataset", "audio")):
        name = suite.evaluation[key]
        if name:
            if name not in DATASETS or DATASETS[name].modality != modality:
                valid = ", ".join(sorted(n for n, d in DATASETS.items() if d.modality == modality))
                raise SuiteError(f"{source}: evaluation.{key}: unknown value {name!r}; valid: {valid}")
            names.append((f"evaluation.{key}", name))
    root = config.resolved_data_root()
    for key, name in names:
        problem = layout_problem(name, root)
        if problem:
            raise SuiteError(f"{source}: {key}: {problem}")


def _section(raw: dict, section: str, defaults: dict, source: str) -> dict:
    given = raw.get(section) or {}
    _check_keys(f"{source}: {section}", given, tuple(defaults))
    for k, v in given.items():
        _check_type(f"{source}: {section}.{k}", v, defaults[k])
    return dict(given)


def _expand_entry(where: str, item, defaults: dict, runner: dict) -> list[Entry]:
    _check_keys(where, item, ENTRY_KEYS)
    method = item.get("method")
    if method not in METHODS:
        raise SuiteError(f"{where}: method: unknown value {method!r}; valid: {', '.join(METHODS)}")
    where = f"{where} ({method})"
    base = {**defaults, **_check_overrides(f"{where}: overrides", item.get("overrides") or {})}
    run_defaults = _run_config_keys()
    encoders = _as_list(f"{where}: encoder", item.get("encoder", base.get("encoder", run_defaults["encoder"])))
    strategies = _as_list(f"{where}: strategy", item.get("strategy", base.get("strategy", run_defaults["strategy"])))
    supernodes = item.get("num-supernodes", runner["num-supernodes"])
    _check_type(f"{where}: num-supernodes", supernodes, 1)
    sweep = item.get("sweep") or {}
    if not isinstance(sweep, dict) or len(sweep) > 1:
        raise SuiteError(f"{where}: sweep: expected one key with a list of values, e.g. {{dirichlet-alpha: [0.1, 1.0]}}")
    sweep_points: list[tuple[str, object] | None] = [None]
    if sweep:
        (key, values), = sweep.items()
        if key != "num-supernodes" and key not in run_defaults:
            raise SuiteError(f"{where}: sweep: unknown key {key!r}; valid: num-supernodes or a run-config key")
        if key in SUITE_SET_KEYS or key in ("encoder", "strategy"):
            raise SuiteError(f"{where}: sweep: {key!r} cannot be swept here (list encoders/strategies directly)")
        if not isinstance(values, list) or not values:
            raise SuiteError(f"{where}: sweep.{key}: expected a non-empty list of values")
        sweep_points = [(key, v) for v in values]
    setting_keys = [k for k in (item.get("overrides") or {}) if k not in ("encoder", "strategy")]
    out = []
    for encoder, strategy, point in itertools.product(encoders, strategies, sweep_points):
        overrides = {**base, "encoder": encoder, "strategy": strategy}
        n = supernodes
        setting = [(k, overrides[k]) for k in setting_keys]
        if point is not None:
            key, value = point
            if key == "num-supernodes":
                _check_type(f"{where}: sweep.num-supernodes", value, 1)
                n = value
            else:
                overrides[key] = value
            setting = [(k, v) for k, v in setting if k != key] + [(key, value)]
        if item.get("num-supernodes") is not None and (point is None or point[0] != "num-supernodes"):
            setting.append(("num-supernodes", n))
        out.append(Entry(method, encoder, strategy, tuple(setting), tuple(sorted(overrides.items())), n,
                         str(item.get("label") or "")))
    return out


# --------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    kind: str  # "federated" or "centralized"
    role: str  # fssuavl / fvssl / fassl / centralized (for names)
    overrides: tuple[tuple[str, object], ...]
    num_supernodes: int
    budget_job: "Job | None" = None  # centralized: the FSSUAVL job whose clients set the budget

    def config(self):
        from app_config.run_config import ConfigError
        from experiments.centralized import config_from

        try:
            return config_from(dict(self.overrides))
        except ConfigError as err:
            raise SuiteError(f"{self.role} job ({self.describe()}): {err}") from err

    def describe(self) -> str:
        d = dict(self.overrides)
        return f"{d.get('encoder')}, {d.get('strategy')}, {self.num_supernodes} clients"

    @property
    def id(self) -> str:
        from app_config.run_config import RunConfig

        full = {**RunConfig.keys(), **dict(self.overrides)}
        payload = json.dumps({"kind": self.kind, "config": full, "clients": self.num_supernodes,
                              "budget": self.budget_job.id if self.budget_job else None}, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        d = dict(self.overrides)
        return f"{self.role}-{d.get('encoder')}-{d.get('strategy')}-{digest}"


def _holders(overrides: dict, num_supernodes: int) -> tuple[int, int]:
    """(image-holding, audio-holding) clients of the FSSUAVL federation."""
    from data_partition.partition import kind_counts

    keys = _run_config_keys()
    fracs = tuple(float(overrides.get(k, keys[k])) for k in
                  ("frac-visual-clients", "frac-audio-clients", "frac-audiovisual-clients"))
    visual, audio, both = kind_counts(num_supernodes, fracs)
    return visual + both, audio + both


def _tsne_save_every(suite: Suite, overrides: dict) -> int:
    rounds = int(overrides.get("num-server-rounds", _run_config_keys()["num-server-rounds"]))
    wanted = [r for r in suite.plots["tsne-rounds"] if 0 < r < rounds]
    return math.gcd(*wanted) if wanted else rounds


def _with_suite_keys(suite: Suite, overrides: dict) -> dict:
    out = dict(overrides)
    if suite.plots["tsne-rounds"]:
        out["save-every"] = _tsne_save_every(suite, overrides)
    return out


def single_modality(overrides: dict, num_supernodes: int, modality: str) -> tuple[dict, int]:
    """Overrides and client count of FVSSL (modality='image') or FASSL ('audio') for a FSSUAVL federation."""
    images, audios = _holders(overrides, num_supernodes)
    n = images if modality == "image" else audios
    if n == 0:
        raise SuiteError(f"no client of the {num_supernodes}-client federation holds {modality} data")
    out = dict(overrides)
    out.update({"frac-visual-clients": 1.0 if modality == "image" else 0.0,
                "frac-audio-clients": 0.0 if modality == "image" else 1.0,
                "frac-audiovisual-clients": 0.0})
    out["audio-dataset" if modality == "image" else "image-dataset"] = ""
    keys = _run_config_keys()
    out["min-train-nodes"] = min(int(out.get("min-train-nodes", keys["min-train-nodes"])), n)
    return out, n


def fssuavl_job(suite: Suite, entry: Entry) -> Job:
    """The FSSUAVL federation an entry is defined against (its own job when method is fssuavl)."""
    overrides = _with_suite_keys(suite, dict(entry.overrides))
    return Job("federated", "fssuavl", tuple(sorted(overrides.items())), entry.num_supernodes)


def entry_jobs(suite: Suite, entry: Entry) -> list[Job]:
    """Training jobs an entry needs; the last one's run is the entry's model (separate: [fvssl, fassl])."""
    fssuavl = fssuavl_job(suite, entry)
    overrides = dict(fssuavl.overrides)
    jobs = {}
    for modality, role in (("image", "fvssl"), ("audio", "fassl")):
        if entry.method in (role, "separate"):
            o, n = single_modality(overrides, entry.num_supernodes, modality)
            jobs[role] = Job("federated", role, tuple(sorted(o.items())), n)
    if entry.method == "fssuavl":
        return [fssuavl]
    if entry.method == "centralized":
        return [fssuavl, Job("centralized", "centralized", fssuavl.overrides, entry.num_supernodes, fssuavl)]
    return list(jobs.values())


def all_jobs(suite: Suite) -> list[Job]:
    """Every distinct job, federated ones first (centralized jobs need their budget run)."""
    seen: dict[str, Job] = {}
    for entry in suite.entries:
        for job in entry_jobs(suite, entry):
            seen.setdefault(job.id, job)
    return sorted(seen.values(), key=lambda j: j.kind == "centralized")


# --------------------------------------------------------------------------- running jobs
def _run_config_text(overrides: dict) -> str:
    return " ".join(f"{k}={_literal(v)}" for k, v in sorted(overrides.items()))


def _finished_run(job_dir: Path) -> Path | None:
    marker = job_dir / "job.json"
    if not marker.exists():
        return None
    folder = Path(json.loads(marker.read_text())["run-folder"])
    return folder if (folder / "final_model.pt").exists() and (folder / "summary.json").exists() else None


def run_job(suite: Suite, job: Job, work_dir: Path, runs: dict[str, Path], fresh: bool = False) -> Path:
    """Train one job (or reuse its finished run); return its run folder."""
    from experiments.centralized import run_lock

    job_dir = work_dir / job.id
    if not fresh and (done := _finished_run(job_dir)) is not None:
        print(f"[suite] {job.id}: reusing {done}", flush=True)
        return done
    runs_dir = job_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    overrides = {**dict(job.overrides), "run-dir": str(runs_dir)}
    with run_lock():
        started = time.perf_counter()
        before = set(runs_dir.iterdir())
        print(f"[suite] {job.id}: training ({job.kind}, {job.describe()})", flush=True)
        if job.kind == "federated":
            _launch(suite, job, overrides, job_dir / "launch.log")
        else:
            _centralized(job, overrides, runs[job.budget_job.id], runs_dir)
        new = sorted(set(runs_dir.iterdir()) - before)
        seconds = time.perf_counter() - started
    if len(new) != 1 or not (new[0] / "final_model.pt").exists():
        raise RuntimeError(f"{job.id}: no finished run folder under {runs_dir} (see {job_dir / 'launch.log'})")
    (job_dir / "job.json").write_text(json.dumps({"run-folder": str(new[0]), "seconds": seconds, "kind": job.kind,
                                                  "overrides": dict(job.overrides),
                                                  "num-supernodes": job.num_supernodes}, indent=2))
    print(f"[suite] {job.id}: done in {seconds:.0f}s -> {new[0]}", flush=True)
    return new[0]


def _launch(suite: Suite, job: Job, overrides: dict, log_file: Path) -> None:
    r = suite.runner
    cmd = [sys.executable, "-m", "experiments.launch", "--num-supernodes", str(job.num_supernodes),
           "--client-cpus", str(r["client-cpus"]), "--client-gpus", str(r["client-gpus"]),
           "--flwr-home", str(Path(r["flwr-home"]).expanduser()), "--superlink-port", str(r["superlink-port"]),
           "--control-port", str(r["control-port"]), "--timeout", str(r["timeout"]),
           "--run-config", _run_config_text(overrides)]
    env = {**os.environ, "FSSUAVL_RUN_LOCK": ""}  # this process holds the lock for the child
    with open(log_file, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if "[fssuavl] round" in line or line.startswith("error"):
                print("    " + line[line.find("[fssuavl]"):].rstrip() if "[fssuavl]" in line else "    " + line.rstrip(),
                      flush=True)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"{job.id}: experiments.launch exited {code}; see {log_file}")


def _centralized(job: Job, overrides: dict, budget_run: Path, runs_dir: Path) -> None:
    from experiments.centralized import budget_from_metrics, config_from, pooled_data, train_centralized

    config = config_from(overrides)
    budget = budget_from_metrics(budget_run / "metrics.jsonl", config.batch_size)
    pooled = pooled_data(config, job.num_supernodes)
    train_centralized(config, budget, pooled, runs_dir, f"clients of {budget_run.name}")


# --------------------------------------------------------------------------- evaluation
@dataclass
class Row:
    """One line of the comparison table."""

    method: str
    encoder: str
    strategy: str
    setting: str = "-"
    metrics: dict = field(default_factory=dict)
    params: int = 0
    flops_image: int = 0
    flops_audio: int = 0
    status: str = "ok"
    label: str = ""

    @property
    def ours(self) -> bool:
        """An FSSUAVL row (the method the others are compared with)."""
        return self.method.split(" (")[0] == METHOD_NAMES["fssuavl"]


def eval_settings(suite: Suite, config):
    from experiments.evaluate_encoder import EvalSettings

    ev = suite.evaluation
    return EvalSettings(
        knn_k=ev["knn-k"] or config.knn_k, out_of_domain=tuple(ev["out-of-domain"]), fusion=bool(ev["fusion"]),
        max_train_samples=ev["max-train-samples"], max_test_samples=ev["max-test-samples"],
        image_dataset=ev["image-dataset"] if ev["image-dataset"] is not None else config.image_dataset,
        audio_dataset=ev["audio-dataset"] if ev["audio-dataset"] is not None else config.audio_dataset,
        seed=config.seed,
    )


def evaluate_entry(suite: Suite, entry: Entry, runs: dict[str, Path], cache, encoders: dict) -> Row:
    from experiments.evaluate_encoder import evaluate, load_encoder
    from experiments.model_cost import encoder_cost

    jobs = entry_jobs(suite, entry)
    row = Row(METHOD_NAMES[entry.method] + (f" ({entry.label})" if entry.label else ""), entry.encoder,
              f"- ({entry.strategy} budget)" if entry.method == "centralized" else entry.strategy,
              entry.setting_text, label=entry.label)
    missing = [j.id for j in jobs if j.id not in runs]
    if missing:
        row.status = f"not trained ({missing[0]} failed)"
        return row

    def enc(job: Job):
        if runs[job.id] not in encoders:
            encoders[runs[job.id]] = load_encoder(runs[job.id])
        return encoders[runs[job.id]]

    if entry.method == "separate":
        image_encoder, audio_encoder = enc(jobs[0]), enc(jobs[1])
    else:
        image_encoder = audio_encoder = enc(jobs[-1])
    base_config = fssuavl_job(suite, entry).config()  # in-domain sets: the FSSUAVL federation's datasets
    row.metrics = evaluate(image_encoder, audio_encoder, eval_settings(suite, base_config), cache)
    cost_image, cost_audio = encoder_cost(image_encoder.config), encoder_cost(audio_encoder.config)
    row.params = cost_image["params"] + (cost_audio["params"] if entry.method == "separate" else 0)
    row.flops_image, row.flops_audio = cost_image["flops-image"], cost_audio["flops-audio"]
    return row


def untrained_rows(suite: Suite, cache) -> list[Row]:
    """One row per FSSUAVL encoder and setting: the seeded initial weights every run starts from,
    evaluated like the trained encoders (what training adds on top of a random network)."""
    import torch

    from client_app.task import build_model
    from experiments.evaluate_encoder import Encoder, evaluate
    from experiments.model_cost import encoder_cost
    from models.device import resolve_device

    rows, done = [], set()
    for entry in suite.entries:
        if entry.method != "fssuavl" or (entry.encoder, entry.setting_text) in done:
            continue
        done.add((entry.encoder, entry.setting_text))
        config = fssuavl_job(suite, entry).config()
        torch.manual_seed(config.seed)  # as the ServerApp draws the initial global model
        model = build_model(config).to(resolve_device(config.device)).eval()
        encoder = Encoder(config, model, key=f"initial:{config.encoder}:{config.seed}:{entry.setting_text}")
        print(f"[suite] evaluating the untrained {config.encoder}", flush=True)
        cost = encoder_cost(config)
        rows.append(Row(UNTRAINED_METHOD, entry.encoder, UNTRAINED_STRATEGY, entry.setting_text,
                        evaluate(encoder, encoder, eval_settings(suite, config), cache),
                        cost["params"], cost["flops-image"], cost["flops-audio"]))
    return rows


# --------------------------------------------------------------------------- table
UNTRAINED_METHOD, UNTRAINED_STRATEGY = "Untrained (initial weights)", "- (no training)"
ACCURACY_COLUMNS = (("probe-image", "image probe"), ("knn-image", "image kNN"), ("probe-audio", "audio probe"),
                    ("knn-audio", "audio kNN"), ("fusion-probe", "fusion probe"))


def _pct(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "n/a"


def accuracy_columns(ood: list[str]) -> list[tuple[str, str]]:
    return list(ACCURACY_COLUMNS) + [(f"ood-probe-{name}", f"OOD {name} probe") for name in ood]


def references(rows: list[Row], row: Row) -> list[int]:
    """Indices of the FSSUAVL rows a baseline row is compared with: same encoder and setting, and the
    same strategy (the centralized row: the strategy whose budget it used; the untrained reference:
    every strategy)."""
    if row.ours or row.status != "ok":
        return []
    return [i for i, r in enumerate(rows) if r.ours and r.status == "ok" and r.encoder == row.encoder
            and r.setting == row.setting and (row.strategy == UNTRAINED_STRATEGY
                                              or r.strategy == _base_strategy(row.strategy))]


def comparisons(rows: list[Row], ood: list[str]) -> dict[int, dict]:
    """Row index of each FSSUAVL row -> {"against": [baseline methods compared with it],
    "losses": [(baseline method, column title, baseline value, FSSUAVL value)]} where a baseline is higher
    (as displayed)."""
    columns = accuracy_columns(ood)
    out: dict[int, dict] = {i: {"against": [], "losses": []} for i, r in enumerate(rows) if r.ours}
    for row in rows:
        for ref in references(rows, row):
            out[ref]["against"].append(row.method)
            for key, title in columns:
                mine, theirs = _pct(rows[ref].metrics.get(key)), _pct(row.metrics.get(key))
                if mine != "n/a" and theirs != "n/a" and float(theirs) > float(mine):
                    out[ref]["losses"].append((row.method, title, theirs, mine))
    return out


def _base_strategy(strategy: str) -> str:
    found = re.fullmatch(r"- \((.+) budget\)", strategy)
    return found.group(1) if found else strategy


def render_table(rows: list[Row], ood: list[str]) -> list[str]:
    """The comparison table as Markdown lines (accuracies in %, baseline cells that beat FSSUAVL in bold)."""
    columns = accuracy_columns(ood)
    with_setting = any(r.setting != "-" for r in rows)
    head = ["method", "encoder", "strategy"] + (["setting"] if with_setting else []) + [t for _, t in columns] + \
        ["params (M)", "GFLOPs image / audio", "FSSUAVL loses to"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    compared = comparisons(rows, ood)
    for i, row in enumerate(rows):
        cells = [row.method, row.encoder, row.strategy] + ([row.setting] if with_setting else [])
        if row.status != "ok":
            cells += [row.status] + [""] * (len(columns) - 1) + ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        refs = [rows[j] for j in references(rows, row)]
        for key, _ in columns:
            text = _pct(row.metrics.get(key))
            mine = [_pct(r.metrics.get(key)) for r in refs]
            if text != "n/a" and any(m != "n/a" and float(text) > float(m) for m in mine):
                text = f"**{text}**"
            cells.append(text)
        cells.append(f"{row.params / 1e6:.2f}")
        cells.append(f"{row.flops_image / 1e9:.3f} / {row.flops_audio / 1e9:.3f}")
        cells.append(_losses_cell(compared[i]) if row.ours else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _losses_cell(compared: dict) -> str:
    """'FVSSL: image probe +1.2, audio kNN +0.4; Centralized: audio probe +3.0' (points above FSSUAVL),
    'none (vs FVSSL, ...)' or 'no baseline in this suite'."""
    by_method: dict[str, list[str]] = {}
    for method, title, theirs, mine in compared["losses"]:
        by_method.setdefault(method, []).append(f"{title} +{float(theirs) - float(mine):.1f}")
    if by_method:
        return "; ".join(f"{m}: {', '.join(items)}" for m, items in by_method.items())
    if compared["against"]:
        return f"none (vs {', '.join(compared['against'])})"
    return "no baseline in this suite"


def render_fusion(rows: list[Row]) -> list[str]:
    lines = ["| method | encoder | strategy | image alone | audio alone | image + audio | gain over best single |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row.metrics
        if row.status != "ok" or not all(k in m for k in ("fusion-probe", "paired-probe-image", "paired-probe-audio")):
            continue
        best = max(m["paired-probe-image"], m["paired-probe-audio"])
        gain = 100 * m["fusion-probe"] - 100 * best
        strategy = row.strategy + (f", {row.setting}" if row.setting != "-" else "")
        lines.append(f"| {row.method} | {row.encoder} | {strategy} | {_pct(m['paired-probe-image'])} | "
                     f"{_pct(m['paired-probe-audio'])} | {_pct(m['fusion-probe'])} | {gain:+.1f} |")
    return lines


def loss_summary(rows: list[Row], ood: list[str]) -> list[str]:
    out = []
    for i, compared in comparisons(rows, ood).items():
        r = rows[i]
        where = f"FSSUAVL {r.encoder} {r.strategy}" + (f" ({r.setting})" if r.setting != "-" else "")
        if compared["losses"]:
            parts = "; ".join(f"{m} {t} {theirs} vs {mine}" for m, t, theirs, mine in compared["losses"])
            out.append(f"- {where} loses to: {parts}.")
        elif compared["against"]:
            out.append(f"- {where}: higher than or equal to {', '.join(compared['against'])} on every accuracy "
                       "column.")
        else:
            out.append(f"- {where}: no baseline with this encoder, strategy and setting in this suite "
                       "(not compared).")
    return out


def write_report(suite: Suite, rows: list[Row], out_dir: Path, plots: list[Path], notes: list[str]) -> Path:
    from experiments.evaluate_encoder import describe, parse_eval_set

    ood = list(suite.evaluation["out-of-domain"])
    lines = [f"# Suite `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += ["Accuracy in % on held-out data (frozen encoder). **Bold**: a baseline higher (as displayed) than "
              "an FSSUAVL row it is compared with: same encoder and setting, same strategy (the untrained "
              "reference: every strategy). The last column lists every such loss in percentage points.", ""]
    lines += render_table(rows, ood)
    fusion = render_fusion(rows)
    if len(fusion) > 2:
        lines += ["", "## Fusion (class-paired held-out samples, linear probe)", "",
                  "Each held-out image is paired with a randomly drawn (seeded) held-out clip of the same digit, "
                  "and likewise for the probe's training pairs; the two recordings are **not** co-recorded, only "
                  "class-paired. Features: each modality's L2-normalised encoder output, concatenated.", ""]
        lines += fusion
    lines += ["", "## Where FSSUAVL loses", ""] + loss_summary(rows, ood)
    if ood:
        lines += ["", "## Out-of-domain sets", ""]
        lines += [f"- `{name}`: {describe(parse_eval_set(name))}; probe fitted on its own training split." for name in ood]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out_dir / "table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- driver
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def make_tsne(suite: Suite, entry: Entry, run: Path, out_dir: Path) -> Path | None:
    from experiments.evaluate_encoder import heldout_features, load_encoder
    from experiments.plots import tsne_panels

    panels, classes = {}, ()
    job = entry_jobs(suite, entry)[-1]
    rounds = int(dict(job.overrides).get("num-server-rounds", _run_config_keys()["num-server-rounds"]))
    for r in suite.plots["tsne-rounds"]:
        name = f"round-{r:04d}.pt"
        if not (run / name).exists() and r == rounds:
            name = "final_model.pt"
        if not (run / name).exists():
            print(f"[suite] t-SNE: {run.name} has no {name}; skipped", flush=True)
            continue
        encoder = load_encoder(run, name)
        feats = heldout_features(encoder, eval_settings(suite, job.config()), suite.plots["tsne-max-points"])
        if "image" not in feats or "audio" not in feats:
            return None
        panels[f"round {r}"] = (feats["image"].test_x, feats["image"].test_y, feats["audio"].test_x,
                                feats["audio"].test_y)
        classes = feats["image"].classes
    if not panels:
        return None
    title = f"{METHOD_NAMES[entry.method]} {entry.encoder} {entry.strategy}" + \
        (f" ({entry.setting_text})" if entry.setting else "") + ": held-out features (o image, ^ audio)"
    tag = _slug(f"{entry.method}-{entry.encoder}-{entry.strategy}-{entry.setting_text if entry.setting else ''}")
    return tsne_panels(panels, out_dir / f"tsne-{tag}.png", title, classes, seed=job.config().seed)


def run_suite(suite: Suite, results_dir: Path, work_dir: Path, fresh: bool = False) -> Path:
    from experiments.centralized import run_lock
    from experiments.evaluate_encoder import FeatureCache
    from experiments.plots import accuracy_per_round, eval_series

    started = time.perf_counter()
    out_dir = results_dir / suite.name
    out_dir.mkdir(parents=True, exist_ok=True)
    work = work_dir / suite.name
    runs: dict[str, Path] = {}
    failures = []
    reused = {job.id for job in all_jobs(suite) if not fresh and _finished_run(work / job.id) is not None}
    for job in all_jobs(suite):
        if job.budget_job is not None and job.budget_job.id not in runs:
            failures.append(f"{job.id}: its budget run {job.budget_job.id} failed")
            continue
        try:
            runs[job.id] = run_job(suite, job, work, runs, fresh)
        except (RuntimeError, OSError, ValueError) as err:
            print(f"[suite] error: {err}", file=sys.stderr, flush=True)
            failures.append(str(err))
    train_seconds = {job_id: json.loads((work / job_id / "job.json").read_text())["seconds"] for job_id in runs}

    rows, series, plots = [], {}, []
    cache, encoders = FeatureCache(), {}
    eval_started = time.perf_counter()
    with run_lock():
        for entry in suite.entries:
            print(f"[suite] evaluating {METHOD_NAMES[entry.method]} {entry.encoder} {entry.strategy} "
                  f"{entry.setting_text}", flush=True)
            rows.append(evaluate_entry(suite, entry, runs, cache, encoders))
            jobs = entry_jobs(suite, entry)
            label = f"{METHOD_NAMES[entry.method]} {entry.encoder} {rows[-1].strategy}" + \
                (f" {entry.setting_text}" if entry.setting else "")
            if entry.method != "separate" and jobs[-1].id in runs:
                series[label] = eval_series(runs[jobs[-1].id] / "metrics.jsonl")
        if suite.evaluation["untrained-reference"]:
            rows += untrained_rows(suite, cache)
        plots.append(accuracy_per_round(series, out_dir / "accuracy_per_round.png",
                                        f"suite {suite.name}: central evaluation per round"))
        for entry in suite.entries:
            job = entry_jobs(suite, entry)[-1]
            if entry.method in suite.plots["tsne-methods"] and suite.plots["tsne-rounds"] and job.id in runs:
                path = make_tsne(suite, entry, runs[job.id], out_dir)
                if path is not None:
                    plots.append(path)
    eval_seconds = time.perf_counter() - eval_started
    notes = suite_notes(suite, runs, train_seconds, eval_seconds, time.perf_counter() - started, failures,
                        len(reused & set(runs)))
    (out_dir / "results.json").write_text(json.dumps(
        {"suite": suite.name, "rows": [asdict(r) for r in rows], "runs": {k: str(v) for k, v in runs.items()},
         "train-seconds": train_seconds, "eval-seconds": eval_seconds, "failures": failures},
        indent=2, sort_keys=True, default=str))
    path = write_report(suite, rows, out_dir, plots, notes)
    print(f"[suite] wrote {path} ({time.perf_counter() - started:.0f}s)", flush=True)
    return path


def suite_notes(suite: Suite, runs: dict, train_seconds: dict, eval_seconds: float, wall: float,
                failures: list[str], reused: int = 0) -> list[str]:
    first = next((e for e in suite.entries if e.method == "fssuavl"), suite.entries[0])
    config = Job("federated", "fssuavl", first.overrides, first.num_supernodes).config()
    images, audios = _holders(dict(first.overrides), first.num_supernodes)
    notes = [
        f"Federation: {first.num_supernodes} clients ({config.frac_visual_clients:g} visual-only / "
        f"{config.frac_audio_clients:g} audio-only / {config.frac_audiovisual_clients:g} audio-visual), "
        f"{config.partitioner} partition (alpha {config.dirichlet_alpha:g}), {config.num_server_rounds} rounds, "
        f"at most {config.max_local_steps or 'unlimited'} local steps of {config.batch_size} samples per modality, "
        f"{config.image_dataset} images at {config.image_size} px and {config.audio_dataset} "
        f"({config.audio_n_mels} mels), seed {config.seed}.",
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
        f"k={suite.evaluation['knn-k'] or config.knn_k}; both on backbone features. Spoken digits are tested on "
        "two voices never heard in training.",
        f"Wall time: {wall / 60:.1f} min in this call; the {len(train_seconds)} training runs took "
        f"{sum(train_seconds.values()) / 60:.1f} min" + (f" ({reused} of them reused from an earlier call)"
                                                          if reused else "")
        + f", evaluation and plots {eval_seconds / 60:.1f} min.",
    ]
    if suite.evaluation["untrained-reference"]:
        notes.append("Untrained: the seeded initial weights every run starts from (round 0), evaluated the same "
                     "way; compared with the FSSUAVL rows of every strategy. A random network already gives "
                     "useful features on these small sets, so a trained model's gain is measured against it.")
    notes += [f"FAILED: {f}" for f in failures]
    return notes


def load_suite(path: Path) -> Suite:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SuiteError(f"{path}: {err.strerror}") from err
    return parse_suite(text, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a YAML experiment suite; write a comparison table and plots")
    parser.add_argument("suite", type=Path, help="e.g. experiments/suites/default.yaml")
    parser.add_argument("--results", type=Path, default=PROJECT / "results", help="table and plots go to <results>/<name>/")
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
        print(f"suite {suite.name}: {len(suite.entries)} entries")
        for e in suite.entries:
            print(f"  {METHOD_NAMES[e.method]:24s} {e.encoder:16s} {e.strategy:8s} {e.setting_text}")
        jobs = all_jobs(suite)
        print(f"{len(jobs)} training jobs")
        for j in jobs:
            print(f"  {j.id}: {j.kind}, {j.describe()}")
        return 0
    from experiments.centralized import run_lock

    with run_lock():  # the whole suite is one heavy job: runs of other people wait until it is done
        run_suite(suite, args.results.resolve(), args.work_dir.resolve(), args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
