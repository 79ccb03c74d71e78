"""Suite planning: entries (table rows) -> training jobs, one per seed, identical jobs once.

An entry is a method x encoder x strategy (x one sweep value). Each entry needs one
or two training jobs per seed (the separate-models baseline reuses the FVSSL and
FASSL runs, the centralized baseline takes its sample budget from the matching
FSSUAVL run of the same seed). Jobs are identified by their full run config, so
identical jobs of different entries are trained once. :func:`parse_suite` also
builds every job's full run config and checks the evaluation datasets, so a suite
that cannot run fails at once with one line, not after an hour of training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from experiments.suite_spec import (
    SEED_KEY,
    EvaluationSpec,
    PlotsSpec,
    RunnerSpec,
    SuiteError,
    SuiteSpec,
    _run_config_keys,
    read_spec,
)

METHOD_NAMES = {"fssuavl": "FSSUAVL", "fvssl": "FVSSL", "fassl": "FASSL",
                "separate": "Separate (FVSSL+FASSL)", "centralized": "Centralized",
                "supervised": "Supervised (ceiling)"}


def literal(value) -> str:
    """A setting's value as the table shows it (TOML-like)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


@dataclass(frozen=True)
class Entry:
    """One row of the comparison table (its seeds are the suite's)."""

    method: str
    encoder: str
    strategy: str
    setting: tuple[tuple[str, object], ...]  # what the table shows besides encoder/strategy
    overrides: tuple[tuple[str, object], ...]  # run-config overrides of the FSSUAVL federation (no seed)
    num_supernodes: int
    label: str = ""

    @property
    def setting_text(self) -> str:
        return ", ".join(f"{k}={literal(v)}" for k, v in self.setting) or "-"

    @property
    def key(self) -> tuple:
        """Entries with the same key are compared with each other."""
        return (self.encoder, self.strategy, self.setting)


@dataclass
class Suite:
    name: str
    description: str
    seeds: list[int]
    runner: RunnerSpec
    defaults: dict
    evaluation: EvaluationSpec
    plots: PlotsSpec
    entries: list[Entry]
    source: str = ""


def expand_entries(spec: SuiteSpec) -> list[Entry]:
    """Every table row of the suite: each entry's encoders x strategies x sweep values."""
    run_defaults = _run_config_keys()
    out = []
    for item in spec.entries:
        base = {**spec.defaults, **item.overrides}
        encoders = item.encoder or [base.get("encoder", run_defaults["encoder"])]
        strategies = item.strategy or [base.get("strategy", run_defaults["strategy"])]
        supernodes = item.num_supernodes or spec.runner.num_supernodes
        points: list[tuple[str, object] | None] = [(k, v) for k, vs in item.sweep.items() for v in vs] or [None]
        setting_keys = [k for k in item.overrides if k not in ("encoder", "strategy")]
        for encoder, strategy, point in itertools.product(encoders, strategies, points):
            overrides = {**base, "encoder": encoder, "strategy": strategy}
            overrides.pop(SEED_KEY, None)  # per job, from the suite's seeds
            n = supernodes
            setting = [(k, overrides[k]) for k in setting_keys]
            if point is not None:
                key, value = point
                if key == "num-supernodes":
                    n = value
                else:
                    overrides[key] = value
                setting = [(k, v) for k, v in setting if k != key] + [(key, value)]
            if item.num_supernodes is not None and (point is None or point[0] != "num-supernodes"):
                setting.append(("num-supernodes", n))
            out.append(Entry(item.method, encoder, strategy, tuple(setting), tuple(sorted(overrides.items())), n,
                             item.label))
    return out


