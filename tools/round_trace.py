"""Which project files one round of the default run passes through, and how often a reader switches file.

Runs the ServerApp's ``main`` for one round in this process, its clients
answered by the ClientApp's own ``train`` function (a test double grid, no
SuperLink), and records every Python call whose code lives in the project
(tests excluded): the distinct files, in first-call order, and the number of
switches between consecutive files of the call sequence; then the same per
phase: set-up (before round 1), the server's round (``play_round``, without
the calls made inside the clients' ``train``) and the clients' ``train``. The same count before
and after a refactoring says whether a round got easier to follow.

    python -m tools.round_trace [--clients 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def _double_grid():
    try:
        from tests.fake_grid import FakeGrid, task_identity
    except ImportError:  # older trees kept the double under experiments/
        from experiments.fake_grid import FakeGrid, task_identity  # type: ignore[no-redef]
    return FakeGrid, task_identity


def trace_round(clients: int, work: Path) -> dict:
    from flwr.app import Context, RecordDict

    import client_app.app as client
    from app_config.run_config import RunConfig
    from server_app.app import main

    FakeGrid, task_identity = _double_grid()
    values = {**RunConfig().as_mapping(), "num-server-rounds": 1, "max-local-steps": 1, "eval-train-samples": 200,
              "run-dir": str(work / "runs"), "tensorboard": True}
    nodes = list(range(1, clients + 1))

    def respond(message):
        node = message.metadata.dst_node_id
        context = Context(run_id=1, node_id=node, node_config={"partition-id": node - 1, "num-partitions": clients},
                          state=RecordDict(), run_config=values)
        return client.train(message, context)

    calls: list[str] = []
    phase_of_call: list[str] = []  # "set-up", "server round" or "client", one per call
    skip = (str(PROJECT / "tests"), str(PROJECT / "tools"), str(PROJECT / ".venv"))
    markers = {(str(PROJECT / "server_app" / "round_loop.py"), "play_round"): "server round",
               (str(PROJECT / "client_app" / "app.py"), "train"): "client"}
    open_phases: list[tuple[object, str]] = []  # (frame, phase) of the marker frames being run

    def profile(frame, event, _arg):
        code = frame.f_code
        if event == "call":
            name = code.co_filename
            if name.startswith(str(PROJECT)) and not name.startswith(skip):
                marker = markers.get((name, code.co_name))
                if marker is not None:
                    open_phases.append((frame, marker))
                calls.append(str(Path(name).relative_to(PROJECT)))
                phase_of_call.append(open_phases[-1][1] if open_phases else "set-up")
        elif event == "return" and open_phases and open_phases[-1][0] is frame:
            open_phases.pop()

    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=values)
    with task_identity():
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            main(FakeGrid(nodes, respond), context)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    order: list[str] = []
    for name in calls:
        if name not in order:
            order.append(name)
    switches = sum(1 for a, b in zip(calls, calls[1:]) if a != b)
    phases = {}
    for phase in ("set-up", "server round", "client"):
        sequence = [name for name, seen in zip(calls, phase_of_call) if seen == phase]
        phases[phase] = {"files": list(dict.fromkeys(sequence)), "calls": len(sequence),
                         "switches": sum(1 for a, b in zip(sequence, sequence[1:]) if a != b)}
    return {"files": order, "file-count": len(order), "switches": switches, "calls": len(calls), "sequence": calls,
            "phases": phases}


def main(argv: list[str] | None = None) -> int:
    from app_config.log_setup import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        result = trace_round(args.clients, Path(work))
    for name in result["files"]:
        print(name)
    print(f"{result['file-count']} files, {result['switches']} switches between files, {result['calls']} calls")
    for phase, seen in result["phases"].items():  # the server's round without the clients' calls inside it
        print(f"{phase}: {len(seen['files'])} files, {seen['switches']} switches, {seen['calls']} calls: "
              + " ".join(seen["files"]))
    if args.json:
        args.json.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
