"""Keep what compilers and exporters print off the user's terminal.

torch's exporter and TVM's importer write warnings and dumps from Python and straight from
C++ to file descriptors 1 and 2.  stdout is what ``--json`` owns, and a page of TVM warnings
ahead of an error hides the error; so the output is captured, and the caller reports it in
one line or drops it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Captured:
    """What was written while :func:`captured_output` was active (set when it ends)."""

    lines: list[str] = field(default_factory=list)

    def summary(self, who: str) -> str | None:
        """One line that says how much ``who`` printed and its first line, or None."""
        lines = [line for line in self.lines if line.strip()]
        if not lines:
            return None
        first = lines[0].strip()
        return f"{who} printed {len(lines)} line(s) of warnings, the first: {first[:200]}"


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Capture Python's stdout and warnings and what C/C++ code writes to fds 1 and 2."""
    captured = Captured()
    python_out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(python_out), tempfile.TemporaryFile() as sink:
        warnings.simplefilter("ignore")
        sys.__stdout__.flush()
        sys.stderr.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = python_out.getvalue() + sink.read().decode("utf-8", "replace")
            captured.lines = text.splitlines()
