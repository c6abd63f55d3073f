"""Hostile Keras files: a Lambda layer whose Python function writes ``canary`` when the
model is rebuilt from the file (Keras stores it as marshalled bytecode)."""

from __future__ import annotations

from pathlib import Path


def lambda_model(path: Path, canary: Path) -> Path:
    import keras

    target = str(canary)
    inputs = keras.Input((8, 8, 3))
    touched = keras.layers.Lambda(lambda x: (open(target, "w").close(), x)[1])(inputs)  # noqa: SIM115
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(touched))
    model.save(str(path))
    canary.unlink(missing_ok=True)  # building the model above ran the function once
    return path
