"""Signed packages: keys, build, verify, and every altered package the device must refuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgekiln.artifact.package import sha256_file
from edgekiln.artifact.signing import (
    ARTIFACT_MEMBER,
    MANIFEST_MEMBER,
    SIGNATURE_MEMBER,
    PackageManifest,
    build_package,
    extract_artifact,
    generate_keypair,
    load_public_key,
    read_package_manifest,
    verify_package,
)
from edgekiln.cli.main import main
from edgekiln.errors import IntegrityError, UserError
from tests.signed_packages import flip, retar, tiny_artifact
from tests.signed_packages import members as read_members


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return {name: generate_keypair(root, name) for name in ("release", "rotated", "stranger")}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifact")
    return tiny_artifact(root, bytes(range(256)) * 40)


@pytest.fixture
def package(tmp_path, keys, artifact):
    out = tmp_path / "tiny-3.pkg"
    build_package(artifact, keys["release"][0], "tiny", 3, out, latency_budget_ms=5.0)
    return out


def _retar(path: Path, items: list[tuple[str, bytes]]) -> Path:
    return retar(path.with_name("altered.pkg"), items)


def test_keys_are_ed25519_pem_with_private_mode_0600(keys):
    private, public = keys["release"]
    assert private.name == "release.key" and public.name == "release.pub"
    assert os.stat(private).st_mode & 0o777 == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key_id, _ = load_public_key(public)
    assert len(key_id) == 16 and int(key_id, 16) >= 0
    with pytest.raises(UserError, match="exists already"):
        generate_keypair(private.parent, "release")


def test_package_round_trip_records_handle_version_profile_and_key(package, keys, artifact, tmp_path):
    manifest = verify_package(package, [keys["release"][1]])
    assert (manifest.handle, manifest.version, manifest.profile, manifest.backend) == (
        "tiny",
        3,
        "generic/x86-64-avx2",
        "onnxruntime",
    )
    assert manifest.key_id == load_public_key(keys["release"][1])[0]
    assert manifest.latency_budget_ms == 5.0 and manifest.expires_at is None
    assert manifest.members[0].path == ARTIFACT_MEMBER
    assert manifest.artifact.sha256 == sha256_file(artifact) and manifest.artifact.size == artifact.stat().st_size
    assert read_package_manifest(package) == manifest
    assert list(read_members(package)) == [MANIFEST_MEMBER, SIGNATURE_MEMBER, ARTIFACT_MEMBER]
    out = tmp_path / "a.tar.gz"
    extract_artifact(package, [keys["release"][1]], out)
    assert out.read_bytes() == artifact.read_bytes()


def test_rotation_any_trusted_key_verifies(keys, artifact, tmp_path):
    old, new = tmp_path / "old.pkg", tmp_path / "new.pkg"
    build_package(artifact, keys["release"][0], "tiny", 1, old)
    build_package(artifact, keys["rotated"][0], "tiny", 2, new)
    trusted = [keys["release"][1], keys["rotated"][1]]
    assert verify_package(old, trusted).version == 1
    assert verify_package(new, trusted).version == 2
    assert verify_package(new, [keys["rotated"][1]]).key_id != verify_package(old, trusted).key_id


@pytest.mark.parametrize("bit", [0, 3, 7])
@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_one_bit_flip_in_the_artifact_is_refused(package, keys, where, bit):
    offset, data = read_members(package)[ARTIFACT_MEMBER]
    flip(package, offset + int(len(data) * where), bit)
    with pytest.raises(IntegrityError, match="sha256|damaged"):
        verify_package(package, [keys["release"][1]])


@pytest.mark.parametrize("where", [0.0, 0.3, 0.6, 0.999])
def test_one_bit_flip_in_the_manifest_is_refused(package, keys, where):
    offset, data = read_members(package)[MANIFEST_MEMBER]
    flip(package, offset + int(len(data) * where), 1)
    with pytest.raises(IntegrityError, match="signature does not verify"):
        verify_package(package, [keys["release"][1]])


def test_one_bit_flip_in_the_signature_is_refused(package, keys):
    offset, data = read_members(package)[SIGNATURE_MEMBER]
    # One hex digit of the signature value changed: still well-formed, no longer valid.
    index = data.index(b'"signature":"') + len('"signature":"') + 10
    altered = data[:index] + (b"1" if data[index : index + 1] != b"1" else b"2") + data[index + 1 :]
    members = read_members(package)
    out = _retar(
        package,
        [
            (MANIFEST_MEMBER, members[MANIFEST_MEMBER][1]),
            (SIGNATURE_MEMBER, altered),
            (ARTIFACT_MEMBER, members[ARTIFACT_MEMBER][1]),
        ],
    )
    with pytest.raises(IntegrityError, match="signature does not verify"):
        verify_package(out, [keys["release"][1]])
    # And a raw bit flip in the member's bytes on disk.
    flip(package, offset + index, 0)
    with pytest.raises(IntegrityError):
        verify_package(package, [keys["release"][1]])


def test_unknown_key_is_refused(package, keys):
    with pytest.raises(IntegrityError, match="not trusted here"):
        verify_package(package, [keys["stranger"][1], keys["rotated"][1]])


def test_missing_signature_is_refused(package, keys):
    members = read_members(package)
    out = _retar(
        package, [(MANIFEST_MEMBER, members[MANIFEST_MEMBER][1]), (ARTIFACT_MEMBER, members[ARTIFACT_MEMBER][1])]
    )
    with pytest.raises(IntegrityError, match="not signed"):
        verify_package(out, [keys["release"][1]])
    assert read_package_manifest(out).version == 3  # the fleet can still file it; devices refuse it


def test_member_not_listed_is_refused(package, keys):
    members = read_members(package)
    out = _retar(package, [(n, d) for n, (_, d) in members.items()] + [("extra.sh", b"#!/bin/sh\n")])
    with pytest.raises(IntegrityError, match="'extra.sh' is not listed"):
        verify_package(out, [keys["release"][1]])


def test_changed_size_is_refused(package, keys):
    members = read_members(package)
    grown = members[ARTIFACT_MEMBER][1] + b"\0" * 10
    out = _retar(
        package,
        [
            (MANIFEST_MEMBER, members[MANIFEST_MEMBER][1]),
            (SIGNATURE_MEMBER, members[SIGNATURE_MEMBER][1]),
            (ARTIFACT_MEMBER, grown),
        ],
    )
    with pytest.raises(IntegrityError, match="bytes; the manifest says"):
        verify_package(out, [keys["release"][1]])


def test_missing_member_is_refused(package, keys):
    members = read_members(package)
    out = _retar(
        package, [(MANIFEST_MEMBER, members[MANIFEST_MEMBER][1]), (SIGNATURE_MEMBER, members[SIGNATURE_MEMBER][1])]
    )
    with pytest.raises(IntegrityError, match="lacks members"):
        verify_package(out, [keys["release"][1]])


def test_expired_package_is_refused(keys, artifact, tmp_path):
    out = tmp_path / "exp.pkg"
    manifest = build_package(artifact, keys["release"][0], "tiny", 1, out, expires_at=1_000_000.0)
    assert manifest.expires_at == 1_000_000.0
    assert verify_package(out, [keys["release"][1]], now=999_999.0).version == 1
    with pytest.raises(IntegrityError, match="expired at 1970-01-12"):
        verify_package(out, [keys["release"][1]], now=1_000_000.0)


def test_validly_signed_but_not_canonical_manifest_is_refused(package, keys):
    from edgekiln.artifact.signing import canonical_json, load_private_key

    members = read_members(package)
    body = json.dumps(json.loads(members[MANIFEST_MEMBER][1]), indent=1).encode()
    key = load_private_key(keys["release"][0])
    sig = canonical_json(
        {"algorithm": "ed25519", "key_id": load_public_key(keys["release"][1])[0], "signature": key.sign(body).hex()}
    )
    out = _retar(
        package, [(MANIFEST_MEMBER, body), (SIGNATURE_MEMBER, sig), (ARTIFACT_MEMBER, members[ARTIFACT_MEMBER][1])]
    )
    with pytest.raises(IntegrityError, match="canonical"):
        verify_package(out, [keys["release"][1]])


@pytest.mark.parametrize(
    "members",
    [
        [("../package.json", b"{}")],
        [(MANIFEST_MEMBER, b"x" * (65 << 10))],
        [(MANIFEST_MEMBER, b"[1,2]")],
        [(MANIFEST_MEMBER, b'{"format":"edgekiln-package","schema_version":1}')],
        [("artifact.tar.gz", b"x")],
    ],
)
def test_read_package_manifest_refuses_malformed_input(tmp_path, members):
    out = _retar(tmp_path / "x.pkg", members)
    with pytest.raises(IntegrityError):
        read_package_manifest(out)


def test_manifest_over_bounds_are_refused():
    base = {
        "format": "edgekiln-package",
        "schema_version": 1,
        "handle": "tiny",
        "version": 1,
        "profile": "p",
        "backend": "b",
        "key_id": "0" * 16,
        "members": [{"path": ARTIFACT_MEMBER, "size": 1, "sha256": "0" * 64}],
    }
    from edgekiln.artifact.signing import canonical_json

    assert PackageManifest.from_bytes(canonical_json(base)).version == 1
    for change in (
        {"version": 0},
        {"version": True},
        {"handle": "a/b"},
        {"members": []},
        {"members": [{"path": "/etc/x", "size": 1, "sha256": "0" * 64}]},
        {"expires_at": float("nan")},
    ):
        with pytest.raises(IntegrityError):
            PackageManifest.from_bytes(json.dumps({**base, **change}, sort_keys=True, separators=(",", ":")).encode())


def test_cli_generate_package_verify(tmp_path, artifact, capsys):
    assert main(["keys", "generate", "--name", "ci", "--out-dir", str(tmp_path), "--json"]) == 0
    key_id = json.loads(capsys.readouterr().out)["key_id"]
    pkg = tmp_path / "tiny.pkg"
    args = ["package", str(artifact), "--key", str(tmp_path / "ci.key"), "--model-handle", "tiny"]
    assert main([*args, "--model-version", "4", "-o", str(pkg), "--expires-in", "2d"]) == 0
    assert "tiny v4" in capsys.readouterr().out
    assert main(["verify", str(pkg), "--trusted-key", str(tmp_path / "ci.pub"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] and out["manifest"]["key_id"] == key_id and out["manifest"]["version"] == 4
    flip(pkg, read_members(pkg)[ARTIFACT_MEMBER][0] + 100)
    assert main(["verify", str(pkg), "--trusted-key", str(tmp_path / "ci.pub")]) == IntegrityError.exit_code
    assert "sha256" in capsys.readouterr().err
    assert main([*args, "--model-version", "0", "-o", str(pkg)]) == UserError.exit_code
    assert main([*args, "--model-version", "1", "-o", str(pkg), "--expires-in", "soon"]) == UserError.exit_code


def test_recorded_outputs_are_signed_and_extracted(keys, artifact, tmp_path):
    import numpy as np

    from edgekiln.artifact.signing import HEALTH_MEMBER

    values = np.arange(8, dtype=np.float32).reshape(1, 8)
    meta = {"seed": 4, "tolerance_abs": 0.001, "outputs": [[{"dtype": "float32", "shape": [1, 8]}]]}
    out = tmp_path / "h.pkg"
    manifest = build_package(artifact, keys["release"][0], "tiny", 2, out, health=(meta, values.tobytes()))
    assert manifest.health == meta and [m.path for m in manifest.members] == [ARTIFACT_MEMBER, HEALTH_MEMBER]
    health = tmp_path / "h.bin"
    extract_artifact(out, [keys["release"][1]], tmp_path / "a.tar.gz", health_out=health)
    assert np.array_equal(np.frombuffer(health.read_bytes(), np.float32).reshape(1, 8), values)
    flip(out, read_members(out)[HEALTH_MEMBER][0] + 5)
    with pytest.raises(IntegrityError, match="health.bin"):
        extract_artifact(out, [keys["release"][1]], tmp_path / "b.tar.gz", health_out=tmp_path / "b.bin")
    assert not (tmp_path / "b.bin").exists() and not (tmp_path / "b.tar.gz").exists()
    with pytest.raises(IntegrityError, match="does not hold"):
        build_package(artifact, keys["release"][0], "tiny", 2, tmp_path / "x.pkg", health=(meta, b"short"))
