"""One error hierarchy for edgekiln.

Every error a user can cause or fix is an :class:`EdgekilnError` subclass.  The CLI turns
it into one line on stderr and the subclass's ``exit_code``; only :class:`InternalError`
(a bug in edgekiln) is shown with a traceback.
"""

from __future__ import annotations


class EdgekilnError(Exception):
    """Base of all errors edgekiln raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and, when there is one, what to do about it, on one line."""
        text = " ".join(self.message.split())
        if self.hint:
            text = f"{text} ({' '.join(self.hint.split())})"
        return text


class UserError(EdgekilnError):
    """Bad input: a missing or malformed file, an unknown name, a wrong option."""

    exit_code = 2


class DependencyError(EdgekilnError):
    """Something edgekiln needs is not installed (a toolchain, a package, a runtime library)."""

    exit_code = 3


class BackendError(EdgekilnError):
    """A backend could not lower or run the model (unsupported operator, failed validation)."""

    exit_code = 4


class CompatibilityError(EdgekilnError):
    """An artifact was built for something other than this device."""

    exit_code = 5


class IntegrityError(EdgekilnError):
    """An artifact's contents differ from what its manifest says."""

    exit_code = 6


def first_line(exc: BaseException, *, last: bool = False, limit: int = 400) -> str:
    """One line of a foreign exception's message, to quote inside an edgekiln error.

    ``last`` picks the last non-empty line instead of the first: TVM puts a C++ backtrace
    first and what happened last. The full text stays reachable through ``--debug``, which
    shows the original exception chained to the edgekiln error.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if last else lines[0])[:limit]


class InternalError(EdgekilnError):
    """A bug in edgekiln; shown with a traceback."""

    exit_code = 70
