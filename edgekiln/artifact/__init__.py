"""Artifact format: the manifest schema and safe pack/unpack with sha256 checks.

Used by the compiler (to write artifacts), the runtime (to read them on the device) and
the fleet service (to verify them); imports nothing heavy.
"""

from edgekiln.artifact.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    ModelInfo,
    RuntimeRequirements,
    TensorSpec,
    Validation,
)
from edgekiln.artifact.package import UnpackLimits, file_entry, member_sizes, pack, read_manifest, sha256_file, unpack
from edgekiln.artifact.paths import check_member_path, read_labels, resolve_member

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "FileEntry",
    "Manifest",
    "ModelInfo",
    "RuntimeRequirements",
    "TensorSpec",
    "UnpackLimits",
    "Validation",
    "check_member_path",
    "file_entry",
    "member_sizes",
    "pack",
    "read_labels",
    "read_manifest",
    "resolve_member",
    "sha256_file",
    "unpack",
]
