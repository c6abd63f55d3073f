"""DESIGN.md boundaries: the package import graph read from the source.

Every import counts, at module level or inside a function, except under
``if TYPE_CHECKING``: a lazy import is still a dependency that can form a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import edgekiln

PACKAGE = Path(edgekiln.__file__).parent
# onnxruntime is allowed: it is the device-side engine of onnxruntime artifacts (imported lazily).
FORBIDDEN_FOR_DEVICE = ("edgekiln.compile", "edgekiln.agents", "edgekiln.fleet", "tvm", "onnx", "torch", "tensorflow")

# DESIGN.md's layer table: what each part of edgekiln may import (besides itself).
_BASE = {"errors"}
_DEVICE = _BASE | {"artifact", "device_profiles"}
_RUNTIME = _DEVICE | {"runtime"}
_COMPILE = _RUNTIME | {"execute", "emulation", "zoo"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "artifact": _BASE,
    "device_profiles": _BASE,
    "runtime": _DEVICE,
    # execute runs workers on emulated boards; emulation gets progress and host facts as
    # arguments or from runtime, never from execute.
    "execute": _RUNTIME | {"emulation"},
    "emulation": _RUNTIME,
    "zoo": _BASE | {"artifact"},
    "compile": _COMPILE,
    "bench": _COMPILE | {"compile"},
    "agents": _RUNTIME | {"execute"},
    "fleet": _BASE | {"artifact"},
    "cli": _COMPILE | {"compile", "bench", "agents", "fleet"},
}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _imports(path: Path, *, type_checking: bool = True) -> list[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = set() if type_checking else _type_checking_nodes(tree)
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = module.split(".")[: -node.level]
            names.append(".".join(base + ([node.module] if node.module else [])))
    return names


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "edgekiln" else None


def import_graph() -> dict[str, dict[str, set[str]]]:
    """{part: {imported part: files that import it}} over edgekiln's subpackages."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if me is None or me == "__init__":
            continue  # edgekiln/__init__.py re-exports lazily from every layer
        for name in _imports(path, type_checking=False):
            other = _part(name)
            if other and other != me:
                graph.setdefault(me, {}).setdefault(other, set()).add(str(path.relative_to(PACKAGE)))
    return graph


def _violations(subpackages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for sub in subpackages:
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    found.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return found


def test_runtime_and_artifact_import_nothing_of_the_build_side():
    assert _violations(("runtime", "artifact"), FORBIDDEN_FOR_DEVICE) == []


def test_device_profiles_and_errors_are_light():
    assert _violations(("device_profiles",), FORBIDDEN_FOR_DEVICE) == []


def test_every_part_is_in_the_layer_table():
    parts = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")
    }
    assert parts == set(ALLOWED)


def test_each_part_imports_only_what_the_layer_table_allows():
    graph = import_graph()
    found = [
        f"{a} -> {b} ({sorted(files)[0]})"
        for a, targets in sorted(graph.items())
        for b, files in sorted(targets.items())
        if b not in ALLOWED[a]
    ]
    assert found == []


def test_no_import_cycle_between_parts():
    graph = import_graph()
    cycles = []
    for start in graph:
        # Depth-first search for a path back to ``start``.
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, {}):
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert cycles == []


def test_the_graph_reader_sees_lazy_imports_and_skips_type_checking(tmp_path, monkeypatch):
    fake = tmp_path / "edgekiln"
    (fake / "runtime").mkdir(parents=True)
    (fake / "runtime" / "__init__.py").write_text("")
    (fake / "runtime" / "m.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgekiln.fleet import x\n"
        "def f():\n    from edgekiln.compile import api\n    from ..bench import harness\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert import_graph() == {"runtime": {"compile": {"runtime/m.py"}, "bench": {"runtime/m.py"}}}
