"""An MXNet ``PREFIX-symbol.json`` read as nodes in topological order, and the attribute
strings of its nodes read with the operators' defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekiln.errors import UserError


@dataclass
class Node:
    index: int
    op: str
    name: str
    attrs: dict[str, str]
    inputs: list[tuple[int, int]]


@dataclass
class Symbol:
    nodes: list[Node]
    arg_nodes: list[int]
    heads: list[tuple[int, int]]
    mxnet_version: int | None


def load_symbol(path: Path) -> Symbol:
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
    except ValueError as exc:
        # Python refuses integers of more than 4300 digits while parsing.
        raise UserError(
            f"{path} is not an MXNet symbol file (an integer in it is too long: {str(exc).split(':')[0]})"
        ) from None
    except RecursionError:
        raise UserError(f"{path} is not an MXNet symbol file (its JSON is nested too deeply)") from None

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
        inputs = [
            _entry(e, len(nodes), lambda why, n=raw["name"]: bad(f"node {n!r}: {why}")) for e in raw.get("inputs", [])
        ]
        nodes.append(Node(i, raw["op"], raw["name"], {str(k): str(v) for k, v in attrs.items()}, inputs))
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
    return Symbol(nodes, arg_nodes, heads, version)


def _entry(raw: Any, limit: int, bad: Callable[[str], UserError]) -> tuple[int, int]:
    """A [node, output(, version)] reference; nodes come in topological order, so it must point back."""
    if (
        not isinstance(raw, list)
        or len(raw) not in (2, 3)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
    ):
        raise bad(f"{raw!r} is not a [node, output, version] entry")
    if not 0 <= raw[0] < limit or raw[1] < 0:
        raise bad(f"entry {raw!r} refers to a node that does not come before it")
    return raw[0], raw[1]


# ---- attributes ----------------------------------------------------------------------------

_REQUIRED = object()
# MXNet and ONNX hold shapes, axes and counts as int64; a larger number cannot be meant and would
# only fail later, deep inside numpy or onnx, with an overflow traceback.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NONE_TEXT = {"", "none", "null"}


class Attrs:
    """MXNet attribute strings ("(3, 3)", "True", "1e-05") read with the operator's defaults."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _raw(self, key: str) -> str | None:
        value = self.node.attrs.get(key)
        if value is None or value.strip().lower() in _NONE_TEXT:
            return None
        return value.strip()

    def _fail(self, key: str, what: str) -> UserError:
        return UserError(
            f"attribute {key}={self.node.attrs.get(key)!r} of MXNet node {self.node.name!r} "
            f"({self.node.op}) is not {what}"
        )

    def _missing(self, key: str) -> UserError:
        return UserError(f"MXNet node {self.node.name!r} ({self.node.op}) has no {key!r} attribute, which it needs")

    def _read(self, key: str, default: Any, convert: Any, unset: tuple[str, ...] = ()) -> Any:
        """``convert(value)`` of the attribute, ``default`` when it is absent (or written as one
        of ``unset``), and a one-line error when it is absent and required."""
        value = self._raw(key)
        if value is None or value.replace(" ", "") in unset:
            if default is _REQUIRED:
                raise self._missing(key)
            return default
        return convert(value)

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        return self._read(key, default, lambda value: value.strip("'\""))

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
        def convert(value: str) -> int:
            try:
                number = int(value.rstrip("Ll"))
            except ValueError:
                raise self._fail(key, "an integer") from None
            if not INT64_MIN <= number <= INT64_MAX:
                raise self._fail(key, "an integer that fits in 64 bits")
            return number

        return self._read(key, default, convert)

    def number(self, key: str, default: Any = _REQUIRED) -> Any:
        def convert(value: str) -> float:
            try:
                return float(value)
            except ValueError:
                raise self._fail(key, "a number") from None

        return self._read(key, default, convert)

    def ints(self, key: str, default: Any = _REQUIRED) -> Any:
        def convert(value: str) -> tuple[int, ...]:
            body = value
            if body[:1] in "([" and body[-1:] in ")]":
                body = body[1:-1]
            try:
                numbers = tuple(int(part.strip().rstrip("Ll")) for part in body.split(",") if part.strip())
            except ValueError:
                raise self._fail(key, "a tuple of integers") from None
            if not all(INT64_MIN <= n <= INT64_MAX for n in numbers):
                raise self._fail(key, "a tuple of integers that fit in 64 bits")
            return numbers

        # "()" is how MXNet writes an unset tuple, so it means the default.
        return self._read(key, default, convert, unset=("()", "[]"))
