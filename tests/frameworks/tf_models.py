"""Keras/TensorFlow/TFLite models for the import tests, built by TensorFlow in this process
of their own (run by ``models.tf_models``): ``python tf_models.py KIND OUT_DIR``.

Writes the model files into OUT_DIR and ``arrays.npz`` with the inputs and what the source
framework computes on them: Keras for Keras models, the LiteRT interpreter for .tflite files.
Weights are seeded, batch-norm statistics random, classifiers end in logits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def randomize_batchnorm(keras, model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights(
                [
                    (0.5 + rng.random(n)).astype(np.float32),
                    (0.2 * rng.standard_normal(n)).astype(np.float32),
                    (0.2 * rng.standard_normal(n)).astype(np.float32),
                    (0.5 + rng.random(n)).astype(np.float32),
                ]
            )


def write_tflite(tf, model, path: Path, calibration: np.ndarray | None = None) -> Path:
    """TensorFlow's own converter: fp32, or with ``calibration`` full-integer int8 with uint8
    input and output."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:

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


def litert(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def mobilenet_v2(out: Path) -> dict[str, np.ndarray]:
    """Keras' MobileNetV2 as fp32 and int8 .tflite files (TensorFlow's converter)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    randomize_batchnorm(keras, model, 5)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    fp32 = write_tflite(tf, model, out / "mobilenet_v2.tflite")
    int8 = write_tflite(
        tf,
        model,
        out / "mobilenet_v2_int8.tflite",
        calibration=rng.uniform(-1, 1, (16, 224, 224, 3)).astype(np.float32),
    )
    # The int8 model takes uint8 pixels: its input scale maps 0..255 onto -1..1.
    xq = np.clip(np.round(x * 127.5 + 127.5), 0, 255).astype(np.uint8)
    return {"x": x, "y": litert(fp32, x), "xq": xq, "yq": litert(int8, xq)}


def small_cnn(out: Path) -> dict[str, np.ndarray]:
    """A small Keras classifier (conv, batch norm, ReLU, pooling, depthwise conv, dense) saved
    as .keras, .h5 and a SavedModel."""
    import keras

    keras.utils.set_random_seed(2)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(32, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    randomize_batchnorm(keras, model, 2)
    model.save(out / "cnn.keras")
    model.save(out / "cnn.h5")
    model.export(str(out / "saved_model"), verbose=False)
    x = np.random.default_rng(2).standard_normal((1, 32, 32, 3)).astype(np.float32)
    return {"x": x, "y": np.asarray(model(x, training=False))}


def bucketize(out: Path) -> dict[str, np.ndarray]:
    """A .tflite holding BUCKETIZE, an operator tf2onnx has no ONNX conversion for."""
    import tensorflow as tf

    fn = tf.function(
        lambda x: tf.raw_ops.Bucketize(input=x, boundaries=[0.0, 1.0]),
        input_signature=[tf.TensorSpec([1, 8], tf.float32)],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    (out / "bucketize.tflite").write_bytes(converter.convert())
    return {}


KINDS = {"mobilenet_v2": mobilenet_v2, "small_cnn": small_cnn, "bucketize": bucketize}

if __name__ == "__main__":
    kind, out_dir = sys.argv[1], Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "arrays.npz", **KINDS[kind](out_dir))
