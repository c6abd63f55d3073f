"""Signed packages: an artifact plus one canonical manifest and an Ed25519 signature over it.

A package is an uncompressed tar (the artifact inside is compressed already; an uncompressed
outer layer keeps a flipped bit where it was, so it fails the check of the part it hit) of
exactly these members, in this order:

``package.json``
    The canonical manifest: JSON with sorted keys and no whitespace. It names the model
    handle, a monotonic version, the artifact's profile and backend, an optional expiry,
    the signing key's id and the size and sha256 of every other member.
``package.sig``
    ``{"algorithm": "ed25519", "key_id": ..., "signature": <hex>}`` over the exact bytes of
    ``package.json``.
``artifact.tar.gz``
    The artifact, unchanged (it carries its own manifest with the sha256 of every file).

Verification reads the package once as a stream: the manifest and the signature first
(bounded), the signature is checked against the trusted keys before anything else is
believed, then every member must be listed, of the listed size and sha256. Nothing is
written anywhere by :func:`verify_package`; :func:`extract_artifact` copies the artifact out
of a package that verifies, checking it again as it writes.

``cryptography`` is imported inside the functions that need it, so that reading this
module costs nothing on a device that never verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from edgekiln.artifact.keys import (  # noqa: F401 - part of this module's API
    generate_keypair,
    key_id_of,
    load_private_key,
    load_public_key,
    public_key_id,
)
from edgekiln.artifact.names import check_name, is_valid_name
from edgekiln.artifact.package import UnpackLimits, read_manifest, sha256_file
from edgekiln.artifact.paths import check_member_path
from edgekiln.errors import IntegrityError, UserError

PACKAGE_FORMAT = "edgekiln-package"
PACKAGE_SCHEMA = 1
MANIFEST_MEMBER = "package.json"
SIGNATURE_MEMBER = "package.sig"
ARTIFACT_MEMBER = "artifact.tar.gz"
# Optional: the outputs the artifact gave on its seeded validation inputs where it was packaged,
# raw little-endian arrays one after another, as the manifest's ``health`` field lists them.
HEALTH_MEMBER = "health.bin"
MAX_HEALTH_BYTES = 16 << 20
# The dtypes a recorded output may have, and their sizes in bytes.
_HEALTH_ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8}
MAX_PACKAGE_MANIFEST_BYTES = 64 << 10
MAX_SIGNATURE_BYTES = 4 << 10
MAX_MEMBERS = 8
MAX_VERSION = (1 << 63) - 1
# Tar headers and padding around the members: a header block and padding per member plus the
# two end blocks and a record's rounding (tarfile writes 10 kB records).
_TAR_ALLOWANCE = 32 << 10
_CHUNK = 1 << 20
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError)
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class PackageMember:
    """A member of a package besides the manifest and the signature."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PackageManifest:
    """What a package's signature covers (see the module docstring)."""

    handle: str
    version: int
    profile: str
    backend: str
    key_id: str
    members: tuple[PackageMember, ...]
    expires_at: float | None = None
    created_at: float = 0.0
    model_name: str = ""
    latency_budget_ms: float | None = None
    # {"seed": int, "tolerance_abs": float, "outputs": [[{"dtype", "shape"}, ...] per sample]}
    health: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def artifact(self) -> PackageMember:
        for member in self.members:
            if member.path == ARTIFACT_MEMBER:
                return member
        raise IntegrityError(f"package manifest lists no {ARTIFACT_MEMBER}")  # pragma: no cover - checked on load

    @property
    def size(self) -> int:
        """Sum of the members' sizes (the artifact, mostly)."""
        return sum(m.size for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": PACKAGE_FORMAT,
            "schema_version": PACKAGE_SCHEMA,
            "handle": self.handle,
            "version": self.version,
            "profile": self.profile,
            "backend": self.backend,
            "key_id": self.key_id,
            "members": [{"path": m.path, "size": m.size, "sha256": m.sha256} for m in self.members],
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "model_name": self.model_name,
            "latency_budget_ms": self.latency_budget_ms,
        }
        if self.health is not None:
            data["health"] = self.health
        return {**self.extra, **data}

    def canonical_bytes(self) -> bytes:
        """The bytes that are signed: sorted keys, no whitespace, ASCII only."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> PackageManifest:
        """Parse and validate; the bytes must be canonical, so that exactly one encoding of a
        manifest verifies (no duplicate keys or whitespace to hide a second meaning in)."""
        if len(data) > MAX_PACKAGE_MANIFEST_BYTES:
            raise IntegrityError(f"{MANIFEST_MEMBER} is over {MAX_PACKAGE_MANIFEST_BYTES >> 10} kB")
        try:
            raw = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise IntegrityError(f"{MANIFEST_MEMBER} is not valid JSON: {str(exc)[:120]}") from None
        if not isinstance(raw, dict):
            raise IntegrityError(f"{MANIFEST_MEMBER} is not a JSON object")
        manifest = _manifest_from_dict(raw)
        if canonical_json(raw) != data:
            raise IntegrityError(f"{MANIFEST_MEMBER} is not in canonical form (sorted keys, no whitespace)")
        return manifest


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _manifest_from_dict(raw: dict[str, Any]) -> PackageManifest:
    if raw.get("format") != PACKAGE_FORMAT:
        raise IntegrityError(f"{MANIFEST_MEMBER} is not an edgekiln package manifest")
    if raw.get("schema_version") != PACKAGE_SCHEMA:
        raise IntegrityError(
            f"package schema version {str(raw.get('schema_version'))[:20]} is not {PACKAGE_SCHEMA}",
            hint="upgrade edgekiln on this device",
        )
    handle = raw.get("handle")
    if not is_valid_name(handle):
        raise IntegrityError(f"package handle {str(handle)[:80]!r} is not a valid name")
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise IntegrityError(f"package version {str(version)[:30]!r} is not a whole number >= 1")
    members = raw.get("members")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise IntegrityError(f"package manifest must list 1 to {MAX_MEMBERS} members")
    parsed = tuple(_member(m) for m in members)
    names = [m.path for m in parsed]
    if len(set(names)) != len(names) or ARTIFACT_MEMBER not in names:
        raise IntegrityError(f"package members must be distinct and include {ARTIFACT_MEMBER}")
    if {MANIFEST_MEMBER, SIGNATURE_MEMBER} & set(names):
        raise IntegrityError("package manifest lists itself or its signature as a member")
    known = set(PackageManifest.__dataclass_fields__) | {"format", "schema_version"}
    return PackageManifest(
        handle=handle,
        version=version,
        profile=_text(raw.get("profile"), "profile"),
        backend=_text(raw.get("backend"), "backend"),
        key_id=_hex(raw.get("key_id"), "key_id", 16),
        members=parsed,
        expires_at=_number(raw.get("expires_at"), "expires_at"),
        created_at=_number(raw.get("created_at"), "created_at") or 0.0,
        model_name=_text(raw.get("model_name", ""), "model_name", allow_empty=True),
        latency_budget_ms=_number(raw.get("latency_budget_ms"), "latency_budget_ms"),
        health=_health(raw.get("health"), {m.path: m.size for m in parsed}),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def _health(value: Any, sizes: dict[str, int]) -> dict[str, Any] | None:
    """The recorded-outputs description, checked against the size of its member."""
    if value is None:
        if HEALTH_MEMBER in sizes:
            raise IntegrityError(f"package holds {HEALTH_MEMBER} but its manifest does not describe it")
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("outputs"), list)
        or not 1 <= len(value["outputs"]) <= 16
    ):
        raise IntegrityError("package manifest field health is not an object with 1-16 output samples")
    seed = value.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 32:
        raise IntegrityError("package manifest field health.seed is not a 32-bit seed")
    _number(value.get("tolerance_abs"), "health.tolerance_abs")
    total = 0
    for sample in value["outputs"]:
        if not isinstance(sample, list) or not 1 <= len(sample) <= 16:
            raise IntegrityError("package manifest field health.outputs holds a sample of 1-16 arrays")
        for spec in sample:
            total += _array_bytes(spec)
    if total != sizes.get(HEALTH_MEMBER) or total > MAX_HEALTH_BYTES:
        raise IntegrityError(f"{HEALTH_MEMBER} does not hold the {total} bytes the manifest's health field lists")
    return value


def _array_bytes(spec: Any) -> int:
    if not isinstance(spec, dict) or spec.get("dtype") not in _HEALTH_ITEMSIZE:
        raise IntegrityError("a recorded output has no supported dtype")
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > 8:
        raise IntegrityError("a recorded output has no shape of up to 8 sizes")
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= MAX_HEALTH_BYTES:
            raise IntegrityError("a recorded output has a bad size in its shape")
        count *= dim
    return count * _HEALTH_ITEMSIZE[spec["dtype"]]


def _member(value: Any) -> PackageMember:
    if not isinstance(value, dict):
        raise IntegrityError("a package member is not a JSON object")
    path = check_member_path(value.get("path"), "package member")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"package member {path!r} has no valid size")
    return PackageMember(path=path, size=size, sha256=_hex(value.get("sha256"), f"sha256 of {path}", 64))


def _text(value: Any, what: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > 200 or (not value and not allow_empty):
        raise IntegrityError(f"package manifest field {what} is not a short string")
    return value


def _hex(value: Any, what: str, length: int) -> str:
    if not isinstance(value, str) or len(value) != length or not _HEX.fullmatch(value):
        raise IntegrityError(f"package manifest field {what} is not {length} lowercase hex digits")
    return value


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise IntegrityError(f"package manifest field {what} is not a non-negative number")
    return float(value)


# ---- building ------------------------------------------------------------------------------


def build_package(
    artifact: Path,
    key: Path,
    handle: str,
    version: int,
    out: Path,
    expires_at: float | None = None,
    latency_budget_ms: float | None = None,
    health: tuple[dict[str, Any], bytes] | None = None,
) -> PackageManifest:
    """Sign ``artifact`` with the private ``key`` as version ``version`` of ``handle`` into ``out``.

    The artifact's own manifest is read (and so checked) for its profile and backend; the
    package is written beside ``out`` and renamed into place. ``health`` is (description, bytes)
    of outputs recorded for the device's health check (see :data:`HEALTH_MEMBER`)."""
    check_name(handle, "model handle")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise UserError(f"model version {version!r} is not a whole number >= 1", hint="versions count up: 1, 2, 3")
    if latency_budget_ms is not None and not (math.isfinite(latency_budget_ms) and latency_budget_ms > 0):
        raise UserError("the latency budget must be a positive number of milliseconds")
    artifact, out = Path(artifact), Path(out)
    private = load_private_key(key)
    inner = read_manifest(artifact)
    members = [PackageMember(ARTIFACT_MEMBER, artifact.stat().st_size, sha256_file(artifact))]
    if health is not None:
        members.append(PackageMember(HEALTH_MEMBER, len(health[1]), hashlib.sha256(health[1]).hexdigest()))
        _health(health[0], {HEALTH_MEMBER: len(health[1])})
    manifest = PackageManifest(
        handle=handle,
        version=version,
        profile=inner.profile,
        backend=inner.backend,
        key_id=public_key_id(private.public_key()),
        members=tuple(members),
        expires_at=expires_at,
        created_at=round(time.time(), 3),
        model_name=inner.model.name,
        latency_budget_ms=latency_budget_ms,
        health=None if health is None else health[0],
    )
    body = manifest.canonical_bytes()
    signature = canonical_json(
        {"algorithm": "ed25519", "key_id": manifest.key_id, "signature": private.sign(body).hex()}
    )
    _write_package(out, body, signature, artifact, None if health is None else health[1])
    return manifest


