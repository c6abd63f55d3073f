"""ONNX graphs of torchvision's ResNet and MobileNet classifiers, built in code.

Each builder mirrors the torchvision architecture layer for layer (same convolutions,
strides, paddings, groups, biases and BatchNorm layers), so that parameter and MAC counts
equal torchvision's. Initializer names follow torchvision's ``state_dict`` keys
(``layer1.0.conv1.weight``, ``features.4.block.2.fc1.bias`` ...), so a reader can map
each tensor to the torchvision module it stands for.

The weights are random, drawn from ``numpy.random.default_rng(seed)``; they are scaled so
that activations keep roughly unit variance through the depth and the logits are O(1),
which makes the graphs useful for compiling, numerical validation and benchmarking, not
for classification.

This module imports onnx at the top: only :func:`edgekiln.zoo.build` imports it, inside the
function, so ``import edgekiln.zoo`` stays free of onnx.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 has every op used here as a single node (HardSwish arrived in 14, BatchNormalization
# 15), and IR version 8 is the one that goes with it, so older runtimes on devices load the
# graphs too; onnx.helper would otherwise stamp the newest IR version it knows.
OPSET = 17
IR_VERSION = 8

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_SHAPE = (1, 3, 224, 224)
NUM_CLASSES = 1000

_RELU_GAIN = math.sqrt(2.0)


class _GraphBuilder:
    """Collects nodes and seeded initializers for one graph, in a fixed order."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._scalars: dict[float, str] = {}

    # -- tensors -------------------------------------------------------------------------

    def _add_init(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def _normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def _scalar(self, value: float) -> str:
        # Clip's bounds are inputs since opset 11; one shared initializer per value.
        if value not in self._scalars:
            self._scalars[value] = self._add_init(f"const.{value:g}", np.array(value, dtype=np.float32))
        return self._scalars[value]

    def _node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    # -- layers --------------------------------------------------------------------------

    def conv(
        self,
        x: str,
        prefix: str,
        cin: int,
        cout: int,
        kernel: int,
        *,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        gain: float = _RELU_GAIN,
    ) -> str:
        """A Conv2d with torchvision's padding ``(k - 1) // 2``; He-normal weights by fan-in."""
        fan_in = (cin // groups) * kernel * kernel
        # He-normal by fan-in (not torchvision's fan-out): with inference-mode BatchNorm set
        # to near identity, fan-in scaling is what keeps the forward activations at unit
        # variance, so deep graphs give finite, O(1) logits.
        weight = self._add_init(
            f"{prefix}.weight",
            self._normal((cout, cin // groups, kernel, kernel), gain / math.sqrt(fan_in)),
        )
        inputs = [x, weight]
        if bias:
            inputs.append(self._add_init(f"{prefix}.bias", self._normal((cout,), 0.01)))
        pad = (kernel - 1) // 2
        return self._node(
            "Conv",
            inputs,
            prefix,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
            group=groups,
            dilations=[1, 1],
        )

    def batchnorm(self, x: str, prefix: str, channels: int, *, eps: float, gamma: float = 1.0) -> str:
        """Inference-mode BatchNorm2d kept as a node, so its four tensors stay countable."""
        # Running statistics near (0, 1) with small seeded perturbations: BatchNorm stays
        # close to identity, yet folding it into the convolution is a real transformation
        # that validation can catch when a backend gets it wrong.
        scale = gamma * (1.0 + self._normal((channels,), 0.05))
        shift = self._normal((channels,), 0.05)
        mean = self._normal((channels,), 0.05)
        var = 1.0 + 0.1 * self.rng.random(channels, dtype=np.float32)
        names = [
            self._add_init(f"{prefix}.weight", scale),
            self._add_init(f"{prefix}.bias", shift),
            self._add_init(f"{prefix}.running_mean", mean),
            self._add_init(f"{prefix}.running_var", var),
        ]
        return self._node("BatchNormalization", [x, *names], prefix, epsilon=eps)

    def relu(self, x: str, name: str) -> str:
        return self._node("Relu", [x], name)

    def relu6(self, x: str, name: str) -> str:
        return self._node("Clip", [x, self._scalar(0.0), self._scalar(6.0)], name)

    def hardswish(self, x: str, name: str) -> str:
        return self._node("HardSwish", [x], name)

    def hardsigmoid(self, x: str, name: str) -> str:
        # torch.nn.Hardsigmoid is relu6(x + 3) / 6; ONNX's defaults (alpha 0.2) differ.
        return self._node("HardSigmoid", [x], name, alpha=1.0 / 6.0, beta=0.5)

    def add(self, a: str, b: str, name: str) -> str:
        return self._node("Add", [a, b], name)

    def mul(self, a: str, b: str, name: str) -> str:
        return self._node("Mul", [a, b], name)

    def maxpool(self, x: str, name: str) -> str:
        """ResNet's stem pool: MaxPool2d(kernel_size=3, stride=2, padding=1)."""
        return self._node("MaxPool", [x], name, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    def global_avgpool(self, x: str, name: str) -> str:
        return self._node("GlobalAveragePool", [x], name)

    def linear(
        self,
        x: str,
        prefix: str,
        fin: int,
        fout: int,
        *,
        gain: float = 1.0,
        output: str | None = None,
    ) -> str:
        """torch.nn.Linear as Gemm with transB, weight stored (out, in) as torchvision does."""
        weight = self._add_init(f"{prefix}.weight", self._normal((fout, fin), gain / math.sqrt(fin)))
        bias = self._add_init(f"{prefix}.bias", self._normal((fout,), 0.01))
        name = output or prefix
        self.nodes.append(helper.make_node("Gemm", [x, weight, bias], [name], name=prefix, transB=1))
        return name

    def conv_bn_act(
        self,
        x: str,
        prefix: str,
        cin: int,
        cout: int,
        kernel: int,
        *,
        eps: float,
        stride: int = 1,
        groups: int = 1,
        act: Callable[[str, str], str] | None = None,
        gain: float = _RELU_GAIN,
    ) -> str:
        """torchvision's Conv2dNormActivation: ``{prefix}.0`` conv, ``.1`` BN, ``.2`` act."""
        y = self.conv(x, f"{prefix}.0", cin, cout, kernel, stride=stride, groups=groups, gain=gain)
        y = self.batchnorm(y, f"{prefix}.1", cout, eps=eps)
        return act(y, f"{prefix}.2") if act is not None else y

    def pool_flatten(self, x: str) -> str:
        """torchvision's ``avgpool`` (AdaptiveAvgPool2d(1)) and ``torch.flatten(x, 1)``."""
        y = self.global_avgpool(x, "avgpool")
        # Flatten(axis=1) rather than Reshape: no shape tensor, and every backend knows it.
        return self._node("Flatten", [y], "flatten", axis=1)

    # -- the model -----------------------------------------------------------------------

    def model(self, name: str, doc: str) -> onnx.ModelProto:
        from edgekiln import __version__

        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(INPUT_SHAPE))],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [INPUT_SHAPE[0], NUM_CLASSES])],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="edgekiln.zoo",
            producer_version=__version__,
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        return model


def _with_props(model: onnx.ModelProto, name: str, seed: int, source: str) -> onnx.ModelProto:
    helper.set_model_props(model, {"edgekiln.zoo.name": name, "edgekiln.zoo.seed": str(seed), "source": source})
    return model


# -- ResNet (torchvision/models/resnet.py; ResNet v1.5: stride on the 3x3 conv) -------------

_RESNET_EPS = 1e-5
# The last BatchNorm of each residual branch starts small (the "zero-init residual" idea,
# but not zero so the branch still matters), so the sum grows slowly over 8 or 16 blocks.
_RESIDUAL_GAMMA = 0.2


def _basic_block(b: _GraphBuilder, x: str, prefix: str, cin: int, planes: int, stride: int) -> str:
    y = b.conv(x, f"{prefix}.conv1", cin, planes, 3, stride=stride)
    y = b.relu(b.batchnorm(y, f"{prefix}.bn1", planes, eps=_RESNET_EPS), f"{prefix}.relu1")
    y = b.conv(y, f"{prefix}.conv2", planes, planes, 3)
    y = b.batchnorm(y, f"{prefix}.bn2", planes, eps=_RESNET_EPS, gamma=_RESIDUAL_GAMMA)
    identity = _downsample(b, x, prefix, cin, planes, stride)
    return b.relu(b.add(y, identity, f"{prefix}.add"), f"{prefix}.relu")


def _bottleneck(b: _GraphBuilder, x: str, prefix: str, cin: int, planes: int, stride: int) -> str:
    width, cout = planes, planes * 4
    y = b.conv(x, f"{prefix}.conv1", cin, width, 1)
    y = b.relu(b.batchnorm(y, f"{prefix}.bn1", width, eps=_RESNET_EPS), f"{prefix}.relu1")
    y = b.conv(y, f"{prefix}.conv2", width, width, 3, stride=stride)
    y = b.relu(b.batchnorm(y, f"{prefix}.bn2", width, eps=_RESNET_EPS), f"{prefix}.relu2")
    y = b.conv(y, f"{prefix}.conv3", width, cout, 1)
    y = b.batchnorm(y, f"{prefix}.bn3", cout, eps=_RESNET_EPS, gamma=_RESIDUAL_GAMMA)
    identity = _downsample(b, x, prefix, cin, cout, stride)
    return b.relu(b.add(y, identity, f"{prefix}.add"), f"{prefix}.relu")


def _downsample(b: _GraphBuilder, x: str, prefix: str, cin: int, cout: int, stride: int) -> str:
    if stride == 1 and cin == cout:
        return x
    y = b.conv(x, f"{prefix}.downsample.0", cin, cout, 1, stride=stride)
    return b.batchnorm(y, f"{prefix}.downsample.1", cout, eps=_RESNET_EPS)


def _resnet(name: str, seed: int, block: Callable, expansion: int, layers: tuple[int, ...], source: str):
    b = _GraphBuilder(seed)
    x = b.conv(INPUT_NAME, "conv1", 3, 64, 7, stride=2)
    x = b.relu(b.batchnorm(x, "bn1", 64, eps=_RESNET_EPS), "relu")
    x = b.maxpool(x, "maxpool")
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for i in range(blocks):
            stride = 2 if stage > 1 and i == 0 else 1
            x = block(b, x, f"layer{stage}.{i}", cin, planes, stride)
            cin = planes * expansion
    x = b.pool_flatten(x)
    b.linear(x, "fc", cin, NUM_CLASSES, output=OUTPUT_NAME)
    return _with_props(b.model(name, f"{name} (torchvision architecture), random weights"), name, seed, source)


def resnet18(seed: int, source: str) -> onnx.ModelProto:
    """torchvision ``resnet18``: BasicBlock x (2, 2, 2, 2)."""
    return _resnet("resnet18", seed, _basic_block, 1, (2, 2, 2, 2), source)


def resnet50(seed: int, source: str) -> onnx.ModelProto:
    """torchvision ``resnet50``: Bottleneck x (3, 4, 6, 3), stride on the 3x3 conv (v1.5)."""
    return _resnet("resnet50", seed, _bottleneck, 4, (3, 4, 6, 3), source)


# -- MobileNetV2 (torchvision/models/mobilenetv2.py) -------------------------------------------


def _make_divisible(v: float, divisor: int = 8) -> int:
    # torchvision/models/_utils.py: round to a multiple of 8, never down by more than 10%.
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mobilenet_v2(seed: int, source: str) -> onnx.ModelProto:
    """torchvision ``mobilenet_v2`` (width 1.0); the classifier's Dropout is omitted."""
    eps = 1e-5
    b = _GraphBuilder(seed)
    x = b.conv_bn_act(INPUT_NAME, "features.0", 3, 32, 3, stride=2, eps=eps, act=b.relu6)
    cin, index = 32, 1
    for t, c, n, s in (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ):
        for i in range(n):
            stride = s if i == 0 else 1
            prefix = f"features.{index}.conv"
            hidden = int(round(cin * t))
            y, j = x, 0
            if t != 1:
                y = b.conv_bn_act(y, f"{prefix}.{j}", cin, hidden, 1, eps=eps, act=b.relu6)
                j += 1
            y = b.conv_bn_act(
                y,
                f"{prefix}.{j}",
                hidden,
                hidden,
                3,
                stride=stride,
                groups=hidden,
                eps=eps,
                act=b.relu6,
            )
            # The linear bottleneck: conv and BN without activation, numbered like nn.Sequential.
            y = b.conv(y, f"{prefix}.{j + 1}", hidden, c, 1)
            residual = stride == 1 and cin == c
            y = b.batchnorm(y, f"{prefix}.{j + 2}", c, eps=eps, gamma=_RESIDUAL_GAMMA if residual else 1.0)
            x = b.add(x, y, f"features.{index}.add") if residual else y
            cin, index = c, index + 1
    x = b.conv_bn_act(x, f"features.{index}", cin, 1280, 1, eps=eps, act=b.relu6)
    x = b.pool_flatten(x)
    # classifier.0 is Dropout(0.2): an identity at inference, so the graph leaves it out.
    b.linear(x, "classifier.1", 1280, NUM_CLASSES, output=OUTPUT_NAME)
    return _with_props(
        b.model("mobilenet_v2", "mobilenet_v2 (torchvision architecture), random weights"),
        "mobilenet_v2",
        seed,
        source,
    )


# -- MobileNetV3 (torchvision/models/mobilenetv3.py) -------------------------------------------

# (input, kernel, expanded, out, use_se, activation, stride), as in torchvision's
# _mobilenet_v3_conf (width 1.0, no reduced tail, no dilation).
_V3_LARGE = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
_V3_SMALL = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
)
# hardsigmoid of a small signal is about 0.5, so squeeze-and-excitation halves the
# amplitude; the projection conv after it starts twice as large to give that back.
_SE_COMPENSATION = 2.0


