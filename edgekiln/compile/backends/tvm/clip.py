"""ONNX ``Clip`` (ReLU6 and friends) as Relax operators that TVM's layout pass and fusion see.

TVM 0.27's ONNX importer writes ``Clip`` as two opaque TIR calls, ``topi.maximum`` then
``topi.minimum``. To the channels-last rewrite (``importer.for_cpu_inference``) an opaque call
has an unknown layout, so it wraps each one in a transpose back to NCHW and one forward again,
and the convolution's epilogue stops at the first transpose. In MobileNetV2, tuned, on a 2-core
x86-64 those transpose kernels took 3.3 ms of the model's 13 ms. Relax's own ``maximum`` and
``minimum`` against a scalar take any layout and fuse into the convolution before them.

A call is rewritten only when its TIR function is exactly what the importer makes for
``topi.maximum``/``topi.minimum`` of those shapes (compared structurally), and its bound is a
one-element constant; anything else is left as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_KINDS = ("maximum", "minimum")


def as_relax_ops(tvm: Any) -> Any:
    """A module pass that rewrites the importer's clip calls (see the module's docstring).
    Run it after FoldConstant: the importer computes a NaN-safe bound from the constant."""

    from edgekiln.compile.backends.tvm.fold import rewrite_functions

    @tvm.transform.module_pass(opt_level=0, name="EdgekilnClipAsRelaxOps")
    def rewrite(mod: Any, ctx: Any) -> Any:  # noqa: ARG001 - TVM's pass signature
        return rewrite_functions(mod, _mutator_class(tvm)(mod))

    return rewrite


def _mutator_class(tvm: Any) -> type:
    from tvm import relax, topi

    call_tir = tvm.ir.Op.get("relax.call_tir")
    topi_fns = {"maximum": topi.maximum, "minimum": topi.minimum}
    relax_ops = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}

    @relax.expr_functor.mutator
    class ClipRewriter(relax.PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.source = mod

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if not call.op.same_as(call_tir) or len(call.args) < 2:
                return call
            gvar, args = call.args[0], call.args[1]
            kind = getattr(gvar, "name_hint", "").rstrip("0123456789")
            if kind not in _KINDS or len(getattr(args, "fields", ())) != 2:
                return call
            x, bound = args.fields
            value = _scalar(tvm, bound)
            if value is None or not _same_tir(tvm, self.source[gvar], topi_fns[kind], x.ty, bound):
                return call
            return relax_ops[kind](x, relax.const(value, str(value.dtype)))

    return ClipRewriter


def _scalar(tvm: Any, expr: Any) -> np.ndarray | None:
    """The value of a one-element constant, as a 0-d array; None for anything else."""
    if not isinstance(expr, tvm.ir.expr.Constant) or not hasattr(expr.value, "__dlpack__"):
        return None  # not a tensor constant (a PrimValue is a Constant too)
    value = np.from_dlpack(expr.value)
    return value.reshape(()).copy() if value.size == 1 else None


def _same_tir(tvm: Any, func: Any, topi_fn: Any, x_type: Any, bound: Any) -> bool:
    """Whether ``func`` is the TIR function that ``emit_te(topi_fn, x, bound)`` makes."""
    import tvm_ffi
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", x_type)
    with builder.function("f", [x]):
        builder.emit_func_output(builder.emit_te(topi_fn, x, bound))
    reference = builder.get()
    (prim,) = [reference[g] for g in reference.get_global_vars() if g.name_hint != "f"]
    return bool(tvm_ffi.structural_equal(prim, func))
