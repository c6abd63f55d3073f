"""MXNet import without MXNet: a ``PREFIX-symbol.json`` + ``PREFIX-EPOCH.params`` pair becomes
an ONNX graph (opset 17, float32).

MXNet 1.x cannot be installed next to numpy 2, and edge users rarely have it, so both files
are read directly: the symbol is JSON, the params file is MXNet's NDArray list format (see
:func:`read_params`).  Each supported operator is converted with MXNet's own semantics,
defaults included (``BatchNorm`` defaults to ``eps=1e-3`` and ``fix_gamma=True``, average
pooling counts padding), since the exported JSON leaves out attributes at their defaults.
"""

from __future__ import annotations

import glob
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from edgekiln.errors import InternalError, UserError

if TYPE_CHECKING:
    import onnx

    from edgekiln.compile.frontends.onnx import SourceModel

OPSET = 17
_IR_VERSION = 8  # the IR version that goes with opset 17, so older runtimes load the model too

_LIST_MAGIC = 0x112
_V1_MAGIC = 0xF993FAC8
_V2_MAGIC = 0xF993FAC9
_V3_MAGIC = 0xF993FACA  # written while NumPy shape semantics are on: ndim -1 is "unknown", 0 a scalar
# mshadow type flags.
_DTYPES: dict[int, Any] = {
    0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64,
    7: np.bool_, 8: np.int16, 9: np.uint16, 10: np.uint32, 11: np.uint64,
}
_BFLOAT16 = 12
_MAX_NDIM = 32  # MXNet's own limit; a larger count means the bytes are not what we think


# ---- finding the files ---------------------------------------------------------------------

_PARAMS_NAME = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)\.params$")
_SYMBOL_SUFFIX = "-symbol.json"
_EXPECTED = "an MXNet PREFIX-symbol.json, a PREFIX-NNNN.params beside one, or a directory holding one such pair"


def find_files(path: Path) -> tuple[Path, Path]:
    """(symbol.json, params) for ``path``.

    ``path`` is a ``*-symbol.json`` (the params beside it, ``PREFIX-NNNN.params``, the highest
    epoch when there are several), a ``.params`` file (the symbol beside it), or a directory
    holding exactly one such pair.  Raises UserError otherwise, naming what was found.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist", hint=f"expected {_EXPECTED}")
    if path.is_dir():
        return _find_in_dir(path)
    if path.name.endswith(_SYMBOL_SUFFIX):
        prefix = path.name[: -len(_SYMBOL_SUFFIX)]
        params = _epochs(path.parent, prefix)
        if not params:
            raise UserError(f"{path} has no parameters beside it: no {prefix}-NNNN.params in {path.parent}",
                            hint="export both files with HybridBlock.export() or Module.save_checkpoint()")
        return path, params[-1][1]
    match = _PARAMS_NAME.match(path.name)
    if match:
        symbol = path.parent / f"{match['prefix']}{_SYMBOL_SUFFIX}"
        if not symbol.is_file():
            raise UserError(f"{path} has no symbol beside it: no {symbol.name} in {path.parent}",
                            hint="an MXNet model is a PREFIX-symbol.json and a PREFIX-NNNN.params together")
        return symbol, path
    if path.suffix == ".params":
        raise UserError(f"{path} is not named PREFIX-NNNN.params, so its symbol file cannot be found",
                        hint=f"expected {_EXPECTED}")
    raise UserError(f"{path} is not an MXNet model file", hint=f"expected {_EXPECTED}")


def _epochs(directory: Path, prefix: str) -> list[tuple[int, Path]]:
    found = []
    for candidate in directory.glob(f"{glob.escape(prefix)}-*.params"):
        match = _PARAMS_NAME.match(candidate.name)
        if match and match["prefix"] == prefix and candidate.is_file():
            found.append((int(match["epoch"]), candidate))
    return sorted(found)


def _find_in_dir(directory: Path) -> tuple[Path, Path]:
    symbols = sorted(p for p in directory.glob(f"*{_SYMBOL_SUFFIX}") if p.is_file())
    pairs = []
    for symbol in symbols:
        params = _epochs(directory, symbol.name[: -len(_SYMBOL_SUFFIX)])
        if params:
            pairs.append((symbol, params[-1][1]))
    if len(pairs) == 1:
        return pairs[0]
    all_params = sorted(p.name for p in directory.glob("*.params"))
    found = f"symbols {[s.name for s in symbols]}, params {all_params}"
    if pairs:
        raise UserError(f"{directory} holds {len(pairs)} MXNet models ({[s.name for s, _ in pairs]}); expected one",
                        hint="give the -symbol.json of the one to import")
    raise UserError(f"{directory} holds no MXNet symbol + params pair (found {found})", hint=f"expected {_EXPECTED}")


# ---- the params file -----------------------------------------------------------------------


class _Corrupt(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Corrupt(f"it ends at byte {len(self.data)}, {n} more bytes expected at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, count: int = 1) -> tuple:
        size = struct.calcsize("<" + fmt)
        return struct.unpack(f"<{count}{fmt}", self.take(size * count))

    def one(self, fmt: str) -> int:
        return self.unpack(fmt)[0]


def read_params(path: Path) -> dict[str, np.ndarray]:
    """The named arrays of an MXNet ``.params`` file (``mx.nd.save`` of a dict), keys as stored
    (``arg:NAME`` / ``aux:NAME`` in exported models).

    Layout: uint64 0x112, uint64 reserved, uint64 count, the arrays, uint64 name count, names
    (uint64 length + bytes).  Arrays are read in the V2/V3 layouts MXNet 1.x writes and in the
    older V1 and magic-less ones it still loads.  Arrays MXNet marks "none" come back with
    shape (0,).  A file that does not parse raises UserError.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return _parse_params(data, path)
    except _Corrupt as exc:
        raise UserError(f"{path} is not an MXNet .params file ({exc})") from None


