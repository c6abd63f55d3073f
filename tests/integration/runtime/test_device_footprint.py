"""The device install stays small: no compiler, onnx, torch or tensorflow."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("tvm", "onnx", "onnxruntime", "torch", "tensorflow")


def test_base_install_requires_nothing_heavy():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requires = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    names = {r.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip().lower() for r in requires}
    assert names.isdisjoint({"apache-tvm", "onnx", "onnxruntime", "torch", "tensorflow"}), names
    assert "apache-tvm-ffi" in names and "numpy" in names


def test_importing_the_runtime_loads_nothing_heavy():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import edgekiln.runtime, edgekiln.runtime.model"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    loaded_heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY or m.startswith("edgekiln.compile"))
    assert loaded_heavy == []
    assert "edgekiln.runtime.model" in imported
