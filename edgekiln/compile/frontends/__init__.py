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
import importlib
import json
import tarfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edgekiln.compile.stages import InputShapes, SourceModel
from edgekiln.errors import UserError


@dataclass(frozen=True)
class Frontend:
    """One framework's importer: its name, how its files are recognised, and the import.

    ``detect`` sees a file's path and first bytes; ``suffixes`` are the file name endings
    that name the framework by themselves.  The import is the ``import_model`` function of
    the module ``edgekiln.compile.frontends.<module>``, loaded only when it is used (each
    brings its framework's libraries), with keyword arguments ``path, workdir, input_shape,
    name, sha256`` (and ``options``).
    """

    name: str
    module: str
    detect: Callable[[Path, bytes], bool]
    suffixes: tuple[str, ...] = ()
    # MXNet names the model after its file prefix, which may sit inside a folder or tarball.
    names_itself: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    def import_model(
        self, path: Path, workdir: Path, *, input_shape: InputShapes, name: str | None, sha256: str
    ) -> SourceModel:
        module = importlib.import_module(f"edgekiln.compile.frontends.{self.module}")
        return module.import_model(path, workdir, input_shape=input_shape, name=name, sha256=sha256, **self.options)


def _named(*endings: str) -> Callable[[Path, bytes], bool]:
    return lambda path, head: path.name.lower().endswith(endings)


def _zip_holds(test: Callable[[list[str]], bool], *endings: str) -> Callable[[Path, bytes], bool]:
    def detect(path: Path, head: bytes) -> bool:
        if path.name.lower().endswith(endings):
            return True
        return head[:2] == b"PK" and zipfile.is_zipfile(path) and test(zipfile.ZipFile(path).namelist())

    return detect


_KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
_TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".ts")

# In the order detection asks them: names and magic numbers that cannot mislead come first.
# ONNX files have no magic number; a file no frontend claims is tried as ONNX, whose parser
# then says whether it is one.
FRONTENDS: tuple[Frontend, ...] = (
    Frontend("mxnet", "mxnet", _named("-symbol.json", ".params"), names_itself=True),
    Frontend(
        "tensorflow",
        "tensorflow",
        lambda p, h: p.name.lower() in ("saved_model.pb", "saved_model.pbtxt"),
        options={"framework": "tensorflow"},
    ),
    Frontend(
        "tflite",
        "tensorflow",
        lambda p, h: h[4:8] == b"TFL3" or p.suffix.lower() == ".tflite",
        (".tflite",),
        options={"framework": "tflite"},
    ),
    Frontend(
        "keras",
        "tensorflow",
        lambda p, h: (
            h[:8] == b"\x89HDF\r\n\x1a\n"
            or _zip_holds(lambda m: "config.json" in m and "model.weights.h5" in m, *_KERAS_SUFFIXES)(p, h)
        ),
        _KERAS_SUFFIXES,
        options={"framework": "keras"},
    ),
    Frontend(
        "pytorch",
        "pytorch",
        _zip_holds(lambda m: any(x.endswith("data.pkl") or "/models/" in x for x in m), *_TORCH_SUFFIXES),
        _TORCH_SUFFIXES,
    ),
    Frontend("onnx", "onnx", _named(".onnx"), (".onnx",)),
)
FRAMEWORKS = tuple(f.name for f in FRONTENDS)
_SUFFIXES = tuple(s for f in FRONTENDS for s in f.suffixes)
_TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def frontend(name: str) -> Frontend:
    """The frontend called ``name``; an unknown name is an error that lists the known ones."""
    for candidate in FRONTENDS:
        if candidate.name == name:
            return candidate
    raise UserError(f"unknown framework {name!r}; choose one of {', '.join(FRAMEWORKS)}")


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
            raise UserError(
                f"--input-config is not JSON ({exc.msg} at column {exc.colno})",
                hint="give e.g. '{\"data\": [1, 3, 224, 224]}'",
            ) from None
        except (ValueError, RecursionError) as exc:  # a 5000-digit integer, deep nesting
            raise UserError(
                f"--input-config is not a usable JSON value ({str(exc)[:80]})",
                hint="give e.g. '{\"data\": [1, 3, 224, 224]}'",
            ) from None

    def shape(dims: Any, where: str) -> list[int]:
        if (
            not isinstance(dims, list)
            or not dims
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
        ):
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
    raise UserError('--input-config must be a JSON object of input shapes such as {"data": [1, 3, 224, 224]}')


