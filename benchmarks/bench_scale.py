"""Scale benchmark: N simulated supernodes, a fixed number sampled per round, memory per round.

For each N in ``--supernodes`` it runs a ``flwr run`` simulation on the embedded
data with the scale-test partitioner (``partitioner='resample'``: every client
draws its own overlapping sample of the pool, so 1,000 clients fit), samples
``--sampled`` clients per round (``fraction-train`` = sampled / N) and prints:

* time from the launch to the start of round 1 (SuperLink, Ray, ServerApp start,
  datasets, initial model and round-0 evaluation);
* each round's wall time and its server-side phases from ``metrics.jsonl``
  (``configure``: sampling and messages; ``wait``: ``send_and_receive``, i.e.
  Ray scheduling, message transfer and the clients' work; ``aggregate``: reply
  checks and the strategy; ``eval``: central evaluation, after the round's wall time), the clients' own
  training seconds, and what is left (recording, checkpoint, TensorBoard);
* the peak resident memory of the whole SuperLink process tree (SuperLink,
  simulation, Ray workers, ServerApp) during each round: it must not grow with
  the rounds.

    python -m benchmarks.bench_scale --supernodes 100 200 1000 --sampled 10 --rounds 10

On a GPU machine add ``--client-gpus 0.1`` (several clients per GPU) and e.g.
``--run-config "encoder='resnet18_cifar' image-size=32"``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from app_config.log_setup import setup_logging
from benchmarks.tree_memory import watched_simulation
from server_app.round_record import client_value


def one_scale(supernodes: int, sampled: int, rounds: int, overrides: str, cpus: int, gpus: float,
              workdir: Path) -> dict:
    run_config = (f"partitioner='resample' num-server-rounds={rounds} fraction-train={sampled / supernodes:.6g} "
                  f"min-train-nodes={min(2, sampled)} eval-every=0 tensorboard=false checkpoint-every=0 "
                  f"{overrides}").strip()
    records, memory = watched_simulation(workdir, supernodes, run_config, cpus, gpus, (39791, 39793))
    trained = [r for r in records if r["round"] > 0]
    # round 1 starts once round 0 (initial evaluation) is written
    start_to_round_1 = memory.first_line_at.get(1, float("nan"))
    per_round = []
    for r in trained:
        phases = r.get("phase-seconds", {})
        client_train = sum(client_value(c, "train-seconds", 0.0) for c in r.get("clients", []))
        eval_seconds = r.get("eval", {}).get("eval-seconds", 0.0)
        per_round.append({
            "round": r["round"], "seconds": r["round-seconds"], "clients": r.get("replies", 0),
            "wait": phases.get("wait", float("nan")), "aggregate": phases.get("aggregate", float("nan")),
            "configure": phases.get("configure", float("nan")), "eval": eval_seconds,
            "client-train": client_train, "peak-mib": memory.peaks.get(r["round"], float("nan")),
        })
    return {"supernodes": supernodes, "start_to_round_1": start_to_round_1, "rounds": per_round,
            "roles": {r["round"]: memory.roles.get(r["round"], {}) for r in trained}, "config": run_config}


def report(result: dict) -> None:
    rounds = result["rounds"]
    print(f"\n== {result['supernodes']} supernodes: start -> round 1 {result['start_to_round_1']:.1f} s")
    print(" round  wall s  configure  wait  (clients' train s)  aggregate  other  (+eval)  peak tree MiB")
    for r in rounds:
        other = r["seconds"] - r["configure"] - r["wait"] - r["aggregate"]  # the wall time excludes eval
        print(f" {r['round']:>5}  {r['seconds']:6.1f}  {r['configure']:9.2f}  {r['wait']:5.1f}  "
              f"({r['client-train']:5.1f}, {r['clients']} clients)  {r['aggregate']:9.2f}  {other:5.2f}  "
              f"({r['eval']:4.1f})  {r['peak-mib']:8.0f}")
    later = [r["seconds"] for r in rounds[1:]] or [rounds[0]["seconds"]]
    wait = sum(r["wait"] for r in rounds)
    train = sum(r["client-train"] for r in rounds)
    print(f" median round {statistics.median(later):.1f} s (rounds 2+); of all waiting {wait:.1f} s, clients "
          f"trained {train:.1f} s ({100 * train / max(wait, 1e-9):.0f} %), the rest is Ray scheduling, worker "
          "set-up (model, data) and message transfer")
    peaks = [r["peak-mib"] for r in rounds]
    print(f" peak tree memory: first round {peaks[0]:.0f} MiB, last round {peaks[-1]:.0f} MiB, "
          f"max {max(peaks):.0f} MiB")
    steady = [r["round"] for r in rounds[1:] if not r["eval"]]  # past round 1's set-up, no central evaluation
    role_growth({k: v for k, v in result["roles"].items() if k in steady})


def role_growth(roles: dict[int, dict[str, float]]) -> None:
    """Each process role's memory at the first and last given round's peak: where a growth comes from."""
    if len(roles) < 2:
        return
    first, last = min(roles), max(roles)
    print(f" by process role (MiB at the round's peak, rounds without central evaluation): round {first} -> "
          f"round {last}, change per round")
    for role in sorted(set(roles[first]) | set(roles[last]), key=lambda k: -roles[last].get(k, 0.0)):
        a, b = roles[first].get(role, 0.0), roles[last].get(role, 0.0)
        print(f"   {role:<12} {a:7.0f} -> {b:7.0f}  {(b - a) / (last - first):+6.1f}")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernodes", type=int, nargs="+", default=[100, 200, 1000])
    parser.add_argument("--sampled", type=int, default=10, help="clients sampled per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--client-cpus", type=int, default=2)
    parser.add_argument("--client-gpus", type=float, default=0.0)
    parser.add_argument("--run-config", default="max-local-steps=2 batch-size=16",
                        help="extra overrides (TOML literals)")
    args = parser.parse_args(argv)
    print(f"config: {shlex.quote(args.run_config)}; {args.sampled} sampled per round, {args.rounds} rounds")
    for n in args.supernodes:
        with tempfile.TemporaryDirectory(prefix="fssuavl-scale-") as tmp:
            report(one_scale(n, args.sampled, args.rounds, args.run_config, args.client_cpus, args.client_gpus,
                             Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
