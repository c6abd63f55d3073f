"""A hostile TensorFlow SavedModel: a resource whose initializer writes ``canary`` with
tf.io.write_file when TensorFlow loads the model."""

from __future__ import annotations

from pathlib import Path


def writes_on_load(path: Path, canary: Path) -> Path:
    import tensorflow as tf

    class Table(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="t")

        def _initialize(self):
            tf.io.write_file(str(canary), "pwned")
            tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

    class Net(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = Table()

        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
        def serve(self, x):
            return {"y": tf.reduce_mean(x, axis=[1, 2])}

    net = Net()
    tf.saved_model.save(net, str(path), signatures={"serving_default": net.serve})
    canary.unlink(missing_ok=True)  # saving ran the initializer once
    return path
