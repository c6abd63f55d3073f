"""Frontends: a model in any framework SageMaker Neo accepted becomes a ``SourceModel``.

Each frontend turns its framework's files into an ONNX graph and ends in
:func:`edgekiln.compile.frontends.onnx.finish`, which fixes the input shapes and writes the
canonical ``model.onnx``. :func:`import_model` finds the framework from the files (or takes
``framework``), unpacks a Neo-style ``.tar.gz`` of model files, and reads a Neo
``DataInputConfig`` (``{"data": [1, 3, 224, 224]}``) for the input shapes.

Framework libraries are imported inside the frontend that needs them: PyTorch for
TorchScript/torch.export programs, TensorFlow + tf2onnx for TFLite and Keras/TensorFlow;
MXNet files are read without MXNet.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgekiln.compile.frontends.onnx import InputShapes, SourceModel
from edgekiln.errors import UserError

FRAMEWORKS = ("onnx", "pytorch", "tflite", "mxnet", "keras", "tensorflow")

# File name endings that name a framework by themselves.
_SUFFIXES = {
    ".onnx": "onnx",
    ".tflite": "tflite",
    ".pt": "pytorch", ".pth": "pytorch", ".pt2": "pytorch", ".ts": "pytorch",
    ".h5": "keras", ".hdf5": "keras", ".keras": "keras",
}
_TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def parse_input_config(text: str | Mapping[str, Any] | Sequence[Any] | None) -> InputShapes:
    """A Neo ``DataInputConfig``: ``{"NAME": [dims], ...}``, ``[dims]`` or ``[[dims], ...]``.

    A list of shapes (Neo's PyTorch form) gives the inputs in order; they are named
    ``input0``, ``input1``... where the framework has no names of its own.
    """
    if text is None:
        return None
    value: Any = text
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--input-config is not JSON ({exc.msg} at column {exc.colno})",
                            hint='give e.g. \'{"data": [1, 3, 224, 224]}\'') from None

    def shape(dims: Any, where: str) -> list[int]:
        if (not isinstance(dims, list) or not dims
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
            raise UserError(f"--input-config: {where} must be a list of positive integers, got {json.dumps(dims)}")
        return list(dims)

    if isinstance(value, dict):
        if not value:
            raise UserError("--input-config names no inputs")
        return {str(k): shape(v, f"the shape of {k!r}") for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return {f"input{i}": shape(v, f"shape {i}") for i, v in enumerate(value)}
    if isinstance(value, list):
        return shape(value, "the shape")
    raise UserError("--input-config must be a JSON object of input shapes such as {\"data\": [1, 3, 224, 224]}")


def detect_framework(path: Path) -> str:
    """The framework of the model file or folder ``path``, from its names and first bytes."""
    if path.is_dir():
        return _detect_dir(path)
    name = path.name.lower()
    if name.endswith("-symbol.json") or name.endswith(".params"):
        return "mxnet"
    if name == "saved_model.pb" or name == "saved_model.pbtxt":
        return "tensorflow"
    head = _head(path, 8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "keras"
    suffix = path.suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        members = zipfile.ZipFile(path).namelist()
        if any(m.endswith("data.pkl") or "/models/" in m for m in members):
            return "pytorch"
        if "config.json" in members and "model.weights.h5" in members:
            return "keras"
    # ONNX files have no magic number; an unknown name is tried as ONNX, whose parser then
    # says whether it is one.
    return "onnx"


def _detect_dir(path: Path) -> str:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return "tensorflow"
    if list(path.glob("*-symbol.json")):
        return "mxnet"
    files = _model_files(path)
    if len(files) == 1:
        return detect_framework(files[0])
    if not files:
        raise UserError(f"{path} holds no model files",
                        hint="expected an .onnx, .pt/.pt2, .tflite, .h5/.keras file, an MXNet "
                             "PREFIX-symbol.json + PREFIX-NNNN.params pair, or a TensorFlow SavedModel")
    raise UserError(f"{path} holds several model files ({', '.join(f.name for f in files)})",
                    hint="give the one to compile")


def _model_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_TARBALL_SUFFIXES) and tarfile.is_tarfile(path)


def _unpack(path: Path, dest: Path) -> Path:
    """Extract a Neo-style model tarball into ``dest``; what to import inside it."""
    dest.mkdir(parents=True)
    try:
        with tarfile.open(path) as tar:
            # The "data" filter refuses absolute paths, "..", links that leave dest, devices
            # and setuid bits: a tarball from elsewhere cannot write outside dest.
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path} cannot be unpacked as a model tarball ({exc})") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    # Neo tarballs hold the files at the top; some hold one folder with them.
    if len(entries) == 1 and entries[0].is_dir() and not _is_saved_model(entries[0]):
        return entries[0]
    if len(entries) == 1 and entries[0].is_file():
        return entries[0]
    if not entries:
        raise UserError(f"the model tarball {path} is empty")
    return dest


def _is_saved_model(path: Path) -> bool:
    return (path / "saved_model.pb").is_file()


def source_sha256(path: Path) -> str:
    """sha256 of a model file, or of a folder's files (relative names and contents, in order)."""
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode() + b"\0")
        digest.update(bytes.fromhex(source_sha256(item)))
    return digest.hexdigest()


