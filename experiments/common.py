"""Helpers every experiment script shares: run-config overrides, the Flower environment, process control.

Scripts (launcher, suite, deployment, benchmarks) import these from here rather
than from each other, so each script stays a command and nothing else.

Process control is Linux-only (``/proc``, pidfds). A process is named by exact
path comparisons (``FLWR_HOME``, the SuperLink's log file), and
:func:`stop_pids` pins every process with a pidfd before it signals anything,
so a PID that exits and is reused by an unrelated process during the grace
period is never signalled.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

from app_config.overrides import parse_overrides

PROJECT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- run-config overrides
def is_toml_file(value: str) -> bool:
    """Whether a ``--run-config`` value names a TOML file (what ``flwr run`` treats as one)."""
    return value.strip().endswith(".toml")


def load_overrides(value: str) -> dict:
    """A ``--run-config`` value: a TOML file's path or ``key=value`` text -> dict."""
    if is_toml_file(value):
        with open(Path(value.strip()).expanduser(), "rb") as fh:
            return tomllib.load(fh)
    return parse_overrides(value)


def write_run_config(overrides: dict, path: Path) -> Path:
    """Write overrides as a TOML file for ``flwr run --run-config FILE``.

    Values are escaped by a TOML writer, so a quote inside a value stays part of it (in the
    ``key='value'`` text form a quote would end the value and let the rest become new keys).
    """
    import tomli_w

    from file_io.atomic import write_text

    return write_text(path, tomli_w.dumps(dict(sorted(overrides.items()))))


def pyproject_defaults() -> dict:
    """The app's run-config defaults as Flower reads them (``[tool.flwr.app.config]``)."""
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def check_config(overrides: dict):
    """The full RunConfig of these overrides, preflighted (``server_app.preflight``): the files and names it
    refers to exist; ConfigError (one line, naming the key) when not."""
    from server_app.preflight import checked_run_config

    return checked_run_config({**pyproject_defaults(), **overrides})


# --------------------------------------------------------------------------- Flower environment
def flower_env(flwr_home: Path, http_port: int | None = None, control_port: int | None = None) -> dict[str, str]:
    """The environment for Flower processes: own FLWR_HOME, no dependency install, telemetry or update
    check, and (for the local simulation SuperLink) its ports."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    if http_port is not None:
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(http_port)
    if control_port is not None:
        env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- output with a deadline
def stream_output(proc: subprocess.Popen, deadline: float, on_line: Callable[[str], None]) -> bool:
    """Pass each line of ``proc.stdout`` to ``on_line`` until it closes; False when ``time.monotonic()``
    reached ``deadline`` first. A silent process cannot hold this past the deadline: the pipe is read
    by a thread, and this waits on the thread's queue with a timeout."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            return True
        on_line(line)


# --------------------------------------------------------------------------- processes (Linux /proc)
def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name), or None when the process is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the PID, it names one process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def start_times(pids: Iterable[int]) -> dict[int, int]:
    return {pid: t for pid in pids if (t := start_time(pid)) is not None}


def same_path(a: str | Path, b: str | Path) -> bool:
    """Exact path equality after normalisation ('/x/dep' never equals '/x/dep2' or '/x/dep/')."""
    return os.path.normpath(str(a)) == os.path.normpath(str(b))


def path_within(path: str | Path, folder: str | Path) -> bool:
    """``path`` is ``folder`` or lies under it, compared component by component."""
    parts, top = Path(os.path.normpath(str(path))).parts, Path(os.path.normpath(str(folder))).parts
    return parts[: len(top)] == top


