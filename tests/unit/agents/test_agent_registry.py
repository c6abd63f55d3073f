"""The model registry: a worker process per model, the allow-list, and the saved list under
concurrent load and unload."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from edgekiln.agents.model_worker import ModelProcess, read_frame, write_frame
from edgekiln.agents.registry import ModelLoadError, ModelRegistry

FACTORY = "tests.unit.agents.fakes:load_fake"


@pytest.fixture
def models(short_dir):
    root = short_dir / "models"
    root.mkdir()
    for name in ("m.tar.gz", "m-rasp4b.tar.gz"):
        (root / name).write_bytes(b"stand-in")
    return root


def workers(short_dir, models, **kw) -> ModelRegistry:
    return ModelRegistry(models, short_dir / "models.json", work_dir=short_dir / "work", factory=FACTORY, **kw)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone for our purposes
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_each_model_runs_in_a_worker_that_unload_ends(short_dir, models):
    registry = workers(short_dir, models)
    entry = registry.load("m1", "m.tar.gz")
    pid = entry.model.pid
    assert pid != os.getpid() and _alive(pid)
    assert entry.version == "7" and [t.name for t in entry.model.manifest.inputs] == ["x"]
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    (y,) = registry.predict(entry, [x])
    assert np.array_equal(y, x * 2) and y.dtype == np.float32
    assert len(list((short_dir / "work").iterdir())) == 1  # the worker's own directory
    registry.unload("m1")
    assert not _alive(pid)
    assert list((short_dir / "work").iterdir()) == []  # what it extracted went with it


def test_worker_load_errors_and_crashes_are_statuses(short_dir, models):
    registry = workers(short_dir, models)
    with pytest.raises(ModelLoadError) as info:
        registry.load("pi", "m-rasp4b.tar.gz")
    assert info.value.code == "FAILED_PRECONDITION" and "aarch64" in info.value.message
    entry = registry.load("m1", "m.tar.gz")
    with pytest.raises(RuntimeError, match="kernel failure"):
        registry.predict(entry, [np.full((1, 4), -999.0, np.float32)])
    (y,) = registry.predict(entry, [np.ones((1, 4), np.float32)])  # the worker lives on
    with pytest.raises(RuntimeError, match="died"):
        registry.predict(entry, [np.full((1, 4), -777.0, np.float32)])
    assert entry.metrics.snapshot()["error_count"] == 2
    registry.unload("m1")  # a dead worker unloads cleanly
    assert registry.list() == []


def test_frames_carry_arrays_exactly(tmp_path):
    arrays = [np.arange(12, dtype=np.int64).reshape(3, 4), np.zeros((0, 2), np.float16), np.float32(3.5)]
    with open(tmp_path / "f", "wb") as fh:
        write_frame(fh, {"op": "run"}, arrays)
    with open(tmp_path / "f", "rb") as fh:
        header, back = read_frame(fh)
        assert read_frame(fh) is None
    assert header["op"] == "run"
    assert all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b) for a, b in zip(arrays, back))


@pytest.mark.parametrize("url", ["/etc/passwd", "../outside.tar.gz", "link.tar.gz", "m.tar.gz\0x"])
def test_load_model_only_from_the_model_directories(short_dir, models, url):
    (short_dir / "outside.tar.gz").write_bytes(b"stand-in")
    (models / "link.tar.gz").symlink_to(short_dir / "outside.tar.gz")
    registry = ModelRegistry(models, None, loader=lambda path: pytest.fail(f"loaded {path}"))
    with pytest.raises(ModelLoadError) as info:
        registry.load("m1", url)
    assert info.value.code == "INVALID_ARGUMENT" and "\n" not in info.value.message


def test_more_model_directories_can_be_allowed(short_dir, models, fake_loader):
    extra = short_dir / "extra"
    extra.mkdir()
    (extra / "e.tar.gz").write_bytes(b"stand-in")
    registry = ModelRegistry(models, None, loader=fake_loader, model_dirs=(models, extra))
    assert registry.load("e", str(extra / "e.tar.gz")).url == str(extra / "e.tar.gz")
    assert registry.load("m", "m.tar.gz").name == "m"


def test_concurrent_load_and_unload_keep_the_saved_list_consistent(short_dir, models, fake_loader):
    registry = ModelRegistry(models, short_dir / "models.json", max_models=64, loader=fake_loader)
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            for i in range(25):
                registry.load(f"w{worker}-{i}", "m.tar.gz")
                if i % 5:
                    registry.unload(f"w{worker}-{i}")
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    saved = json.loads((short_dir / "models.json").read_text())["models"]
    assert (
        sorted(m["name"] for m in saved)
        == sorted(m.name for m in registry.list())
        == sorted(f"w{w}-{i}" for w in range(8) for i in range(0, 25, 5))
    )
    assert [p.name for p in short_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_a_worker_ends_when_its_agent_is_gone(short_dir, models):
    process = ModelProcess(str(models / "m.tar.gz"), short_dir / "work" / "w", factory=FACTORY)
    pid = process.pid
    process._proc.stdin.close()  # what the kernel does to the pipe when the agent is killed
    process._proc.wait(10)
    assert not _alive(pid)
    process.close()


def test_arrays_from_a_frame_are_writable(tmp_path):
    with open(tmp_path / "f", "wb") as fh:
        write_frame(fh, {}, [np.ones(3, np.float32)])
    with open(tmp_path / "f", "rb") as fh:
        _, (array,) = read_frame(fh)
    array[0] = 5  # DLPack refuses to export read-only buffers to the TVM runtime
    assert array.tolist() == [5, 1, 1]
