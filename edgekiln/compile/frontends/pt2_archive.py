"""Checks a ``torch.export`` archive (``.pt2``) before torch loads any of it.

``torch.export.load`` trusts its input: it unpickles payloads flagged ``use_pickle`` with
``weights_only`` off, unpickles opaque constants with ``pickle``, falls back to
``weights_only`` off for sample inputs, loads AOTInductor shared libraries, ``eval``s the
symbolic-shape strings through ``sympy.sympify``, resolves any ``torch.*`` attribute path as
a graph node's function and ``exec``s the program's guard code. Any of those runs an
attacker's code on the build host. This module reads the archive's members itself, bounded
in count and size, and refuses every such construct; :func:`safe_torch_load` then keeps
torch's own ``torch.load`` calls at ``weights_only=True`` while the program loads.
"""

from __future__ import annotations

import contextlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

from edgekiln.errors import UserError

MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 64 << 20  # the program's graph JSON; a ResNet-50 is about 1 MB

_HINT = (
    "export the model again with torch.export.save from plain tensors and standard operators; "
    "edgekiln loads no pickled objects or code from a model file"
)

# What a graph node may call: registered operators of torch's own namespaces, Python's
# arithmetic and torch's symbolic-int helpers. ``torch.ops.load_library`` and any other
# ``torch.<module>.<function>`` path (``torch.os.system``) stay out.
_TARGET = re.compile(
    r"torch\.ops\.(aten|prims|higher_order|quantized_decomposed|quantized)\.(?!__)[A-Za-z_]\w*(\.[A-Za-z]\w*)?"
    r"|_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge|and_|or_|xor|not_"
    r"|invert|lshift|rshift|matmul)"
    r"|math\.(ceil|floor|trunc|sqrt|isnan|isinf|isfinite)"
    r"|torch\._?sym_[a-z]+"
)
# ``sympify`` evaluates these strings as Python. Only sympy constructors, identifier-like
# string literals, short integers and arithmetic may appear; ``Pow`` and ``**`` are out
# because sympy evaluates ``9**9**9**9`` eagerly.
_SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Max Min Mod Eq Ne Lt Le Gt Ge And Or Not True False None "
    "positive integer nonnegative negative real finite FloorDiv ModularIndexing Where PythonMod "
    "CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift FloatTrueDiv IntTrueDiv TruncToFloat "
    "TruncToInt RoundToInt RoundDecimal ToFloat Identity oo".split()
)
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_]\w*)|(?P<str>'[A-Za-z_]\w{0,40}')|(?P<num>\d{1,12}(?:\.\d{1,12})?)"
    r"|(?P<op>==|!=|<=|>=|//|[-+*/%<>(),=]))"
)
# Guard code is Python source that torch compiles into a function: only comparisons of
# input sizes with integers.
_GUARD = re.compile(
    r"(?:\s*(?:L\['[A-Za-z_]\w{0,80}'\](?:\.size\(\)|\.stride\(\))?(?:\[\d{1,4}\])*"
    r"|\d{1,12}|==|!=|<=|>=|<|>|\+|-|\*|//|%|\(|\)|and|or|not))*\s*"
)


def check(path: Path) -> None:
    """Refuse ``path`` unless torch can load it without unpickling or running its contents."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise UserError(f"{path} holds {len(infos)} members; a torch.export archive has far fewer")
            for info in infos:
                _check_member(path, archive, info)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable torch.export archive: {exc}") from None


def _check_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    parts = info.filename.split("/")
    rest = "/".join(parts[1:])
    if rest.startswith(("data/aotinductor/", "data/executorch/", "data/mtia/")):
        raise UserError(f"{path} holds compiled code ({info.filename}), which edgekiln does not load", hint=_HINT)
    if (
        re.fullmatch(r"data/(weights|constants)/[^/]*\.pt", rest)
        or rest.startswith("data/constants/custom_obj")
        or rest.startswith("data/constants/opaque_obj")
        or rest.endswith(".pkl")
    ):
        raise UserError(
            f"{path} holds a pickled payload ({info.filename}), which edgekiln does not unpickle", hint=_HINT
        )
    if re.fullmatch(r"data/(weights|constants)/[^/]*_config\.json", rest):
        _check_payload_config(path, info.filename, _read_json(path, archive, info))
    elif re.fullmatch(r"models/[^/]*\.json", rest):
        _check_program(path, info.filename, _read_json(path, archive, info))


def _read_json(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    with archive.open(info) as handle:
        data = handle.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise UserError(f"{info.filename} in {path} is over {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{info.filename} in {path} is not valid JSON: {str(exc)[:200]}") from None


def _check_payload_config(path: Path, name: str, config: Any) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UserError(f"{name} in {path} is not a torch.export payload config")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise UserError(
                f"{path} stores {str(fqn)[:80]!r} as a pickle ({name} sets use_pickle), "
                "which edgekiln does not unpickle",
                hint=_HINT,
            )
        where = str(meta.get("path_name", ""))
        if not where.startswith(("weight_", "tensor_")):
            raise UserError(
                f"{path} stores {str(fqn)[:80]!r} as an object ({where[:80]}), which edgekiln does not load", hint=_HINT
            )


def _check_program(path: Path, name: str, program: Any) -> None:
    if not isinstance(program, dict):
        raise UserError(f"{name} in {path} is not a torch.export program")
    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or len(guard) > 2000 or not _GUARD.fullmatch(guard):
            raise UserError(
                f"{path} carries guard code that is not a plain size check: {str(guard)[:80]!r}", hint=_HINT
            )
    for key, value in _strings(program):
        if key in ("target", "as_operator") and not _TARGET.fullmatch(value):
            raise UserError(f"{path} calls {value[:120]!r}, which is not a torch operator", hint=_HINT)
        if key == "expr_str" and not _plain_expression(value):
            raise UserError(f"{path} has a symbolic shape that is not a plain expression: {value[:120]!r}", hint=_HINT)
    for symbol in program.get("range_constraints") or {}:
        if not _plain_expression(str(symbol)):
            raise UserError(f"{path} constrains a symbol that is not a plain name: {str(symbol)[:120]!r}", hint=_HINT)


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every (key, string) pair in a JSON value, without recursion (the JSON may be deep)."""
    stack: list[tuple[str, Any]] = [(key, value)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, str):
            yield key, value
        elif isinstance(value, dict):
            stack.extend(value.items())
        elif isinstance(value, list):
            stack.extend((key, item) for item in value)


def _plain_expression(text: str) -> bool:
    if len(text) > 2000:
        return False
    position = 0
    while position < len(text.rstrip()):
        match = _EXPR_TOKEN.match(text, position)
        if not match or match.end() == position:
            return False
        if (
            match.group("name")
            and match.group("name") not in _SYMPY_NAMES
            and not re.fullmatch(r"[a-z]{1,3}\d{1,6}", match.group("name"))
        ):
            return False
        position = match.end()
    return True


@contextlib.contextmanager
def safe_torch_load(torch: Any) -> Iterator[None]:
    """While ``torch.export.load`` runs, every ``torch.load`` it makes is ``weights_only=True``:
    its sample inputs fall back to a full unpickler when the restricted one refuses them."""
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
