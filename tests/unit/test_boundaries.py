"""DESIGN.md boundaries: the device side never imports the compiler side."""

from __future__ import annotations

import ast
from pathlib import Path

import edgekiln

PACKAGE = Path(edgekiln.__file__).parent
# onnxruntime is allowed: it is the device-side engine of onnxruntime artifacts (imported lazily).
FORBIDDEN_FOR_DEVICE = ("edgekiln.compile", "edgekiln.agents", "edgekiln.fleet", "tvm", "onnx", "torch", "tensorflow")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


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
