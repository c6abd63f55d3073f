"""Progress reporting for long compile steps.

The compile driver announces steps; the CLI shows them (with rich on a terminal), the
Python API stays quiet unless given a reporter.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, Protocol


class Progress(Protocol):
    def step(self, description: str) -> contextlib.AbstractContextManager[None]: ...


class NullProgress:
    """Reports nothing."""

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        yield


class ConsoleProgress:
    """A spinner while a step runs (on a terminal) and a line with its duration after it."""

    def __init__(self, stream=None) -> None:
        self._stream = stream or sys.stderr
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        start = time.perf_counter()
        console = None
        try:
            from rich.console import Console

            console = Console(file=self._stream, highlight=False, soft_wrap=True)
        except ImportError:  # rich is a compile extra; plain lines without it
            pass
        if console is not None and console.is_terminal:
            with console.status(f"{description} …"):
                yield
        else:
            yield
        elapsed = time.perf_counter() - start
        self.timings[description] = elapsed
        line = f"  done  {description} ({elapsed:.1f} s)"
        if console is not None:
            console.print(f"[green]✓[/green] {description} [dim]({elapsed:.1f} s)[/dim]")
        else:
            print(line, file=self._stream)
