"""Where a worker runs: a local process, an emulated board, or a device's agent.

Every runner hands its caller a :class:`Worker` that speaks the worker protocol of
:mod:`edgekiln.execute.worker` (JSON lines: load, run, outputs, exit), so validation, timing
and correctness checks are the same whatever carries the lines:

- :class:`LocalRunner` — ``python -m edgekiln.execute.worker`` as a child process of this one;
  its peak RSS is the child's own high-water mark (``VmHWM`` in ``/proc/PID/status``), read
  just before the child exits, apart from the caller's own memory.

  Not ``ru_maxrss`` from ``wait4()``/``RUSAGE_CHILDREN``: on Linux, exec() folds the
  high-water mark of the memory the child had *before* exec — the parent's, copied by fork or
  shared by vfork — into the child's ``ru_maxrss``, so a child of a 900 MB compile process
  reports 900 MB whatever it loads. ``wait4()``'s figure is kept as ``ru_maxrss_kb``.
- :class:`EmulatedRunner` — the same worker under qemu-user in the board's sysroot
  (:func:`edgekiln.emulation.python_prefix`). Emulated time says nothing about the board, so
  its reports carry outputs (correctness) and say that timings are not meaningful.
- :class:`AgentRunner` — the worker on a device, reached through the edgekiln agent's Bench
  call; the agent's side of that call is :func:`relay`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from edgekiln.errors import BackendError, DependencyError, EdgekilnError, InternalError, UserError
from edgekiln.execute import worker as protocol

# The worker's module: the local and emulated runners start it, and so does a device agent
# for a remote benchmark.
WORKER_MODULE = "edgekiln.execute.worker"
# Worker.settle: how often it looks at the worker's CPU time, and how long it waits at most.
SETTLE_POLL_S = 0.01
SETTLE_LIMIT_S = 0.5


@dataclass(frozen=True)
class LoadInfo:
    """What a worker reported after loading its subject."""

    load_s: float
    version: str
    rss_before_load_kb: int | None
    rss_after_load_kb: int | None
    compiler_loaded: bool | None = None  # whether the TVM compiler got imported in the worker


@dataclass(frozen=True)
class ExitInfo:
    """How a worker ended: its process's peak RSS in KiB (VmHWM), where the runner can see it,
    and the kernel's ru_maxrss of the child (inflated by the parent's memory; see above)."""

    peak_rss_kb: int | None
    ru_maxrss_kb: int | None = None


class LineChannel(Protocol):
    """A bidirectional channel of text lines to one worker (a pipe, an agent's stream)."""

    def send(self, line: str) -> None: ...

    def receive(self) -> str: ...

    def close(self) -> ExitInfo: ...


class Worker:
    """The caller's side of the worker protocol over any :class:`LineChannel`."""

    def __init__(self, channel: LineChannel, label: str) -> None:
        self._channel = channel
        self.label = label
        self.load_info: LoadInfo | None = None

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._channel.send(json.dumps(request))
        line = self._channel.receive()
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            raise InternalError(f"{self.label}: the worker answered {line[:200]!r}") from None
        if not reply.get("ok"):
            raise BackendError(f"{self.label}: {reply.get('error', 'failed')}")
        return reply

    def load(self, subject: dict[str, Any], samples: list[list[np.ndarray]]) -> LoadInfo:
        reply = self._call(
            {"op": "load", "subject": subject, "inputs_npz": protocol.encode_arrays(protocol.pack_samples(samples))}
        )
        self.load_info = LoadInfo(
            float(reply["load_s"]),
            reply.get("version", ""),
            reply.get("rss_before_load_kb"),
            reply.get("rss_after_load_kb"),
            reply.get("compiler_loaded"),
        )
        return self.load_info

    def run(self, queries: int, calls_per_query: int = 1, start: int = 0) -> list[float]:
        """Times of ``queries`` queries of ``calls_per_query`` model calls each, in seconds."""
        reply = self._call({"op": "run", "queries": queries, "calls_per_query": calls_per_query, "start": start})
        return [float(s) for s in reply["seconds"]]

    def settle(self, *, limit_s: float = SETTLE_LIMIT_S) -> float:
        """Wait until the worker's process is idle; returns the seconds waited.

        Runtimes keep their threads spinning for a while after a call returns, to start the
        next call sooner. Alone on a device that costs nothing, but in interleaved timing the
        next subject would share the cores with them: on 2 cores, TVM's pool made ONNX
        Runtime's MobileNetV2 queries right after it 3x slower. So the next subject starts
        once this one's threads together use under a tenth of a core over a poll interval,
        or after ``limit_s``. A worker this host cannot see into (on a device) is not waited for."""
        read = getattr(self._channel, "cpu_ns", None)
        before = read() if callable(read) else None
        if before is None:
            return 0.0
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            time.sleep(SETTLE_POLL_S)
            now = read()
            if now is None or now - before < 0.1 * SETTLE_POLL_S * 1e9:
                break
            before = now
        return time.monotonic() - started

    def outputs(self) -> list[list[np.ndarray]]:
        """The model's outputs for every loaded input sample."""
        return protocol.unpack_samples(protocol.decode_arrays(self._call({"op": "outputs"})["outputs_npz"]))

    def close(self) -> ExitInfo:
        """Ask the worker to exit; returns the peak RSS of its process."""
        # Seen from outside first (the process is still there), the worker's own word second
        # (a remote worker: the agent relays it).
        outside = getattr(self._channel, "peak_rss_kb", None)
        peak = outside() if callable(outside) else None
        reported = None
        try:
            reported = self._call({"op": "exit"}).get("vm_hwm_kb")
        except EdgekilnError:
            pass
        info = self._channel.close()
        return ExitInfo(peak_rss_kb=peak or info.peak_rss_kb or reported, ru_maxrss_kb=info.ru_maxrss_kb)

    def abort(self) -> None:
        """Stop the worker without asking (another error is on its way up)."""
        try:
            self._channel.close()
        except Exception:  # noqa: BLE001 - best effort while another error propagates
            pass


def outputs_of(
    runner: Runner, label: str, subject: dict[str, Any], samples: list[list[np.ndarray]]
) -> list[list[np.ndarray]]:
    """Load ``subject`` in a worker of ``runner``, run it on ``samples``, stop it; its outputs."""
    worker = runner.start(label)
    try:
        worker.load(subject, samples)
        outputs = worker.outputs()
    except BaseException:
        worker.abort()
        raise
    worker.close()
    return outputs


class ProcessChannel:
    """Lines over the stdin/stdout of a child process; its stderr goes to a temporary file,
    whose last line explains a death."""

    def __init__(
        self, argv: list[str], env: dict[str, str] | None, label: str, cwd: str | os.PathLike[str] | None = None
    ) -> None:
        self._label = label
        self._tail = "no message"
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                cwd=cwd,
                text=True,
                encoding="utf-8",
                bufsize=1,
            )
        except OSError as exc:
            self._stderr.close()
            raise DependencyError(f"{label}: cannot start {argv[0]}: {exc.strerror}") from None
        self._rusage: Any = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: the signal that ended it)."""
        return self._proc.returncode

    def peak_rss_kb(self) -> int | None:
        """The child's VmHWM from /proc, while it runs."""
        try:
            with open(f"/proc/{self._proc.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def cpu_ns(self) -> int | None:
        """CPU time all the child's threads have had so far, in ns (Linux's schedstat); None
        where /proc cannot tell."""
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self._proc.pid}/task")
        except OSError:
            return None
        for task in tasks:
            try:
                with open(f"/proc/{self._proc.pid}/task/{task}/schedstat", encoding="ascii") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended meanwhile
        return total

    def send(self, line: str) -> None:
        if not self._write(line):
            raise self._died()

    def _write(self, line: str) -> bool:
        """Write one line to the worker; False when it is gone (nothing else is done here,
        so that a feeding thread never reaps the process under its reader)."""
        try:
            self._proc.stdin.write(line.rstrip("\n") + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            return False
        return True

    def receive(self) -> str:
        line = self._proc.stdout.readline()
        if not line:
            raise self._died()
        return line

    def replies(self) -> Iterator[str]:
        """Every line the worker writes, until it closes its stdout (then it is reaped)."""
        for line in self._proc.stdout:
            yield line.rstrip("\n")
        self._reap()

    def end_input(self) -> None:
        """Close the worker's stdin: the end of its requests."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        """Stop the worker now (its caller is gone); safe to call more than once."""
        if self._proc.poll() is None:
            self._proc.kill()

    def failure(self) -> str | None:
        """Why the reaped worker failed (its signal, or its exit code and last stderr line);
        None when it exited 0."""
        code = self._proc.returncode
        if code == 0:
            return None
        if code is not None and code < 0:
            return f"the worker process died with signal {-code}"
        return f"the worker process ended (exit {code}): {self._stderr_tail()}"

    def _stderr_tail(self) -> str:
        if self._stderr.closed:
            return self._tail
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "no message"

    def _died(self) -> EdgekilnError:
        self._reap()
        return BackendError(f"{self._label}: {self.failure() or 'the worker process ended without an answer'}")

    def _reap(self, timeout: float = 30.0) -> None:
        if self._proc.returncode is not None:
            return
        # wait4() on this very child, so that its status (and rusage) is this child's alone.
        try:
            status, self._rusage = _wait4(self._proc.pid, timeout)
        except TimeoutError:
            self._proc.kill()
            _, status, self._rusage = os.wait4(self._proc.pid, 0)
        except ChildProcessError:  # reaped elsewhere; the exit code is all that is left
            self._proc.wait()
            return
        self._proc.returncode = os.waitstatus_to_exitcode(status)

    def close(self) -> ExitInfo:
        self.end_input()
        self._reap()
        if not self._stderr.closed:
            self._tail = self._stderr_tail()  # what failure() says after the file is gone
        for stream in (self._proc.stdout, self._stderr):
            try:
                stream.close()
            except OSError:
                pass
        return ExitInfo(
            peak_rss_kb=None, ru_maxrss_kb=int(self._rusage.ru_maxrss) if self._rusage is not None else None
        )


def _wait4(pid: int, timeout: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got, status, rusage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return status, rusage
        if time.monotonic() > deadline:
            raise TimeoutError(pid)
        time.sleep(0.01)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a local worker, with this edgekiln importable (also
    from a checkout that is not installed)."""
    import edgekiln

    env = dict(os.environ)
    root = str(Path(edgekiln.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def start_local_worker(
    label: str,
    *,
    python: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> ProcessChannel:
    """A worker process of this Python (or ``python``) on this machine."""
    return ProcessChannel([python or sys.executable, "-m", WORKER_MODULE], worker_env(env), label, cwd=cwd)


def relay(channel: ProcessChannel, requests: Iterable[str]) -> Iterator[str]:
    """Feed ``requests`` to a worker and yield its replies, unchanged, until it exits.

    The agent's half of a remote benchmark: lines go to the worker's stdin as they come (on a
    thread, so a slow client never blocks the replies) and the end of ``requests`` closes it.
    When the iteration of ``requests`` itself fails (the client went away), the worker is
    killed. Afterwards ``channel.returncode`` and ``channel.failure()`` say how it ended.
    """

    def feed() -> None:
        try:
            for line in requests:
                if not channel._write(line):
                    break  # the worker is gone; its end reaches the client through the replies
        except Exception:  # noqa: BLE001 - the request stream failed: the client is gone
            channel.kill()
        finally:
            channel.end_input()

    threading.Thread(target=feed, name=f"worker-feed-{channel.pid}", daemon=True).start()
    yield from channel.replies()


class Runner(Protocol):
    """Starts workers somewhere; says whether times measured there mean anything."""

    kind: str
    timings_meaningful: bool
    reason: str | None  # why timings are not meaningful, when they are not

    def describe(self) -> str: ...

    def start(self, label: str) -> Worker: ...


class LocalRunner:
    """Workers as child processes of this one, on this machine."""

    kind = "local"
    timings_meaningful = True
    reason = None

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self._python = python
        self._env = env

    def describe(self) -> str:
        return "local process on this host"

    def start(self, label: str) -> Worker:
        return Worker(start_local_worker(label, python=self._python, env=self._env), label)


class EmulatedRunner:
    """Workers on an emulated board (qemu-user with the profile's sysroot): correctness only."""

    kind = "emulated"
    timings_meaningful = False

    def __init__(self, profile: Any, progress: Any = None) -> None:
        from edgekiln.execute.host import host_info

        self._profile = profile
        self._progress = progress
        self.reason = (
            f"emulated {profile.id} under qemu-user on a {host_info().arch} host: "
            "times measure the emulator, not the board"
        )

    def describe(self) -> str:
        return f"emulated {self._profile.id} (qemu-user)"

    def start(self, label: str) -> Worker:
        from edgekiln.emulation import python_prefix

        prefix, env = python_prefix(self._profile, progress=self._progress)
        return Worker(ProcessChannel([*prefix, "-m", WORKER_MODULE], env, label), label)


def emulated_board_problem(profile: Any, *, python: bool = True, packages: Sequence[str] = ()) -> str | None:
    """Why ``profile``'s emulated board cannot run a worker now, or None when it can.

    Only a board already built counts (``make emulators`` or ``edgekiln emulate PROFILE``):
    building one is a download and half a minute that nobody should get unasked. With
    ``python=False`` the board is to run a native program (edgekiln-run), which needs the
    board's C library only, so Python packages its sysroot lacks do not count. ``packages``
    are the artifact's runtime requirements (``name==1.2``, ``name>=1.2``, ``name``) that the
    board's Python must satisfy.
    """
    if profile.emulation is None:
        return "the profile has no emulated board"
    from edgekiln import emulation

    try:
        emulation.find_qemu(profile)
    except DependencyError as exc:
        return f"no emulator: {exc.one_line()}"
    sysroot = emulation.find_sysroot(profile)
    if sysroot is None:
        name = profile.aliases[0] if profile.aliases else profile.id
        return f"its emulated board is not built (run `edgekiln emulate {name} --info` or `make emulators` once)"
    if python and sysroot.missing:
        return "the emulated board lacks " + "; ".join(sysroot.missing)
    if python:
        unmet = unmet_requirements(packages, sysroot.python_packages())
        if unmet:
            return "the emulated board lacks " + ", ".join(unmet)
    return None


def unmet_requirements(requirements: Sequence[str], installed: dict[str, str]) -> list[str]:
    """The requirements (``name``, ``name==V``, ``name>=V``) that ``installed`` (name ->
    version, names lower-case with ``-``) does not satisfy, each with what is there."""
    import re

    unmet = []
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(?:(==|>=)\s*(\S+))?\s*", requirement)
        if match is None:
            unmet.append(f"{requirement} (a requirement this board check cannot read)")
            continue
        name, op, wanted = match.group(1).lower().replace("_", "-").replace(".", "-"), match.group(2), match.group(3)
        have = installed.get(name)
        if have is None:
            unmet.append(f"{requirement} (not installed there)")
        elif op == "==" and have != wanted or op == ">=" and _release(have) < _release(wanted):
            unmet.append(f"{requirement} (it has {have})")
    return unmet


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version ("1.32.0rc1" -> (1, 32, 0)), enough to order pins."""
    import re

    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


Connect = Callable[[str, str], LineChannel]


class AgentRunner:
    """Workers on a device, through the edgekiln agent running there.

    What the agent must expose (one call; nothing else is needed from it):

    ``rpc Bench(stream BenchLine) returns (stream BenchLine)`` with
    ``message BenchLine { string json = 1; }``. On the stream's first message the agent
    starts ``python -m edgekiln.execute.worker`` on the device as a child process of its own
    (not inside the agent, so that the model's peak RSS is its own and a crash takes only
    the worker), then relays each line to the worker's stdin and each line of its stdout
    back, unchanged (:func:`relay`). The worker's reply to ``exit`` carries its own peak RSS
    (``vm_hwm_kb``), which is what a remote run reports; the agent then reaps the worker and
    ends the stream. The subject's ``path`` names an artifact on the device (in the agent's
    model directory); baselines run there only when the device has their runtime installed.
    The replies are the same JSON as a local worker's, so a remote report has the same
    schema as a local one.

    ``connect`` is that call's client: a function from (address, label) to a
    :class:`LineChannel`, such as ``edgekiln.agents.bench_client.connect``, given by the
    caller (this layer does not import the agent package).
    """

    kind = "agent"
    timings_meaningful = True
    reason = None

    def __init__(self, address: str, connect: Connect) -> None:
        self._address = address
        self._connect = connect

    def describe(self) -> str:
        return f"device behind the agent at {self._address}"

    def start(self, label: str) -> Worker:
        return Worker(self._connect(self._address, label), label)


def runner_for(
    profile: Any, device: str, *, agent: str | None = None, connect: Connect | None = None, progress: Any = None
) -> Runner:
    """The runner for an artifact built for ``profile``: the agent when an address is given,
    this host when its CPU architecture matches, else the profile's emulated board."""
    if agent:
        if connect is None:
            raise DependencyError(
                f"no agent client to reach {agent}",
                hint="benchmark through the edgekiln command line, which brings the agent client",
            )
        return AgentRunner(agent, connect)
    from edgekiln.execute.host import host_info

    host = host_info()
    if profile is None or profile.cpu.arch == host.arch:
        return LocalRunner()
    if getattr(profile, "emulation", None) is not None:
        return EmulatedRunner(profile, progress=progress)
    raise UserError(
        f"this host ({host.arch}) cannot run {profile.id} ({profile.cpu.arch}) and the profile has no emulated board",
        hint="benchmark it on the device (edgekiln bench there, or --agent ADDRESS)",
    )
