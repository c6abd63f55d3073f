"""MXNet's NDArray list format (``mx.nd.save``), read without MXNet: see :func:`read_params`."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edgekiln.errors import UserError

_LIST_MAGIC = 0x112
_V1_MAGIC = 0xF993FAC8
_V2_MAGIC = 0xF993FAC9
_V3_MAGIC = 0xF993FACA  # written while NumPy shape semantics are on: ndim -1 is "unknown", 0 a scalar
# mshadow type flags.
_DTYPES: dict[int, Any] = {
    0: np.float32,
    1: np.float64,
    2: np.float16,
    3: np.uint8,
    4: np.int32,
    5: np.int8,
    6: np.int64,
    7: np.bool_,
    8: np.int16,
    9: np.uint16,
    10: np.uint32,
    11: np.uint64,
}
_BFLOAT16 = 12
_MAX_NDIM = 32  # MXNet's own limit; a larger count means the bytes are not what we think
_MAX_BYTES = np.iinfo(np.intp).max


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
        raise UserError(
            f"{path} holds an unnamed list of {count} arrays, not named model parameters",
            hint="save the parameters as a dict (mx.nd.save(path, {name: array})) or export the model",
        )
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
            raise UserError(
                f"array #{index} of {path} is {kind}; edgekiln's MXNet importer reads dense arrays only",
                hint="convert it with .tostype('default') and save again",
            )
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
        raise UserError(
            f"array #{index} of {path} is bfloat16, which edgekiln's MXNet importer does not read",
            hint="cast the parameters to float32 and save again",
        )
    dtype = _DTYPES.get(flag)
    if dtype is None:
        raise _Corrupt(f"array #{index} has type flag {flag}")
    dtype = np.dtype(dtype).newbyteorder("<")
    # numpy refuses a shape whose byte size (zero-length axes aside) overflows, even for an
    # empty array, so check before taking any bytes or making the array.
    if math.prod(max(d, 1) for d in dims) * dtype.itemsize > _MAX_BYTES:
        raise _Corrupt(f"array #{index} has shape {tuple(dims)}, whose size overflows")
    size = math.prod(dims)
    return np.frombuffer(r.take(size * dtype.itemsize), dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))
