"""Ed25519 keys for signed packages: generate, load, and the key id packages record.

``cryptography`` is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from edgekiln.artifact.names import is_valid_name
from edgekiln.errors import DependencyError, UserError

MAX_KEY_FILE_BYTES = 16 << 10


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise DependencyError(
            "signed packages need the 'cryptography' package", hint="pip install cryptography"
        ) from None
    return ed25519


def key_id_of(raw_public: bytes) -> str:
    """The key id: the first 16 hex digits of sha256 over the 32 raw public-key bytes."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def generate_keypair(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write ``out_dir/NAME.key`` (PKCS#8 PEM, mode 0600) and ``out_dir/NAME.pub`` (PEM).

    Refuses to overwrite an existing key. Returns (private, public) paths."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    if not is_valid_name(name):
        raise UserError(f"key name {name[:80]!r} is not a valid name", hint="use letters, digits and inner dashes")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise UserError(f"{path} exists already", hint="choose another --name or move the old key away")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _read_key_file(path: Path) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read key {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise UserError(f"key file {path} is over {MAX_KEY_FILE_BYTES >> 10} kB; it is not a key")
    return data


def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(_read_key_file(path), password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not an unencrypted PEM private key: {str(exc)[:120]}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 key", hint="make one with `edgekiln keys generate`")
    return key


def load_public_key(path: Path) -> tuple[str, Any]:
    """(key id, public key) of a PEM Ed25519 public key file."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(_read_key_file(path))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a PEM public key: {str(exc)[:120]}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 public key", hint="use the .pub of `edgekiln keys generate`")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_id_of(raw), key


def public_key_id(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key_id_of(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
