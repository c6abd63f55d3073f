"""The argument parser of every ``edgekiln`` command: argparse, plus a suggestion for a
mistyped flag or command (``--bakend`` → ``--backend``).

The top-level parser is an :class:`ArgumentParser`; argparse builds each subcommand's parser
(and theirs) with the class of the parser that adds it, so every command gets the same
behaviour from this one place.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, Sequence

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


def _close(word: str, candidates: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with "did you mean" for unknown flags and invalid choices."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen(parsed)
            parser.error(parser._unrecognized(extras))
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> ArgumentParser:
        """The innermost subcommand's parser that ``parsed`` went through (its flags are the
        ones a mistyped flag was meant to be)."""
        parser: argparse.ArgumentParser = self
        while True:
            action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            chosen = getattr(parsed, action.dest, None) if action is not None else None
            if action is None or chosen not in action.choices:
                return parser if isinstance(parser, ArgumentParser) else self
            parser = action.choices[chosen]

    def _unrecognized(self, extras: Sequence[str]) -> str:
        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        hints = {}
        for extra in extras:
            name = extra.split("=", 1)[0]
            match = _close(name, flags) if name.startswith("-") else None
            if match:
                hints[name] = match
        message = f"unrecognized arguments: {' '.join(extras)}"
        if len(hints) == 1:
            return f"{message} (did you mean {next(iter(hints.values()))}?)"
        if hints:
            return message + " (" + "; ".join(f"{k}: did you mean {v}?" for k, v in hints.items()) + ")"
        return message

    def error(self, message: str) -> Any:  # type: ignore[override]
        found = _INVALID_CHOICE.search(message)
        if found:
            choices = [c.strip().strip("'") for c in found.group(2).split(",")]
            match = _close(found.group(1), choices)
            if match:
                message = f"{message}; did you mean {match!r}?"
        super().error(message)
