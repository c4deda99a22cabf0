#!/usr/bin/env python3
"""The import graph of the bnonly package: which module imports which, and whether it is a DAG.

    python tools/import_graph.py            # one line per module: what it imports from bnonly
    python tools/import_graph.py --layers   # the modules in import order (each only imports those above)
    python tools/import_graph.py --check    # exit 1 on a cycle or an in-function import of bnonly

Every import of a bnonly module counts, at the top of a file or inside a function: an import
inside a function must not exist to dodge a cycle, so it is reported by --check unless it sits in
ALLOWED_LOCAL (lazy imports of heavy optional parts, none of which would close a cycle).
A package's ``__init__`` counts as the package; importing ``bnonly.x.y`` is an edge to ``bnonly.x.y``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
ALLOWED_LOCAL: set[tuple[str, str]] = set()
"""(importing module, imported module) pairs allowed inside functions."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """module -> bnonly modules it imports; and the in-function imports (module, target, line)."""
    files = sorted(SRC.joinpath("bnonly").rglob("*.py"))
    modules = {module_name(f): f for f in files}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    local: list[tuple[str, str, int]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(name, is_package, node.level, node.module)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # "bnonly.data.batches.X" -> the module that holds X
                    t = t.rpartition(".")[0]
                if t.startswith("bnonly") and t != name:
                    edges[name].add(t)
                    if id(node) in in_function:
                        local.append((name, t, node.lineno))
    return edges, local


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles among modules, not counting a module's edge to its own parent packages (Python runs a
    package's __init__ first; bnonly's __init__ files only re-export what lies below them)."""
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if t in _parents(m):
                continue
            if state.get(t) == "open":
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def layers(edges: dict[str, set[str]]) -> list[list[str]]:
    """Modules grouped by depth: layer 0 imports no bnonly module, layer k only lower ones."""
    depth: dict[str, int] = {}

    def d(m, seen=()):
        if m not in depth:
            deps = [t for t in edges[m] if t not in _parents(m) and t not in seen]
            depth[m] = 1 + max((d(t, seen + (m,)) for t in deps), default=-1)
        return depth[m]

    for m in edges:
        d(m)
    out: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for m, k in sorted(depth.items()):
        out[k].append(m)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", action="store_true")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    edges, local = graph()
    if args.check:
        bad_local = [x for x in local if (x[0], x[1]) not in ALLOWED_LOCAL]
        for c in cycles(edges):
            print("cycle: " + " -> ".join(c))
        for m, t, line in bad_local:
            print(f"in-function import: {m}:{line} imports {t}")
        return 1 if cycles(edges) or bad_local else 0
    if args.layers:
        for k, mods in enumerate(layers(edges)):
            print(f"{k}: {' '.join(mods)}")
        return 0
    for m in sorted(edges):
        print(f"{m} -> {', '.join(sorted(edges[m])) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
