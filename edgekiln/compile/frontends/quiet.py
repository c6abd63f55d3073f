"""Framework converters talk: progress on stdout (which ``--json`` owns), deprecation
warnings, and C++ log lines written straight to file descriptor 2. A frontend runs them
inside :func:`silenced` and reports what matters as edgekiln's own errors."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from typing import Iterator


@contextlib.contextmanager
def silenced(native_stderr: bool = True) -> Iterator[None]:
    """Swallow Python stdout and warnings, and with ``native_stderr`` whatever C++ code
    writes to fd 2 (TensorFlow's start-up lines, torch's "graph at exception" dump)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if not native_stderr:
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
