"""The project's top-level import graph: folder -> folder arrows drawn from static imports (AST).

Every ``import x`` / ``from x import y`` statement counts, also those inside
functions: a lazy import is still a dependency. Only arrows between the
project's top-level packages are kept.

    python -m tests.import_graph [ROOT]      # print arrows, cycles and upward arrows
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

# Bottom to top: a package may import only packages on a lower layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("app_config", "file_io"),
    ("models", "data_partition"),
    ("strategies", "ssl_method"),
    ("client_app", "server_app"),
    ("experiments",),
    ("deployment", "benchmarks", "tools"),
)
PACKAGES = tuple(name for layer in LAYERS for name in layer)
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def imported_modules(source: str) -> set[str]:
    """Absolute module names a file imports (relative imports are resolved by the caller's package)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def arrows(root: Path) -> dict[tuple[str, str], list[str]]:
    """``(from package, to package) -> files`` for every import from one project package into another."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for module in imported_modules(path.read_text()):
                target = module.split(".")[0]
                if target in PACKAGES and target != package:
                    found[(package, target)].append(str(path.relative_to(root)))
    return {edge: sorted(set(files)) for edge, files in sorted(found.items())}


def cycles(edges) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(PACKAGES):
        if node not in index:
            visit(node)
    return sorted(groups)


def upward(edges) -> list[tuple[str, str]]:
    """Arrows into a package on the same or a higher layer."""
    return [(a, b) for a, b in edges if LAYER_OF[b] >= LAYER_OF[a]]


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    edges = arrows(root)
    for (a, b), files in edges.items():
        print(f"{a} -> {b}  ({len(files)} files)")
    print(f"{len(edges)} arrows")
    print("cycles:", cycles(edges) or "none")
    print("same-layer or upward arrows:", upward(edges) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