def import_model(ref: str | Path, workdir: Path, *, framework: str | None = None, input_shape: InputShapes = None,
                 name: str | None = None) -> SourceModel:
    """Import ``ref`` (a model file, folder, Neo-style ``.tar.gz`` or ``zoo:NAME``) into ``workdir``.

    ``framework`` is one of :data:`FRAMEWORKS`; found from the files when None.
    ``input_shape`` comes from ``--input-config`` or ``--input-shape``.
    """
    from edgekiln import zoo
    from edgekiln.compile.frontends import onnx as onnx_frontend

    if framework is not None and framework not in FRAMEWORKS:
        raise UserError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    ref_text = str(ref)
    if zoo.is_zoo_ref(ref_text):
        if framework not in (None, "onnx"):
            raise UserError(f"{ref_text} is a built-in model; --framework does not apply to it")
        return onnx_frontend.import_model(ref_text, workdir, input_shape=input_shape, name=name)
    path = Path(ref_text)
    if not path.exists():
        raise UserError(
            f"model file {path} does not exist",
            hint="give a model file (ONNX, PyTorch, TFLite, MXNet, Keras/TensorFlow) or a Neo-style .tar.gz "
                 "of one, or a built-in model such as zoo:resnet18 (edgekiln zoo list)",
        )
    sha = source_sha256(path)
    default_name = model_stem(path)
    if is_tarball(path):
        path = _unpack(path, workdir / "unpacked")
        if path.is_file():
            default_name = model_stem(path)
    found = framework or detect_framework(path)
    if found == "onnx":
        if path.is_dir():
            onnx_files = sorted(path.glob("*.onnx"))
            if len(onnx_files) != 1:
                raise UserError(f"{path} holds {len(onnx_files)} .onnx files; expected one")
            path = onnx_files[0]
        source = onnx_frontend.import_model(path, workdir, input_shape=input_shape, name=name or default_name)
    elif found == "pytorch":
        from edgekiln.compile.frontends import pytorch

        source = pytorch.import_model(path, workdir, input_shape=input_shape, name=name or default_name, sha256=sha)
    elif found == "mxnet":
        from edgekiln.compile.frontends import mxnet

        source = mxnet.import_model(path, workdir, input_shape=input_shape, name=name, sha256=sha)
    else:
        from edgekiln.compile.frontends import tensorflow

        source = tensorflow.import_model(path, workdir, framework=found, input_shape=input_shape,
                                         name=name or default_name, sha256=sha)
    from dataclasses import replace

    # The reference the user gave (a tarball, a folder), not the file found inside it.
    return replace(source, source_ref=ref_text, source_sha256=sha)


def model_stem(path: Path) -> str:
    """The model's name from its file name: ``resnet18_v1`` for ``resnet18_v1-0000.params``."""
    name = path.name
    for suffix in (*_TARBALL_SUFFIXES, "-symbol.json", ".params", *_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if path.suffix.lower() == ".params" and "-" in name:
        name = name.rsplit("-", 1)[0]  # PREFIX-0000.params
    return name or path.name
