"""LiteRT artifacts of every zoo model for x86-64: fp32 within 1e-4 of ONNX Runtime run the
way a device runs them, and full-integer int8 built from a small calibration set, agreeing
with fp32 on top-1."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import as_file

import ai_edge_litert  # noqa: F401 - an installed extra: missing must fail, not skip
import numpy as np
import pytest
import tflite  # noqa: F401 - an installed extra: missing must fail, not skip

from edgekiln import zoo  # noqa: E402
from edgekiln.compile.api import CompileOptions, compile_model  # noqa: E402
from edgekiln.runtime.compat import host_info  # noqa: E402

pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="x86-64 artifacts run only on an x86-64 host")

LITERT = CompileOptions(backend="litert")
# Runs an artifact as a device does, and reports which heavy modules got imported.
DEVICE_SCRIPT = """
import json, sys
import numpy as np
import edgekiln
model = edgekiln.load(sys.argv[1])
with np.load(sys.argv[2]) as data:
    outs = [model.run({"input": data[k]})[0] for k in sorted(data.files)]
np.save(sys.argv[3], np.stack(outs))
heavy = sorted(m for m in ("tvm", "onnx", "onnxruntime", "torch", "tensorflow", "edgekiln.compile") if m in sys.modules)
print(json.dumps({"heavy": heavy, "litert": "ai_edge_litert" in sys.modules, "outputs": model.get_output_names()}))
"""


@pytest.fixture(scope="module")
def fixed_inputs() -> list[np.ndarray]:
    """The sample image, two seeded noise pictures and two random normal tensors."""
    from edgekiln.runtime.preprocess import preprocess

    spec = zoo.preprocessing("mobilenet_v2")
    rng = np.random.default_rng(2024)
    with as_file(zoo.sample_image_path()) as path:
        inputs = [preprocess(path, spec, (1, 3, 224, 224))]
    inputs += [
        preprocess(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8), spec, (1, 3, 224, 224)) for _ in range(2)
    ]
    inputs += [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(2)]
    return inputs


def smooth_noise_pictures(seed: int, count: int) -> list:
    """Seeded pictures of random colors upsampled: smoother, more photo-like than white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 256), Image.BILINEAR)
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    """A small calibration set: the zoo's sample picture and seeded random pictures."""
    import shutil

    folder = tmp_path_factory.mktemp("calibration")
    with as_file(zoo.sample_image_path()) as path:
        shutil.copyfile(path, folder / "sample.png")
    for i, picture in enumerate(smooth_noise_pictures(7, 7)):
        picture.save(folder / f"random_{i}.png")
    return folder


@pytest.fixture(scope="module")
def held_out_pictures() -> list[np.ndarray]:
    """Inputs like the calibration set but not in it: the sample picture mirrored, and
    pictures from another seed."""
    from PIL import Image, ImageOps

    from edgekiln.runtime.preprocess import preprocess

    spec = zoo.preprocessing("mobilenet_v2")
    with as_file(zoo.sample_image_path()) as path, Image.open(path) as sample:
        pictures = [ImageOps.mirror(sample.convert("RGB"))]
    pictures += smooth_noise_pictures(99, 9)
    return [preprocess(p, spec, (1, 3, 224, 224)) for p in pictures]


@pytest.fixture(scope="module")
def fp32_artifacts(tmp_path_factory):
    cache: dict[str, object] = {}
    root = tmp_path_factory.mktemp("litert")

    def build(name: str):
        if name not in cache:
            cache[name] = compile_model(f"zoo:{name}", "x86_64", root / f"{name}.tar.gz", options=LITERT)
        return cache[name]

    return build


def run_on_device(artifact, inputs, tmp_path):
    np.savez(tmp_path / "in.npz", **{f"{i:02d}": x for i, x in enumerate(inputs)})
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, str(artifact), str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return np.load(tmp_path / "out.npy"), json.loads(proc.stdout.strip().splitlines()[-1])