def _parse_params(data: bytes, path: Path) -> dict[str, np.ndarray]:
    r = _Reader(data)
    magic = r.one("Q")
    if magic != _LIST_MAGIC:
        raise _Corrupt(f"its header is 0x{magic:x}, not 0x{_LIST_MAGIC:x}")
    r.one("Q")  # reserved
    count = r.one("Q")
    # Every array takes at least 8 bytes, so a larger count is garbage, not a huge file.
    if count > (len(data) - r.pos) // 8:
        raise _Corrupt(f"it claims {count} arrays in {len(data)} bytes")
    arrays = [_read_array(r, i, path) for i in range(count)]
    n_names = r.one("Q")
    if n_names == 0 and count:
        raise UserError(f"{path} holds an unnamed list of {count} arrays, not named model parameters",
                        hint="save the parameters as a dict (mx.nd.save(path, {name: array})) or export the model")
    if n_names != count:
        raise _Corrupt(f"it holds {count} arrays but {n_names} names")
    names = []
    for _ in range(n_names):
        length = r.one("Q")
        raw = r.take(length)
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Corrupt(f"array name {raw[:40]!r} is not UTF-8") from None
    if len(set(names)) != len(names):
        raise _Corrupt("it names an array twice")
    return dict(zip(names, arrays))