def _write_package(out: Path, body: bytes, signature: bytes, artifact: Path, health: bytes | None) -> None:
    if out.is_dir():
        raise UserError(f"output path {out} is a directory", hint="give a file name, e.g. model-3.pkg")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in ((MANIFEST_MEMBER, body), (SIGNATURE_MEMBER, signature)):
                info = _info(name, len(data))
                tar.addfile(info, io.BytesIO(data))
            info = _info(ARTIFACT_MEMBER, artifact.stat().st_size)
            with open(artifact, "rb") as fh:
                tar.addfile(info, fh)
            if health is not None:
                tar.addfile(_info(HEALTH_MEMBER, len(health)), io.BytesIO(health))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


# ---- reading and verifying -----------------------------------------------------------------


class _Reader:
    """One streaming pass over a package: header members first, then the payload members."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"package {self.path} does not exist or is not a file")
        self.file_size = self.path.stat().st_size
        self.fh = open(self.path, "rb")
        try:
            self.tar = tarfile.open(fileobj=self.fh, mode="r|")
        except _TAR_ERRORS as exc:
            self.fh.close()
            raise IntegrityError(f"{self.path} is not an edgekiln package: {str(exc)[:120]}") from None

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tar.close()
        self.fh.close()

    def next(self) -> tarfile.TarInfo | None:
        try:
            member = self.tar.next()
        except _TAR_ERRORS as exc:
            raise IntegrityError(f"{self.path} is damaged: {str(exc)[:120]}") from None
        if member is not None:
            check_member_path(member.name, "package member")
            if not member.isreg() or member.issparse():
                raise IntegrityError(f"package member {member.name!r} is not a regular file")
        return member

    def small(self, name: str, limit: int, required: bool = True) -> tuple[bytes | None, tarfile.TarInfo | None]:
        member = self.next()
        if member is None or member.name != name:
            if required:
                raise IntegrityError(f"{self.path} does not hold {name} where a package has it")
            return None, member
        if member.size > limit:
            raise IntegrityError(f"{name} in {self.path} is {member.size} bytes, over the limit of {limit}")
        return self.read_all(member), None

    def read_all(self, member: tarfile.TarInfo) -> bytes:
        return b"".join(self.chunks(member))

    def chunks(self, member: tarfile.TarInfo) -> Iterator[bytes]:
        try:
            src = self.tar.extractfile(member)
            assert src is not None
            while block := src.read(_CHUNK):
                yield block
        except _TAR_ERRORS as exc:
            raise IntegrityError(f"{self.path} is damaged: {str(exc)[:120]}") from None


def read_package_manifest(path: Path) -> PackageManifest:
    """The package's manifest, read with every bound but WITHOUT checking the signature: for a
    service that files packages by handle and version. Never trust it on a device."""
    with _Reader(path) as reader:
        data, _ = reader.small(MANIFEST_MEMBER, MAX_PACKAGE_MANIFEST_BYTES)
        assert data is not None
        manifest = PackageManifest.from_bytes(data)
    _check_file_size(Path(path), manifest)
    return manifest


def _check_file_size(path: Path, manifest: PackageManifest) -> None:
    limit = UnpackLimits.from_env().max_unpacked_bytes
    if manifest.size > limit:
        raise IntegrityError(f"package {path} lists {manifest.size} bytes of members, over the limit of {limit}")
    bound = manifest.size + MAX_PACKAGE_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + _TAR_ALLOWANCE
    if path.stat().st_size > bound:
        raise IntegrityError(f"package {path} is larger than its manifest accounts for; it was altered")


def trusted_keys_by_id(trusted_keys: Sequence[Path]) -> dict[str, Any]:
    """Load the trusted public keys, keyed by key id."""
    keys: dict[str, Any] = {}
    for path in trusted_keys:
        key_id, key = load_public_key(Path(path))
        keys[key_id] = key
    return keys


def verify_package(
    path: Path,
    trusted_keys: Sequence[Path],
    now: float | None = None,
    *,
    sink: BinaryIO | None = None,
    health_sink: BinaryIO | None = None,
) -> PackageManifest:
    """Check a package end to end: signature by one of ``trusted_keys``, expiry against ``now``
    (default: the clock), no member that the manifest does not list, every listed member
    present with its size and sha256. Raises IntegrityError with a one-line reason.

    ``sink``, when given, receives the artifact member's bytes as they are checked; whoever
    passes one must discard what it got when this raises."""
    if not trusted_keys:
        raise UserError("no trusted keys given", hint="pass the signer's public key (.pub)")
    keys = trusted_keys_by_id(trusted_keys)
    path = Path(path)
    with _Reader(path) as reader:
        body, _ = reader.small(MANIFEST_MEMBER, MAX_PACKAGE_MANIFEST_BYTES)
        assert body is not None
        signature, _ = reader.small(SIGNATURE_MEMBER, MAX_SIGNATURE_BYTES, required=False)
        if signature is None:
            raise IntegrityError(f"package {path.name} is not signed (no {SIGNATURE_MEMBER})")
        manifest = _check_signature(body, signature, keys)
        _check_file_size(path, manifest)
        _check_expiry(manifest, time.time() if now is None else now)
        _check_members(reader, manifest, {ARTIFACT_MEMBER: sink, HEALTH_MEMBER: health_sink})
    return manifest


def _check_signature(body: bytes, signature: bytes, keys: dict[str, Any]) -> PackageManifest:
    from cryptography.exceptions import InvalidSignature

    try:
        sig = json.loads(signature.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{SIGNATURE_MEMBER} is not valid JSON") from None
    if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519":
        raise IntegrityError(f"{SIGNATURE_MEMBER} is not an ed25519 signature")
    key_id, value = sig.get("key_id"), sig.get("signature")
    if not isinstance(key_id, str) or not isinstance(value, str) or len(value) != 128 or not _HEX.fullmatch(value):
        raise IntegrityError(f"{SIGNATURE_MEMBER} has no well-formed key id and signature")
    key = keys.get(key_id)
    if key is None:
        raise IntegrityError(
            f"package is signed by key {key_id[:16]!r}, which is not trusted here",
            hint=f"trusted key ids: {', '.join(sorted(keys)) or 'none'}",
        )
    try:
        key.verify(bytes.fromhex(value), body)
    except InvalidSignature:
        raise IntegrityError(f"package signature does not verify with key {key_id}; the manifest was altered") from None
    manifest = PackageManifest.from_bytes(body)
    if manifest.key_id != key_id:
        raise IntegrityError(f"package manifest names key {manifest.key_id}, but {key_id} signed it")
    return manifest


def _check_expiry(manifest: PackageManifest, now: float) -> None:
    if manifest.expires_at is not None and now >= manifest.expires_at:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(manifest.expires_at))
        raise IntegrityError(f"package {manifest.handle} v{manifest.version} expired at {when}")


def _check_members(reader: _Reader, manifest: PackageManifest, sinks: dict[str, BinaryIO | None]) -> None:
    expected = {m.path: m for m in manifest.members}
    seen: set[str] = set()
    while (member := reader.next()) is not None:
        entry = expected.get(member.name)
        if entry is None or member.name in seen:
            raise IntegrityError(f"package member {member.name!r} is not listed in the package manifest")
        if member.size != entry.size:
            raise IntegrityError(
                f"package member {member.name!r} is {member.size} bytes; the manifest says {entry.size}"
            )
        seen.add(member.name)
        digest = hashlib.sha256()
        for block in reader.chunks(member):
            digest.update(block)
            sink = sinks.get(member.name)
            if sink is not None:
                sink.write(block)
        if digest.hexdigest() != entry.sha256:
            raise IntegrityError(
                f"package member {member.name!r} has sha256 {digest.hexdigest()[:16]}…; "
                f"the manifest says {entry.sha256[:16]}… (it was altered after signing)"
            )
    missing = sorted(set(expected) - seen)
    if missing:
        raise IntegrityError(f"package lacks members its manifest lists: {', '.join(missing)}")


def extract_artifact(
    path: Path, trusted_keys: Sequence[Path], out: Path, now: float | None = None, health_out: Path | None = None
) -> PackageManifest:
    """Verify the package and write its artifact to ``out`` (fsynced) in the same pass, and its
    recorded outputs, if any, to ``health_out``; on any failure both are removed, so a file
    at ``out`` is always a verified artifact."""
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    health = io.BytesIO()
    try:
        with open(tmp, "wb") as sink:
            manifest = verify_package(path, trusted_keys, now, sink=sink, health_sink=health)
            sink.flush()
            os.fsync(sink.fileno())
        if health_out is not None and manifest.health is not None:
            Path(health_out).write_bytes(health.getvalue())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if health_out is not None:
            Path(health_out).unlink(missing_ok=True)
        raise
    return manifest
