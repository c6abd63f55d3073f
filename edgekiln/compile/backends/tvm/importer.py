"""ONNX → Relax for the TVM backend: what TVM cannot convert is named before it is tried,
shape arithmetic is folded first, TVM's own output stays off the terminal, and a failure
names the ONNX node and what to try instead."""

from __future__ import annotations

from typing import Any

from edgekiln.compile.backends.onnx_fold import fold_constants
from edgekiln.compile.quiet import Captured, captured_output
from edgekiln.compile.stages import SourceModel
from edgekiln.errors import BackendError, first_line
from edgekiln.execute.progress import Progress

# What to try when TVM cannot take a model: the backends with their own ONNX readers.
TRY_INSTEAD = "try --backend onnxruntime or --backend litert, or export the model with another opset"


def unsupported_operators(model: Any) -> list[str]:
    """Nodes whose operator the TVM ONNX frontend cannot convert, as 'Op (node name)'."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    convert_map = _get_convert_map()
    found = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in ("Constant", "If"):
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in convert_map:
            domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            found.append(f"{domain}{node.op_type} (node {node.name or f'#{index}'!r})")
    return found


def to_relax(model: SourceModel, from_onnx: Any, progress: Progress) -> Any:
    """The model as a Relax module, or a BackendError that names the failing node."""
    onnx_model = model.load_onnx()
    with progress.step("convert ONNX to Relax"):
        bad = unsupported_operators(onnx_model)
        if bad:
            raise BackendError(
                f"the tvm backend does not support {len(bad)} operator(s) of {model.source_ref}: "
                + ", ".join(bad[:10])
                + (" …" if len(bad) > 10 else ""),
                hint=TRY_INSTEAD,
            )
        onnx_model = _folded(onnx_model, model.source_ref)
        shapes = {t.name: list(t.shape) for t in model.inputs}
        with captured_output() as output:
            try:
                return from_onnx(onnx_model, shape_dict=shapes, opset=model.opset or None)
            except Exception as exc:  # the frontend raises many types; all mean "cannot convert"
                error = exc
        where = _failing_node(error.__traceback__)
        raise BackendError(
            f"TVM cannot convert {where or 'a node'} of {model.source_ref}: {first_line(error, last=True)}"
            + _noise(output),
            hint=TRY_INSTEAD,
        )


def for_cpu_inference(tvm: Any, mod: Any) -> Any:
    """The Relax module rewritten for inference on a CPU, before fusion.

    - Batch norms after a convolution are folded into its weights and bias, and the others
      become plain arithmetic: legalised as they are, each batch norm is a kernel of its own
      that reads and writes a whole activation (ResNet-18's took about 13 ms in all, tuned,
      on a 2-core x86-64), while a bias add and ReLU fuse into the convolution's loop.
    - Convolutions run channels-last (NHWC activations, HWIO weights): with the same 32
      MetaSchedule trials, ResNet-18's 3x3 64-channel convolution reached 125 GFLOP/s in NHWC
      and 93 GFLOP/s in NCHW on that host, since the output channels vectorise.
      Layout transforms stay only where activations enter and leave the convolutions;
      weights are transposed at compile time. ReLU6 (``Clip``) is first rewritten as Relax
      operators (:mod:`.clip`), or it would be wrapped in transposes as well.

    Both are speed-ups, not needs: a model that TVM's passes cannot rewrite keeps what did
    work, and at worst goes on as it came. (TVM 0.27's layout pass fails with "Expected
    nested to match tuple" on the corpus's classic Model Zoo CNNs, all of which carry
    Dropout.) The outcome depends only on the module, so tuning, which extracts its tasks
    from this same function's result, sees what compile builds."""
    from tvm import relax

    from edgekiln.compile.backends.tvm import clip, fold

    inference = [
        relax.transform.FoldBatchnormToConv2D(),
        relax.transform.DecomposeOpsForInference(),
        fold.numpy_fold(tvm),  # TVM's FoldConstant alone took 31 s on MobileNetV2 (fold.py)
        relax.transform.FoldConstant(),
    ]
    channels_last = [
        clip.as_relax_ops(tvm),  # else each ReLU6 is wrapped in transposes (see clip.py)
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
        fold.numpy_fold(tvm),
        relax.transform.FoldConstant(),
    ]
    for passes in (inference + channels_last, inference):
        with captured_output():
            try:
                return tvm.transform.Sequential(passes)(mod)
            except Exception:  # noqa: BLE001 - TVM raises TVMError and friends; fall back
                continue
    return mod


def build(tvm: Any, mod: Any, target: Any) -> Any:
    """``tvm.compile`` with TVM's output captured; a failure says what to try."""
    with captured_output() as output:
        try:
            return tvm.compile(mod, target=target)
        except Exception as exc:
            error = exc
    raise BackendError(
        f"TVM failed to build the model: {first_line(error, last=True)}" + _noise(output), hint=TRY_INSTEAD
    )


def _folded(onnx_model: Any, source_ref: str) -> Any:
    """The model with its shape arithmetic folded into constants.

    torch.onnx writes ``chunk``/``split`` with sizes computed from ``Shape`` (ShuffleNet's
    channel split); TVM's importer keeps that computation, so the slices get unknown shapes
    and the ``concat`` after them cannot be lowered.  Folding it is best effort: a model
    whose shapes ONNX cannot infer goes to TVM as it is."""
    from edgekiln.errors import EdgekilnError

    if len(onnx_model.functions):
        return onnx_model  # the folded graph is rebuilt without the model's local functions
    try:
        return fold_constants(onnx_model, source_ref, backend="tvm")
    except EdgekilnError:
        return onnx_model


def _failing_node(tb: Any) -> str | None:
    """'Op node NAME' of the ONNX node TVM's importer was converting when it raised: the
    innermost frame of the traceback with a NodeProto in a local named ``node``."""
    found = None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if node is not None and hasattr(node, "op_type") and hasattr(node, "name"):
            found = f"{node.op_type} (node {node.name or '<unnamed>'!r})"
        tb = tb.tb_next
    return found


def _noise(output: Captured) -> str:
    summary = output.summary("TVM")
    return f"; {summary}" if summary else ""
