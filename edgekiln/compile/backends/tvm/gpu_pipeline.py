"""The Relax pipeline for CUDA profiles: fp16, tuning records, dlight, one CUDA graph.

TVM's own CUDA pipeline (``relax.backend.cuda.get_default_pipeline``) legalizes and fuses
the model, gives every kernel a dlight default schedule (Matmul, GEMV, Reduction,
GeneralReduction, Fallback) and ends with ``RewriteCUDAGraph``. That pass does nothing
unless the pass context sets ``relax.backend.use_cuda_graph``: with it, the kernels whose
buffers are all statically planned are lifted into one function that the VM captures as a
CUDA graph on its first call (``vm.builtin.cuda_graph.run_or_capture``) and replays after,
so a model runs as one graph launch instead of one launch per kernel. Only the kernels that
read the caller's input tensor or write the returned tensor stay outside: their buffers
change with every call.

Tuning records hook in between: kernels a MetaSchedule database has a record for get the
record's schedule (``MetaScheduleApplyDatabase``), and dlight schedules only the rest,
as it leaves already-scheduled functions alone.
"""

from __future__ import annotations

from typing import Any

# The pass-context key of TVM's RewriteCUDAGraph (src/relax/transform/rewrite_cuda_graph.cc).
USE_CUDA_GRAPH = "relax.backend.use_cuda_graph"
# What a VM executable built with the rewrite calls; its bytecode names them.
CUDA_GRAPH_BUILTINS = ("vm.builtin.cuda_graph.run_or_capture", "vm.builtin.cuda_graph.get_cached_alloc")
PRECISIONS = ("fp32", "fp16")


def to_fp16(mod: Any) -> Any:
    """The module with fp16 weights and activations and fp32 accumulation.

    ``ToMixedPrecision`` casts the inputs of convolutions and matmuls to fp16 and keeps their
    accumulator in fp32 (as cuDNN and torch autocast do), and ``FoldConstant`` then stores
    the weights as fp16 constants. The function's inputs and outputs stay fp32, so the
    artifact's interface and the validation reference are the fp32 model's.
    """
    import tvm
    from tvm import relax

    passes = [
        _clip_as_min_max(),
        relax.transform.ToMixedPrecision(out_dtype="float32"),
        relax.transform.FoldConstant(),
    ]
    return tvm.transform.Sequential(passes)(mod)


def _number(prim: Any) -> float:
    """A PrimValue's number: its value is a plain int or float, or an IntImm/FloatImm."""
    value = prim.value
    return float(getattr(value, "value", value))


def _clip_as_min_max() -> Any:
    """A pass that writes ``clip(x, lo, hi)`` as ``minimum(maximum(x, lo), hi)``.

    The ONNX frontend gives clip its bounds as PrimValues (ReLU6, HardSwish, HardSigmoid),
    and ToMixedPrecision (TVM 0.27) fails on any call with a PrimValue argument ("Expected
    TensorType, but got T.int64"); as tensor constants, the bounds follow x's dtype.
    """
    import tvm
    from tvm import relax

    clip = tvm.ir.Op.get("relax.clip")

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != clip:
                return call
            x, lo, hi = call.args
            dtype = x.ty.dtype
            lower = self.builder_.emit(relax.op.maximum(x, relax.const(_number(lo), dtype)))
            return relax.op.minimum(lower, relax.const(_number(hi), dtype))

    @tvm.transform.module_pass(opt_level=0, name="ClipAsMinMax")
    def _pass(mod: Any, _ctx: Any) -> Any:
        rewrite = Rewrite(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewrite.builder_.update_func(gv, rewrite.visit_expr(func))
        return rewrite.builder_.get()

    return _pass


def pipeline(target: Any, database: Any = None) -> Any:
    """TVM's CUDA pipeline, with the records of ``database`` (a MetaSchedule Database)
    applied before dlight schedules the kernels they do not cover."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        legalize = cuda.legalize_passes(target)
        if database is not None:
            # After FuseTIR (the kernels as tuned) and before dlight's ApplyDefaultSchedule.
            legalize.insert(-1, relax.transform.MetaScheduleApplyDatabase(enable_warning=False))
        passes = (
            cuda.library_dispatch_passes(target) + legalize + cuda.dataflow_lower_passes(target)
        ) + cuda.finalize_passes(target)
        with target:
            if database is not None:
                with database:
                    return tvm.transform.Sequential(passes)(mod)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build(mod: Any, target: Any, *, precision: str = "fp32", cuda_graph: bool = True, database: Any = None) -> Any:
    """The VM executable of ``mod`` for a CUDA ``target``."""
    import tvm

    if precision == "fp16":
        mod = to_fp16(mod)
    config = {USE_CUDA_GRAPH: bool(cuda_graph)}
    with tvm.transform.PassContext(opt_level=3, config=config):
        return tvm.compile(mod, target=target, relax_pipeline=pipeline(target, database))
