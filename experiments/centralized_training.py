"""The centralized SSL baseline's training: the federated run's data pooled, trained to its sample budget.

The library behind ``python -m experiments.centralized`` (see that module for
the method) and the suite's centralized jobs (``experiments.suite_jobs``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from app_config.modalities import AUDIO, IMAGE, MODALITIES
from experiments.common import pyproject_defaults
from experiments.metrics_file import read_records
from server_app.round_record import client_value


# --------------------------------------------------------------------------- sample budget
def samples_per_step(count: int, batch_size: int) -> int:
    """Samples of one modality a client with ``count`` of them processes per local step (trainer's rule)."""
    return min(batch_size, count) if count >= 2 else 0


def client_steps(counts: dict[str, int], config) -> int:
    """Local steps of a client holding ``counts`` samples per modality (mirrors ``train_locally``)."""
    per_epoch = [max(1, n // min(config.batch_size, n)) for n in counts.values() if n >= 2]
    if not per_epoch:
        return 0
    steps = config.local_epochs * max(per_epoch)
    return min(steps, config.max_local_steps) if config.max_local_steps > 0 else steps


def client_counts(config, num_partitions: int) -> list[dict[str, int]]:
    """Samples per modality of every client, from the same federation plan the clients load."""
    from data_partition.federation import Federation

    federation = Federation(config, num_partitions)
    return [{m: data.count(m) for m in MODALITIES}
            for data in (federation.part(pid)[1] for pid in range(num_partitions))]


def planned_budget(config, num_partitions: int) -> list[dict[str, int]]:
    """Per-round samples per modality of a federated run where every client trains every round.

    With ``fraction-train`` < 1 this is the expected budget (the sampled share of it).
    """
    per_round = dict.fromkeys(MODALITIES, 0)
    for counts in client_counts(config, num_partitions):
        steps = client_steps(counts, config)
        for m in MODALITIES:
            per_round[m] += steps * samples_per_step(counts[m], config.batch_size)
    if config.fraction_train < 1.0:
        sampled = max(int(num_partitions * config.fraction_train), min(config.min_train_nodes, num_partitions))
        per_round = {m: int(round(v * sampled / num_partitions)) for m, v in per_round.items()}
    return [dict(per_round) for _ in range(config.num_server_rounds)]


def budget_from_metrics(metrics_file: Path, batch_size: int) -> list[dict[str, int]]:
    """Per-round samples per modality that the clients of a finished federated run really processed."""
    rounds = []
    for record in read_records(metrics_file):
        if record.get("round", 0) < 1 or "clients" not in record:
            continue
        spent = dict.fromkeys(MODALITIES, 0)
        for client in record["clients"]:
            if "error" in client:
                continue
            steps = int(client_value(client, "steps", 0))
            for m in MODALITIES:
                spent[m] += steps * samples_per_step(int(client_value(client, f"num-{m}-examples", 0)), batch_size)
        rounds.append(spent)
    return rounds


def recorded_partitions(metrics_file: Path) -> int:
    """Number of clients of a finished federated run (highest partition-id seen + 1)."""
    ids = [int(client_value(c, "partition-id")) for record in read_records(metrics_file)
           for c in record.get("clients", []) if client_value(c, "partition-id") is not None]
    if not ids:
        raise ValueError(f"{metrics_file} records no client partition ids; pass --num-partitions")
    return max(ids) + 1


@dataclass(frozen=True)
class Call:
    """One ``train_locally`` call: ``steps`` steps over ``modalities`` with ``batch_size`` samples each."""

    modalities: tuple[str, ...]
    steps: int
    batch_size: int

    def samples(self, modality: str) -> int:
        return self.steps * self.batch_size if modality in self.modalities else 0


def round_schedule(budget: dict[str, int], batch_size: int) -> list[Call]:
    """Calls that spend exactly ``budget`` samples per modality.

    Full batches of both modalities go together, the rest of the larger one alone, and a remainder
    as one smaller batch; a remainder of one sample (NT-Xent needs pairs) is merged with one full
    batch into two batches of about half size. Only a budget of a single sample is dropped.
    """
    full, extra = {}, {}
    for m in MODALITIES:
        total = budget.get(m, 0)
        full[m], rest = divmod(total, batch_size)
        extra[m] = []
        if rest == 1 and full[m]:
            full[m] -= 1
            merged = batch_size + 1
            extra[m] = [merged // 2, merged - merged // 2] if merged // 2 >= 2 else [merged]
        elif rest >= 2:
            extra[m] = [rest]
    calls = []
    joint = min(full.values())
    if joint:
        calls.append(Call(MODALITIES, joint, batch_size))
    for m in MODALITIES:
        if full[m] - joint:
            calls.append(Call((m,), full[m] - joint, batch_size))
    for m in MODALITIES:
        calls += [Call((m,), 1, size) for size in extra[m]]
    return calls


# --------------------------------------------------------------------------- training
def pooled_data(config, num_partitions: int):
    """Every client's data of the federated run, pooled (data shares applied as in the federation)."""
    from data_partition.client_data import LocalData
    from data_partition.federation import Federation

    federation = Federation(config, num_partitions)
    parts: dict[str, list] = {m: [] for m in MODALITIES}
    labels: dict[str, list] = {m: [] for m in MODALITIES}
    for pid in range(num_partitions):
        _, data = federation.part(pid)
        for m in MODALITIES:
            if data.count(m):
                parts[m].append(data.tensors[m])
                labels[m].append(data.labels[m])
    return LocalData({m: torch.cat(chunks) for m, chunks in parts.items() if chunks},
                     {m: torch.cat(chunks) for m, chunks in labels.items() if chunks})


def _call_seed(seed: int, server_round: int, index: int) -> int:
    return (seed * 1_000_003 + server_round * 10_007 + 7_919 * (index + 1)) % (2**31)


METHODS = ("centralized", "supervised")


def train_centralized(config, budget: list[dict[str, int]], pooled, run_dir: Path,
                      budget_source: str = "plan", method: str = "centralized") -> Path:
    """Train on ``pooled`` data round by round to the given budget; write a run folder; return it.

    ``method`` 'centralized' trains with the clients' contrastive trainer; 'supervised' with labels
    (:mod:`experiments.supervised_ceiling`), everything else the same: the ceiling of a table.
    """
    from dataclasses import replace

    from flwr.app import ArrayRecord

    from data_partition.client_data import LocalData
    from data_partition.datasets import load_splits, resolve_data_root
    from experiments.supervised_ceiling import classifiers, train_supervised
    from models import factory
    from models.device import resolve_device
    from server_app.central_eval import CentralEvaluator
    from server_app.run_output import RunOutput, format_round
    from ssl_method.local_training import train_locally, train_settings

    if method not in METHODS:
        raise ValueError(f"method {method!r} is unknown: use one of {', '.join(METHODS)}")
    if len(budget) != config.num_server_rounds:
        raise ValueError(f"budget has {len(budget)} rounds, config has num-server-rounds={config.num_server_rounds}")
    root = resolve_data_root(config.data_root)
    datasets = {}
    if config.image_dataset:
        datasets[IMAGE] = load_splits(config.image_dataset, root)
    if config.audio_dataset:
        datasets[AUDIO] = load_splits(config.audio_dataset, root)
    torch.manual_seed(config.seed)  # the same initial weights as the ServerApp's
    device = resolve_device(config.device)
    model = factory.build_model(config).to(device)
    eval_model = factory.build_model(config).to(device)
    evaluator = CentralEvaluator(eval_model, factory.eval_transforms(config, device), datasets, device, config.knn_k,
                                 config.seed, config.eval_train_samples)
    views = factory.training_views(config, device)
    base = train_settings(config, model)
    heads = classifiers(model, {m: len(s.train.classes) for m, s in datasets.items()}).to(device)

    folder = Path(run_dir).expanduser().resolve() / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{config.seed}"
    folder.mkdir(parents=True, exist_ok=False)
    output = RunOutput(folder)
    output.write_json("config.json", config.as_mapping())
    print(f"[fssuavl] run folder: {folder}", flush=True)
    last = config.num_server_rounds
    evals: dict[int, dict] = {}
    spent_total = dict.fromkeys(MODALITIES, 0)
    clock = time.perf_counter()
    for server_round in range(last + 1):
        record: dict = {"round": server_round}
        if server_round:
            losses = {m: [] for m in MODALITIES}
            spent = dict.fromkeys(MODALITIES, 0)
            steps = 0
            for index, call in enumerate(round_schedule(budget[server_round - 1], config.batch_size)):
                data = LocalData({m: pooled.tensors[m] for m in call.modalities})
                per_epoch = max(max(1, data.count(m) // min(call.batch_size, data.count(m))) for m in call.modalities)
                settings = replace(base, batch_size=call.batch_size, max_local_steps=call.steps,
                                   local_epochs=math.ceil(call.steps / per_epoch),
                                   learning_rate=factory.scheduled_learning_rate(config, model, server_round))
                data.labels = {m: pooled.labels[m] for m in call.modalities if m in pooled.labels}
                seed = _call_seed(config.seed, server_round, index)
                out = train_supervised(model, heads, data, views, settings, device, seed) if method == "supervised" \
                    else train_locally(model, data, views, settings, device, seed)
                steps += int(out["steps"])
                for m in call.modalities:
                    losses[m].append((out[f"loss-{m}"], int(out["steps"])))
                    spent[m] += int(out["steps"]) * min(call.batch_size, data.count(m))
            train = {"clients": 1, "steps": float(steps)}
            for m in MODALITIES:
                n = sum(s for _, s in losses[m])
                train[f"loss-{m}"] = sum(v * s for v, s in losses[m]) / n if n else 0.0
                train[f"samples-{m}"] = float(spent[m])
                train[f"clients-{m}"] = 1 if spent[m] else 0
                spent_total[m] += spent[m]
            train["loss"] = sum(train[f"loss-{m}"] for m in MODALITIES)
            record["train"] = train
        record["round-seconds"] = time.perf_counter() - clock
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if config.save_every and server_round % config.save_every == 0:
            output.save_model(state, f"round-{server_round:04d}.pt")
        if server_round in (0, last) or (config.eval_every and server_round % config.eval_every == 0):
            record["eval"] = evaluator(ArrayRecord(state))
            evals[server_round] = record["eval"]
        output.append_round(record)
        print(f"[fssuavl] {method} " + format_round(record), flush=True)
        clock = time.perf_counter()
    path = output.save_model({k: v.detach().cpu() for k, v in model.state_dict().items()})
    summary = {"final-model": str(path), "rounds": last, "method": method,
               "budget-source": budget_source,
               "sample-budget": {m: sum(b.get(m, 0) for b in budget) for m in MODALITIES},
               "samples-processed": spent_total}
    if evals:
        summary.update({f"initial-{k}": v for k, v in evals[min(evals)].items()})
        summary.update({f"final-{k}": v for k, v in evals[max(evals)].items()})
    output.write_json("summary.json", summary)
    return folder


def config_from(overrides: dict, base: dict | None = None):
    """RunConfig from pyproject defaults (or ``base``, e.g. a run's config.json) plus overrides, preflighted."""
    from app_config.run_config import RunConfig
    from server_app.preflight import checked_run_config

    if base is None:
        base = pyproject_defaults()
    known = RunConfig.keys()
    return checked_run_config({**{k: v for k, v in base.items() if k in known}, **overrides})
