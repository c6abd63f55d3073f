"""Framework detection, Neo input configs and model tarballs (frontends/__init__.py)."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from edgekiln.compile import frontends
from edgekiln.compile.frontends import detect_framework, model_stem, parse_input_config
from edgekiln.compile.frontends.onnx import positional
from edgekiln.errors import UserError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"data": [1, 3, 224, 224]}', {"data": [1, 3, 224, 224]}),
        ('{"a": [1, 3], "b": [1, 4]}', {"a": [1, 3], "b": [1, 4]}),
        ("[1, 3, 224, 224]", [1, 3, 224, 224]),
        ("[[1, 3, 224, 224], [1, 10]]", {"input0": [1, 3, 224, 224], "input1": [1, 10]}),
    ],
)
def test_input_config_forms(text, expected):
    assert parse_input_config(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{data: [1]}", "not JSON"),
        ('{"data": [1, 0, 3]}', "positive integers"),
        ('{"data": [1, 2.5]}', "positive integers"),
        ('{"data": "1,3"}', "positive integers"),
        ("{}", "names no inputs"),
        ("[]", "positive integers"),
        ('"x"', "JSON object"),
    ],
)
def test_bad_input_configs_are_user_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_input_config(text)


def test_shapes_given_as_a_list_go_to_named_inputs_in_order():
    assert positional({"input0": [1, 3]}, ["image"]) == {"image": [1, 3]}
    # Names that the model has are kept, as are lists that do not fit the input count.
    assert positional({"input0": [1, 3]}, ["input0"]) == {"input0": [1, 3]}
    assert positional({"input0": [1], "input1": [2]}, ["image"]) == {"input0": [1], "input1": [2]}


def _zip(path, names):
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(name, b"x")
    return path


def test_detection_from_names_and_first_bytes(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3rest")
    (tmp_path / "renamed.bin").write_bytes(b"\x1c\x00\x00\x00TFL3rest")
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF\r\n\x1a\nrest")
    (tmp_path / "net-symbol.json").write_text("{}")
    (tmp_path / "net-0000.params").write_bytes(b"\x12\x01")
    _zip(tmp_path / "ts.pt", ["ts/code/__torch__.py", "ts/data.pkl"])
    _zip(tmp_path / "prog.zip", ["prog/models/model.json"])
    assert detect_framework(tmp_path / "m.onnx") == "onnx"
    assert detect_framework(tmp_path / "m.tflite") == "tflite"
    assert detect_framework(tmp_path / "renamed.bin") == "tflite"
    assert detect_framework(tmp_path / "weights.h5") == "keras"
    assert detect_framework(tmp_path / "net-symbol.json") == "mxnet"
    assert detect_framework(tmp_path / "net-0000.params") == "mxnet"
    assert detect_framework(tmp_path / "ts.pt") == "pytorch"
    assert detect_framework(tmp_path / "prog.zip") == "pytorch"
    # A folder: an MXNet pair wins over the loose files, a SavedModel over everything.
    assert detect_framework(tmp_path) == "mxnet"
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert detect_framework(tmp_path) == "tensorflow"


def test_folder_with_several_model_files_is_ambiguous(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "b.tflite").write_bytes(b"")
    with pytest.raises(UserError, match="several model files"):
        detect_framework(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no model files"):
        detect_framework(tmp_path / "empty")


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("resnet18_v1-symbol.json", "resnet18_v1"),
        ("resnet18_v1-0012.params", "resnet18_v1"),
        ("model.tar.gz", "model"),
        ("mobilenet.tflite", "mobilenet"),
        ("net.pt2", "net"),
        ("cnn.keras", "cnn"),
    ],
)
def test_model_names_come_from_file_names(tmp_path, name, stem):
    assert model_stem(tmp_path / name) == stem


def test_tarball_cannot_write_outside_its_folder(tmp_path):
    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="cannot be unpacked"):
        frontends.import_model(tarball, tmp_path / "work")
    assert not (tmp_path / "escaped.txt").exists()


def test_tarball_with_a_link_out_is_refused(tmp_path):
    tarball = tmp_path / "link.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UserError, match="cannot be unpacked"):
        frontends.import_model(tarball, tmp_path / "work")


def test_unknown_framework_and_framework_for_a_zoo_model(tmp_path):
    with pytest.raises(UserError, match="unknown framework 'caffe'"):
        frontends.import_model("zoo:resnet18", tmp_path / "w", framework="caffe")
    with pytest.raises(UserError, match="built-in model"):
        frontends.import_model("zoo:resnet18", tmp_path / "w", framework="tflite")


def test_source_hash_of_a_folder_covers_names_and_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x-symbol.json").write_text("{}")
    (tmp_path / "a" / "x-0000.params").write_bytes(b"1")
    first = frontends.source_sha256(tmp_path / "a")
    (tmp_path / "a" / "x-0000.params").write_bytes(b"2")
    second = frontends.source_sha256(tmp_path / "a")
    (tmp_path / "a" / "x-0000.params").rename(tmp_path / "a" / "y-0000.params")
    (tmp_path / "a" / "y-0000.params").write_bytes(b"2")
    assert len({first, second, frontends.source_sha256(tmp_path / "a")}) == 3


def test_frontends_are_one_table_with_one_interface():
    assert frontends.FRAMEWORKS == ("mxnet", "tensorflow", "tflite", "keras", "pytorch", "onnx")
    assert [f.options.get("framework") for f in frontends.FRONTENDS if f.module == "tensorflow"] == [
        "tensorflow",
        "tflite",
        "keras",
    ]
    assert frontends.frontend("keras").suffixes == (".h5", ".hdf5", ".keras")
    with pytest.raises(UserError, match="unknown framework 'caffe'; choose one of mxnet, tensorflow"):
        frontends.frontend("caffe")


def test_the_chosen_frontend_imports_with_the_default_name(tmp_path, monkeypatch):
    calls = []

    def fake(self, path, workdir, *, input_shape, name, sha256):
        calls.append((self.name, path.name, input_shape, name, len(sha256)))
        raise UserError("stop here")

    monkeypatch.setattr(frontends.Frontend, "import_model", fake)
    (tmp_path / "net.pt").write_bytes(b"PK\x03\x04")
    (tmp_path / "r-symbol.json").write_text("{}")
    for path in ("net.pt", "r-symbol.json"):
        with pytest.raises(UserError, match="stop here"):
            frontends.import_model(tmp_path / path, tmp_path / "w", input_shape=[1, 3])
    # MXNet names the model after its PREFIX itself; the others get the file stem.
    assert calls == [("pytorch", "net.pt", [1, 3], "net", 64), ("mxnet", "r-symbol.json", [1, 3], None, 64)]


@pytest.mark.parametrize(
    ("spec", "names", "expected"),
    [
        (None, ["x"], {}),
        ([1, 3], ["x"], {"x": [1, 3]}),
        ({"x": (1, 3)}, ["x", "y"], {"x": [1, 3]}),
        ({"input0": [1], "input1": [2]}, ["a", "b"], {"a": [1], "b": [2]}),  # Neo's list form, in order
    ],
)
def test_one_function_reads_the_users_input_shapes(spec, names, expected):
    from edgekiln.compile.frontends.onnx import requested_shapes

    assert requested_shapes(spec, names) == expected


@pytest.mark.parametrize(
    ("spec", "names", "message"),
    [
        ({"z": [1]}, ["x"], r"the input shapes name unknown inputs \['z'\]; the TFLite model's inputs are \['x'\]"),
        ([1, 3], ["x", "y"], "the TFLite model has 2 inputs"),
        ([1, 0], ["x"], "must be positive integers, got \\[1, 0\\]"),
        ({"x": "abc"}, ["x"], "must be positive integers"),
    ],
)
def test_input_shape_mistakes_are_user_errors(spec, names, message):
    from edgekiln.compile.frontends.onnx import requested_shapes

    with pytest.raises(UserError, match=message):
        requested_shapes(spec, names, "TFLite model")


def test_command_line_shapes_come_from_one_place():
    assert frontends.parse_input_shapes(None, ["1,3,4,4"]) == [1, 3, 4, 4]
    assert frontends.parse_input_shapes(None, ["a:1,3", "b:1x4"]) == {"a": [1, 3], "b": [1, 4]}
    assert frontends.parse_input_shapes('{"a": [1, 2]}', None) == {"a": [1, 2]}
    assert frontends.parse_input_shapes(None, None) is None
    with pytest.raises(UserError, match="either with --input-config or with --input-shape"):
        frontends.parse_input_shapes('{"a": [1]}', ["1"])
    with pytest.raises(UserError, match="either once without a name"):
        frontends.parse_input_shapes(None, ["1,2", "a:1"])