def _cmdline(pid: int) -> list[str]:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of local SuperLinks whose log file is exactly this FLWR_HOME's (Linux /proc)."""
    marker = Path(flwr_home) / "local-superlink" / "superlink.log"
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        cmd = _cmdline(int(proc.name))
        if any(Path(part).name == "flower-superlink" for part in cmd[:2]) and \
                any(same_path(part, marker) for part in cmd):
            pids.append(int(proc.name))
    return pids


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(proc.name))
        if fields:
            tree.setdefault(int(fields[1]), []).append(int(proc.name))
    return tree


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and all their descendants (simulation process, Ray's GCS, raylet, workers)."""
    tree, seen, todo = _children(), [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(tree.get(pid, []))
    return seen


def process_role(cmdline: list[str]) -> str:
    """What a process of a simulation's tree is, from its command line (for memory per role)."""
    if not cmdline:
        return "other"
    names = [Path(part).name for part in cmdline[:3]]
    if cmdline[0].startswith("ray::"):
        return "ray worker"  # client actors (setproctitle: ray::ClientAppActor, ray::IDLE)
    for marker, role in (("flower-superlink", "superlink"), ("flwr-simulation", "simulation"),
                         ("flwr-serverapp", "serverapp"), ("raylet", "raylet"), ("gcs_server", "gcs")):
        if marker in names:
            return role
    return "ray other" if any("ray" in part for part in cmdline[:3]) else "other"


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_by_role(flwr_home: Path) -> dict[str, float]:
    """Resident memory (MiB) of the SuperLink of ``flwr_home`` and its descendants, summed per role."""
    roles: dict[str, float] = {}
    for pid in process_tree(superlink_pids(flwr_home)):
        role = process_role(_cmdline(pid))
        roles[role] = roles.get(role, 0.0) + _rss_kib(pid) / 1024
    return roles


class _Pinned:
    """One process held by a pidfd: signals reach it or nothing, even after its PID is reused."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd

    def send(self, sig: int) -> bool:
        try:
            signal.pidfd_send_signal(self.fd, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def exited(self) -> bool:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(0))


def _pin(pid: int, expected_start: int | None) -> _Pinned | None:
    """A pidfd for ``pid`` when it is alive and (if given) started when ``expected_start`` says."""
    if pid <= 1 or pid == os.getpid():
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone (or not ours to see)
        return None
    pinned = _Pinned(pid, fd)
    started = start_time(pid)
    # the start time read above belongs to the pinned process only if it is still alive after the read
    if started is None or pinned.exited() or not pinned.send(0) or \
            (expected_start is not None and started != expected_start):
        os.close(fd)
        return None
    return pinned


def stop_pids(pids: Iterable[int], grace: float = 10.0, identities: dict[int, int] | None = None) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is still running.

    Only live processes are signalled, each through a pidfd taken before the first signal (a PID that
    exits during the grace period and is reused is not touched). ``identities`` (PID -> start time, from
    :func:`start_times` when the PIDs were collected) also skips PIDs reused before this call. PIDs 0, 1
    and this process are never signalled.
    """
    identities = identities or {}
    pinned = [p for pid in dict.fromkeys(pids) if (p := _pin(pid, identities.get(pid))) is not None]
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            running = [p for p in pinned if not p.exited()]
            for p in running:
                p.send(sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(not p.exited() for p in running):
                time.sleep(0.05)
    finally:
        for p in pinned:
            os.close(p.fd)


def environ_of(pid: int) -> dict[str, str]:
    """A process's environment ({} when it is gone or another user's)."""
    try:
        raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, _, value = item.partition(b"=")
        if key:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def flower_home_pids(flwr_home: Path, within: bool = False) -> list[int]:
    """PIDs (not this process) whose ``FLWR_HOME`` is ``flwr_home`` (or, with ``within``, lies under it, by path
    component). Every process Flower starts inherits it, so this finds the SuperLink, ``flwr-simulation``, Ray's
    processes and the SuperExecs, ServerApp and ClientApp processes also when they left the starter's process
    tree (Ray daemonises its GCS and raylet) or their parent already died."""
    match = path_within if within else same_path
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        home = environ_of(pid).get("FLWR_HOME", "") if pid != os.getpid() else ""
        if home and match(home, flwr_home):
            pids.append(pid)
    return pids


def stop_superlink(flwr_home: Path, grace: float = 10.0) -> None:
    """Stop this FLWR_HOME's SuperLink and everything it started (``flwr-simulation`` and Ray included)."""
    pids = process_tree(superlink_pids(flwr_home) + flower_home_pids(flwr_home))
    stop_pids(pids, grace, start_times(pids))


def exit_on_sigterm(signum, _frame) -> None:
    """SIGTERM handler: unwind like Ctrl-C does, so ``finally`` blocks stop what a script started."""
    raise SystemExit(128 + signum)