# --------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    kind: str  # "federated", "centralized" or "supervised" (the last two train on one machine)
    role: str  # fssuavl / fvssl / fassl / centralized / supervised (for names)
    overrides: tuple[tuple[str, object], ...]  # includes the seed
    num_supernodes: int
    budget_job: Job | None = None  # centralized / supervised: the FSSUAVL job whose clients set the budget

    @property
    def seed(self) -> int:
        return int(dict(self.overrides)[SEED_KEY])

    def config(self):
        from app_config.run_config import ConfigError
        from experiments.centralized_training import config_from

        try:
            return config_from(dict(self.overrides))
        except ConfigError as err:
            raise SuiteError(f"{self.role} job ({self.describe()}): {err}") from err

    def describe(self) -> str:
        d = {**_run_config_keys(), **dict(self.overrides)}
        data = " + ".join(n for n in (d["image-dataset"], d["audio-dataset"]) if n)
        return f"{d['encoder']}, {d['strategy']}, {data}, {self.num_supernodes} clients, seed {d[SEED_KEY]}"

    @property
    def id(self) -> str:
        """Folder name: readable prefix (role, encoder, strategy, seed) + hash of everything that matters."""
        full = {**_run_config_keys(), **dict(self.overrides)}
        payload = json.dumps({"kind": self.kind, "config": full, "clients": self.num_supernodes,
                              "budget": self.budget_job.id if self.budget_job else None}, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        d = dict(self.overrides)
        return f"{self.role}-{d.get('encoder')}-{d.get('strategy')}-seed{d.get(SEED_KEY)}-{digest}"


def holders(overrides: dict, num_supernodes: int) -> tuple[int, int]:
    """(image-holding, audio-holding) clients of the FSSUAVL federation."""
    from data_partition.partition import kind_counts

    keys = _run_config_keys()
    fracs = tuple(float(overrides.get(k, keys[k])) for k in
                  ("frac-visual-clients", "frac-audio-clients", "frac-audiovisual-clients"))
    visual, audio, both = kind_counts(num_supernodes, fracs)
    return visual + both, audio + both


def _tsne_save_every(suite: Suite, overrides: dict) -> int:
    rounds = int(overrides.get("num-server-rounds", _run_config_keys()["num-server-rounds"]))
    wanted = [r for r in suite.plots.tsne_rounds if 0 < r < rounds]
    return math.gcd(*wanted) if wanted else rounds


def single_modality(overrides: dict, num_supernodes: int, modality: str) -> tuple[dict, int]:
    """Overrides and client count of FVSSL (modality='image') or FASSL ('audio') for a FSSUAVL federation."""
    images, audios = holders(overrides, num_supernodes)
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


def fssuavl_job(suite: Suite, entry: Entry, seed: int) -> Job:
    """The FSSUAVL federation an entry is defined against, for one seed (its own job when method is fssuavl)."""
    overrides = {**dict(entry.overrides), SEED_KEY: seed}
    if suite.plots.tsne_rounds:
        overrides["save-every"] = _tsne_save_every(suite, overrides)
    return Job("federated", "fssuavl", tuple(sorted(overrides.items())), entry.num_supernodes)


def entry_jobs(suite: Suite, entry: Entry, seed: int) -> list[Job]:
    """Training jobs an entry needs for one seed; the last one's run is the entry's model
    (separate: [fvssl, fassl])."""
    fssuavl = fssuavl_job(suite, entry, seed)
    if entry.method == "fssuavl":
        return [fssuavl]
    if entry.method in ("centralized", "supervised"):
        return [fssuavl, Job(entry.method, entry.method, fssuavl.overrides, entry.num_supernodes, fssuavl)]
    jobs = []
    for modality, role in (("image", "fvssl"), ("audio", "fassl")):
        if entry.method in (role, "separate"):
            o, n = single_modality(dict(fssuavl.overrides), entry.num_supernodes, modality)
            jobs.append(Job("federated", role, tuple(sorted(o.items())), n))
    return jobs


def all_jobs(suite: Suite) -> list[Job]:
    """Every distinct job, seed by seed, federated ones first within a seed (centralized and supervised jobs need
    their budget run)."""
    seen: dict[str, Job] = {}
    for seed in suite.seeds:
        for entry in suite.entries:
            for job in entry_jobs(suite, entry, seed):
                seen.setdefault(job.id, job)
    order = {seed: i for i, seed in enumerate(suite.seeds)}
    return sorted(seen.values(), key=lambda j: (order[j.seed], j.kind != "federated"))


# --------------------------------------------------------------------------- checks before running
def check_plan(suite: Suite) -> None:
    """Every job's full run config validates (dataset layouts included) and every evaluation dataset is
    registered and laid out under the data root; SuiteError (one line) otherwise."""
    from data_partition.datasets import layout_problem, resolve_data_root
    from experiments.eval_sets import parse_eval_set

    jobs = all_jobs(suite)
    roots = {}
    for job in jobs:
        roots.setdefault(str(resolve_data_root(job.config().data_root)), job)
    ev = suite.evaluation
    names = [(f"evaluation.out-of-domain: {t}", parse_eval_set(t).dataset) for t in ev.out_of_domain]
    names += [(f"evaluation.{key}", name) for key, name in (
        ("image-dataset", ev.image_dataset), ("audio-dataset", ev.audio_dataset),
        ("fusion-image-dataset", ev.fusion_image_dataset), ("fusion-audio-dataset", ev.fusion_audio_dataset)) if name]
    for root in roots:
        for key, name in names:
            problem = layout_problem(name, Path(root))
            if problem:
                raise SuiteError(f"{key}: {problem}")


def parse_suite(text: str, source: str = "<suite>") -> Suite:
    """Parse, expand and check a suite (YAML text); SuiteError (one line) on any problem."""
    spec = read_spec(text, source)
    suite = Suite(spec.name, spec.description.strip(), spec.seed_list(), spec.runner,
                  {k: v for k, v in spec.defaults.items() if k != SEED_KEY}, spec.evaluation, spec.plots,
                  expand_entries(spec), source)
    try:
        check_plan(suite)
    except SuiteError as err:
        raise SuiteError(f"{source}: {' '.join(str(err).split())}") from err
    return suite


def load_suite(path: Path) -> Suite:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SuiteError(f"{path}: {err.strerror}") from err
    return parse_suite(text, str(path))
