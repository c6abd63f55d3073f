"""The classic ONNX Model Zoo CNNs, rebuilt small with onnx.helper.

The zoo's AlexNet, CaffeNet, GoogLeNet, SqueezeNet 1.0, VGG and ResNet files were converted
from Caffe2 at opsets 7-9: blobs named ``data_0``, ``conv1_w_0``, ``conv1_1``, ``prob_1``,
nodes without names, LRN after the early convolutions, AlexNet's two-group convolutions,
Dropout kept in the graph, residual additions as variadic ``Sum``, and a final Softmax.
These graphs keep all of that at a small size; weights are seeded (He-scaled, so the
softmax does not saturate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class _Builder:
    """Appends Caffe2-style nodes (no node names, ``<blob>_1`` outputs, ``_0`` weights)."""

    def __init__(self, opset: int, seed: int) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.channels = 3
        self.x = "data_0"

    def _init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], out: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.x = out
        return out

    def conv(self, name: str, cout: int, k: int, s: int = 1, p: int = 0, group: int = 1, src: str | None = None) -> str:
        src = src or self.x
        cin = self.channels
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        self.node(
            "Conv",
            [src, self._init(f"{name}_w_0", w), self._init(f"{name}_b_0", b)],
            f"{name}_1",
            kernel_shape=[k, k],
            strides=[s, s],
            pads=[p] * 4,
            group=group,
        )
        self.channels = cout
        return self.x

    def relu(self, name: str) -> str:
        return self.node("Relu", [self.x], f"{name}_2")

    def lrn(self, name: str) -> str:
        return self.node("LRN", [self.x], f"{name}_1", size=5, alpha=1e-4, beta=0.75, bias=1.0)

    def pool(self, name: str, k: int, s: int, p: int = 0, kind: str = "MaxPool") -> str:
        return self.node(kind, [self.x], f"{name}_1", kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)

    def fc(self, name: str, cin: int, cout: int) -> str:
        w = (self.rng.standard_normal((cout, cin)) * np.sqrt(2.0 / cin)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        self.channels = cout
        return self.node(
            "Gemm", [self.x, self._init(f"{name}_w_0", w), self._init(f"{name}_b_0", b)], f"{name}_1", transB=1
        )

    def dropout(self, name: str) -> str:
        return self.node("Dropout", [self.x], f"{name}_1", ratio=0.5)

    def flatten(self, name: str, features: int) -> str:
        shape = self._init(f"{name}_shape", np.array([1, features], np.int64))
        return self.node("Reshape", [self.x, shape], f"{name}_1")

    def batchnorm(self, name: str) -> str:
        c = self.channels
        params = [
            self._init(f"{name}_s_0", (0.5 + self.rng.random(c)).astype(np.float32)),
            self._init(f"{name}_b_0", (0.2 * self.rng.standard_normal(c)).astype(np.float32)),
            self._init(f"{name}_rm_0", (0.2 * self.rng.standard_normal(c)).astype(np.float32)),
            self._init(f"{name}_riv_0", (0.5 + self.rng.random(c)).astype(np.float32)),
        ]
        extra = {"spatial": 1} if self.opset < 9 else {}
        return self.node("BatchNormalization", [self.x, *params], f"{name}_1", epsilon=1e-5, **extra)

    def model(self, size: int, out_shape: list[int]):
        from onnx import TensorProto, helper

        # IR version 3, as the zoo's files: every initializer is also a graph input.
        weights = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        graph = helper.make_graph(
            self.nodes,
            "caffe2_net",
            [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, size, size]), *weights],
            [helper.make_tensor_value_info(self.x, TensorProto.FLOAT, out_shape)],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="onnx-caffe2"
        )
        model.ir_version = 3
        return model


def alexnet(seed: int = 0):
    """bvlc_alexnet: conv → relu → LRN → pool, two-group convolutions, Dropout, opset 7."""
    b = _Builder(7, seed)
    b.conv("conv1", 24, 11, 4, 2)
    b.relu("conv1")
    b.lrn("norm1")
    b.pool("pool1", 3, 2)
    b.conv("conv2", 32, 5, 1, 2, group=2)
    b.relu("conv2")
    b.lrn("norm2")
    b.pool("pool2", 3, 2)
    b.conv("conv3", 48, 3, 1, 1)
    b.relu("conv3")
    b.conv("conv4", 48, 3, 1, 1, group=2)
    b.relu("conv4")
    b.conv("conv5", 32, 3, 1, 1, group=2)
    b.relu("conv5")
    b.pool("pool5", 3, 2)
    b.flatten("pool5_flat", 32 * 2 * 2)
    for i, (cin, cout) in enumerate(((32 * 2 * 2, 64), (64, 64)), start=6):
        b.fc(f"fc{i}", cin, cout)
        b.node("Relu", [b.x], f"fc{i}_2")
        b.dropout(f"drop{i}")
    b.fc("fc8", 64, 100)
    b.node("Softmax", [b.x], "prob_1", axis=1)
    return b.model(96, [1, 100])


def caffenet(seed: int = 1):
    """bvlc_reference_caffenet: AlexNet with pooling before normalization, opset 8."""
    b = _Builder(8, seed)
    b.conv("conv1", 24, 11, 4, 0)
    b.relu("conv1")
    b.pool("pool1", 3, 2)
    b.lrn("norm1")
    b.conv("conv2", 32, 5, 1, 2, group=2)
    b.relu("conv2")
    b.pool("pool2", 3, 2)
    b.lrn("norm2")
    b.conv("conv3", 32, 3, 1, 1)
    b.relu("conv3")
    b.flatten("pool5_flat", 32 * 4 * 4)
    b.fc("fc6", 32 * 4 * 4, 64)
    b.node("Relu", [b.x], "fc6_2")
    b.dropout("drop6")
    b.fc("fc8", 64, 100)
    b.node("Softmax", [b.x], "prob_1", axis=1)
    return b.model(96, [1, 100])


def googlenet(seed: int = 2):
    """bvlc_googlenet: LRN stem, inception modules concatenated, average pool, opset 8."""
    b = _Builder(8, seed)
    b.conv("conv1/7x7_s2", 16, 7, 2, 3)
    b.relu("conv1/7x7_s2")
    b.pool("pool1/3x3_s2", 3, 2, 1)
    b.lrn("pool1/norm1")
    b.conv("conv2/3x3", 32, 3, 1, 1)
    b.relu("conv2/3x3")
    b.lrn("conv2/norm2")
    b.pool("pool2/3x3_s2", 3, 2, 1)
    for name in ("inception_3a", "inception_3b"):
        src, cin, outs = b.x, b.channels, []
        for branch, (k, cout) in {"1x1": (1, 8), "3x3": (3, 16), "5x5": (5, 8)}.items():
            b.x, b.channels = src, cin
            b.conv(f"{name}/{branch}", cout, k, 1, k // 2)
            outs.append(b.relu(f"{name}/{branch}"))
        b.x, b.channels = src, cin
        b.pool(f"{name}/pool", 3, 1, 1)
        b.conv(f"{name}/pool_proj", 8, 1)
        outs.append(b.relu(f"{name}/pool_proj"))
        b.node("Concat", outs, f"{name}/output_1", axis=1)
        b.channels = 40
    b.pool("pool5/7x7_s1", 8, 1, kind="AveragePool")
    b.dropout("pool5/drop_7x7_s1")
    b.flatten("pool5/flat", 40)
    b.fc("loss3/classifier", 40, 100)
    b.node("Softmax", [b.x], "prob_1", axis=1)
    return b.model(64, [1, 100])


def squeezenet10(seed: int = 3):
    """squeezenet1.0: fire modules, Dropout, a conv classifier, GlobalAveragePool, Softmax
    over a 1x1 map (the zoo's output is 1x1000x1x1), opset 9."""
    b = _Builder(9, seed)
    b.conv("conv1", 24, 7, 2)
    b.relu("conv1")
    b.pool("pool1", 3, 2)
    for name, (squeeze, expand) in {"fire2": (8, 16), "fire3": (8, 16), "fire4": (16, 24)}.items():
        b.conv(f"{name}/squeeze1x1", squeeze, 1)
        src = b.relu(f"{name}/squeeze1x1")
        b.conv(f"{name}/expand1x1", expand, 1, src=src)
        left = b.relu(f"{name}/expand1x1")
        b.channels = squeeze
        b.conv(f"{name}/expand3x3", expand, 3, 1, 1, src=src)
        right = b.relu(f"{name}/expand3x3")
        b.node("Concat", [left, right], f"{name}/concat_1", axis=1)
        b.channels = 2 * expand
    b.dropout("drop9")
    b.conv("conv10", 100, 1)
    b.relu("conv10")
    b.node("GlobalAveragePool", [b.x], "pool10_1")
    b.node("Softmax", [b.x], "softmaxout_1", axis=1)
    return b.model(64, [1, 100, 1, 1])


def vgg(seed: int = 4):
    """vgg16-style: 3x3 conv stacks, max pooling, Flatten, two Dropout'd FC layers, opset 9."""
    b = _Builder(9, seed)
    for stage, (cout, convs) in enumerate(((16, 2), (32, 2), (32, 3)), start=1):
        for i in range(1, convs + 1):
            b.conv(f"conv{stage}_{i}", cout, 3, 1, 1)
            b.relu(f"conv{stage}_{i}")
        b.pool(f"pool{stage}", 2, 2)
    b.node("Flatten", [b.x], "flatten_1", axis=1)
    b.fc("fc6", 32 * 8 * 8, 64)
    b.node("Relu", [b.x], "fc6_2")
    b.dropout("drop6")
    b.fc("fc8", 64, 100)
    b.node("Softmax", [b.x], "prob_1", axis=1)
    return b.model(64, [1, 100])


def resnet_caffe2(seed: int = 5):
    """resnet50 (Caffe2): BatchNormalization with ``spatial``, residuals added with Sum, opset 7."""
    b = _Builder(7, seed)
    b.conv("conv1", 16, 7, 2, 3)
    b.batchnorm("res_conv1_bn")
    b.relu("res_conv1_bn")
    b.pool("pool1", 3, 2, 1)
    for i in range(2):
        src = b.x
        b.conv(f"res2_{i}_branch2a", 16, 3, 1, 1)
        b.batchnorm(f"res2_{i}_branch2a_bn")
        b.relu(f"res2_{i}_branch2a_bn")
        b.conv(f"res2_{i}_branch2b", 16, 3, 1, 1)
        b.batchnorm(f"res2_{i}_branch2b_bn")
        b.node("Sum", [b.x, src], f"res2_{i}_branch2c_bn_1")
        b.relu(f"res2_{i}_sum")
    b.node("GlobalAveragePool", [b.x], "pool5_1")
    b.flatten("pool5_flat", 16)
    b.fc("pred", 16, 100)
    b.node("Softmax", [b.x], "softmax_1", axis=1)
    return b.model(64, [1, 100])


MODELS = {
    "alexnet": alexnet,
    "caffenet": caffenet,
    "googlenet": googlenet,
    "squeezenet1.0": squeezenet10,
    "vgg": vgg,
    "resnet_caffe2": resnet_caffe2,
}


def export(name: str, out_dir: Path) -> Path:
    """The model as a checked ONNX file."""
    import onnx

    model = MODELS[name]()
    onnx.checker.check_model(model, full_check=True)
    path = out_dir / f"zoo_{name}.onnx"
    onnx.save(model, str(path))
    return path
