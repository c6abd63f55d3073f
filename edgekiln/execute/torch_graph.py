"""An ONNX image-classifier graph as a PyTorch ``nn.Module``: the PyTorch baseline.

Why not onnx2torch: it imports torchvision at import time, and torchvision's PyPI wheels are
built against the CUDA build of torch of the same release, so they fail to load beside the
CPU build that an x86 build host installs (and installing onnx2torch pulls the CUDA build of
a newer torch). The classifiers edgekiln compiles use a small set of operators, which this
module maps one to one onto ``torch.nn.functional`` — the same kernels torchvision's modules
call in eval mode (BatchNorm stays a separate op, as in PyTorch eager) — so the baseline is
"PyTorch eager running the same graph". ``torch.compile`` of the module gives the compiled
baseline. An operator outside the set raises a UserError that names it.
"""

from __future__ import annotations

import math
from typing import Any

from edgekiln.errors import DependencyError, UserError

SUPPORTED_OPS = (
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Sub",
)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise DependencyError(
            "the torch baseline needs PyTorch, which is not installed",
            hint="pip install torch (the CPU build: pip install torch==2.13.0), or use another --baseline",
        ) from None
    return torch


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _same_pads(pads: list[int] | None, rank: int) -> tuple[list[int], bool]:
    """ONNX pads (begin..., end...) → torch's symmetric padding, and whether it is symmetric."""
    if not pads:
        return [0] * rank, True
    begin, end = list(pads[:rank]), list(pads[rank:])
    return begin, begin == end


def convert(model: Any) -> Any:
    """Build an eval-mode ``torch.nn.Module`` that computes ``model`` (an onnx.ModelProto)."""
    torch = _torch()
    import onnx.numpy_helper

    graph = model.graph
    unsupported = sorted({n.op_type for n in graph.node} - set(SUPPORTED_OPS))
    if unsupported:
        raise UserError(
            f"the torch baseline cannot run operators {unsupported}",
            hint=f"it supports {', '.join(SUPPORTED_OPS)}; use --baseline onnxruntime or openvino",
        )
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    input_names = [v.name for v in graph.input if v.name not in initializers]
    output_names = [v.name for v in graph.output]

    class OnnxGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # Buffers, not parameters: nothing is trained, and .to(device) moves them.
            self._names: dict[str, str] = {}
            for i, (name, value) in enumerate(initializers.items()):
                key = f"t{i}"
                self.register_buffer(key, torch.from_numpy(value.copy()))
                self._names[name] = key
            # Constant operands (Clip bounds, Reshape shapes) are read here, once: forward()
            # then holds only tensor ops, which torch.compile traces without graph breaks.
            self._nodes = [(n.op_type, list(n.input), list(n.output), _static(n, initializers)) for n in graph.node]

        def _get(self, env: dict[str, Any], name: str) -> Any:
            if name in env:
                return env[name]
            return getattr(self, self._names[name])

        def forward(self, *inputs: Any) -> Any:
            env: dict[str, Any] = dict(zip(input_names, inputs))
            for op, ins, outs, attrs in self._nodes:
                args = [self._get(env, n) if n else None for n in ins]
                env[outs[0]] = _apply(torch, op, args, attrs)
            results = tuple(env[n] for n in output_names)
            return results if len(results) > 1 else results[0]

    module = OnnxGraph()
    module.eval()
    return module


def _static(node: Any, initializers: dict[str, Any]) -> dict[str, Any]:
    """The node's attributes plus its constant operands under "_low", "_high", "_shape"."""
    attrs = _attrs(node)
    names = list(node.input)

    def constant(index: int) -> Any:
        if index < len(names) and names[index]:
            if names[index] not in initializers:
                raise UserError(
                    f"the torch baseline needs {node.op_type} input {index} ({names[index]}) to be a constant"
                )
            return initializers[names[index]]
        return None

    if node.op_type == "Clip":
        low, high = constant(1), constant(2)
        attrs["_low"] = None if low is None else float(low.reshape(-1)[0])
        attrs["_high"] = None if high is None else float(high.reshape(-1)[0])
    if node.op_type == "Reshape":
        attrs["_shape"] = [int(d) for d in constant(1)]
    return attrs


def _apply(torch: Any, op: str, args: list[Any], attrs: dict[str, Any]) -> Any:
    F = torch.nn.functional
    if op == "Conv":
        x, w = args[0], args[1]
        b = args[2] if len(args) > 2 else None
        rank = w.dim() - 2
        pads, symmetric = _same_pads(attrs.get("pads"), rank)
        if not symmetric:
            full = attrs["pads"]
            # F.pad wants the last dimension first: (left, right, top, bottom).
            flat = [p for d in reversed(range(rank)) for p in (full[d], full[d + rank])]
            x, pads = F.pad(x, flat), [0] * rank
        conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
        return conv(
            x,
            w,
            b,
            stride=attrs.get("strides", 1),
            padding=pads,
            dilation=attrs.get("dilations", 1),
            groups=attrs.get("group", 1),
        )
    if op == "BatchNormalization":
        x, scale, bias, mean, var = args[:5]
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))
    if op == "Relu":
        return F.relu(args[0])
    if op == "Clip":
        low, high = attrs["_low"], attrs["_high"]
        if low == 0.0 and high == 6.0:
            return F.relu6(args[0])
        return torch.clamp(args[0], low, high)
    if op == "HardSwish":
        return F.hardswish(args[0])
    if op == "HardSigmoid":
        alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
            return F.hardsigmoid(args[0])
        return torch.clamp(args[0] * alpha + beta, 0.0, 1.0)
    if op == "Sigmoid":
        return torch.sigmoid(args[0])
    if op in ("Add", "Sub", "Mul", "Div"):
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](args[0], args[1])
    if op in ("MaxPool", "AveragePool"):
        rank = len(attrs["kernel_shape"])
        pads, symmetric = _same_pads(attrs.get("pads"), rank)
        if not symmetric:
            raise UserError(f"the torch baseline supports only symmetric {op} padding")
        common = {"stride": attrs.get("strides", 1), "padding": pads, "ceil_mode": bool(attrs.get("ceil_mode", 0))}
        if op == "MaxPool":
            pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
            return pool(args[0], attrs["kernel_shape"], dilation=attrs.get("dilations", 1), **common)
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
        return pool(args[0], attrs["kernel_shape"], count_include_pad=bool(attrs.get("count_include_pad", 0)), **common)
    if op == "GlobalAveragePool":
        return torch.mean(args[0], dim=tuple(range(2, args[0].dim())), keepdim=True)
    if op == "Flatten":
        axis = attrs.get("axis", 1)
        return args[0].reshape(math.prod(args[0].shape[:axis]), -1)
    if op == "Reshape":
        shape = [args[0].shape[i] if d == 0 else d for i, d in enumerate(attrs["_shape"])]
        return args[0].reshape(shape)
    if op == "Gemm":
        a, b = args[0], args[1]
        if attrs.get("transA", 0):
            a = a.t()
        out = a @ (b.t() if attrs.get("transB", 0) else b)
        out = out * attrs.get("alpha", 1.0)
        if len(args) > 2 and args[2] is not None:
            out = out + attrs.get("beta", 1.0) * args[2]
        return out
    if op == "MatMul":
        return torch.matmul(args[0], args[1])
    if op == "Concat":
        return torch.cat(args, dim=attrs["axis"])
    if op == "Softmax":
        return F.softmax(args[0], dim=attrs.get("axis", -1))
    if op in ("Identity", "Dropout"):
        return args[0]
    raise UserError(f"the torch baseline cannot run operator {op}")  # pragma: no cover
