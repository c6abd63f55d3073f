"""Models built in the tests with each framework, and their outputs in that framework.

Weights are seeded and every batch-norm layer gets random statistics, so that a wrong
axis, epsilon or layout shows up as a numeric difference instead of hiding behind an
identity normalization; classifiers end in logits (no softmax), which would flatten the
differences to nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# --- PyTorch ----------------------------------------------------------------------------


def torch_resnet18(seed: int = 0, classes: int = 1000):
    """ResNet-18 as torchvision defines it (BasicBlock, [2, 2, 2, 2]), in eval mode."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(self.avgpool(self.layers(x)), 1))

    torch.manual_seed(seed)
    model = ResNet18()
    randomize_torch_batchnorm(model, seed)
    return model.eval()


def randomize_torch_batchnorm(model, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def torch_outputs(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# --- Keras / TensorFlow / TFLite ---------------------------------------------------------
# Built in a child process (tests/frameworks/tf_models.py), as edgekiln's frontend runs
# TensorFlow: loaded into the test process, its bundled protobuf crashes grpcio-tools there.


def tf_models(kind: str, out_dir: Path) -> dict:
    """Build the TensorFlow-side models of ``kind`` into ``out_dir``; their files and outputs."""
    import subprocess
    import sys

    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("tf_models.py")), kind, str(out_dir)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out_dir / "arrays.npz") as arrays:
        result: dict = {k: arrays[k] for k in arrays.files}
    result.update({p.name: p for p in out_dir.iterdir() if p.name != "arrays.npz"})
    return result


# --- ONNX -------------------------------------------------------------------------------


def onnx_tiny_cnn(path: Path, batch: int = 1, seed: int = 0) -> Path:
    """A small classifier as an ONNX file: conv 3→16 (3×3, stride 2) → ReLU → conv 16→32 →
    HardSwish (a clip with scalar bounds in Relax) → global average pool → flatten → dense
    32→10, input [batch, 3, 32, 32], seeded."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        return helper.make_tensor(name, TensorProto.FLOAT, shape, data.ravel())

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        [
            tensor("w1", 16, 3, 3, 3),
            tensor("b1", 16),
            tensor("w2", 32, 16, 3, 3, scale=0.1),
            tensor("b2", 32),
            tensor("w3", 10, 32),
            tensor("b3", 10),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def tflite_head(path: Path) -> np.ndarray:
    """A small classifier head (MatMul 16->10, Softmax) as .tflite, written by the LiteRT
    backend's own writer (no TensorFlow in the test process); returns its weights."""
    from onnx import TensorProto, helper

    from edgekiln.compile.backends.litert import convert, writer

    weights = np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, [16, 10], weights.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(writer.write(convert.convert(model), ["x"], ["y"]))
    return weights