def parse_input_shape(values: Sequence[str] | None) -> InputShapes:
    """``--input-shape`` values: ``1,3,224,224`` for a single input or ``NAME:1,3,224,224``."""
    if not values:
        return None
    named: dict[str, list[int]] = {}
    plain: list[int] | None = None
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            shape = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise UserError(f"--input-shape {value!r} is not a list of integers such as 1,3,224,224") from None
        if not shape:
            raise UserError(f"--input-shape {value!r} gives no dimensions")
        if sep:
            named[name] = shape
        else:
            plain = shape
    if plain is not None and named:
        raise UserError("give --input-shape either once without a name or as NAME:DIMS for each input")
    return plain if plain is not None else named


def parse_input_shapes(config: str | None, shapes: Sequence[str] | None) -> InputShapes:
    """The input shapes of the command line: ``--input-config`` or ``--input-shape``, not both."""
    if config and shapes:
        raise UserError("give the input shapes either with --input-config or with --input-shape, not both")
    return parse_input_config(config) if config else parse_input_shape(shapes)


# Elements of one input: 2^28 float32 values are 1 GiB, and compile makes several such
# tensors (samples, reference outputs); far beyond an image classifier's input.
MAX_INPUT_ELEMENTS = 1 << 28


def check_input_sizes(input_shape: InputShapes) -> None:
    """Refuse up front an input shape (from --input-config, --input-shape or the API) whose
    tensor would have over 2^28 elements, instead of a MemoryError when compile makes inputs."""
    if input_shape is None:
        return
    shapes = input_shape.items() if isinstance(input_shape, Mapping) else [("the input", input_shape)]
    for name, dims in shapes:
        elements = 1
        for d in dims:
            elements *= int(d)
        if len(dims) > 8 or elements > MAX_INPUT_ELEMENTS:
            raise UserError(
                f"input shape {list(dims)[:9]} of {str(name)[:80]!r} has {elements:.3g} elements in "
                f"{len(dims)} dimensions, over the limit of 2^28 elements and 8 dimensions",
                hint="give the shape of one input batch, e.g. [1, 3, 224, 224]",
            )


def detect_framework(path: Path) -> str:
    """The framework of the model file or folder ``path``, from its names and first bytes."""
    if path.is_dir():
        return _detect_dir(path)
    head = _head(path, 8)
    return next((f.name for f in FRONTENDS if f.detect(path, head)), "onnx")


def _detect_dir(path: Path) -> str:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return "tensorflow"
    if list(path.glob("*-symbol.json")):
        return "mxnet"
    files = _model_files(path)
    if len(files) == 1:
        return detect_framework(files[0])
    if not files:
        raise UserError(
            f"{path} holds no model files",
            hint="expected an .onnx, .pt/.pt2, .tflite, .h5/.keras file, an MXNet "
            "PREFIX-symbol.json + PREFIX-NNNN.params pair, or a TensorFlow SavedModel",
        )
    raise UserError(
        f"{path} holds several model files ({', '.join(f.name for f in files)})", hint="give the one to compile"
    )


def _model_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_TARBALL_SUFFIXES) and tarfile.is_tarfile(path)


def _unpack(path: Path, dest: Path) -> Path:
    """Extract a Neo-style model tarball into ``dest``; what to import inside it."""
    from edgekiln.compile.frontends import neo_tarball

    dest.mkdir(parents=True)
    # Bounded in size and member count, and kept inside dest (see neo_tarball).
    neo_tarball.extract(path, dest)
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


def import_model(
    ref: str | Path,
    workdir: Path,
    *,
    framework: str | None = None,
    input_shape: InputShapes = None,
    name: str | None = None,
) -> SourceModel:
    """Import ``ref`` (a model file, folder, Neo-style ``.tar.gz`` or ``zoo:NAME``) into ``workdir``.

    ``framework`` is one of :data:`FRAMEWORKS`; found from the files when None.
    ``input_shape`` comes from ``--input-config`` or ``--input-shape``.
    """
    from edgekiln import zoo
    from edgekiln.compile.frontends import onnx as onnx_frontend

    if framework is not None:
        frontend(framework)  # an unknown name fails before any work
    check_input_sizes(input_shape)
    ref_text = str(ref)
    if zoo.is_zoo_ref(ref_text):
        if framework not in (None, "onnx"):
            raise UserError(f"{ref_text} is a built-in model; --framework does not apply to it")
        return onnx_frontend.import_model(ref_text, workdir, input_shape=input_shape, name=name, sha256=None)
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
    chosen = frontend(framework or detect_framework(path))
    source = chosen.import_model(
        path, workdir, input_shape=input_shape, sha256=sha, name=name if chosen.names_itself else name or default_name
    )
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
