"""ONNX import and the stage every frontend ends in: a canonical ONNX graph with fixed input
shapes, plus the input/output spec every later stage works from (``stages.SourceModel``).

The other frameworks' frontends (pytorch.py, tensorflow.py, mxnet.py) produce an ONNX
``ModelProto`` and hand it to :func:`finish`; ``frontends.import_model`` picks the frontend."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgekiln.artifact.manifest import TensorSpec
from edgekiln.compile.stages import InputShapes, SourceModel
from edgekiln.errors import UserError

# ONNX TensorProto element types edgekiln artifacts carry.
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16"}


def import_model(
    ref: str | Path,
    workdir: Path,
    *,
    input_shape: InputShapes = None,
    name: str | None = None,
    sha256: str | None = None,
) -> SourceModel:
    """Import ``ref`` (``zoo:NAME``, an ONNX file or a folder holding one) into ``workdir/model.onnx``.

    Called by ``frontends.import_model``, which unpacks tarballs, reports missing files for
    every framework and records the sha256 of what the user gave (``sha256`` is unused here).
    """
    from edgekiln import zoo
    from edgekiln.zoo import pretrained

    ref_text = str(ref)
    if pretrained.is_pretrained_ref(ref_text):
        model = pretrained.build(ref_text)
        return finish(
            model,
            workdir,
            ref=ref_text,
            source_format="zoo",
            raw_sha256=_sha(model.SerializeToString()),
            name=name or ref_text.removeprefix("zoo:"),
            input_shape=input_shape,
            preprocessing=pretrained.preprocessing(ref_text),
            labels=tuple(zoo.imagenet_labels()),
        )
    if zoo.is_zoo_ref(ref_text):
        model = zoo.build(ref_text)
        return finish(
            model,
            workdir,
            ref=ref_text,
            source_format="zoo",
            raw_sha256=_sha(model.SerializeToString()),
            name=name or zoo.info(ref_text).name,
            input_shape=input_shape,
            preprocessing=dict(zoo.preprocessing(ref_text)),
            labels=tuple(zoo.imagenet_labels()),
        )
    # frontends.import_model found the file or folder: it exists.
    path = Path(ref_text)
    if path.is_dir():
        onnx_files = sorted(path.glob("*.onnx"))
        if len(onnx_files) != 1:
            raise UserError(f"{path} holds {len(onnx_files)} .onnx files; expected one")
        path = onnx_files[0]
        ref_text = str(path)
    raw = path.read_bytes()
    return finish(
        _parse(raw, path),
        workdir,
        ref=ref_text,
        source_format="onnx",
        raw_sha256=_sha(raw),
        name=name or path.stem,
        input_shape=input_shape,
    )


def finish(
    model: Any,
    workdir: Path,
    *,
    ref: str,
    source_format: str,
    raw_sha256: str,
    name: str,
    input_shape: InputShapes = None,
    default_shapes: Mapping[str, Sequence[int]] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    labels: tuple[str, ...] | None = None,
    original: Path | None = None,
    original_input_layouts: Sequence[str] = (),
    prequantized: bool = False,
) -> SourceModel:
    """Check ``model`` (an ONNX ModelProto), fix its input shapes and write ``workdir/model.onnx``.

    ``input_shape`` is what the user asked for; ``default_shapes`` fill inputs the graph
    leaves open when the source format knows them (a .tflite file's tensor shapes).
    """
    import onnx

    _check(model, ref)
    inputs, outputs, model = _fix_shapes(model, input_shape, ref, default_shapes or {})
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "model.onnx"
    onnx.save(model, str(out))
    from edgekiln.compile.analysis import graph_stats

    try:
        stats = dict(graph_stats(model))
    except UserError:
        stats = {}
    return SourceModel(
        name=name,
        path=out,
        source_format=source_format,
        source_ref=ref,
        source_sha256=raw_sha256,
        inputs=inputs,
        outputs=outputs,
        opset=_default_opset(model),
        preprocessing=preprocessing,
        labels=labels,
        stats=stats,
        original=original,
        original_input_layouts=tuple(original_input_layouts),
        prequantized=prequantized,
    )


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


_OTHER_FRAMEWORKS = (
    "if it is another framework's model, say which with --framework pytorch|tflite|mxnet|keras|tensorflow"
)


def _parse(raw: bytes, path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is not an ONNX model (cannot parse it: {exc})", hint=_OTHER_FRAMEWORKS) from None
    if not model.graph.node:
        raise UserError(f"{path} is not an ONNX model (it holds no graph nodes)", hint=_OTHER_FRAMEWORKS)
    return model


def _check(model: Any, ref: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise UserError(f"{ref} is a corrupt or invalid ONNX model: {first}") from None


def _default_opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _graph_inputs(model: Any) -> list[Any]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def positional(spec: Mapping[str, Sequence[int]], names: Sequence[str]) -> Mapping[str, Sequence[int]]:
    """Shapes given as a list (named ``input0``, ``input1``... by ``parse_input_config``, as
    Neo named PyTorch inputs) go to a model's own inputs in order when it names them otherwise."""
    keys = list(spec)
    if keys == [f"input{i}" for i in range(len(keys))] and len(keys) == len(names) and not set(keys) & set(names):
        return dict(zip(names, spec.values()))
    return spec


def requested_shapes(spec: InputShapes, names: Sequence[str], what: str = "model") -> dict[str, list[int]]:
    """The input shapes the user gave (``--input-config``/``--input-shape``), by input name.

    A bare shape is the single input's; Neo's list form (``input0``, ``input1``...) goes to
    ``names`` in order.  Every frontend reads the user's shapes through this function.
    """
    names = list(names)
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        spec = positional(spec, names)
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise UserError(f"the input shapes name unknown inputs {unknown}; the {what}'s inputs are {names}")
        return {k: _dims(v, k) for k, v in spec.items()}
    if len(names) != 1:
        raise UserError(
            f"the {what} has {len(names)} inputs {names}; give a shape for each by name "
            f"(--input-config '{{\"NAME\": [DIMS]}}' or --input-shape NAME:DIMS)"
        )
    return {names[0]: _dims(spec, names[0])}


def _dims(shape: Any, name: str) -> list[int]:
    try:
        dims = [int(d) for d in shape]
    except (TypeError, ValueError):
        dims = []
    if not dims or any(d <= 0 for d in dims):
        shown = list(shape) if isinstance(shape, (list, tuple)) else repr(shape)
        raise UserError(f"the input shape for {name!r} must be positive integers, got {shown}")
    return dims


def _fix_shapes(
    model: Any, spec: InputShapes, ref: str, defaults: Mapping[str, Sequence[int]]
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], Any]:
    import onnx

    inputs = _graph_inputs(model)
    names = [v.name for v in inputs]
    requested = requested_shapes(spec, names)
    fixed: list[TensorSpec] = []
    for value in inputs:
        ttype = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(ttype.elem_type)
        if dtype is None:
            raise UserError(f"input {value.name!r} of {ref} has an unsupported element type {ttype.elem_type}")
        declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim]
        want = requested.get(value.name)
        if want is not None:
            if ttype.HasField("shape") and len(declared) != len(want):
                raise UserError(
                    f"input shape mismatch for {value.name!r}: the model declares rank {len(declared)} "
                    f"{_show(declared)}, the given shape has rank {len(want)} {want}"
                )
            clash = [i for i, (d, w) in enumerate(zip(declared, want)) if d is not None and d != w]
            if clash:
                raise UserError(
                    f"input shape mismatch for {value.name!r}: the model declares {_show(declared)}, "
                    f"the given shape is {want}"
                )
            dims = want
        elif (not ttype.HasField("shape") or any(d is None for d in declared)) and value.name in defaults:
            dims = [int(d) for d in defaults[value.name]]
        else:
            if not ttype.HasField("shape") or any(d is None for d in declared):
                raise UserError(
                    f"input {value.name!r} of {ref} has no fixed shape ({_show(declared)})",
                    hint=f"give one with --input-config '{{\"{value.name}\": [1, 3, 224, 224]}}' "
                    f"(or --input-shape {value.name}:1,3,224,224)",
                )
            dims = [int(d) for d in declared]
        del ttype.shape.dim[:]
        for d in dims:
            ttype.shape.dim.add().dim_value = int(d)
        fixed.append(TensorSpec(value.name, dtype, tuple(dims)))
    # Output shapes follow from the fixed inputs; clear stale symbolic ones first.
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"the input shapes do not fit {ref}: {first}") from None
    outputs: list[TensorSpec] = []
    for out in inferred.graph.output:
        ttype = out.type.tensor_type
        dtype = _ONNX_DTYPES.get(ttype.elem_type)
        dims = [d.dim_value for d in ttype.shape.dim]
        if dtype is None or not ttype.HasField("shape") or any(d <= 0 for d in dims):
            raise UserError(f"cannot infer a fixed shape for output {out.name!r} of {ref}")
        outputs.append(TensorSpec(out.name, dtype, tuple(dims)))
    return tuple(fixed), tuple(outputs), inferred


def _show(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
