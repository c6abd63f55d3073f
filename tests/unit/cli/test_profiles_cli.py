"""``edgekiln profiles list|show`` through the real entry point, edgekiln.cli.main.main."""

from __future__ import annotations

import importlib.util
import json

import pytest

from edgekiln.cli import main as cli_main
from edgekiln.device_profiles import get_profile, list_profiles


@pytest.fixture(autouse=True)
def only_present_commands(monkeypatch):
    # main.build_parser imports every subcommand module; ones still being written by other
    # work would break these tests for reasons that are not theirs, so register only
    # those that exist (always including profiles).
    present = tuple(
        name
        for name in cli_main.COMMANDS
        if importlib.util.find_spec(f"edgekiln.cli.{name.replace('-', '_')}") is not None
    )
    assert "profiles" in present
    monkeypatch.setattr(cli_main, "COMMANDS", present)


def run(capsys, *argv):
    code = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_table(capsys):
    code, out, err = run(capsys, "profiles", "list")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ALIASES", "ARCH", "ACCELERATOR", "BACKENDS"]
    assert len(lines) == 1 + len(list_profiles())
    rows = {line.split()[0]: line for line in lines[1:]}
    assert [line.split()[0] for line in lines[1:]] == sorted(rows)
    rasp3b = rows["raspberry-pi/3b-armv7l"]
    assert "rasp3b" in rasp3b and "armv7l" in rasp3b and "tvm, litert" in rasp3b and "onnxruntime" not in rasp3b
    orin = rows["nvidia/jetson-agx-orin-64gb"]
    assert "jetson_orin, jetson_agx_orin" in orin and "cuda sm_87" in orin
    # Columns line up: every row's arch starts where the header's ARCH does.
    column = lines[0].index("ARCH")
    assert rasp3b[column:].startswith("armv7l")


def test_list_json(capsys):
    code, out, _ = run(capsys, "profiles", "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert [entry["id"] for entry in data] == [p.id for p in list_profiles()]
    h200 = next(entry for entry in data if entry["id"] == "nvidia/h200-sxm")
    assert h200["accelerator"]["cuda_arch"] == "sm_90"
    assert h200["accelerator"]["memory_bandwidth_gbs"] == 4800.0
    assert h200["llvm_target"] == get_profile("h200").llvm_target()


def test_show_text_by_alias(capsys):
    code, out, err = run(capsys, "profiles", "show", "rasp4b")
    assert code == 0 and err == ""
    assert out.splitlines()[0] == "raspberry-pi/4b-aarch64"
    assert "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon" in out
    assert "aarch64-linux-gnu-g++ (Debian package g++-aarch64-linux-gnu)" in out
    assert "qemu-aarch64 -cpu cortex-a72" in out
    assert "48 GFLOP/s" in out and "12.8 GB/s" in out


def test_show_text_with_accelerator(capsys):
    code, out, _ = run(capsys, "profiles", "show", "JETSON_NANO")
    assert code == 0
    assert "(cuda sm_53)" in out
    assert "235.9 GFLOP/s" in out


def test_show_lists_cpu_variants_where_there_are_some(capsys):
    code, out, _ = run(capsys, "profiles", "show", "x86_64")
    assert code == 0 and "variants          aws/c5 (tvm: a build for each beside this one)" in out
    code, out, _ = run(capsys, "profiles", "show", "x86_64", "--json")
    assert json.loads(out)["cpu"]["variants"] == ["aws/c5"]
    code, out, _ = run(capsys, "profiles", "show", "rasp4b")
    assert code == 0 and "variants" not in out


def test_show_json(capsys):
    code, out, _ = run(capsys, "profiles", "show", "ml_g4dn", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["id"] == "aws/g4dn"
    assert data["accelerator"]["cuda_arch"] == "sm_75"
    assert data["accelerator"]["peak_gflops_fp32"] == 8100.0
    assert data["toolchain"] == {"cc": None, "debian_package": None}
    assert data["emulation"] is None


def test_show_user_file(capsys, tmp_path):
    text = (
        'id = "acme/one"\nname = "Acme One"\nbackends = ["tvm"]\n'
        '[cpu]\narch = "x86_64"\ntriple = "x86_64-linux-gnu"\nllvm_triple = "x86_64-linux-gnu"\n'
        'mcpu = "haswell"\ncores = 2\npeak_gflops_fp32 = 1\nmemory_bandwidth_gbs = 1\nsource = "x"\n'
        '[python]\nplatform_tags = ["linux_x86_64"]\n'
    )
    path = tmp_path / "one.toml"
    path.write_text(text)
    code, out, _ = run(capsys, "profiles", "show", str(path), "--json")
    assert code == 0 and json.loads(out)["id"] == "acme/one"

    path.write_text(text.replace("cores = 2", "cores = 2\nthreads = 4"))
    code, out, err = run(capsys, "profiles", "show", str(path))
    assert code == 2 and out == ""
    assert "unknown key 'cpu.threads'" in err and str(path) in err


def test_show_unknown_name_is_a_one_line_error(capsys):
    code, out, err = run(capsys, "profiles", "show", "rasp4")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("edgekiln profiles: error: unknown device profile 'rasp4'")
    assert "rasp4b" in err and "edgekiln profiles list" in err


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main.main(["profiles"])
    assert info.value.code == 2
    assert "list" in capsys.readouterr().err
