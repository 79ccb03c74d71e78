"""Checks of a run config that read the disk or the model registry, run once per run.

``app_config.run_config.RunConfig`` checks types, choices and ranges and does
no I/O, so clients can parse it on every message and a device need not hold
the server's files. What needs the file system or timm is checked here, once:
by the launcher and the suite before anything starts, and by the ServerApp
before its first round (never per client message):

* ``encoder`` names a timm model (the project's own are registered by
  importing :mod:`models.encoders`);
* ``data-root`` exists when it is set, and every real dataset the run uses is
  laid out (or already cached) under it;
* ``run-dir``, ``data-root`` and ``resume-from`` are usable paths (no NUL byte,
  at most ``MAX_PATH`` characters); ``run-dir`` is a folder, or can be created
  as one, in a writable place other than ``/``;
* ``resume-from`` names a checkpoint that exists;
* the federation plan can be made for the number of clients
  (:func:`check_federation_plan`; the ServerApp calls it with its connected
  nodes, the launcher with ``--num-supernodes``).

Each failure is a :class:`~app_config.run_config.ConfigError`, one line naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from app_config.run_config import ConfigError, RunConfig
from data_partition.datasets import DATASETS, layout_problem, resolve_data_root
from models.encoders import is_encoder_name
from server_app.checkpoint import resume_problem


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


MAX_PATH = 4096  # PATH_MAX on Linux


def path_problem(value: str) -> str | None:
    """Why a path text cannot name a file (None when it can)."""
    if "\0" in value:
        return "contains a NUL byte"
    if len(value) > MAX_PATH:
        return f"is {len(value)} characters long (at most {MAX_PATH})"
    return None


def run_dir_problem(value: str) -> str | None:
    """Why run folders cannot be written under ``value`` (None when they can); nothing is created."""
    if (problem := path_problem(value)) is not None:
        return problem
    try:
        folder = Path(value).expanduser().resolve()
        if folder == Path(folder.anchor):
            return f"{value!r} is the file system's root; name a folder for the runs"
        if folder.exists() and not folder.is_dir():
            return f"{value!r} exists and is not a folder"
        existing = folder
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            return f"{str(existing)!r} is not a folder, so {value!r} cannot be created"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{str(existing)!r} is not writable"
    except (OSError, RuntimeError) as err:  # e.g. a symlink loop, a name too long for the file system
        return f"{value!r} cannot be used: {err}"
    return None


def preflight(config: RunConfig) -> RunConfig:
    """``config`` when the files and names it refers to are there; else a one-line ConfigError."""
    for key, value in (("data-root", config.data_root), ("resume-from", config.resume_from)):
        problem = path_problem(value)
        _need(problem is None, f"{key}: the path {problem}")
    problem = run_dir_problem(config.run_dir)
    _need(problem is None, f"run-dir: {problem}")
    _need(is_encoder_name(config.encoder), f"encoder: unknown value {config.encoder!r}; use resnet18_half_cifar, "
                                           "resnet18_cifar, vit_tiny_cifar or a timm model name")
    if config.data_root:
        _need(Path(config.data_root).expanduser().is_dir(),
              f"data-root: folder {config.data_root!r} does not exist; create it, fix the path, "
              "or set data-root='' for the default cache")
    for key, name in (("image-dataset", config.image_dataset), ("audio-dataset", config.audio_dataset)):
        if name and DATASETS[name].needs_source:  # a real dataset: its files must be under data-root
            problem = layout_problem(name, resolve_data_root(config.data_root))
            _need(problem is None, f"{key}={name!r}: {problem}")
    if config.resume_from:
        problem = resume_problem(config.resume_from)
        _need(problem is None, f"resume-from: {problem}")
    if config.optimizer == "repopt-sgd":
        problem = path_problem(config.repopt_scales)
        _need(problem is None, f"repopt-scales: the path {problem}")
        _need(Path(config.repopt_scales).expanduser().is_file(),
              f"repopt-scales: file {config.repopt_scales!r} does not exist; write it with "
              "python -m experiments.repopt_search")
        from models.factory import build_model

        try:
            build_model(config)  # reads the scales against the encoder: a mismatch fails here, in one line
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return config


def check_federation_plan(config: RunConfig, num_clients: int) -> None:
    """A one-line ConfigError when ``config``'s partitioning cannot give ``num_clients`` clients their data."""
    from data_partition.federation import Federation
    from data_partition.partition import PartitionError

    try:
        Federation(config, num_clients).plan()
    except PartitionError as err:
        raise ConfigError(f"federation plan for {num_clients} clients: {err}") from None


def checked_run_config(values: Mapping) -> RunConfig:
    """The RunConfig of a Flower run config, parsed and preflighted (one-line ConfigError otherwise)."""
    return preflight(RunConfig.from_mapping(dict(values)))
