"""Find uses of names that other code keeps private: ``obj._name`` on anything but ``self`` / ``cls``,
and imports of underscore names or modules from Flower. Each is a dependency that an upgrade can break
without notice (Flower's private methods), or a reach into another class's internals."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("app_config", "file_io", "models", "ssl_method", "data_partition", "strategies", "client_app",
            "server_app", "experiments", "deployment", "benchmarks", "tools")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(root: Path) -> list[str]:
    """``path:line: code`` for every private name used from outside its owner, under ``root``'s packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and _private(node.attr) and not (
                        isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr":
                    module = node.module or ""
                    names = [a.name for a in node.names if _private(a.name)]
                    if any(_private(part) for part in module.split(".")) or names:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: from {module} import "
                                     f"{', '.join(names) or '...'}")
    return found
