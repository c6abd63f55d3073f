"""Progress of long work (compile steps, emulator builds, benchmark pairs).

Code that works announces steps (``with progress.step("…"):``) and, inside a long loop,
how far it is (``progress.advance(done, total, note)``). The CLI passes a
:class:`ConsoleProgress`; the Python API stays quiet with :class:`NullProgress` unless
given a reporter. Compile and bench use the same reporter, so their output looks the same.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator, Protocol


class Progress(Protocol):
    def step(self, description: str) -> contextlib.AbstractContextManager[None]: ...

    def advance(self, done: int, total: int | None, note: str, unit: str = "") -> None: ...

    def done(self, description: str, elapsed: float) -> None:
        """A step that ran elsewhere (another process) and took ``elapsed`` seconds."""


class NullProgress:
    """Reports nothing."""

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        yield

    def advance(self, done: int, total: int | None, note: str, unit: str = "") -> None:
        pass

    def done(self, description: str, elapsed: float) -> None:
        pass


class Deferred:
    """Records the steps of work that runs in another process, for the caller's reporter to
    report afterwards (:meth:`Progress.done`): two processes' spinners and lines would
    overwrite each other on a terminal."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.steps.append((description, time.perf_counter() - start))

    def advance(self, done: int, total: int | None, note: str, unit: str = "") -> None:
        pass

    def done(self, description: str, elapsed: float) -> None:
        self.steps.append((description, elapsed))


class ConsoleProgress:
    """A spinner while a step runs (on a terminal; a start line elsewhere) and a line with
    its duration after it; while a loop advances, a line at most every ``interval_s``
    seconds, so that a CI log stays short and a terminal sees it move."""

    # Where a line's text starts, after "✓ " on a terminal and "  done  " elsewhere: the
    # lines of a loop (advance) start there too, so compile, tune and bench read alike.
    TERMINAL_INDENT = 2
    PLAIN_INDENT = 8

    def __init__(self, stream: Any = None, interval_s: float = 5.0) -> None:
        self._stream = stream or sys.stderr
        self._interval = interval_s
        self._last = 0.0
        self._rich: Any = None
        self.timings: dict[str, float] = {}

    def _console(self) -> Any:
        # One console for every line: a loop's line printed while a step's spinner runs then
        # goes above the spinner instead of through it.
        if self._rich is None:
            try:
                from rich.console import Console
            except ImportError:  # rich is a compile extra; plain lines without it
                self._rich = False
            else:
                self._rich = Console(file=self._stream, highlight=False, soft_wrap=True)
        return self._rich or None

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        start = time.perf_counter()
        console = self._console()
        if console is not None and console.is_terminal:
            with console.status(f"{description} …"):
                yield
        else:
            print(f"  …     {description}", file=self._stream, flush=True)  # text at PLAIN_INDENT
            yield
        self.done(description, time.perf_counter() - start)

    def done(self, description: str, elapsed: float) -> None:
        self.timings[description] = elapsed
        console = self._console()
        if console is not None and console.is_terminal:
            console.print(f"[green]✓[/green] {description} [dim]({elapsed:.1f} s)[/dim]")
        else:
            print(f"  done  {description} ({elapsed:.1f} s)", file=self._stream, flush=True)

    def advance(self, done: int, total: int | None, note: str, unit: str = "") -> None:
        """``done`` of ``total`` (None: open-ended) ``unit``s, e.g. "pair 3/10  <note>"."""
        now = time.monotonic()
        if done == 1 or (total is not None and done == total) or now - self._last >= self._interval:
            self._last = now
            of = f"/{total}" if total else ""
            count = f"{unit + ' ' if unit else ''}{done}{of}"
            console = self._console()
            if console is not None and console.is_terminal:
                from rich.markup import escape

                console.print(f"{' ' * self.TERMINAL_INDENT}[dim]{escape(count)}[/dim]  {escape(note)}")
            else:
                print(f"{' ' * self.PLAIN_INDENT}{count}  {note}", file=self._stream, flush=True)
