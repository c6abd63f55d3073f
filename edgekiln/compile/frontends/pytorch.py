"""PyTorch frontend: TorchScript archives (``torch.jit.save``) and ``torch.export`` programs
(``torch.export.save``, ``.pt2``) become ONNX with the torch installed on the build host.

torch is a compile-time extra (``edgekiln[pytorch]``); devices never need it.

- TorchScript goes through torch's TorchScript ONNX exporter (``dynamo=False``): it is the
  exporter torch offers for a ScriptModule — the torch.export-based one cannot trace one.
  TorchScript files carry no input shapes, so they come from ``--input-config``, as Neo's
  ``DataInputConfig`` did; inputs are named ``input0``, ``input1``... unless it names them.
- torch.export programs go through the torch.export-based exporter; their example shapes
  are the default input shapes.
"""

from __future__ import annotations

import contextlib
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from edgekiln.compile.frontends.onnx import finish, requested_shapes
from edgekiln.compile.quiet import captured_output
from edgekiln.compile.stages import InputShapes, SourceModel
from edgekiln.errors import DependencyError, UserError, first_line

OPSET = 17
_TORCH_DTYPES = {
    "torch.float32": "float32",
    "torch.float16": "float16",
    "torch.uint8": "uint8",
    "torch.int8": "int8",
    "torch.int32": "int32",
    "torch.int64": "int64",
}


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise DependencyError(
            "importing a PyTorch model needs PyTorch on the build host, and it is not installed",
            hint="pip install 'edgekiln[pytorch]' (the CPU build: pip install torch==2.13.0)",
        ) from None
    return torch


def archive_kind(path: Path) -> str:
    """``"torchscript"``, ``"export"`` or ``"pickle"`` for a torch archive; UserError otherwise."""
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not a PyTorch archive (TorchScript or torch.export zip file)",
            hint="save the model with torch.jit.save(torch.jit.trace(model, example), PATH) "
            "or torch.export.save(torch.export.export(model, (example,)), PATH)",
        )
    members = zipfile.ZipFile(path).namelist()
    if any("/models/" in m and m.endswith(".json") for m in members):
        return "export"
    if any("/code/" in m for m in members):
        return "torchscript"
    if any(m.endswith("data.pkl") for m in members):
        return "pickle"
    raise UserError(f"{path} is a zip file but not a TorchScript or torch.export archive")


