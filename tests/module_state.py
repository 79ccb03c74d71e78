"""Module-level mutable state that functions change behind their callers' backs (found from the AST).

Counted, per module of the project's packages:

* a module-level name bound to a container (a dict, list or set display or
  comprehension, or a call of ``dict``, ``list``, ``set``, ``defaultdict``,
  ``OrderedDict``, ``Counter`` or ``deque``) that a function of the same module
  changes: item assignment or deletion, augmented assignment, or a mutating
  method (``clear``, ``update``, ``append``, ``pop``, ...);
* a name a function rebinds with ``global``;
* a call of ``random.seed`` (steers every user of the global ``random`` module).

Constants (registries filled once at import and only read) are not counted.

    python -m tests.module_state [ROOT]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.import_graph import PACKAGES

CONTAINER_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "deque"}
MUTATING_METHODS = {"clear", "update", "append", "extend", "insert", "pop", "popitem", "remove", "discard",
                    "add", "setdefault", "__setitem__", "appendleft", "extendleft", "sort", "reverse"}


def _is_container(value: ast.expr) -> bool:
    if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in CONTAINER_CALLS
    return False


def _module_containers(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if _is_container(value):
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def hidden_state(source: str) -> list[str]:
    """Descriptions of the hidden mutable module state in one file."""
    tree = ast.parse(source)
    containers = _module_containers(tree)
    found: set[str] = set()
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Global):
                found.update(f"global {name}" for name in node.names)
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Subscript) and _root_name(target) in containers:
                        found.add(f"{_root_name(target)} (mutated container)")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if node.func.attr in MUTATING_METHODS and isinstance(owner, (ast.Name, ast.Subscript)) \
                        and _root_name(owner) in containers:
                    found.add(f"{_root_name(owner)} (mutated container)")
                if node.func.attr == "seed" and isinstance(owner, ast.Name) and owner.id == "random":
                    found.add("random.seed (global RNG)")
    return sorted(found)


def scan(root: Path) -> dict[str, list[str]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            state = hidden_state(path.read_text())
            if state:
                out[str(path.relative_to(root))] = state
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    found = scan(root)
    for path, state in found.items():
        print(f"{path}: {', '.join(state)}")
    print(f"{sum(len(s) for s in found.values())} hidden module-level mutable objects in {len(found)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
