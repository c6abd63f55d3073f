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
from edgekiln.artifact.package import file_entry, member_sizes, pack, read_manifest, sha256_file, unpack

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "FileEntry",
    "Manifest",
    "ModelInfo",
    "RuntimeRequirements",
    "TensorSpec",
    "Validation",
    "file_entry",
    "member_sizes",
    "pack",
    "read_manifest",
    "sha256_file",
    "unpack",
]