def import_model(path: Path, workdir: Path, *, input_shape: InputShapes, name: str, sha256: str) -> SourceModel:
    """Convert a TorchScript or torch.export file to ONNX and finish it as a ``SourceModel``."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".pt", ".pth", ".pt2", ".ts"))
        if len(files) != 1:
            raise UserError(f"{path} holds {len(files)} PyTorch files; expected one .pt/.pth/.pt2")
        path = files[0]
    kind = archive_kind(path)
    if kind == "pickle":
        raise UserError(
            f"{path} holds a pickled module or state dict (torch.save), which cannot be loaded without its Python code",
            hint="save a TorchScript archive (torch.jit.save(torch.jit.trace(model, example), PATH)) or a "
            "torch.export program (torch.export.save(torch.export.export(model, (example,)), PATH))",
        )
    torch = _torch()
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "pytorch.onnx"
    if kind == "torchscript":
        shapes = _named_shapes(input_shape, path)
        _export_torchscript(torch, path, shapes, out)
    else:
        shapes = _export_program(torch, path, input_shape, out)
    import onnx

    model = onnx.load(str(out))
    return finish(
        model, workdir, ref=str(path), source_format="pytorch", raw_sha256=sha256, name=name, input_shape=shapes
    )


def _named_shapes(input_shape: InputShapes, path: Path) -> dict[str, list[int]]:
    if input_shape is None:
        raise UserError(
            f"{path} is TorchScript, which records no input shapes",
            hint="give them as Neo did, with --input-config '{\"input0\": [1, 3, 224, 224]}'",
        )
    # TorchScript names no inputs: the user's names (Neo's input0, input1...) become the graph's.
    names = list(input_shape) if isinstance(input_shape, Mapping) else ["input0"]
    return requested_shapes(input_shape, names, "TorchScript model")


def _export_torchscript(torch: Any, path: Path, shapes: Mapping[str, Sequence[int]], out: Path) -> None:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path} cannot be loaded as TorchScript: {first_line(exc)}") from None
    module.eval()
    generator = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(*shape, generator=generator) for shape in shapes.values())
    with torch.no_grad():
        try:
            outputs = module(*args)
        except Exception as exc:  # noqa: BLE001 - whatever the model's own code raises
            raise UserError(
                f"the input shapes {dict(shapes)} do not fit {path}: {first_line(exc)}",
                hint="give the shapes the model was traced for with --input-config",
            ) from None
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    with _quiet():
        try:
            torch.onnx.export(
                module,
                args,
                str(out),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(shapes),
                output_names=[f"output{i}" for i in range(count)],
                do_constant_folding=True,
            )
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            op = re.search(r"'([\w.]+::[\w.]+)'", str(exc))
            where = _node_of(module, op.group(1)) if op else ""
            raise UserError(
                f"PyTorch operator {op.group(1) if op else '?'}{where} in {path} is not supported by torch's ONNX "
                f"exporter (opset {OPSET})",
                hint="replace the operator in the model, or export the model to ONNX yourself",
            ) from None
        except torch.onnx.errors.OnnxExporterError as exc:
            raise UserError(f"PyTorch model {path} cannot be exported to ONNX: {first_line(exc)}") from None


def _export_program(torch: Any, path: Path, input_shape: InputShapes, out: Path) -> InputShapes:
    from edgekiln.compile.frontends import pt2_archive

    # torch.export.load unpickles and executes parts of an archive; refuse those first.
    pt2_archive.check(path)
    try:
        with pt2_archive.safe_torch_load(torch), _quiet():
            program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a broken archive
        raise UserError(f"{path} cannot be loaded as a torch.export program: {first_line(exc)}") from None
    user_inputs = list(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    declared: dict[str, tuple[list[int | None], Any]] = {}
    for name in user_inputs:
        value = placeholders[name].meta.get("val")
        if value is None or not hasattr(value, "shape"):
            raise UserError(f"input {name!r} of the torch.export program {path} is not a tensor")
        dims = [int(d) if isinstance(d, int) else None for d in value.shape]
        declared[name] = (dims, value.dtype)
    given = requested_shapes(input_shape, user_inputs, "program")
    wanted = {k: list(given.get(k, declared[k][0])) for k in user_inputs}
    open_dims = [k for k, v in wanted.items() if any(d is None for d in v)]
    if open_dims:
        raise UserError(
            f"inputs {open_dims} of {path} have dynamic dimensions",
            hint="fix them with --input-config '{\"NAME\": [1, 3, 224, 224]}'",
        )
    args = tuple(torch.zeros(*wanted[k], dtype=declared[k][1]) for k in user_inputs)
    with _quiet():
        try:
            torch.onnx.export(program, args, str(out), dynamo=True, opset_version=OPSET, external_data=False)
        except Exception as exc:  # noqa: BLE001 - the exporter wraps operator errors in several types
            raise UserError(f"PyTorch program {path} cannot be exported to ONNX: {first_line(exc)}") from None
    return {k: [int(d) for d in v] for k, v in wanted.items()}  # type: ignore[misc]


def _node_of(module: Any, kind: str) -> str:
    """Where the first ``kind`` node sits in the TorchScript graph: value, module scope, source line."""
    try:
        for node in module.inlined_graph.nodes():
            if node.kind() == kind:
                value = next(iter(node.outputs())).debugName()
                scope = node.scopeName().rstrip(":") or "top level"
                source = node.sourceRange().strip().splitlines()
                line = f", {source[0].strip()}" if source else ""
                return f" (node %{value}, module {scope}{line})"
    except (RuntimeError, StopIteration, AttributeError):
        pass
    return ""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' output off the terminal: progress printed from Python (stdout is
    what ``--json`` owns), deprecation warnings, and what torch's C++ side writes straight
    to file descriptors 1 and 2 (its "Torch IR graph at exception" dump). A failure is
    reported as edgekiln's own one-line error instead."""
    with captured_output():
        yield
