"""`edgekiln compile` on models from other frameworks, as a user runs it: Neo-style tarballs,
--framework and --input-config, and the failures, which leave nothing behind."""

from __future__ import annotations

import json
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.cli.test_cli_compile import assert_clean_failure, edgekiln, x86_only


def _torchscript(path: Path, op: str = "conv") -> Path:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return torch.special.bessel_j0(y) if op == "bessel" else y.mean((2, 3))

    torch.manual_seed(0)
    torch.jit.trace(Net().eval(), torch.randn(1, 3, 16, 16)).save(str(path))
    return path


def _empty_params(path: Path) -> Path:
    # MXNet's NDArray list format with no arrays and no names.
    path.write_bytes(struct.pack("<QQQQ", 0x112, 0, 0, 0))
    return path


@x86_only
def test_neo_tarball_of_a_torchscript_model(tmp_path):
    import torch

    model = _torchscript(tmp_path / "model.pth")
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(model, arcname="model.pth")
    out = tmp_path / "out.tar.gz"
    proc = edgekiln(
        "compile",
        str(tarball),
        "--target",
        "x86_64",
        "--backend",
        "onnxruntime",
        "--input-config",
        '{"input0": [1, 3, 16, 16]}',
        "-o",
        str(out),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # stdout holds the JSON only: the exporter's chatter is kept off it
    assert summary["inputs"] == [{"name": "input0", "dtype": "float32", "shape": [1, 3, 16, 16]}]
    assert summary["validation"]["status"] == "passed"
    info = json.loads(edgekiln("inspect", str(out), "--json").stdout)
    assert info["model"]["source_format"] == "pytorch" and info["model"]["name"] == "model"

    import edgekiln as ek

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = torch.jit.load(str(model))(torch.from_numpy(x)).numpy()
    got = ek.load(out).run({"input0": x})[0]
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        (
            "pytorch unsupported operator",
            ["PyTorch operator aten::special_bessel_j0", "node %", "test_cli_frameworks.Net"],
        ),
        ("torchscript without shapes", ["records no input shapes", "--input-config"]),
        ("pickled state dict", ["pickled module or state dict", "torch.jit.save"]),
        ("bad input config", ["--input-config is not JSON"]),
        ("both shape options", ["either with --input-config or with --input-shape"]),
        ("corrupt tflite", ["TFLite"]),
        ("wrong framework", ["is not a TFLite model"]),
        ("tflite unsupported operator", ["TFLite operator BUCKETIZE", "node 'Identity'", "tf2onnx"]),
        ("mxnet unsupported operator", ["MXNet", "ROIPooling", "roi0"]),
        ("mxnet without params", ["params"]),
        ("tarball escaping its folder", ["cannot be unpacked"]),
    ],
)
def test_framework_import_failures_are_one_line_and_leave_nothing(tmp_path, case, needles):
    src = tmp_path / "src"
    src.mkdir()
    extra: list[str] = []
    model = src / "model.pt"
    if case == "pytorch unsupported operator":
        _torchscript(model, op="bessel")
        extra = ["--input-config", "[[1, 3, 16, 16]]"]
    elif case == "torchscript without shapes":
        _torchscript(model)
    elif case == "pickled state dict":
        import torch

        torch.save(torch.nn.Linear(2, 2).state_dict(), model)
    elif case == "bad input config":
        _torchscript(model)
        extra = ["--input-config", "{input0: [1, 3, 16, 16]}"]
    elif case == "both shape options":
        _torchscript(model)
        extra = ["--input-config", "[[1, 3, 16, 16]]", "--input-shape", "1,3,16,16"]
    elif case == "corrupt tflite":
        model = src / "model.tflite"
        model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(200)))
    elif case == "wrong framework":
        import onnx
        from onnx import TensorProto, helper

        model = src / "model.onnx"
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        )
        onnx.save(helper.make_model(graph), str(model))
        extra = ["--framework", "tflite"]
    elif case == "tflite unsupported operator":
        from tests.frameworks.models import tf_models

        model = tf_models("bucketize", tmp_path / "built")["bucketize.tflite"]
        model = Path(shutil.copy(model, src / "bucketize.tflite"))
    elif case in ("mxnet unsupported operator", "mxnet without params"):
        model = src / "net-symbol.json"
        model.write_text(
            json.dumps(
                {
                    "nodes": [
                        {"op": "null", "name": "data", "inputs": []},
                        {"op": "null", "name": "rois", "inputs": []},
                        {
                            "op": "ROIPooling",
                            "name": "roi0",
                            "attrs": {"pooled_size": "(2, 2)", "spatial_scale": "1"},
                            "inputs": [[0, 0, 0], [1, 0, 0]],
                        },
                    ],
                    "arg_nodes": [0, 1],
                    "heads": [[2, 0, 0]],
                    "attrs": {"mxnet_version": ["int", 10901]},
                }
            )
        )
        if case == "mxnet unsupported operator":
            _empty_params(src / "net-0000.params")
            extra = ["--input-config", '{"data": [1, 3, 8, 8], "rois": [1, 5]}']
    elif case == "tarball escaping its folder":
        import io

        model = src / "model.tar.gz"
        with tarfile.open(model, "w:gz") as tar:
            info = tarfile.TarInfo("../../escaped.onnx")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = sorted(p.name for p in src.iterdir())
    proc = edgekiln(
        "compile",
        str(model),
        "--target",
        "x86_64",
        "-o",
        str(out_dir / "a.tar.gz"),
        *extra,
        env={"TMPDIR": str(scratch)},
    )
    assert_clean_failure(proc, 2, *needles)
    assert proc.stdout == ""  # nor anything a converter printed (torch dumps its graph from C++)
    assert list(out_dir.iterdir()) == []
    assert list(scratch.iterdir()) == []  # no work directory left behind
    assert sorted(p.name for p in src.iterdir()) == before
    assert not (tmp_path / "escaped.onnx").exists()
