"""TensorFlow-family frontends: TFLite flatbuffers, Keras models (.h5, .keras) and
TensorFlow SavedModels become ONNX through tf2onnx, TensorFlow's converter to ONNX.

TensorFlow and tf2onnx are a compile-time extra (``edgekiln[tensorflow]``). They run in a
child process (``python -m edgekiln.compile.frontends.tensorflow REQUEST.json``): TensorFlow
brings its own copy of protobuf's C++ library, and loaded beside another user of it in one
process (grpcio-tools' protoc) it crashes that process; it also keeps some 1 GB and its
threads for as long as the process lives. The child hands back the ONNX file and what the
parent needs to finish it; a failure comes back as the same one-line error.

- TFLite int8 models (full-integer, from TensorFlow's post-training quantization) become a
  QDQ ONNX graph that every backend compiles; the LiteRT backend uses the .tflite itself.
- Layout, as Neo had it: TFLite and TensorFlow inputs are NHWC; a Keras model's input
  shape was given to Neo in NCHW. Here each input keeps the model's own layout unless the
  input shape given is its NCHW form, in which case the artifact takes NCHW (tf2onnx adds
  the transpose).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgekiln.compile.frontends.onnx import finish, requested_shapes
from edgekiln.compile.stages import InputShapes, SourceModel
from edgekiln.errors import DependencyError, UserError, first_line

OPSET = 17
# tflite schema TensorType values edgekiln artifacts carry.
_TFLITE_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 9: "int8"}


def _tf2onnx() -> Any:
    # This runs in the child, whose output the parent shows only when it dies: keep
    # TensorFlow's start-up lines out of that tail.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tf2onnx  # imports TensorFlow, and fails the same way without it
    except ImportError as exc:
        raise DependencyError(
            f"importing TFLite, Keras or TensorFlow models needs TensorFlow and tf2onnx on the build host ({exc})",
            hint="pip install 'edgekiln[tensorflow]'",
        ) from None
    # tf2onnx logs each operator it cannot convert and carries on; _unsupported() reports them.
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    return tf2onnx


def import_model(
    path: Path, workdir: Path, *, framework: str, input_shape: InputShapes, name: str, sha256: str
) -> SourceModel:
    """Convert a .tflite, Keras or SavedModel ``path`` to ONNX and finish it as a ``SourceModel``."""
    import onnx

    workdir.mkdir(parents=True, exist_ok=True)
    if framework == "tflite":
        path = _single(path, (".tflite",), "TFLite")
        tflite_inputs(path)  # a file that is no .tflite fails here, without starting TensorFlow
    elif framework == "keras":
        path = _single(path, (".h5", ".hdf5", ".keras"), "Keras")
    else:
        path = _saved_model_dir(path)
    result = _convert_in_child(framework, path, input_shape, workdir / "tensorflow.onnx")
    model = onnx.load(str(workdir / "tensorflow.onnx"))
    extra: dict[str, Any] = {}
    if framework == "tflite":
        # The LiteRT backend builds from the .tflite itself.
        original = workdir / "original.tflite"
        shutil.copyfile(path, original)
        extra = {
            "original": original,
            "prequantized": result["prequantized"],
            "original_input_layouts": ["NHWC" if n in result["nchw"] else "same" for n in result["shapes"]],
        }
    return finish(
        model,
        workdir,
        ref=str(path),
        source_format=framework,
        raw_sha256=sha256,
        name=name,
        input_shape=result["shapes"],
        **extra,
    )


def _convert_in_child(framework: str, path: Path, input_shape: InputShapes, out: Path) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    from edgekiln import errors

    request = out.with_suffix(".request.json")
    answer = out.with_suffix(".answer.json")
    request.write_text(
        json.dumps(
            {
                "framework": framework,
                "path": str(path),
                "input_shape": input_shape,
                "out": str(out),
                "answer": str(answer),
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edgekiln.compile.frontends.tensorflow", str(request)], capture_output=True, text=True
    )
    if not answer.exists():
        tail = " | ".join(line for line in (proc.stderr or "").strip().splitlines()[-3:])
        raise errors.BackendError(
            f"TensorFlow stopped (exit {proc.returncode}) while converting {path}: {tail or 'no message'}"
        )
    result = json.loads(answer.read_text())
    if "error" in result:
        kind = getattr(errors, result["error"]["kind"], errors.EdgekilnError)
        raise kind(result["error"]["message"], hint=result["error"]["hint"])
    return result


def _convert(framework: str, path: Path, input_shape: InputShapes) -> tuple[Any, dict[str, list[int]], list[str], bool]:
    """In the child: (ONNX model, canonical input shapes, inputs made NCHW, already int8)."""
    if framework == "tflite":
        return _convert_tflite(path, input_shape)
    if framework == "keras":
        return _convert_keras(path, input_shape)
    return _convert_saved_model(path, input_shape)


def _main(argv: Sequence[str]) -> int:
    import json

    from edgekiln.errors import EdgekilnError

    request = json.loads(Path(argv[0]).read_text())
    answer = Path(request["answer"])
    try:
        model, shapes, nchw, prequantized = _convert(
            request["framework"], Path(request["path"]), request["input_shape"]
        )
        import onnx

        onnx.save(model, request["out"])
        result: dict[str, Any] = {"shapes": shapes, "nchw": nchw, "prequantized": prequantized}
        code = 0
    except EdgekilnError as exc:
        result = {"error": {"kind": type(exc).__name__, "message": exc.message, "hint": exc.hint}}
        code = exc.exit_code
    answer.write_text(json.dumps(result))
    return code


def _single(path: Path, suffixes: Sequence[str], what: str) -> Path:
    if path.is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
    if len(files) != 1:
        raise UserError(f"{path} holds {len(files)} {what} files ({'/'.join(suffixes)}); expected one")
    return files[0]


# --- TFLite -----------------------------------------------------------------------------


def tflite_inputs(path: Path) -> list[tuple[str, list[int], str]]:
    """(name, shape, dtype) of each input of subgraph 0, read with the tflite schema package."""
    raw = path.read_bytes()
    if raw[4:8] != b"TFL3":
        raise UserError(f"{path} is not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        import tflite
    except ImportError:
        raise DependencyError(
            "reading .tflite files needs the tflite schema package", hint="pip install 'edgekiln[compile]'"
        ) from None
    try:
        model = tflite.Model.GetRootAsModel(raw, 0)
        graph = model.Subgraphs(0)
        found = []
        for i in range(graph.InputsLength()):
            tensor = graph.Tensors(graph.Inputs(i))
            dtype = _TFLITE_DTYPES.get(tensor.Type())
            if dtype is None:
                raise UserError(
                    f"input {tensor.Name().decode()!r} of {path} has an unsupported TFLite type {tensor.Type()}"
                )
            found.append((tensor.Name().decode(), [int(d) for d in tensor.ShapeAsNumpy()], dtype))
    except (IndexError, AttributeError, ValueError, TypeError, struct.error, UnicodeDecodeError) as exc:
        # A flatbuffer is read lazily: damage shows up as whatever the reader trips on.
        raise UserError(f"{path} is a corrupt TFLite model ({type(exc).__name__}: {exc})") from None
    return found


def _layouts(
    declared: Mapping[str, Sequence[int]], input_shape: InputShapes, path: Path, framework: str
) -> tuple[dict[str, list[int]], list[str]]:
    """The shape of each input and the inputs the artifact takes in NCHW instead of NHWC."""
    requested = requested_shapes(input_shape, list(declared), f"{framework} model")
    shapes: dict[str, list[int]] = {}
    nchw: list[str] = []
    for input_name, dims in declared.items():
        want = requested.get(input_name)
        if want is None:
            shapes[input_name] = [1 if d is None or d <= 0 else int(d) for d in dims]
            continue
        if _fits(dims, want):
            shapes[input_name] = want
        elif len(dims) == 4 and _fits(dims, [want[0], want[2], want[3], want[1]]):
            # Given in NCHW: the artifact takes NCHW and tf2onnx transposes it to the model's NHWC.
            shapes[input_name] = [want[0], want[2], want[3], want[1]]
            nchw.append(input_name)
        else:
            raise UserError(
                f"input shape mismatch for {input_name!r}: the {framework} model declares "
                f"{_show(dims)} (NHWC), the given shape is {want}"
            )
    return shapes, nchw


def _fits(declared: Sequence[int | None], want: Sequence[int]) -> bool:
    return len(declared) == len(want) and all(d is None or d <= 0 or d == w for d, w in zip(declared, want))


def _show(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None or d <= 0 else str(d) for d in dims) + "]"


def _canonical(shapes: Mapping[str, list[int]], nchw: Sequence[str]) -> dict[str, list[int]]:
    return {n: ([v[0], v[3], v[1], v[2]] if n in nchw else list(v)) for n, v in shapes.items()}


def _convert_tflite(path: Path, input_shape: InputShapes) -> tuple[Any, dict[str, list[int]], list[str], bool]:
    inputs = tflite_inputs(path)
    # A .tflite's shape_signature may leave the batch open; its shape field has the size it was built for.
    shapes, nchw = _layouts({n: s for n, s, _ in inputs}, input_shape, path, "TFLite")
    tf2onnx = _tf2onnx()
    with _converting(path, "TFLite"):
        model, _ = tf2onnx.convert.from_tflite(str(path), opset=OPSET, inputs_as_nchw=nchw or None)
    _unsupported(model, path, "TFLite")
    prequantized = any(dtype in ("uint8", "int8") for _, _, dtype in inputs) or any(
        n.op_type == "QuantizeLinear" for n in model.graph.node
    )
    return model, _canonical(shapes, nchw), nchw, prequantized


# --- Keras and SavedModel -------------------------------------------------------------------


def _convert_keras(path: Path, input_shape: InputShapes) -> tuple[Any, dict[str, list[int]], list[str], bool]:
    tf2onnx = _tf2onnx()
    import keras
    import tensorflow as tf

    try:
        # safe_mode refuses Lambda layers (marshalled Python bytecode) and classes from outside
        # Keras; explicit, so that a global enable_unsafe_deserialization() cannot turn it off.
        model = keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for a file it cannot read
        raise UserError(f"{path} cannot be loaded as a Keras model: {first_line(exc)}") from None
    declared = {}
    dtypes = {}
    for tensor in model.inputs:
        input_name = tensor.name.split(":")[0]
        declared[input_name] = [None if d is None else int(d) for d in tensor.shape]
        dtypes[input_name] = tf.as_dtype(tensor.dtype)
    shapes, nchw = _layouts(declared, input_shape, path, "Keras")
    signature = [tf.TensorSpec(shapes[k], dtypes[k], name=k) for k in declared]
    with _converting(path, "Keras"):
        onnx_model, _ = tf2onnx.convert.from_keras(
            model, input_signature=signature, opset=OPSET, inputs_as_nchw=nchw or None
        )
    _unsupported(onnx_model, path, "Keras")
    return onnx_model, _canonical(shapes, nchw), nchw, False


def _saved_model_dir(path: Path) -> Path:
    if path.is_file() and path.name.startswith("saved_model."):
        path = path.parent
    if not (path / "saved_model.pb").is_file():
        raise UserError(
            f"{path} is not a TensorFlow SavedModel folder (no saved_model.pb)",
            hint="give the folder tf.saved_model.save or model.export wrote; frozen .pb graphs are not supported",
        )
    return path


def _convert_saved_model(path: Path, input_shape: InputShapes) -> tuple[Any, dict[str, list[int]], list[str], bool]:
    tf2onnx = _tf2onnx()
    import tensorflow as tf

    _check_saved_model_ops(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path} cannot be loaded as a SavedModel: {first_line(exc)}") from None
    signatures = dict(loaded.signatures)
    if "serving_default" not in signatures:
        raise UserError(
            f"the SavedModel {path} has no serving_default signature (it has {sorted(signatures) or 'none'})"
        )
    function = signatures["serving_default"]
    specs = function.structured_input_signature[1]
    declared = {k: [None if d is None else int(d) for d in spec.shape] for k, spec in sorted(specs.items())}
    shapes, nchw = _layouts(declared, input_shape, path, "TensorFlow")

    # A tf.function over the signature with fixed shapes: tf2onnx traces it like a Keras call.
    signature = [tf.TensorSpec(shapes[k], specs[k].dtype, name=k) for k in declared]

    @tf.function(input_signature=signature)
    def serve(*args: Any) -> Any:
        outputs = function(**dict(zip(declared, args)))
        return [outputs[k] for k in sorted(outputs)]

    with _converting(path, "TensorFlow"):
        onnx_model, _ = tf2onnx.convert.from_function(
            serve, input_signature=signature, opset=OPSET, inputs_as_nchw=nchw or None
        )
    _unsupported(onnx_model, path, "TensorFlow")
    return onnx_model, _canonical(shapes, nchw), nchw, False


# Operators that reach the build host's files or Python. A SavedModel's functions run when it
# loads (resource initializers) and when tf2onnx folds constants, so a graph that holds them
# could write or read files there (ReadFile of a constant path would bake that file into the
# artifact). The checkpoint ops of the SavedModel's own saver (SaveV2, RestoreV2) stay allowed.
_HOST_OPS = frozenset(
    {
        "WriteFile",
        "ReadFile",
        "MatchingFiles",
        "ImmutableConst",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "Save",
        "SaveSlices",
        "DatasetToTFRecord",
        "ExperimentalDatasetToTFRecord",
        "SaveDataset",
        "SaveDatasetV2",
        "CreateSummaryFileWriter",
        "CreateSummaryDbWriter",
        "WriteSummary",
        "WriteRawProtoSummary",
        "DebugIdentityV2",
        "DebugIdentityV3",
        "TFRecordReader",
        "TFRecordReaderV2",
        "WholeFileReader",
        "WholeFileReaderV2",
    }
)
_MAX_SAVED_MODEL_PB = 1 << 30


def _check_saved_model_ops(path: Path) -> None:
    """Refuse a SavedModel whose graph holds an operator of :data:`_HOST_OPS`, or that prints
    to a file, before TensorFlow loads it."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = path / "saved_model.pb"
    if pb.stat().st_size > _MAX_SAVED_MODEL_PB:
        raise UserError(f"{pb} is over 1 GiB; a SavedModel keeps its weights in variables/")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(pb.read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise UserError(f"{pb} is not a SavedModel protobuf: {first_line(exc)}") from None
    for meta in saved.meta_graphs:
        nodes = [*meta.graph_def.node, *(n for f in meta.graph_def.library.function for n in f.node_def)]
        for node in nodes:
            to_file = node.op == "PrintV2" and node.attr["output_stream"].s.decode(errors="replace").startswith(
                "file://"
            )
            if node.op in _HOST_OPS or to_file:
                raise UserError(
                    f"the SavedModel {path} holds operator {node.op} (node {node.name[:80]!r}), which "
                    "reads or writes the build host's files; edgekiln does not load it",
                    hint="export the model's inference function alone (tf.saved_model.save of the "
                    "model with a serving signature)",
                )


def _unsupported(model: Any, path: Path, framework: str) -> None:
    """tf2onnx leaves an operator it cannot convert in the graph under its own name
    (``TFL_BUCKETIZE``); name the first such node and how many there are."""
    import onnx.defs

    missing = [
        n for n in model.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, n.domain or "")
    ]
    if missing:
        ops = sorted({n.op_type.removeprefix("TFL_") for n in missing})
        first = missing[0]
        raise UserError(
            f"{framework} operator {first.op_type.removeprefix('TFL_')} (node {first.name!r}) in {path} has no ONNX "
            f"conversion in tf2onnx" + (f" (all unconverted operators: {', '.join(ops)})" if len(ops) > 1 else ""),
            hint="replace the operator in the model",
        )


@contextlib.contextmanager
def _converting(path: Path, framework: str):
    """Run a tf2onnx conversion; its failures become one UserError naming the operators."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises bare ValueError/RuntimeError/KeyError
        text = first_line(exc)
        if "unsupported ops" in text.lower() or "is not supported" in text.lower():
            raise UserError(f"{framework} operator not supported by tf2onnx in {path}: {text}") from None
        raise UserError(f"{framework} model {path} cannot be converted to ONNX: {text}") from None


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
