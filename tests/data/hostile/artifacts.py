"""Hostile artifacts, built in code (a few kB each; the big ones claim their sizes in
headers instead of holding the bytes)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def manifest(listed: dict[str, bytes], /, **fields) -> dict:
    """A valid manifest dict listing ``listed`` (name -> bytes), with ``fields`` overriding."""
    data = {
        "schema_version": 1,
        "model": {"name": "m", "version": "1", "source_format": "onnx", "source_sha256": "0" * 64},
        "profile": "generic/x86-64-avx2",
        "backend": "onnxruntime",
        "backend_options": {},
        "target_triple": "x86_64-linux-gnu",
        "edgekiln_version": "0",
        "compiler": {},
        "runtime": {"arch": "x86_64"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, 4, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2]}],
        "files": [
            {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "role": "weights"}
            for name, data in listed.items()
        ],
        "validation": {"status": "skipped", "reason": "test"},
    }
    data.update(fields)
    return data


def archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .tar.gz of exactly these members, in this order (no checks of any kind)."""
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def manifest_member(data: dict | bytes) -> tuple[tarfile.TarInfo, bytes]:
    return regular("manifest.json", data if isinstance(data, bytes) else json.dumps(data).encode())


def plain(path: Path, files: dict[str, bytes], **fields) -> Path:
    """An artifact as edgekiln writes it, with ``fields`` changed in its manifest."""
    return archive(path, [manifest_member(manifest(files, **fields))] + [regular(n, d) for n, d in files.items()])


def sparse_member(path: Path, realsize: int = 4 << 30) -> Path:
    """A PAX 1.0 sparse member that unpacks to ``realsize`` bytes (4 GiB) from one block."""
    sparse_map = b"1\n0\n0\n"
    info = tarfile.TarInfo("GNUSparseFile.0/model.so")
    info.size = len(sparse_map)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "model.so",
        "GNU.sparse.realsize": str(realsize),
    }
    listed = manifest({"model.so": b""})
    listed["files"][0]["size"] = realsize
    return archive(path, [manifest_member(listed), (info, sparse_map)])


def claimed_member(path: Path, size: int = 2 << 30) -> Path:
    """A manifest that lists a 2 GiB member, whose header claims it and whose data never comes."""
    listed = manifest({"model.so": b""})
    listed["files"][0]["size"] = size
    info = tarfile.TarInfo("model.so")
    info.size = size
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        tar = tarfile.TarFile(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT)
        tar.addfile(*manifest_member(listed)[:1], io.BytesIO(manifest_member(listed)[1]))
        gz.write(info.tobuf(tarfile.PAX_FORMAT))
        gz.write(b"\0" * 4096)
    path.write_bytes(raw.getvalue())
    return path


def huge_pax_header(path: Path, size: int = 8 << 20) -> Path:
    """The first member carries an 8 MiB PAX record, which tarfile reads whole into memory."""
    info, data = manifest_member(manifest({}))
    info.pax_headers = {"comment": "x" * size}
    return archive(path, [(info, data)])


def deep_json(depth: int = 100_000) -> bytes:
    return b"[" * depth + b"]" * depth


def long_integer(digits: int = 100_000) -> bytes:
    text = json.dumps(manifest({}))
    return text.replace('"schema_version": 1', '"schema_version": ' + "9" * digits).encode()


def neo_claimed(path: Path, size: int = 3 << 30) -> Path:
    """A model tarball whose one member claims 3 GiB (the data never comes)."""
    info = tarfile.TarInfo("model.onnx")
    info.size = size
    with gzip.open(path, "wb") as gz:
        gz.write(info.tobuf(tarfile.PAX_FORMAT))
        gz.write(b"\0" * 4096)
    return path


def neo_many(path: Path, count: int = 10_001) -> Path:
    """A model tarball of ``count`` empty members."""
    return archive(path, [regular(f"f{i}", b"") for i in range(count)])


def neo_sparse(path: Path) -> Path:
    info = tarfile.TarInfo("GNUSparseFile.0/model.onnx")
    info.size = 6
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "model.onnx",
        "GNU.sparse.realsize": str(4 << 30),
    }
    return archive(path, [(info, b"1\n0\n0\n")])
