"""The worker process: one model, run on request, over JSON lines on stdin/stdout.

``python -m edgekiln.execute.worker`` holds one *subject*: an artifact through the device
runtime, or a baseline runtime (ONNX Runtime, OpenVINO, PyTorch) on the source model. Every
place that runs a model somewhere speaks to one of these: compile's validation (outputs),
auto's timing and the benchmark harness (interleaved timings, outputs), and a device agent,
which relays the lines of a remote benchmark to a worker of its own (see
:mod:`edgekiln.execute.runners`). Each worker holds one model, so the peak RSS of its
process is the model's footprint and not its caller's, and a crash takes only the worker.
Timing happens in here, around the call alone, so the pipe's latency is never measured.

Requests and replies, one JSON object per line (replies carry ``"ok": true`` or
``"ok": false, "error": "one line", "kind": "UserError"``):

- ``{"op": "load", "subject": {...}, "inputs_npz": BASE64}`` → ``load_s``, ``version``,
  ``rss_before_load_kb``, ``rss_after_load_kb``, ``pid``, ``compiler_loaded`` (whether the
  TVM compiler got imported: an artifact must run without it)
- ``{"op": "run", "queries": K, "calls_per_query": C, "start": I}`` → ``seconds``: K query
  times; each query calls the model C times, cycling through the inputs from input I
- ``{"op": "outputs"}`` → ``outputs_npz``: BASE64 of the outputs for every input
- ``{"op": "exit"}`` → ``vm_hwm_kb``, then the process exits 0

A subject is ``{"kind": "artifact", "path": P, "device": "cpu"|"cuda"}`` (P a packed or
extracted artifact; an optional ``"library"`` names the TVM model library to load instead of
the one for this CPU) or
``{"kind": "onnxruntime"|"openvino"|"torch"|"torch-compile", "model": ONNX_PATH, "device": D}``,
each with an optional ``"threads": N``: the worker then runs on the first N CPUs it may use
and tells its runtime to use N threads (default: the runtime's own choice).
This module imports only the standard library, numpy and edgekiln.errors at the top; each runtime is
imported when its subject loads, so an artifact's worker never loads the TVM compiler.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from edgekiln.errors import EdgekilnError, first_line

RunFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def encode_arrays(arrays: dict[str, np.ndarray]) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_arrays(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def pack_samples(samples: Sequence[Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
    """Samples (each a list of arrays, one per input or output) as ``{"s_i": array}``."""
    return {f"{s}_{i}": a for s, sample in enumerate(samples) for i, a in enumerate(sample)}


def unpack_samples(arrays: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    keys = sorted((tuple(int(p) for p in k.split("_")) for k in arrays), key=lambda t: t)
    count = max((s for s, _ in keys), default=-1) + 1
    width = max((i for _, i in keys), default=-1) + 1
    return [[arrays[f"{s}_{i}"] for i in range(width)] for s in range(count)]


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        return None
    return None


# -- subjects ----------------------------------------------------------------------------
def _open_artifact(subject: dict[str, Any]) -> tuple[RunFn, str]:
    from edgekiln.runtime.executors.tvm import LIBRARY_ENV
    from edgekiln.runtime.model import Model

    device = subject.get("device", "cpu")
    if subject.get("threads"):
        # Read by the TVM runtime's thread pool when it starts, which is after this.
        os.environ["TVM_NUM_THREADS"] = str(int(subject["threads"]))
    if subject.get("library"):
        # A TVM artifact's model library to load instead of the one for this CPU (validation
        # runs each build the artifact carries).
        os.environ[LIBRARY_ENV] = str(subject["library"])
    model = Model(subject["path"], device=device)
    manifest = model.manifest
    version = f"{manifest.backend} {manifest.runtime.library_version or manifest.compiler.get('tvm', '')}".strip()
    if manifest.variant_libraries():
        version += f" ({model.loaded_library})"
    if device != "cuda":
        return model.run, version
    # The runtime copies outputs back to host arrays, which already waits for the kernels;
    # the explicit stream sync makes that a guarantee of the measurement, not an accident of
    # the executor's implementation.
    import tvm_ffi

    sync = tvm_ffi.get_global_func("runtime.Device_StreamSync", allow_missing=True)
    cuda = tvm_ffi.device("cuda", 0)

    def run_synced(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs = model.run(inputs)
        if sync is not None:
            sync(cuda, 0)
        return outputs

    return run_synced, version


def _open_onnxruntime(subject: dict[str, Any]) -> tuple[RunFn, str]:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if subject.get("device") == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    # Default session options, the baseline being ONNX Runtime as a user gets it, but for one:
    # threads stop spinning when run() returns. By default they spin on for a while and hold
    # the cores the next subject of the pair needs; a tuned TVM ResNet-18 timed right after
    # ONNX Runtime took 63 ms instead of 29 ms (2 threads, 2 cores). ONNX Runtime's own time
    # is unchanged: 18.7-19.1 ms either way, back to back.
    options = ort.SessionOptions()
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if subject.get("threads"):
        options.intra_op_num_threads = int(subject["threads"])
    session = ort.InferenceSession(subject["model"], sess_options=options, providers=providers)
    names = [i.name for i in session.get_inputs()]

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(session.run(None, dict(zip(names, inputs))))

    return run, f"onnxruntime {ort.__version__} ({session.get_providers()[0]})"


def _open_openvino(subject: dict[str, Any]) -> tuple[RunFn, str]:
    import openvino as ov

    if subject.get("device") == "cuda":
        raise RuntimeError("OpenVINO has no CUDA device; use --baseline onnxruntime or torch on GPUs")
    from edgekiln.runtime.executors.openvino import cpu_config

    # The settings edgekiln's OpenVINO artifacts run with: fp32 as the source model is (on
    # CPUs with AVX512-BF16 or AMX OpenVINO would otherwise run in bf16 and win by
    # precision, not by engineering), tuned for latency.
    compiled = ov.Core().compile_model(subject["model"], "CPU", cpu_config(subject.get("threads")))
    request = compiled.create_infer_request()
    count = len(compiled.inputs)

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        result = request.infer({i: inputs[i] for i in range(count)})
        return [np.array(result[out]) for out in compiled.outputs]

    return run, f"openvino {ov.__version__} (CPU, f32)"


def _open_torch(subject: dict[str, Any], compiled: bool) -> tuple[RunFn, str]:
    import onnx
    import torch

    from edgekiln.execute.torch_graph import convert

    device = torch.device("cuda" if subject.get("device") == "cuda" else "cpu")
    if subject.get("threads"):
        torch.set_num_threads(int(subject["threads"]))
    module = convert(onnx.load(subject["model"])).to(device)
    mode = "eager"
    if compiled:
        # fp32 and default mode on the CPU; on a GPU the fastest setting PyTorch offers
        # (fp16 weights and activations, CUDA graphs), as the published figures use.
        if device.type == "cuda":
            module = module.half()
            module = torch.compile(module, mode="reduce-overhead")
            mode = "torch.compile reduce-overhead (CUDA graphs) fp16"
        else:
            module = torch.compile(module)
            mode = "torch.compile"
    dtype = torch.float16 if compiled and device.type == "cuda" else None

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in inputs]
            if dtype is not None:
                args = [a.to(dtype) for a in args]
            out = module(*args)
            outs = out if isinstance(out, tuple) else (out,)
            # .cpu() waits for the kernels; synchronize() makes sure nothing is left queued.
            host = [o.float().cpu().numpy() for o in outs]
            if device.type == "cuda":
                torch.cuda.synchronize()
            return host

    return run, f"torch {torch.__version__} ({mode}, {device.type})"


def open_subject(subject: dict[str, Any]) -> tuple[RunFn, str]:
    """Load ``subject``; returns its run function and a version string."""
    kind = subject.get("kind")
    if kind == "artifact":
        return _open_artifact(subject)
    if kind == "onnxruntime":
        return _open_onnxruntime(subject)
    if kind == "openvino":
        return _open_openvino(subject)
    if kind in ("torch", "torch-compile"):
        return _open_torch(subject, compiled=kind == "torch-compile")
    raise ValueError(f"unknown subject kind {kind!r}")


# -- the protocol loop -------------------------------------------------------------------
class _State:
    run: RunFn | None = None
    inputs: list[list[np.ndarray]] = []


def handle(request: dict[str, Any], state: _State) -> dict[str, Any]:
    op = request.get("op")
    if op == "load":
        state.inputs = unpack_samples(decode_arrays(request["inputs_npz"]))
        threads = request["subject"].get("threads")
        if threads and hasattr(os, "sched_setaffinity"):
            # The same CPUs for every runtime, and a cap for those that size their thread pool
            # from the CPUs they may use (the artifact executors of ONNX Runtime and LiteRT).
            allowed = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, allowed[: int(threads)])
        before = _status_kb("VmRSS")
        start = time.perf_counter()
        state.run, version = open_subject(request["subject"])
        load_s = time.perf_counter() - start
        return {
            "ok": True,
            "load_s": load_s,
            "version": version,
            "pid": os.getpid(),
            "rss_before_load_kb": before,
            "rss_after_load_kb": _status_kb("VmRSS"),
            "compiler_loaded": "tvm" in sys.modules,
        }
    if op == "run":
        if state.run is None:
            raise RuntimeError("run before load")
        queries, calls = int(request.get("queries", 1)), int(request.get("calls_per_query", 1))
        seconds = []
        run, inputs, k = state.run, state.inputs, len(state.inputs)
        index = int(request.get("start", 0))
        clock = time.perf_counter
        for _ in range(queries):
            start = clock()
            for _ in range(calls):
                run(inputs[index % k])
                index += 1
            seconds.append(clock() - start)
        return {"ok": True, "seconds": seconds}
    if op == "outputs":
        if state.run is None:
            raise RuntimeError("outputs before load")
        outputs = [state.run(sample) for sample in state.inputs]
        return {"ok": True, "outputs_npz": encode_arrays(pack_samples(outputs))}
    if op == "exit":
        return {"ok": True, "vm_hwm_kb": _status_kb("VmHWM")}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    # Libraries print to stdout (OpenVINO, TVM, torch.compile): keep fd 1 for the protocol
    # alone by moving it to a private descriptor and pointing fd 1 at stderr.
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    state = _State()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            reply = handle(request, state)
        except Exception as exc:  # every failure goes back as one line; the caller decides
            # One line: the first of the message (torch.compile appends pages of context).
            message = exc.one_line()[:400] if isinstance(exc, EdgekilnError) else first_line(exc)
            reply = {"ok": False, "error": message or type(exc).__name__, "kind": type(exc).__name__}
            request = {}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()
        if request.get("op") == "exit":
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