def delegate_partitions(artifact) -> int:
    """How many XNNPACK partitions LiteRT cuts the model into (1 = fully delegated)."""
    from edgekiln.runtime import Model

    model = Model(artifact.path)
    details = model._executor._interpreter._get_ops_details()
    return sum(1 for op in details if op["op_name"] == "DELEGATE")


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_fp32_matches_onnxruntime_on_the_device_path(name, fp32_artifacts, fixed_inputs, tmp_path):
    import onnxruntime as ort

    artifact = fp32_artifacts(name)
    m = artifact.manifest
    # compile_model's own validation ran at the default 1e-4: XNNPACK's fp32 kernels only
    # reorder sums, so no looser tolerance is needed.
    assert m.validation.status == "passed" and m.validation.tolerance_abs == 1e-4
    assert m.validation.max_abs_diff <= 1e-4 and m.validation.top1_agreement == 1.0

    session = ort.InferenceSession(zoo.build(name).SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.stack([session.run(None, {"input": x})[0] for x in fixed_inputs])
    got, info = run_on_device(artifact.path, fixed_inputs, tmp_path)
    diff = float(np.max(np.abs(got - expected)))
    print(f"\n{name} fp32: max abs diff vs onnxruntime {diff:.2e}")
    assert got.shape == expected.shape == (len(fixed_inputs), 1, 1000)
    assert diff <= 1e-4
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    assert info["heavy"] == [] and info["litert"] and info["outputs"] == ["logits"]
    assert delegate_partitions(artifact) == 1


def test_fp32_manifest_records_what_the_device_needs(fp32_artifacts):
    artifact = fp32_artifacts("mobilenet_v2")
    m = artifact.manifest
    assert m.backend == "litert" and m.profile == "generic/x86-64-avx2"
    assert {f.path: f.role for f in m.files} == {"model.tflite": "model", "labels.txt": "labels"}
    assert m.runtime.python_packages[0].startswith("ai-edge-litert==") and m.runtime.library is None
    assert m.runtime.glibc == "2.27" and m.runtime.arch == "x86_64"
    opts = m.backend_options
    assert opts["precision"] == "float32" and opts["input_layouts"] == ["NHWC"] and opts["output_layouts"] == ["same"]
    assert opts["num_threads"] == 4 and opts["target"]["delegate"] == "xnnpack"
    assert set(opts["operators"]) == {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "ADD",
        "PAD",
        "MEAN",
        "RESHAPE",
        "FULLY_CONNECTED",
    }
    assert [t.shape for t in m.inputs] == [(1, 3, 224, 224)]  # the source's NCHW spec


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_int8_agrees_with_fp32(name, fp32_artifacts, calibration_dir, held_out_pictures, tmp_path):
    from edgekiln.runtime import Model

    options = CompileOptions(
        backend="litert",
        backend_options={"quantize": "int8", "calibration": str(calibration_dir)},
        # int8 cannot meet the fp32 tolerance; agreement is checked below.
        validate=False,
    )
    artifact = compile_model(f"zoo:{name}", "x86_64", tmp_path / f"{name}-int8.tar.gz", options=options)
    fp32 = fp32_artifacts(name)
    q = artifact.manifest.backend_options["quantization"]
    assert artifact.manifest.backend_options["precision"] == "int8"
    assert q["calibration_samples"] == 8 and q["calibration_method"] == "minmax"
    assert artifact.manifest.inputs == fp32.manifest.inputs  # same Model API as fp32
    assert artifact.size < 0.4 * fp32.size

    a, b = Model(fp32.path), Model(artifact.path)
    ref = np.stack([a.run([x])[0] for x in held_out_pictures])
    got = np.stack([b.run([x])[0] for x in held_out_pictures])
    assert got.dtype == np.float32 and got.shape == ref.shape
    agreement = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    # Random weights give flat logits: where the two disagree, int8's choice is a near-tie in
    # fp32 (its fp32 logit within a small fraction of the logits' spread of the winner).
    gaps = [float((r.max() - r.ravel()[g.argmax()]) / r.std()) for r, g in zip(ref, got)]
    corr = min(float(np.corrcoef(r.ravel(), g.ravel())[0, 1]) for r, g in zip(ref, got))
    print(
        f"\n{name} int8: top-1 agreement with fp32 {agreement:.2f} on {len(held_out_pictures)} inputs, "
        f"min logit correlation {corr:.4f}, largest fp32 gap of int8's choice {max(gaps):.3f} std, "
        f"{artifact.size / 1e6:.1f} MB vs {fp32.size / 1e6:.1f} MB"
    )
    assert agreement >= 0.7 and corr > 0.99 and max(gaps) < 0.25
    with as_file(zoo.sample_image_path()) as path:
        top = b.predict(path, top_k=1)[0]
    assert top["label"] == zoo.imagenet_labels()[top["index"]] and 0 < top["probability"] <= 1
    assert delegate_partitions(artifact) == 1


def test_int8_calibration_arrays_with_the_wrong_shape_are_a_user_error(tmp_path):
    from edgekiln.errors import UserError

    np.save(tmp_path / "cal.npy", np.zeros((4, 3, 32, 32), np.float32))
    options = CompileOptions(
        backend="litert", backend_options={"quantize": "int8", "calibration": str(tmp_path / "cal.npy")}, validate=False
    )
    with pytest.raises(UserError, match=r"cal\.npy.*shape"):
        compile_model("zoo:mobilenet_v3_small", "x86_64", tmp_path / "x.tar.gz", options=options)
    assert not (tmp_path / "x.tar.gz").exists()


def test_int8_from_npy_calibration_arrays(tmp_path):
    from edgekiln.runtime import Model

    rng = np.random.default_rng(3)
    np.save(tmp_path / "cal.npy", rng.standard_normal((4, 3, 224, 224)).astype(np.float32))
    options = CompileOptions(
        backend="litert",
        backend_options={"quantize": "int8", "calibration": str(tmp_path / "cal.npy"), "calibration_samples": 3},
        validate=False,
    )
    artifact = compile_model("zoo:mobilenet_v3_small", "x86_64", tmp_path / "x.tar.gz", options=options)
    assert artifact.manifest.backend_options["quantization"]["calibration_samples"] == 3
    out = Model(artifact.path).run([rng.standard_normal((1, 3, 224, 224)).astype(np.float32)])[0]
    assert out.shape == (1, 1000) and np.isfinite(out).all()
