"""One loaded model in a process of its own, so that unloading it frees its code and memory.

The TVM runtime maps each artifact's ``model.so`` with dlopen and has no reliable way to
unmap it: a model loaded and unloaded in the agent's own process stays mapped (50 cycles
kept 96 deleted copies and 1.3 GB).  Here each LoadModel starts
``python -m edgekiln.agents.model_worker`` and UnLoadModel ends it, which gives back
everything the model took; a crash in a kernel takes the worker, not the agent.

The parent and the worker speak frames over the worker's stdin and stdout: a 4-byte
big-endian length, a JSON header, then the raw bytes of the arrays the header lists
(dtype and shape each). Nothing is pickled.  The worker answers the start with the
artifact's manifest, then one answer per ``run``.  It ends when its stdin closes, so it
does not outlive an agent killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO, Sequence

from edgekiln.errors import CompatibilityError, DependencyError, EdgekilnError, IntegrityError, UserError

MAX_HEADER_BYTES = 16 * 1024 * 1024
# Error kinds a worker reports, and the gRPC status each becomes (first match wins).
_LOAD_CODES = (
    (CompatibilityError, "FAILED_PRECONDITION"),
    (DependencyError, "FAILED_PRECONDITION"),
    (IntegrityError, "INVALID_ARGUMENT"),
    (UserError, "INVALID_ARGUMENT"),
    (EdgekilnError, "INTERNAL"),
    (MemoryError, "RESOURCE_EXHAUSTED"),
    (OSError, "INVALID_ARGUMENT"),
)


class WorkerError(EdgekilnError):
    """The worker refused or failed; ``code`` is the gRPC status code name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def load_error(exc: BaseException, path: str) -> tuple[str, str]:
    """(status code, one line) for an exception raised while loading ``path``."""
    for kind, code in _LOAD_CODES:
        if isinstance(exc, kind):
            if isinstance(exc, EdgekilnError):
                return code, exc.one_line()
            if isinstance(exc, MemoryError):
                return code, f"not enough memory to load {path}"
            return code, f"{path} cannot be read as an artifact: {exc}"
    # A manifest of the wrong shape surfaces as a TypeError or ValueError from deep inside.
    return "INVALID_ARGUMENT", f"{path} cannot be loaded: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


# -- framing ------------------------------------------------------------------------
def write_frame(stream: BinaryIO, header: dict[str, Any], arrays: Sequence[Any] = ()) -> None:
    import numpy as np

    blobs = [np.asarray(a) for a in arrays]
    blobs = [a if a.flags.c_contiguous else a.copy(order="C") for a in blobs]  # 0-d stays 0-d
    header = dict(header, arrays=[{"dtype": str(a.dtype), "shape": list(a.shape)} for a in blobs])
    data = json.dumps(header, separators=(",", ":")).encode()
    stream.write(struct.pack(">I", len(data)) + data)
    for blob in blobs:
        if blob.size:
            stream.write(memoryview(blob.reshape(-1)).cast("B"))
    stream.flush()


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], list[Any]] | None:
    """(header, arrays), or None at the end of the stream."""
    import numpy as np

    head = _read_exactly(stream, 4)
    if head is None:
        return None
    (length,) = struct.unpack(">I", head)
    if length > MAX_HEADER_BYTES:
        raise WorkerError("INTERNAL", f"model worker frame header of {length} bytes")
    raw = _read_exactly(stream, length)
    if raw is None:
        return None
    header = json.loads(raw)
    arrays = []
    for spec in header.get("arrays", []):
        # Read straight into a writable array: no extra copy, and executors may write to it.
        array = np.empty(tuple(int(n) for n in spec["shape"]), dtype=np.dtype(spec["dtype"]))
        if array.size and not _read_into(stream, memoryview(array.reshape(-1)).cast("B")):
            return None
        arrays.append(array)
    return header, arrays


def _read_into(stream: BinaryIO, view: memoryview) -> bool:
    done = 0
    while done < len(view):
        n = stream.readinto(view[done:])
        if not n:
            return False
        done += n
    return True


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- the parent's side --------------------------------------------------------------
class ModelProcess:
    """A model loaded in a worker process; the parts of ``runtime.Model`` the agent uses."""

    def __init__(self, path: str, work_dir: Path, *, factory: str | None = None) -> None:
        from edgekiln.artifact.manifest import Manifest
        from edgekiln.execute.runners import worker_env

        self.path = path
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # This edgekiln importable in the worker; extracted artifacts where the agent cleans.
        env = worker_env({"TMPDIR": str(self.work_dir)})
        command = [sys.executable, "-m", "edgekiln.agents.model_worker", path]
        if factory:
            command += ["--factory", factory]
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(self.work_dir)
        )
        try:
            hello = read_frame(self._proc.stdout)
            if hello is None:
                raise WorkerError(
                    "INTERNAL",
                    f"the model worker for {path} exited with {self._proc.wait()} before it loaded the model",
                )
            header, _ = hello
            if not header.get("ok"):
                raise WorkerError(header.get("code", "INTERNAL"), header.get("message", "load failed"))
            self.manifest = Manifest.from_dict(header["manifest"])
            self._output_names = list(header["output_names"])
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def get_output_names(self) -> list[str]:
        return list(self._output_names)

    def run(self, arrays: Sequence[Any]) -> list[Any]:
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the model worker exited ({self._proc.returncode}); unload and load the model")
            try:
                write_frame(self._proc.stdin, {"op": "run"}, arrays)
                answer = read_frame(self._proc.stdout)
            except (BrokenPipeError, OSError) as exc:
                answer = None
                if self._proc.poll() is None:
                    raise RuntimeError(f"the model worker stopped answering: {exc}") from None
            if answer is None:
                raise RuntimeError(f"the model worker died ({_how(self._proc.wait())}) while running the model")
            header, outputs = answer
            if not header.get("ok"):
                if header.get("code") == "INVALID_ARGUMENT":
                    raise UserError(header.get("message", "bad input"))
                raise RuntimeError(header.get("message", "the model failed to run"))
            return outputs

    def close(self, timeout: float = 10.0) -> None:
        """End the worker (its stdin closes: it exits) and remove what it extracted."""
        import shutil

        try:
            if self._proc.stdin:
                self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _how(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit {code}"


# -- the worker's side --------------------------------------------------------------
def _load(path: str, factory: str | None) -> Any:
    if factory:
        import importlib

        module, _, attr = factory.partition(":")
        return getattr(importlib.import_module(module), attr)(path)
    from edgekiln.runtime import Model

    return Model(path)


def main(argv: Sequence[str]) -> int:
    path = argv[0]
    factory = argv[2] if len(argv) > 2 and argv[1] == "--factory" else None
    # The frames own stdout: anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    try:
        model = _load(path, factory)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as a status
        code, message = load_error(exc, path)
        write_frame(out, {"ok": False, "code": code, "message": message})
        return 1
    write_frame(out, {"ok": True, "manifest": model.manifest.to_dict(), "output_names": model.get_output_names()})
    while True:
        request = read_frame(stdin)
        if request is None:
            return 0
        _, arrays = request
        try:
            outputs = model.run(arrays)
        except UserError as exc:
            write_frame(out, {"ok": False, "code": "INVALID_ARGUMENT", "message": exc.one_line()})
        except Exception as exc:  # noqa: BLE001 - the parent answers INTERNAL
            write_frame(out, {"ok": False, "code": "INTERNAL", "message": f"{type(exc).__name__}: {exc}"})
        else:
            write_frame(out, {"ok": True}, outputs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
