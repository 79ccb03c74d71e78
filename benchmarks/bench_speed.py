"""Federated simulation speed against the physical limit: the same local work without federation.

Runs, side by side on the same device:
  (a) a centralized loop doing exactly the clients' local work: the same federation
      plan, encoder, batch size, augmentations and modalities; every sampled client's
      local training run one after another in this process, rounds included;
  (b) a ``flwr run`` simulation of N clients doing that work (through experiments.launch).
Prints samples/s of both and the ratio (b)/(a) with central evaluation timed apart
(not in (b)), per-round wall time, the share of a round spent outside local training
(messages, aggregation, Ray scheduling), and peak host memory of the simulation's
process tree (and peak GPU memory per client on CUDA). With ``--sampled k`` only k
clients train per round (fraction-train = k / clients) and (a) replays exactly the
(round, client) pairs that (b) trained.

    python -m benchmarks.bench_speed --clients 20 --rounds 2
    python -m benchmarks.bench_speed --clients 100 --sampled 10 --rounds 2

On a GPU (ResNet-18 at CIFAR size, 100 clients per round, several clients per GPU):

    python -m benchmarks.bench_speed --clients 100 --rounds 2 --client-cpus 1 --client-gpus 0.25 \
        --run-config "encoder='resnet18_cifar' image-size=32 batch-size=64 max-local-steps=10 autocast='bf16'"
    # and --client-gpus 0.1 / 0.5; then the 1,000-supernode scale run:
    python -m benchmarks.bench_scale --supernodes 1000 --sampled 100 --rounds 5 --client-cpus 1 \
        --client-gpus 0.25 --run-config "encoder='resnet18_cifar' image-size=32 max-local-steps=10"
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from app_config.log_setup import setup_logging
from app_config.run_config import RunConfig
from benchmarks.tree_memory import watched_simulation
from client_app.worker_cache import WorkerCache
from experiments.common import check_config, parse_overrides
from models.factory import build_model
from server_app.round_record import client_value
from ssl_method.local_training import train_locally, train_settings, training_seed


def centralized_local_work(config: RunConfig, clients: int, work: list[tuple[int, int]]) -> dict:
    """(a): the local training of every (round, partition) in ``work``, one after another in one process.

    ``work`` lists the clients the federated run trained in each round (all of them, or the sampled ones),
    so both sides do exactly the same local steps; no messages, no aggregation, no evaluation.
    """
    torch.manual_seed(config.seed)
    initial = build_model(config).state_dict()
    samples, seconds = 0.0, 0.0
    cache = WorkerCache()
    for server_round, pid in work:
        state = cache.state(config, run_id=-1, partition_id=pid, num_partitions=clients)
        state.model.load_state_dict(initial)
        started = time.perf_counter()
        metrics = train_locally(state.model, state.data, state.views, train_settings(config, state.model),
                                state.device, seed=training_seed(config.seed, server_round, pid))
        seconds += time.perf_counter() - started
        samples += metrics["samples"]
    return {"samples": samples, "seconds": seconds, "samples_per_second": samples / seconds}


def federated(overrides: str, clients: int, cpus: int, gpus: float, workdir: Path) -> dict:
    """(b): the same work as a ``flwr run`` simulation; numbers read from the run's metrics.jsonl."""
    records, memory = watched_simulation(workdir, clients, f"{overrides} eval-every=0 tensorboard=false", cpus, gpus,
                                         (39391, 39393))
    rounds = [r for r in records if r["round"] > 0]
    samples = sum(client_value(c, "samples", 0.0) for r in rounds for c in r["clients"])
    train_seconds = sum(client_value(c, "train-seconds", 0.0) for r in rounds for c in r["clients"])
    wall = sum(r["round-seconds"] for r in rounds)
    gpu_peaks = [client_value(c, "peak-gpu-mb") for r in rounds for c in r["clients"]
                 if client_value(c, "peak-gpu-mb") is not None]
    work = [(r["round"], int(client_value(c, "partition-id"))) for r in rounds for c in r["clients"]
            if client_value(c, "partition-id") is not None and client_value(c, "samples") is not None]
    evaluation = sum(r.get("eval", {}).get("eval-seconds", 0.0) for r in rounds)
    return {
        # a round's wall time excludes its central evaluation (recorded after it), which is reported apart
        "samples": samples, "seconds": wall, "samples_per_second": samples / wall,
        "eval_seconds": evaluation, "work": work,
        "round_seconds": [round(r["round-seconds"], 2) for r in rounds],
        "client_train_seconds": train_seconds, "peak_host_mib": memory.peak,
        "peak_gpu_mib_per_client": max(gpu_peaks) if gpu_peaks else None,
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sampled", type=int, default=0, help="clients sampled per round (0: all)")
    parser.add_argument("--client-cpus", type=int, default=2)
    parser.add_argument("--client-gpus", type=float, default=0.0)
    parser.add_argument("--run-config", default="", help="extra overrides (TOML literals), e.g. \"batch-size=64\"")
    args = parser.parse_args(argv)

    overrides = f"num-server-rounds={args.rounds} {args.run_config}".strip()
    if args.sampled:
        overrides = f"fraction-train={args.sampled / args.clients:.6g} {overrides}"
    values = {**parse_overrides(overrides)}
    config: RunConfig = check_config(values)

    with tempfile.TemporaryDirectory(prefix="fssuavl-bench-") as tmp:
        fed = federated(overrides, args.clients, args.client_cpus, args.client_gpus, Path(tmp))
    central = centralized_local_work(config, args.clients, fed["work"])

    ratio = fed["samples_per_second"] / central["samples_per_second"]
    outside = fed["seconds"] - central["seconds"]
    print(f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
          f"{args.clients} clients x {args.rounds} rounds ({len(fed['work'])} client trainings), "
          f"config: {shlex.quote(overrides)}")
    print(f"(a) centralized local work : {central['samples']:.0f} samples in {central['seconds']:.1f} s "
          f"= {central['samples_per_second']:.1f} samples/s")
    print(f"(b) flwr run simulation    : {fed['samples']:.0f} samples in {fed['seconds']:.1f} s "
          f"= {fed['samples_per_second']:.1f} samples/s")
    print(f"ratio (b)/(a)              : {ratio:.3f}")
    print(f"round wall times (s)       : {fed['round_seconds']}")
    print(f"outside local training    : {outside:.1f} s of {fed['seconds']:.1f} s "
          f"({100 * outside / fed['seconds']:.0f} %; messages, aggregation, scheduling, data/model set-up)")
    print(f"central evaluation (apart) : {fed['eval_seconds']:.1f} s (not in (b)'s time)")
    print(f"peak host memory (sim tree): {fed['peak_host_mib']:.0f} MiB")
    if fed["peak_gpu_mib_per_client"] is not None:
        print(f"peak GPU memory per client : {fed['peak_gpu_mib_per_client']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
