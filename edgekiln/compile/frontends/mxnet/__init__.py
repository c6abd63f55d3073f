"""MXNet import without MXNet: a ``PREFIX-symbol.json`` + ``PREFIX-EPOCH.params`` pair becomes
an ONNX graph (opset 17, float32).

MXNet 1.x cannot be installed next to numpy 2, and edge users rarely have it, so both files
are read directly: the symbol is JSON, the params file is MXNet's NDArray list format (see
:func:`read_params`).  Each supported operator is converted with MXNet's own semantics,
defaults included (``BatchNorm`` defaults to ``eps=1e-3`` and ``fix_gamma=True``, average
pooling counts padding), since the exported JSON leaves out attributes at their defaults.

Layout: :mod:`.params` reads the NDArray list, :mod:`.symbol` the JSON graph and its
attributes, :mod:`.converters` maps each operator to ONNX nodes, :mod:`.graph` assembles
and checks the ONNX model; this module finds the files and makes the ``SourceModel``.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from edgekiln.compile.frontends.mxnet.converters import supported_operators
from edgekiln.compile.frontends.mxnet.graph import OPSET, to_onnx
from edgekiln.compile.frontends.mxnet.params import read_params
from edgekiln.errors import UserError

if TYPE_CHECKING:
    from edgekiln.compile.stages import SourceModel

__all__ = ["OPSET", "find_files", "import_model", "read_params", "supported_operators", "to_onnx"]

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
            raise UserError(
                f"{path} has no parameters beside it: no {prefix}-NNNN.params in {path.parent}",
                hint="export both files with HybridBlock.export() or Module.save_checkpoint()",
            )
        return path, params[-1][1]
    match = _PARAMS_NAME.match(path.name)
    if match:
        symbol = path.parent / f"{match['prefix']}{_SYMBOL_SUFFIX}"
        if not symbol.is_file():
            raise UserError(
                f"{path} has no symbol beside it: no {symbol.name} in {path.parent}",
                hint="an MXNet model is a PREFIX-symbol.json and a PREFIX-NNNN.params together",
            )
        return symbol, path
    if path.suffix == ".params":
        raise UserError(
            f"{path} is not named PREFIX-NNNN.params, so its symbol file cannot be found", hint=f"expected {_EXPECTED}"
        )
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
        raise UserError(
            f"{directory} holds {len(pairs)} MXNet models ({[s.name for s, _ in pairs]}); expected one",
            hint="give the -symbol.json of the one to import",
        )
    raise UserError(f"{directory} holds no MXNet symbol + params pair (found {found})", hint=f"expected {_EXPECTED}")


def import_model(
    path: Path,
    workdir: Path,
    *,
    input_shape: Mapping[str, Sequence[int]] | Sequence[int] | None,
    name: str | None,
    sha256: str,
) -> SourceModel:
    """Import an MXNet symbol + params pair (see :func:`find_files`) as a ``SourceModel``."""
    from edgekiln.compile.frontends.onnx import finish

    symbol, params = find_files(path)
    name = name or symbol.name[: -len(_SYMBOL_SUFFIX)]  # PREFIX, also for files found in a tarball
    model = to_onnx(symbol, params, input_shape, name=name)
    unshaped = [i.name for i in model.graph.input if not i.type.tensor_type.HasField("shape")]
    if unshaped:
        # The symbol names its inputs but records no shapes: Neo required a DataInputConfig.
        example = json.dumps({n: [1, 3, 224, 224] for n in unshaped})
        raise UserError(
            f"MXNet symbol files record no input shapes, and none was given for {unshaped}",
            hint=f"give them as Neo did, e.g. --input-config '{example}'",
        )
    return finish(model, workdir, ref=str(path), source_format="mxnet", raw_sha256=sha256, name=name)
