"""Weights packed at compile time into the layout a tuned kernel reads them in.

A MetaSchedule record for a kernel whose weights are marked layout-free (see
:func:`edgekiln.compile.backends.tvm.tuning.fuse`) may store them blocked, in the order its
loops read them. ``SplitLayoutRewritePreproc`` moves that rewrite into a function of its own
(``<kernel>_weight_prepack``), called on the weight before the kernel. TVM's FoldConstant
leaves those calls alone (they return a tuple), so without this pass every inference would
pack every weight again. The weights are the model's constants: this pass runs each packing
function once, here, on the build host, and puts its results in the model as constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekiln.compile.backends.tvm.fold import constant_value, resolve, rewrite_functions

SUFFIX = "_weight_prepack"


def fold_prepacks(tvm: Any) -> Any:
    """A module pass that evaluates the constant weight-packing calls."""

    @tvm.transform.module_pass(opt_level=0, name="EdgekilnFoldPrepack")
    def fold(mod: Any, ctx: Any) -> Any:  # noqa: ARG001 - TVM's pass signature
        folded = rewrite_functions(mod, _folder_class(tvm, mod)())
        # The tuple-item reads of the folded tuples become the constants themselves, and
        # the packing functions, called by nobody now, leave the module.
        tidy = [tvm.relax.transform.CanonicalizeBindings(), tvm.relax.transform.DeadCodeElimination()]
        return tvm.transform.Sequential(tidy)(folded)

    return fold


def _folder_class(tvm: Any, mod: Any) -> type:
    from tvm import relax

    built: dict[str, Any] = {}

    def run(name: str, inputs: list[np.ndarray], outputs: list[Any]) -> list[np.ndarray]:
        if name not in built:
            func = mod[name].with_attr("global_symbol", "main")
            # A plain copy loop nest: the build host runs it, whatever the model's target.
            built[name] = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
        device = tvm.cpu()
        args = [tvm.runtime.tensor(x, device) for x in inputs]
        results = [tvm.runtime.empty(tuple(int(d) for d in o.shape), str(o.dtype), device) for o in outputs]
        built[name]["main"](*args, *results)
        return [r.numpy() for r in results]

    @relax.expr_functor.mutator
    class PrepackFolder(relax.PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.call_tir":
                return call
            callee = call.args[0]
            if not isinstance(callee, tvm.ir.GlobalVar) or not callee.name_hint.endswith(SUFFIX):
                return call
            inputs = [constant_value(tvm, resolve(self, a)) for a in call.args[1].fields]
            if any(x is None for x in inputs):
                return call  # a weight that is not a constant (lifted parameters): packed at run time
            out = call.ty
            outputs = list(out.fields) if isinstance(out, relax.TupleType) else [out]
            values = run(callee.name_hint, inputs, outputs)
            consts = [relax.const(v, str(v.dtype)) for v in values]
            return relax.Tuple(consts) if isinstance(out, relax.TupleType) else consts[0]

    return PrepackFolder
