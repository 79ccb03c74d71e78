"""The suite YAML schema: what a suite file may say, checked before anything runs.

Pydantic models with the file's hyphenated key names as aliases, ``Literal``
choices and bounds; every problem becomes one :class:`SuiteError` line that names
the file, the key path (``entries[2].sweep``) and what is wrong. Run-config keys
(``defaults``, ``overrides``, ``sweep``) are checked against
``app_config.run_config.RunConfig``; their values are checked when each job's
full run config is built (``experiments.suite_plan``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from experiments.suite_errors import SuiteError, describe_error

METHODS = ("fssuavl", "fvssl", "fassl", "separate", "centralized", "supervised")
Method = Literal["fssuavl", "fvssl", "fassl", "separate", "centralized", "supervised"]
assert get_args(Method) == METHODS
SUITE_SET_KEYS = ("run-dir", "save-every")  # the suite sets these per job
SEED_KEY = "seed"  # set per job from the top-level 'seeds' list


def _run_config_keys() -> dict:
    from app_config.run_config import RunConfig

    return RunConfig.keys()


def _check_run_config_keys(overrides: dict, seed_allowed: bool) -> dict:
    keys = _run_config_keys()
    for key in overrides:
        if key not in keys:
            raise ValueError(f"unknown key {key!r}; valid: {', '.join(keys)}")
        if key in SUITE_SET_KEYS:
            raise ValueError(f"{key!r} is set by the suite (results go to --work-dir; save-every follows "
                             "plots.tsne-rounds)")
        if key == SEED_KEY and not seed_allowed:
            raise ValueError("'seed' is set by the suite's top-level 'seeds' list")
    return overrides


def _listed(value):
    """A single value where a list is expected means a list of one."""
    return value if isinstance(value, list) or value is None else [value]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True,
                              alias_generator=lambda name: name.replace("_", "-"))


class RunnerSpec(_Section):
    """How federated jobs are launched (``experiments.launch``)."""

    num_supernodes: int = Field(6, ge=1)
    client_cpus: int = Field(2, ge=1)
    client_gpus: float = Field(0.0, ge=0)
    timeout: float = Field(3600.0, gt=0)
    flwr_home: str = "/tmp/fssuavl-suite-flwr"
    superlink_port: int = Field(39491, ge=1, le=65535)
    control_port: int = Field(39493, ge=1, le=65535)


class EvaluationSpec(_Section):
    """How every trained encoder is evaluated (``experiments.frozen_eval``)."""

    knn_k: int = Field(0, ge=0)
    out_of_domain: list[str] = []
    fusion: bool = True
    fusion_image_dataset: str | None = None  # fuse these sets instead of the in-domain ones
    fusion_audio_dataset: str | None = None
    max_train_samples: int = Field(0, ge=0)
    max_test_samples: int = Field(0, ge=0)
    image_dataset: str | None = None
    audio_dataset: str | None = None
    untrained_reference: bool = True

    _list_ood = field_validator("out_of_domain", mode="before")(_listed)

    @field_validator("out_of_domain")
    @classmethod
    def _known_sets(cls, names: list[str]) -> list[str]:
        from experiments.eval_sets import parse_eval_set

        for name in names:
            parse_eval_set(name)  # ValueError names the set
        return names

    @field_validator("image_dataset", "audio_dataset", "fusion_image_dataset", "fusion_audio_dataset")
    @classmethod
    def _registered(cls, name: str | None, info) -> str | None:
        from data_partition.datasets import dataset_names

        modality = "image" if "image" in info.field_name else "audio"
        if name and name not in dataset_names(modality):
            raise ValueError(f"unknown value {name!r}; valid: {', '.join(dataset_names(modality))}")
        return name


class PlotsSpec(_Section):
    tsne_rounds: list[Annotated[int, Field(ge=0)]] = []
    tsne_methods: list[Method] = ["fssuavl"]
    tsne_max_points: int = Field(200, ge=2)

    _lists = field_validator("tsne_rounds", "tsne_methods", mode="before")(_listed)


class EntrySpec(_Section):
    """One line of the suite file: a method, a product of encoders x strategies, an optional sweep."""

    method: Method
    encoder: list[str] | None = None
    strategy: list[str] | None = None
    overrides: dict[str, Any] = {}
    num_supernodes: int | None = Field(None, ge=1)
    sweep: dict[str, list] = {}
    label: str = ""

    _lists = field_validator("encoder", "strategy", mode="before")(_listed)

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, overrides: dict) -> dict:
        return _check_run_config_keys(overrides, seed_allowed=False)

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep(cls, sweep):
        if sweep is None:
            return {}
        if not isinstance(sweep, dict) or len(sweep) > 1:
            raise ValueError("expected one key with a list of values, e.g. {dirichlet-alpha: [0.1, 1.0]}")
        for key, values in sweep.items():
            if key != "num-supernodes" and key not in _run_config_keys():
                raise ValueError(f"unknown key {key!r}; valid: num-supernodes or a run-config key")
            if key in SUITE_SET_KEYS or key in ("encoder", "strategy", SEED_KEY):
                raise ValueError(f"{key!r} cannot be swept here (list encoders/strategies directly; "
                                 "seeds go in the top-level 'seeds' list)")
            if not isinstance(values, list) or not values:
                raise ValueError(f"{key}: expected a non-empty list of values")
            if key == "num-supernodes" and not all(type(v) is int and v >= 1 for v in values):
                raise ValueError(f"num-supernodes: expected integers >= 1, got {values!r}")
        return sweep


class SuiteSpec(_Section):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)
    runner: RunnerSpec = RunnerSpec()
    defaults: dict[str, Any] = {}
    evaluation: EvaluationSpec = EvaluationSpec()
    plots: PlotsSpec = PlotsSpec()
    entries: list[EntrySpec] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"each seed once, got {seeds}")
        return seeds

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, defaults: dict) -> dict:
        return _check_run_config_keys(defaults, seed_allowed=True)

    @model_validator(mode="after")
    def _one_seed_source(self) -> SuiteSpec:
        if self.seeds is not None and SEED_KEY in self.defaults:
            raise ValueError("give the seeds in the top-level 'seeds' list or as defaults.seed, not both")
        return self

    def seed_list(self) -> list[int]:
        """The seeds every training job runs with (default: the run config's seed alone)."""
        return list(self.seeds) if self.seeds else [int(self.defaults.get(SEED_KEY, _run_config_keys()[SEED_KEY]))]


_SECTIONS = {None: SuiteSpec, "runner": RunnerSpec, "evaluation": EvaluationSpec, "plots": PlotsSpec,
             "entries": EntrySpec}


def read_spec(text: str, source: str = "<suite>") -> SuiteSpec:
    """Parse and check a suite's YAML text against the schema; SuiteError (one line) on any problem."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SuiteError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: expected a mapping of suite keys, got {type(raw).__name__}")
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as err:
        raise SuiteError(f"{source}: {' '.join(describe_error(err, _SECTIONS).split())}") from err
    if spec.name is None:
        stem = Path(source).stem
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem):
            raise SuiteError(f"{source}: name: the file name {stem!r} cannot name the results folder; set 'name'")
        spec = spec.model_copy(update={"name": stem})
    return spec
