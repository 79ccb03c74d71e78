"""The project's shape: layered packages, no hidden module state, commands sharing code through libraries only."""

from __future__ import annotations

import ast
import io
import re
import zipfile
from typing import get_args

from tests.conftest import PROJECT
from tests.import_graph import LAYER_OF, arrows, cycles, imported_modules, upward
from tests.module_state import scan
from tests.private_names import private_uses


def test_import_graph_has_no_cycle_and_no_upward_arrow():
    edges = arrows(PROJECT)
    assert cycles(edges) == []
    assert upward(edges) == [], {edge: edges[edge] for edge in upward(edges)}


def test_app_config_imports_no_other_package_of_the_project():
    assert [edge for edge in arrows(PROJECT) if edge[0] == "app_config"] == []
    assert LAYER_OF["app_config"] == 0


def test_the_graph_script_sees_a_planted_upward_arrow(tmp_path):
    for package in LAYER_OF:
        (tmp_path / package).mkdir()
    (tmp_path / "app_config" / "bad.py").write_text("def f():\n    from server_app import app\n")
    (tmp_path / "server_app" / "ok.py").write_text("import app_config.run_config\n")
    edges = arrows(tmp_path)
    assert upward(edges) == [("app_config", "server_app")] and cycles(edges) == [["app_config", "server_app"]]


def test_no_private_name_of_flower_or_of_another_object_is_used():
    assert private_uses(PROJECT) == []


def test_the_private_name_scan_sees_planted_uses(tmp_path):
    (tmp_path / "strategies").mkdir()
    (tmp_path / "strategies" / "bad.py").write_text(
        "from flwr.serverapp.strategy import _hidden\nfrom flwr.common._internal import x\n"
        "def f(strategy):\n    self_ok = 1\n    return strategy._pop_pending_event(1)\n"
        "class A:\n    def g(self):\n        return self._mine + len(self.__dict__)\n")
    assert private_uses(tmp_path) == ["strategies/bad.py:1: from flwr.serverapp.strategy import _hidden",
                                      "strategies/bad.py:2: from flwr.common._internal import ...",
                                      "strategies/bad.py:5: strategy._pop_pending_event"]


def test_no_hidden_module_level_mutable_state():
    assert scan(PROJECT) == {}


def test_the_state_scan_sees_a_mutated_module_dict(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "memo.py").write_text("_SEEN = {}\n\ndef f(k):\n    _SEEN[k] = 1\n")
    assert scan(tmp_path) == {"models/memo.py": ["_SEEN (mutated container)"]}


def _commands() -> set[str]:
    """Modules with a ``main()`` in the command folders: the commands."""
    found = set()
    for folder in ("experiments", "deployment", "benchmarks", "tools"):
        for path in (PROJECT / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
                found.add(f"{folder}.{path.stem}")
    return found


def test_no_module_imports_a_command():
    commands = _commands()
    assert {"experiments.launch", "experiments.suite", "experiments.evaluate_encoder",
            "deployment.deploy_local", "experiments.centralized"} <= commands
    offenders = []
    for package in LAYER_OF:
        for path in (PROJECT / package).rglob("*.py"):
            for module in imported_modules(path.read_text()):
                if module in commands and f"{package}.{path.stem}" != module:
                    offenders.append(f"{path.relative_to(PROJECT)} imports {module}")
    assert offenders == []


def test_choices_known_to_app_config_equal_their_implementations():
    from app_config import run_config as rc
    from data_partition.datasets import DATASETS
    from data_partition.partition import PARTITIONERS
    from strategies.dp import DP_MODES, WRAPPERS
    from strategies.registry import STRATEGIES

    assert sorted(get_args(rc.StrategyName)) == sorted(STRATEGIES)
    assert get_args(rc.DPMode) == DP_MODES and set(DP_MODES) - {"none"} == set(WRAPPERS)
    assert get_args(rc.Partitioner) == PARTITIONERS
    from ssl_method.losses import OBJECTIVES

    assert get_args(rc.SSLObjective) == OBJECTIVES
    for literal, modality in ((rc.ImageDataset, "image"), (rc.AudioDataset, "audio")):
        assert sorted(set(get_args(literal)) - {""}) == sorted(n for n, s in DATASETS.items() if s.modality == modality)


def test_pyproject_run_config_is_generated_from_run_config():
    from app_config.run_config import pyproject_section
    from tools.sync_pyproject_defaults import main, with_section

    text = (PROJECT / "pyproject.toml").read_text()
    assert with_section(text, pyproject_section()) == text
    assert main(["--check"]) == 0


def test_sync_command_rewrites_a_stale_section(tmp_path):
    from tools.sync_pyproject_defaults import main

    stale = tmp_path / "pyproject.toml"
    text = (PROJECT / "pyproject.toml").read_text()
    stale.write_text(re.sub(r"(?m)^num-server-rounds = \d+$", "num-server-rounds = 987", text))
    assert stale.read_text() != text
    assert main(["--pyproject", str(stale), "--check"]) == 1
    assert main(["--pyproject", str(stale)]) == 0
    assert stale.read_text() == (PROJECT / "pyproject.toml").read_text()


def test_app_bundle_holds_only_what_the_apps_import():
    from flwr.cli.build import build_fab_from_disk

    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(PROJECT))).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"pyproject.toml", ".info", "app_config", "file_io", "models", "ssl_method", "data_partition",
                    "strategies", "client_app", "server_app"}, tops
    assert "server_app/app.py" in names and "client_app/app.py" in names


def test_the_ssl_method_is_a_library_without_flower():
    """Model, views, loss, local training and kNN / probe load in a process that never imports flwr."""
    import subprocess
    import sys

    modules = sorted(f"{folder}.{path.stem}" for folder in ("ssl_method", "models")
                     for path in (PROJECT / folder).glob("*.py") if path.stem != "__init__")
    assert {"ssl_method.losses", "ssl_method.local_training", "ssl_method.feature_eval", "models.augment"} <= set(modules)
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(n for n in sys.modules if n.split('.')[0] in ('flwr', 'flwr_datasets', 'ray')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
