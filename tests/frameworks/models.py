"""Models built in the tests with each framework, and their outputs in that framework.

Weights are seeded and every batch-norm layer gets random statistics, so that a wrong
axis, epsilon or layout shows up as a numeric difference instead of hiding behind an
identity normalization; classifiers end in logits (no softmax), which would flatten the
differences to nothing.
"""

from __future__ import annotations

import os
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

def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def randomize_keras_batchnorm(model, seed: int) -> None:
    keras = _keras()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            n = gamma.shape[0]
            layer.set_weights([(0.5 + rng.random(n)).astype(np.float32), (0.2 * rng.standard_normal(n)).astype(np.float32),
                               (0.2 * rng.standard_normal(n)).astype(np.float32), (0.5 + rng.random(n)).astype(np.float32)])


def keras_mobilenet_v2(seed: int = 0, size: int = 224):
    """Keras' MobileNetV2 (keras.applications) with seeded weights and logits out."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    randomize_keras_batchnorm(model, seed)
    return model


def keras_small_cnn(seed: int = 0):
    """A small Keras classifier: conv, batch norm, ReLU, pooling, dense; NHWC 32x32 input."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(32, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs)
    randomize_keras_batchnorm(model, seed)
    return model


def keras_outputs(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))


def write_tflite(model, path: Path, *, int8: bool = False, calibration: np.ndarray | None = None) -> Path:
    """Convert a Keras model with TensorFlow's own TFLite converter (fp32, or full-integer
    int8 with uint8 input and output, calibrated on ``calibration``)."""
    _keras()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        assert calibration is not None

        def representative():
            for x in calibration:
                yield [x[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    path.write_bytes(converter.convert())
    return path


def litert_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """The .tflite's output on ``x``, run by the LiteRT interpreter (the source framework)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
