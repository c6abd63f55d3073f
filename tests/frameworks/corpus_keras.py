"""Keras applications for the conformance corpus, built with ``weights=None`` and seeded, in
a process of their own (TensorFlow stays out of the test process, see ``models.tf_models``):
``python corpus_keras.py OUT_DIR NAME...`` writes ``keras_NAME.keras`` for each NAME.

Small inputs and width multipliers keep the compiles short; the classifiers end in logits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# name → (application, keyword arguments); all take 96x96 or smaller RGB inputs.
APPLICATIONS = {
    "MobileNetV2": ("MobileNetV2", {"input_shape": (96, 96, 3), "alpha": 0.35}),
    "MobileNetV3Small": ("MobileNetV3Small", {"input_shape": (96, 96, 3), "alpha": 0.75}),
    "EfficientNetB0": ("EfficientNetB0", {"input_shape": (64, 64, 3)}),
}


def build(name: str, out_dir: Path, seed: int = 0) -> Path:
    import keras

    from tests.frameworks.tf_models import randomize_batchnorm

    keras.utils.set_random_seed(seed)
    app, kwargs = APPLICATIONS[name]
    model = getattr(keras.applications, app)(weights=None, classes=100, classifier_activation=None, **kwargs)
    randomize_batchnorm(keras, model, seed)
    path = out_dir / f"keras_{name}.keras"
    model.save(path)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for item in sys.argv[2:]:
        print(build(item, out))