def _squeeze_excitation(b: _GraphBuilder, x: str, prefix: str, channels: int) -> str:
    squeeze = _make_divisible(channels // 4, 8)
    s = b.global_avgpool(x, f"{prefix}.avgpool")
    s = b.relu(b.conv(s, f"{prefix}.fc1", channels, squeeze, 1, bias=True), f"{prefix}.relu")
    # fc2 starts small so the gate starts near 0.5 for every channel instead of saturating.
    s = b.conv(s, f"{prefix}.fc2", squeeze, channels, 1, bias=True, gain=0.5)
    return b.mul(x, b.hardsigmoid(s, f"{prefix}.scale_activation"), f"{prefix}.scale")


def _mobilenet_v3(name: str, seed: int, setting: tuple, last_channel: int, source: str) -> onnx.ModelProto:
    eps = 1e-3  # torchvision builds MobileNetV3's BatchNorm2d with eps=0.001
    b = _GraphBuilder(seed)
    x = b.conv_bn_act(INPUT_NAME, "features.0", 3, setting[0][0], 3, stride=2, eps=eps, act=b.hardswish)
    for index, (cin, kernel, expanded, cout, use_se, activation, stride) in enumerate(setting, start=1):
        act = b.hardswish if activation == "HS" else b.relu
        prefix = f"features.{index}.block"
        y, j = x, 0
        if expanded != cin:
            y = b.conv_bn_act(y, f"{prefix}.{j}", cin, expanded, 1, eps=eps, act=act)
            j += 1
        y = b.conv_bn_act(
            y,
            f"{prefix}.{j}",
            expanded,
            expanded,
            kernel,
            stride=stride,
            groups=expanded,
            eps=eps,
            act=act,
        )
        j += 1
        if use_se:
            y = _squeeze_excitation(b, y, f"{prefix}.{j}", expanded)
            j += 1
        residual = stride == 1 and cin == cout
        gain = _RELU_GAIN * (_SE_COMPENSATION if use_se else 1.0)
        y = b.conv(y, f"{prefix}.{j}.0", expanded, cout, 1, gain=gain)
        y = b.batchnorm(y, f"{prefix}.{j}.1", cout, eps=eps, gamma=_RESIDUAL_GAMMA if residual else 1.0)
        x = b.add(y, x, f"features.{index}.add") if residual else y
    cin = setting[-1][3]
    last_conv = 6 * cin
    x = b.conv_bn_act(x, f"features.{len(setting) + 1}", cin, last_conv, 1, eps=eps, act=b.hardswish)
    x = b.pool_flatten(x)
    x = b.hardswish(b.linear(x, "classifier.0", last_conv, last_channel, gain=_RELU_GAIN), "classifier.1")
    # classifier.2 is Dropout(0.2): an identity at inference, so the graph leaves it out.
    b.linear(x, "classifier.3", last_channel, NUM_CLASSES, output=OUTPUT_NAME)
    return _with_props(b.model(name, f"{name} (torchvision architecture), random weights"), name, seed, source)


def mobilenet_v3_large(seed: int, source: str) -> onnx.ModelProto:
    """torchvision ``mobilenet_v3_large`` (width 1.0); the classifier's Dropout is omitted."""
    return _mobilenet_v3("mobilenet_v3_large", seed, _V3_LARGE, 1280, source)


def mobilenet_v3_small(seed: int, source: str) -> onnx.ModelProto:
    """torchvision ``mobilenet_v3_small`` (width 1.0); the classifier's Dropout is omitted."""
    return _mobilenet_v3("mobilenet_v3_small", seed, _V3_SMALL, 1024, source)


BUILDERS: dict[str, Callable[[int, str], onnx.ModelProto]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v3_large": mobilenet_v3_large,
}