def _read_array(r: _Reader, index: int, path: Path) -> np.ndarray:
    magic = r.one("I")
    if magic in (_V2_MAGIC, _V3_MAGIC):
        stype = r.one("i")
        if stype != 0:
            kind = {1: "row_sparse", 2: "csr"}.get(stype, f"storage type {stype}")
            raise UserError(f"array #{index} of {path} is {kind}; edgekiln's MXNet importer reads dense arrays only",
                            hint="convert it with .tostype('default') and save again")
        ndim = r.one("i")
        if magic == _V3_MAGIC and ndim == -1:
            return np.empty((0,), np.float32)
        if not 0 <= ndim <= _MAX_NDIM:
            raise _Corrupt(f"array #{index} has {ndim} dimensions")
        dims = r.unpack("q", ndim)
        if magic == _V2_MAGIC and ndim == 0:
            return np.empty((0,), np.float32)
        if magic == _V3_MAGIC and any(d == -1 for d in dims):
            return np.empty((0,), np.float32)
    elif magic == _V1_MAGIC:
        ndim = r.one("I")
        if ndim > _MAX_NDIM:
            raise _Corrupt(f"array #{index} has {ndim} dimensions")
        dims = r.unpack("q", ndim)
        if ndim == 0:
            return np.empty((0,), np.float32)
    elif magic <= _MAX_NDIM:
        # The oldest layout has no magic: it starts with ndim, then uint32 dims.
        dims = r.unpack("I", magic)
        if magic == 0:
            return np.empty((0,), np.float32)
    else:
        raise _Corrupt(f"array #{index} starts with 0x{magic:08x}, which is no NDArray magic")
    if any(d < 0 for d in dims):
        raise _Corrupt(f"array #{index} has shape {tuple(dims)}")
    dev_type, _dev_id = r.unpack("i", 2)
    if not 0 < dev_type < 16:
        raise _Corrupt(f"array #{index} has device type {dev_type}")
    flag = r.one("i")
    if flag == _BFLOAT16:
        raise UserError(f"array #{index} of {path} is bfloat16, which edgekiln's MXNet importer does not read",
                        hint="cast the parameters to float32 and save again")
    dtype = _DTYPES.get(flag)
    if dtype is None:
        raise _Corrupt(f"array #{index} has type flag {flag}")
    dtype = np.dtype(dtype).newbyteorder("<")
    size = math.prod(dims)
    return np.frombuffer(r.take(size * dtype.itemsize), dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


# ---- the symbol file -----------------------------------------------------------------------


@dataclass
class _Node:
    index: int
    op: str
    name: str
    attrs: dict[str, str]
    inputs: list[tuple[int, int]]


@dataclass
class _Symbol:
    nodes: list[_Node]
    arg_nodes: list[int]
    heads: list[tuple[int, int]]
    mxnet_version: int | None


def _load_symbol(path: Path) -> _Symbol:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not an MXNet symbol file (it is not UTF-8 text)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not an MXNet symbol file (malformed JSON: {exc})") from None

    def bad(reason: str) -> UserError:
        return UserError(f"{path} is not an MXNet symbol file ({reason})")

    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or "heads" not in doc:
        raise bad("expected a JSON object with 'nodes' and 'heads'")
    nodes = []
    for i, raw in enumerate(doc["nodes"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("op"), str) or not isinstance(raw.get("name"), str):
            raise bad(f"node #{i} lacks an 'op' or 'name' string")
        # The attribute key changed across MXNet versions: "param" (0.8), "attr" (0.9-1.1), "attrs".
        attrs = raw.get("attrs", raw.get("attr", raw.get("param", {}))) or {}
        if not isinstance(attrs, dict):
            raise bad(f"node {raw['name']!r} has attributes that are not an object")
        inputs = [_entry(e, len(nodes), lambda why, n=raw["name"]: bad(f"node {n!r}: {why}"))
                  for e in raw.get("inputs", [])]
        nodes.append(_Node(i, raw["op"], raw["name"], {str(k): str(v) for k, v in attrs.items()}, inputs))
    heads = [_entry(e, len(nodes), lambda why: bad(f"heads: {why}")) for e in doc["heads"]]
    if not heads:
        raise bad("it has no outputs ('heads' is empty)")
    arg_nodes = doc.get("arg_nodes")
    if not isinstance(arg_nodes, list) or not all(isinstance(a, int) and 0 <= a < len(nodes) for a in arg_nodes):
        arg_nodes = [n.index for n in nodes if n.op == "null"]
    version = None
    meta = doc.get("attrs")
    if isinstance(meta, dict) and isinstance(meta.get("mxnet_version"), list) and len(meta["mxnet_version"]) == 2:
        try:
            version = int(meta["mxnet_version"][1])
        except (TypeError, ValueError):
            version = None
    return _Symbol(nodes, arg_nodes, heads, version)


def _entry(raw: Any, limit: int, bad: Callable[[str], UserError]) -> tuple[int, int]:
    """A [node, output(, version)] reference; nodes come in topological order, so it must point back."""
    if (not isinstance(raw, list) or len(raw) not in (2, 3)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)):
        raise bad(f"{raw!r} is not a [node, output, version] entry")
    if not 0 <= raw[0] < limit or raw[1] < 0:
        raise bad(f"entry {raw!r} refers to a node that does not come before it")
    return raw[0], raw[1]


# ---- attributes ----------------------------------------------------------------------------

_REQUIRED = object()
_NONE_TEXT = {"", "none", "null"}


class _Attrs:
    """MXNet attribute strings ("(3, 3)", "True", "1e-05") read with the operator's defaults."""

    def __init__(self, node: _Node) -> None:
        self.node = node

    def _raw(self, key: str) -> str | None:
        value = self.node.attrs.get(key)
        if value is None or value.strip().lower() in _NONE_TEXT:
            return None
        return value.strip()

    def _fail(self, key: str, what: str) -> UserError:
        return UserError(f"attribute {key}={self.node.attrs.get(key)!r} of MXNet node {self.node.name!r} "
                         f"({self.node.op}) is not {what}")

    def _missing(self, key: str) -> UserError:
        return UserError(f"MXNet node {self.node.name!r} ({self.node.op}) has no {key!r} attribute, which it needs")

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._raw(key)
        if value is None:
            if default is _REQUIRED:
                raise self._missing(key)
            return default
        return value.strip("'\"")

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise self._fail(key, "a boolean")

    def integer(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._raw(key)
        if value is None:
            if default is _REQUIRED:
                raise self._missing(key)
            return default
        try:
            return int(value.rstrip("Ll"))
        except ValueError:
            raise self._fail(key, "an integer") from None

    def number(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._raw(key)
        if value is None:
            if default is _REQUIRED:
                raise self._missing(key)
            return default
        try:
            return float(value)
        except ValueError:
            raise self._fail(key, "a number") from None

    def ints(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._raw(key)
        # "()" is how MXNet writes an unset tuple, so it means the default.
        if value is None or value.replace(" ", "") in ("()", "[]"):
            if default is _REQUIRED:
                raise self._missing(key)
            return default
        body = value
        if body[:1] in "([" and body[-1:] in ")]":
            body = body[1:-1]
        try:
            return tuple(int(part.strip().rstrip("Ll")) for part in body.split(",") if part.strip())
        except ValueError:
            raise self._fail(key, "a tuple of integers") from None


# ---- conversion ----------------------------------------------------------------------------


@dataclass
class _Check:
    """A size that a tensor's axis must have for a parameter to fit, checked once shapes are known."""

    tensor: str
    axis: int
    size: int
    node: str
    param: str
    what: str


@dataclass
class _Builder:
    symbol: _Symbol
    params: Mapping[str, np.ndarray]
    params_path: Path
    onnx_nodes: list = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    data_inputs: list[int] = field(default_factory=list)
    tensor_of: dict[tuple[int, int], str] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    checks: list[_Check] = field(default_factory=list)
    ceil_pools: list[tuple[str, _Node, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def stored(self, var: _Node) -> np.ndarray | None:
        for key in (f"arg:{var.name}", f"aux:{var.name}", var.name):
            if key in self.params:
                return self.params[key]
        return None

    def _source(self, node: _Node, i: int, role: str) -> tuple[int, int]:
        if i >= len(node.inputs):
            raise UserError(f"MXNet node {node.name!r} ({node.op}) has {len(node.inputs)} inputs; "
                            f"its {role} (input {i}) is missing from the symbol")
        return node.inputs[i]

    def data(self, node: _Node, i: int, role: str = "data") -> str:
        """The tensor feeding input ``i``: another node's output, a graph input, or a constant."""
        key = self._source(node, i, role)
        if key in self.tensor_of:
            return self.tensor_of[key]
        src = self.symbol.nodes[key[0]]
        if src.op != "null":
            # Nodes come in topological order, so an operator output not converted yet is not the first.
            raise UserError(f"MXNet node {node.name!r} ({node.op}) reads output {key[1]} of node {src.name!r} "
                            f"({src.op}); edgekiln's MXNet importer converts only the first output of each operator")
        value = self.stored(src)
        name = self.unique(src.name)
        if value is None:
            self.data_inputs.append(src.index)
        else:
            self.initializers[name] = _as_float32(value)
        self.tensor_of[key] = name
        return name

    def param(self, node: _Node, i: int, role: str, *, register: bool = True) -> tuple[str, np.ndarray]:
        """The parameter at input ``i`` (a weight, a statistic) as (name, float32 array); an
        initializer unless ``register`` is false (the caller stores a transformed copy)."""
        key = self._source(node, i, role)
        src = self.symbol.nodes[key[0]]
        if src.op != "null":
            raise UserError(f"the {role} of MXNet node {node.name!r} ({node.op}) is computed by node {src.name!r} "
                            f"({src.op}); edgekiln's MXNet importer needs it stored in the .params file")
        value = self.stored(src)
        if value is None:
            raise UserError(f"parameter {src.name!r} ({role} of MXNet node {node.name!r}, {node.op}) is missing "
                            f"from {self.params_path}", hint="export the symbol and the params together")
        array = _as_float32(value)
        if not register:
            return src.name, array
        if key not in self.tensor_of:
            self.tensor_of[key] = self.unique(src.name)
            self.initializers[self.tensor_of[key]] = array
        return self.tensor_of[key], array

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.unique(base)
        self.initializers[name] = np.asarray(value, dtype=dtype)
        return name

    def emit(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], node: _Node, **attrs: Any) -> None:
        from onnx import helper

        self.onnx_nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                                name=self.unique(f"{node.name}/{op_type}"), **attrs))

    def temp(self, node: _Node, what: str) -> str:
        return self.unique(f"{node.name}_{what}")

    def wrong_shape(self, node: _Node, param: str, role: str, shape: tuple, expected: str) -> UserError:
        return UserError(f"parameter {param!r} ({role} of MXNet node {node.name!r}, {node.op}) has shape "
                         f"{tuple(shape)}, but the node expects {expected}",
                         hint="the params file does not belong to this symbol, or it is corrupt")

    def need_channels(self, tensor: str, size: int, node: _Node, param: str, what: str, axis: int = 1) -> None:
        known = self.channels.get(tensor) if axis == 1 else None
        if known is not None and known != size:
            raise UserError(f"parameter {param!r} of MXNet node {node.name!r} ({node.op}) fits {what} {size}, "
                            f"but the node's input has {known}",
                            hint="the params file does not belong to this symbol, or it is corrupt")
        self.checks.append(_Check(tensor, axis, size, node.name, param, what))


def _as_float32(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.float32)


def _layout(node: _Node, a: _Attrs, nd: int) -> None:
    layout = a.text("layout", None)
    allowed = {1: "NCW", 2: "NCHW", 3: "NCDHW"}.get(nd)
    if layout is not None and layout != allowed:
        raise UserError(f"MXNet node {node.name!r} ({node.op}) uses layout {layout}; edgekiln's MXNet importer "
                        f"supports channel-first layouts only ({allowed})")


def _spatial(node: _Node, a: _Attrs, key: str, nd: int, default: int) -> tuple[int, ...]:
    value = a.ints(key, (default,) * nd)
    if len(value) != nd:
        raise UserError(f"attribute {key}={node.attrs.get(key)!r} of MXNet node {node.name!r} ({node.op}) "
                        f"has {len(value)} values; its kernel has {nd}")
    return value


def _convolution(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    kernel = a.ints("kernel")
    nd = len(kernel)
    if not 1 <= nd <= 3:
        raise UserError(f"MXNet node {node.name!r} (Convolution) has a {nd}-D kernel; 1-D to 3-D are supported")
    _layout(node, a, nd)
    stride = _spatial(node, a, "stride", nd, 1)
    dilate = _spatial(node, a, "dilate", nd, 1)
    pad = _spatial(node, a, "pad", nd, 0)
    filters = a.integer("num_filter")
    groups = a.integer("num_group", 1)
    if groups < 1 or filters % groups:
        raise UserError(f"MXNet node {node.name!r} (Convolution) has num_filter={filters}, "
                        f"which num_group={groups} does not divide")
    x = b.data(node, 0)
    w_name, w = b.param(node, 1, "weight")
    if w.ndim != nd + 2 or w.shape[0] != filters or tuple(w.shape[2:]) != kernel:
        raise b.wrong_shape(node, w_name, "weight", w.shape, f"({filters}, C/{groups}, {', '.join(map(str, kernel))})")
    inputs = [x, w_name]
    if not a.boolean("no_bias", False):
        b_name, bias = b.param(node, 2, "bias")
        if bias.shape != (filters,):
            raise b.wrong_shape(node, b_name, "bias", bias.shape, f"({filters},)")
        inputs.append(b_name)
    b.need_channels(x, w.shape[1] * groups, node, w_name, "input channels")
    b.emit("Conv", inputs, [out], node, kernel_shape=list(kernel), strides=list(stride), dilations=list(dilate),
           pads=list(pad) * 2, group=groups)
    b.channels[out] = filters


def _batchnorm(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    if a.integer("axis", 1) != 1:
        raise UserError(f"MXNet node {node.name!r} (BatchNorm) normalizes axis {node.attrs.get('axis')}; "
                        "edgekiln's MXNet importer supports axis 1 only")
    eps = a.number("eps", 1e-3)
    x = b.data(node, 0)
    # fix_gamma (MXNet's default) means a scale of 1 whatever gamma holds.
    fix_gamma = a.boolean("fix_gamma", True)
    stats = [b.param(node, i, role, register=not (fix_gamma and i == 1))
             for i, role in enumerate(("gamma", "beta", "moving_mean", "moving_var"), 1)]
    channels = stats[0][1].shape
    for (name, value), role in zip(stats, ("gamma", "beta", "moving_mean", "moving_var")):
        if value.ndim != 1 or value.shape != channels:
            raise b.wrong_shape(node, name, role, value.shape, f"one value per channel, {channels} like its gamma")
    names = [name for name, _ in stats]
    if fix_gamma:
        names[0] = b.const(f"{node.name}_gamma_fixed", np.ones(channels, np.float32))
    b.need_channels(x, channels[0], node, stats[0][0], "channels")
    # Inference: MXNet normalizes with the moving statistics whatever use_global_stats says.
    b.emit("BatchNormalization", [x, *names], [out], node, epsilon=eps)
    b.channels[out] = channels[0]


_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus", "softsign": "Softsign"}


def _keep_channels(b: _Builder, x: str, out: str) -> None:
    if x in b.channels:
        b.channels[out] = b.channels[x]


def _activation(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    kind = a.text("act_type")
    if kind not in _ACTIVATIONS:
        raise UserError(f"act_type {kind!r} of MXNet node {node.name!r} (Activation) is not supported",
                        hint=f"supported: {', '.join(_ACTIVATIONS)}")
    x = b.data(node, 0)
    b.emit(_ACTIVATIONS[kind], [x], [out], node)
    _keep_channels(b, x, out)


def _unary(onnx_op: str) -> Callable:
    def convert(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
        x = b.data(node, 0)
        b.emit(onnx_op, [x], [out], node)
        _keep_channels(b, x, out)

    return convert


def _clip(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    x = b.data(node, 0)
    low = b.const(f"{node.name}_min", a.number("a_min"))
    high = b.const(f"{node.name}_max", a.number("a_max"))
    b.emit("Clip", [x, low, high], [out], node)
    _keep_channels(b, x, out)


def _leaky_relu(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    kind = a.text("act_type", "leaky")
    x = b.data(node, 0)
    slope = a.number("slope", 0.25)
    if kind == "leaky":
        b.emit("LeakyRelu", [x], [out], node, alpha=slope)
    elif kind == "elu":
        b.emit("Elu", [x], [out], node, alpha=slope)
    elif kind == "selu":
        # MXNet's SELU constants are ONNX's defaults.
        b.emit("Selu", [x], [out], node)
    elif kind == "rrelu":
        # At inference MXNet's randomized ReLU uses the middle of its slope range.
        middle = (a.number("lower_bound", 0.125) + a.number("upper_bound", 0.334)) / 2
        b.emit("LeakyRelu", [x], [out], node, alpha=middle)
    elif kind == "gelu":
        # Opset 17 has no Gelu; MXNet's is the erf form, 0.5 x (1 + erf(x / sqrt 2)).
        scaled = b.temp(node, "scaled")
        b.emit("Mul", [x, b.const(f"{node.name}_rsqrt2", 1 / math.sqrt(2))], [scaled], node)
        erf = b.temp(node, "erf")
        b.emit("Erf", [scaled], [erf], node)
        shifted = b.temp(node, "erf_plus1")
        b.emit("Add", [erf, b.const(f"{node.name}_one", 1.0)], [shifted], node)
        half = b.temp(node, "half_x")
        b.emit("Mul", [x, b.const(f"{node.name}_half", 0.5)], [half], node)
        b.emit("Mul", [half, shifted], [out], node)
    else:
        raise UserError(f"act_type {kind!r} of MXNet node {node.name!r} (LeakyReLU) is not supported",
                        hint="supported: leaky, elu, selu, rrelu, gelu")
    _keep_channels(b, x, out)


def _pooling(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    kind = a.text("pool_type", "max")
    if kind not in ("max", "avg", "sum"):
        raise UserError(f"pool_type {kind!r} of MXNet node {node.name!r} (Pooling) is not supported",
                        hint="supported: max, avg, sum")
    x = b.data(node, 0)
    if a.boolean("global_pool", False):
        if kind == "sum":
            raise UserError(f"global sum pooling (MXNet node {node.name!r}) is not supported",
                            hint="supported: global max and avg pooling")
        b.emit("GlobalMaxPool" if kind == "max" else "GlobalAveragePool", [x], [out], node)
        _keep_channels(b, x, out)
        return
    kernel = a.ints("kernel")
    nd = len(kernel)
    if not 1 <= nd <= 3:
        raise UserError(f"MXNet node {node.name!r} (Pooling) has a {nd}-D kernel; 1-D to 3-D are supported")
    _layout(node, a, nd)
    stride = _spatial(node, a, "stride", nd, 1)
    pad = _spatial(node, a, "pad", nd, 0)
    convention = a.text("pooling_convention", "valid")
    if convention not in ("valid", "full"):
        raise UserError(f"pooling_convention {convention!r} of MXNet node {node.name!r} (Pooling) is not supported",
                        hint="supported: valid, full")
    # "full" is MXNet's ceil-mode output size; padding stays symmetric in both.
    if convention == "full":
        b.ceil_pools.append((x, node, kernel, stride, pad))
    common = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pad) * 2,
                  ceil_mode=int(convention == "full"))
    if kind == "max":
        b.emit("MaxPool", [x], [out], node, **common)
    elif kind == "avg":
        # MXNet counts the padding in the average unless told otherwise (ONNX does not).
        include = a.boolean("count_include_pad", True)
        b.emit("AveragePool", [x], [out], node, count_include_pad=int(include), **common)
    else:
        if convention == "full":
            raise UserError(f"sum pooling with pooling_convention 'full' (MXNet node {node.name!r}) is not supported")
        # Every valid-convention window lies inside the padded input, so sum = mean * window size.
        mean = b.temp(node, "mean")
        b.emit("AveragePool", [x], [mean], node, count_include_pad=1, **common)
        b.emit("Mul", [mean, b.const(f"{node.name}_window", float(math.prod(kernel)))], [out], node)
    _keep_channels(b, x, out)


def _flatten(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    b.emit("Flatten", [b.data(node, 0)], [out], node, axis=1)


def _fully_connected(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    hidden = a.integer("num_hidden")
    x = b.data(node, 0)
    flatten = a.boolean("flatten", True)
    w_name, w = b.param(node, 1, "weight", register=flatten)
    if w.ndim != 2 or w.shape[0] != hidden:
        raise b.wrong_shape(node, w_name, "weight", w.shape, f"({hidden}, input features)")
    bias = None
    if not a.boolean("no_bias", False):
        bias, value = b.param(node, 2, "bias")
        if value.shape != (hidden,):
            raise b.wrong_shape(node, bias, "bias", value.shape, f"({hidden},)")
    if flatten:
        # MXNet flattens everything after the batch axis into the features.
        flat = b.temp(node, "flat")
        b.emit("Flatten", [x], [flat], node, axis=1)
        b.need_channels(flat, w.shape[1], node, w_name, "input features")
        b.emit("Gemm", [flat, w_name] + ([bias] if bias else []), [out], node, transB=1)
        b.channels[out] = hidden
        return
    # flatten=False applies the layer to the last axis, whatever the rank.
    b.need_channels(x, w.shape[1], node, w_name, "input features", axis=-1)
    w_t = b.const(f"{w_name}_transposed", w.T)
    if bias is None:
        b.emit("MatMul", [x, w_t], [out], node)
        return
    product = b.temp(node, "matmul")
    b.emit("MatMul", [x, w_t], [product], node)
    b.emit("Add", [product, bias], [out], node)


def _binary(onnx_op: str) -> Callable:
    def convert(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
        lhs, rhs = b.data(node, 0, "lhs"), b.data(node, 1, "rhs")
        b.emit(onnx_op, [lhs, rhs], [out], node)
        # Only when both sides agree: broadcasting can widen a side of 1 channel.
        sides = {b.channels.get(lhs), b.channels.get(rhs)}
        if len(sides) == 1 and None not in sides:
            b.channels[out] = sides.pop()

    return convert


def _scalar(onnx_op: str, reverse: bool = False) -> Callable:
    def convert(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
        x = b.data(node, 0)
        scalar = b.const(f"{node.name}_scalar", a.number("scalar"))
        b.emit(onnx_op, [scalar, x] if reverse else [x, scalar], [out], node)
        _keep_channels(b, x, out)

    return convert


def _add_n(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    inputs = [b.data(node, i) for i in range(len(node.inputs))]
    b.emit("Sum", inputs, [out], node)
    sides = {b.channels.get(x) for x in inputs}
    if len(sides) == 1 and None not in sides:
        b.channels[out] = sides.pop()


def _concat(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    axis = a.integer("dim", 1)
    inputs = [b.data(node, i) for i in range(len(node.inputs))]
    b.emit("Concat", inputs, [out], node, axis=axis)
    if axis == 1 and all(x in b.channels for x in inputs):
        b.channels[out] = sum(b.channels[x] for x in inputs)


def _identity(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    # Dropout is the identity at inference, also mode="always": the expected value of
    # inverted dropout is its input, and a compiled model has no use for the randomness.
    x = b.data(node, 0)
    b.emit("Identity", [x], [out], node)
    _keep_channels(b, x, out)


def _softmax_flat(b: _Builder, node: _Node, x: str, out: str) -> None:
    """Softmax over everything after the batch axis, keeping the input's shape."""
    shape = b.temp(node, "shape")
    b.emit("Shape", [x], [shape], node)
    flat = b.temp(node, "flat")
    b.emit("Flatten", [x], [flat], node, axis=1)
    soft = b.temp(node, "softmax")
    b.emit("Softmax", [flat], [soft], node, axis=-1)
    b.emit("Reshape", [soft, shape], [out], node)


def _softmax(log: bool) -> Callable:
    def convert(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
        if a.boolean("use_length", False):
            raise UserError(f"softmax with use_length (MXNet node {node.name!r}) is not supported")
        x = b.data(node, 0)
        temperature = a.number("temperature", 1.0)
        if temperature != 1.0:
            scaled = b.temp(node, "scaled")
            b.emit("Div", [x, b.const(f"{node.name}_temperature", temperature)], [scaled], node)
            x = scaled
        b.emit("LogSoftmax" if log else "Softmax", [x], [out], node, axis=a.integer("axis", -1))

    return convert


def _softmax_output(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    # Input 1 is the training label: never read, so it does not become a graph input.
    # Above rank 2 MXNet 1.9 disagrees with itself: its MKLDNN kernel takes the last axis,
    # the native CPU/GPU one (followed here) everything after the batch axis.
    x = b.data(node, 0)
    if a.boolean("multi_output", False):
        b.emit("Softmax", [x], [out], node, axis=1)
    elif a.boolean("preserve_shape", False):
        b.emit("Softmax", [x], [out], node, axis=-1)
    else:
        _softmax_flat(b, node, x, out)


def _softmax_activation(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    x = b.data(node, 0)
    mode = a.text("mode", "instance")
    if mode == "channel":
        b.emit("Softmax", [x], [out], node, axis=1)
    elif mode == "instance":
        # Despite the name MXNet normalizes the last axis (its kernel flattens to 2-D by that axis).
        b.emit("Softmax", [x], [out], node, axis=-1)
    else:
        raise UserError(f"mode {mode!r} of MXNet node {node.name!r} (SoftmaxActivation) is not supported")


def _reshape(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    shape = a.ints("shape", ())
    if not shape or a.boolean("reverse", False) or a.ints("target_shape", ()):
        raise UserError(f"MXNet node {node.name!r} ({node.op}) uses target_shape, reverse or an empty shape; "
                        "edgekiln's MXNet importer supports 'shape' with positive sizes, 0 and -1 only")
    # MXNet's 0 (copy) and -1 (infer) mean what ONNX's do; -2, -3 and -4 have no ONNX twin.
    if any(d < -1 for d in shape) or shape.count(-1) > 1:
        raise UserError(f"shape {shape} of MXNet node {node.name!r} ({node.op}) uses MXNet's special sizes "
                        "(-2, -3, -4 or several -1); supported: positive sizes, 0 and one -1")
    x = b.data(node, 0)
    b.emit("Reshape", [x, b.const(f"{node.name}_shape", shape, np.int64)], [out], node)


def _transpose(b: _Builder, node: _Node, a: _Attrs, out: str) -> None:
    axes = a.ints("axes", ())
    x = b.data(node, 0)
    # No axes: MXNet reverses them, as ONNX does without perm.
    b.emit("Transpose", [x], [out], node, **({"perm": list(axes)} if axes else {}))


_CONVERTERS: dict[str, Callable[[_Builder, _Node, _Attrs, str], None]] = {
    "Convolution": _convolution,
    "BatchNorm": _batchnorm,
    "Activation": _activation,
    "relu": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "clip": _clip,
    "LeakyReLU": _leaky_relu,
    "Pooling": _pooling,
    "Flatten": _flatten,
    "flatten": _flatten,
    "FullyConnected": _fully_connected,
    **{op: _binary("Add") for op in ("elemwise_add", "_Plus", "_plus", "_add", "broadcast_add", "broadcast_plus")},
    **{op: _binary("Sub") for op in ("elemwise_sub", "_Minus", "_minus", "_sub", "broadcast_sub", "broadcast_minus")},
    **{op: _binary("Mul") for op in ("elemwise_mul", "_Mul", "_mul", "broadcast_mul")},
    **{op: _binary("Div") for op in ("elemwise_div", "_Div", "_div", "broadcast_div")},
    **{op: _scalar("Add") for op in ("_plus_scalar", "_PlusScalar")},
    **{op: _scalar("Sub") for op in ("_minus_scalar", "_MinusScalar")},
    **{op: _scalar("Sub", reverse=True) for op in ("_rminus_scalar", "_RMinusScalar")},
    **{op: _scalar("Mul") for op in ("_mul_scalar", "_MulScalar")},
    **{op: _scalar("Div") for op in ("_div_scalar", "_DivScalar")},
    **{op: _scalar("Div", reverse=True) for op in ("_rdiv_scalar", "_RDivScalar")},
    "add_n": _add_n,
    "ElementWiseSum": _add_n,
    "Concat": _concat,
    "concat": _concat,
    **{op: _identity for op in ("Dropout", "_copy", "BlockGrad", "stop_gradient", "identity")},
    "softmax": _softmax(log=False),
    "log_softmax": _softmax(log=True),
    "SoftmaxOutput": _softmax_output,
    "Softmax": _softmax_output,  # SoftmaxOutput's old name
    "SoftmaxActivation": _softmax_activation,
    "Reshape": _reshape,
    "reshape": _reshape,
    "transpose": _transpose,
}


def supported_operators() -> list[str]:
    """The MXNet operator names :func:`to_onnx` converts."""
    return sorted(_CONVERTERS, key=str.lower)


def _reachable(symbol: _Symbol) -> list[_Node]:
    seen: set[int] = set()
    stack = [h for h, _ in symbol.heads]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(src for src, _ in symbol.nodes[i].inputs)
    return [n for n in symbol.nodes if n.index in seen]


def _unsupported(nodes: list[_Node]) -> None:
    bad = [n for n in nodes if n.op != "null" and n.op not in _CONVERTERS]
    if not bad:
        return
    first = bad[0]
    others = sorted({n.op for n in bad[1:]} - {first.op})
    also = f"; also unsupported: {', '.join(others)}" if others else ""
    raise UserError(f"MXNet operator {first.op!r} at node {first.name!r} is not supported by edgekiln's MXNet "
                    f"importer{also}", hint=f"supported: {', '.join(supported_operators())}")


def _shape_list(name: str, shape: Any) -> list[int]:
    try:
        dims = [int(d) for d in shape]
        ok = all(d > 0 and float(d) == float(s) for d, s in zip(dims, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok or not dims:
        raise UserError(f"the input shape for {name!r} must be a list of positive integers, got {shape!r}")
    return dims


def _requested_shapes(input_shapes: Mapping[str, Sequence[int]] | Sequence[int] | None,
                      names: list[str]) -> dict[str, Any]:
    """Shapes by input name: a bare shape is the single input's, Neo's list form (``input0``,
    ``input1``...) goes to the inputs in order."""
    from edgekiln.compile.frontends.onnx import positional

    if input_shapes is None:
        return {}
    if isinstance(input_shapes, Mapping):
        return dict(positional(input_shapes, names))
    if len(names) != 1:
        raise UserError(f"the MXNet model has {len(names)} inputs {names}; give a shape for each by name")
    return {names[0]: input_shapes}


def import_model(path: Path, workdir: Path, *, input_shape: Mapping[str, Sequence[int]] | Sequence[int] | None,
                 name: str | None, sha256: str) -> SourceModel:
    """Import an MXNet symbol + params pair (see :func:`find_files`) as a ``SourceModel``."""
    from edgekiln.compile.frontends.onnx import finish

    symbol, params = find_files(path)
    name = name or symbol.name[: -len(_SYMBOL_SUFFIX)]  # PREFIX, also for files found in a tarball
    model = to_onnx(symbol, params, input_shape, name=name)
    unshaped = [i.name for i in model.graph.input if not i.type.tensor_type.HasField("shape")]
    if unshaped:
        # The symbol names its inputs but records no shapes: Neo required a DataInputConfig.
        example = json.dumps({n: [1, 3, 224, 224] for n in unshaped})
        raise UserError(f"MXNet symbol files record no input shapes, and none was given for {unshaped}",
                        hint=f"give them as Neo did, e.g. --input-config '{example}'")
    return finish(model, workdir, ref=str(path), source_format="mxnet", raw_sha256=sha256, name=name)


def to_onnx(symbol: Path, params: Path, input_shapes: Mapping[str, Sequence[int]] | Sequence[int] | None = None, *,
            name: str = "mxnet") -> onnx.ModelProto:
    """Convert an MXNet symbol + params pair to an ``onnx.ModelProto`` (opset 17, float32).

    The graph inputs are the symbol's variables that have no ``arg:``/``aux:`` entry in the
    params file and feed data (usually ``data``), in the symbol's ``arg_nodes`` order; those
    named in ``input_shapes`` get that shape, the others none (the caller asks for one).  The
    outputs are the symbol's heads, named after the nodes that produce them.  Raises
    UserError for an unsupported operator, a missing or misfit parameter, a corrupt file or
    an input name the model does not have.
    """
    from onnx import TensorProto, helper, numpy_helper

    symbol, params = Path(symbol), Path(params)
    sym = _load_symbol(symbol)
    nodes = _reachable(sym)
    _unsupported(nodes)
    stored = read_params(params)
    b = _Builder(sym, stored, params)

    # Reserve the names of the nodes whose outputs are graph outputs, so they keep their names.
    head_nodes = {h for h, _ in sym.heads}
    for node in nodes:
        if node.op != "null" and node.index in head_nodes:
            b.names.add(node.name)
    reserved = set(b.names)
    for node in nodes:
        if node.op == "null":
            continue
        out = node.name if node.name in reserved else b.unique(node.name)
        reserved.discard(node.name)
        _CONVERTERS[node.op](b, node, _Attrs(node), out)
        b.tensor_of[(node.index, 0)] = out

    outputs = []
    for head in sym.heads:
        node = sym.nodes[head[0]]
        if head not in b.tensor_of and node.op == "null":
            # A variable that is itself an output: register it the way a consumer would.
            b.data(_Node(-1, "output", "output", {}, [head]), 0)
        if head not in b.tensor_of:
            raise UserError(f"output {head[1]} of MXNet node {node.name!r} ({node.op}) is a graph output; "
                            "edgekiln's MXNet importer converts only the first output of each operator")
        tensor = b.tensor_of[head]
        if tensor in outputs or node.op == "null":
            # An output listed twice, or a graph input, still needs a name of its own.
            alias = b.unique(f"{node.name}_output{head[1]}")
            b.emit("Identity", [tensor], [alias], node)
            tensor = alias
        outputs.append(tensor)

    order = {index: rank for rank, index in enumerate(sym.arg_nodes)}
    data_nodes = sorted(set(b.data_inputs), key=lambda i: (order.get(i, len(order)), i))
    input_names = [b.tensor_of[(i, 0)] for i in data_nodes]
    shapes = _requested_shapes(input_shapes, input_names)
    unknown = sorted(set(shapes) - set(input_names))
    if unknown:
        raise UserError(f"the input shapes name unknown inputs {unknown}; the model's inputs are {input_names}")
    shapes = {k: _shape_list(k, v) for k, v in shapes.items()}

    graph = helper.make_graph(
        b.onnx_nodes,
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes.get(n)) for n in input_names],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in b.initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgekiln-mxnet", doc_string=f"imported from MXNet {symbol.name}")
    model.ir_version = _IR_VERSION
    meta = {"source_format": "mxnet"}
    if sym.mxnet_version is not None:
        meta["mxnet_version"] = str(sym.mxnet_version)
    helper.set_model_props(model, meta)
    if input_names and all(n in shapes for n in input_names):
        _check_shapes(model, b, shapes)
    _check_structure(model, symbol)
    return model


def _check_structure(model: Any, symbol: Path) -> None:
    """onnx.checker on the graph we built: a failure is a bug here, not in the user's files."""
    import onnx

    probe = model
    io = [*model.graph.input, *model.graph.output]
    if any(not v.type.tensor_type.HasField("shape") for v in io):
        # The checker insists on a shape for every graph input and output; an open input is
        # left for the caller to fix, so check a copy with placeholders.
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for value in [*probe.graph.input, *probe.graph.output]:
            value.type.tensor_type.shape.SetInParent()
    try:
        onnx.checker.check_model(probe)
    except onnx.checker.ValidationError as exc:
        raise InternalError(f"the ONNX graph made from {symbol} is invalid: {exc}") from exc


def _check_shapes(model: Any, b: _Builder, shapes: Mapping[str, list[int]]) -> None:
    """With every input shape known, check each parameter against the tensor it meets."""
    import onnx

    # Lenient first, so a misfit parameter is reported by its MXNet names; strict at the end
    # for whatever else does not fit.
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:
        inferred = model  # nothing known; the strict pass below says what is wrong
    known: dict[str, list[int | None]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        ttype = value.type.tensor_type
        if ttype.HasField("shape"):
            known[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    # The outputs' shapes follow from the inputs'; ONNX's checker wants them on the graph.
    for value in model.graph.output:
        dims = known.get(value.name)
        if dims is not None:
            value.type.tensor_type.shape.SetInParent()
            for d in dims:
                dim = value.type.tensor_type.shape.dim.add()
                if d is not None:
                    dim.dim_value = d
    for tensor, node, kernel, stride, pad in b.ceil_pools:
        dims = known.get(tensor)
        for axis, (k, s, p) in enumerate(zip(kernel, stride, pad), 2):
            size = dims[axis] if dims and axis < len(dims) else None
            # MXNet keeps a last window that starts in the end padding (its values are
            # padding); ONNX's ceil mode drops it, so the output would be one shorter.
            if size and (math.ceil((size + 2 * p - k) / s)) * s >= size + p:
                raise UserError(f"MXNet node {node.name!r} (Pooling, pooling_convention 'full') would start its "
                                f"last window inside the padding for input size {size}; ONNX pooling drops that "
                                "window, so edgekiln's MXNet importer cannot reproduce it",
                                hint="use another input size or pooling_convention 'valid'")
    for check in b.checks:
        dims = known.get(check.tensor)
        if not dims or not -len(dims) <= check.axis < len(dims):
            continue
        actual = dims[check.axis]
        if actual is not None and actual != check.size:
            raise UserError(f"parameter {check.param!r} of MXNet node {check.node!r} fits {check.what} {check.size}, "
                            f"but with input shapes {dict(shapes)} the node's input has {actual}",
                            hint="check the input shape, or whether the params file belongs to this symbol")
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "shape inference failed"
        raise UserError(f"the MXNet model does not fit the input shapes {dict(shapes)}: {first}") from None
