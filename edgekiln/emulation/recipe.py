"""What an emulated board's sysroot holds: the recipe per architecture, the record of a
built one (``sysroot.json``), and the profiles that can be emulated."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgekiln.errors import IntegrityError, UserError

if TYPE_CHECKING:  # pragma: no cover
    from edgekiln.device_profiles import DeviceProfile

SCHEMA_VERSION = 1
MANIFEST_NAME = "sysroot.json"
# bookworm is what the build host runs (Debian 12); its python3.11 (3.11.2) takes the
# cp311 wheels that the device install uses, and its glibc 2.36 satisfies manylinux_2_28.
DEBIAN_SUITE = "bookworm"
# A local mirror (or an apt proxy) can stand in for deb.debian.org.
DEBIAN_MIRROR_ENV = "EDGEKILN_DEBIAN_MIRROR"
DEBIAN_SECURITY_MIRROR_ENV = "EDGEKILN_DEBIAN_SECURITY_MIRROR"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

PYTHON_VERSION = "3.11"
GUEST_PYTHON = f"/usr/bin/python{PYTHON_VERSION}"
GUEST_SITE_PACKAGES = f"/usr/local/lib/python{PYTHON_VERSION}/dist-packages"
# The device install (setup.cfg install_requires without the Python < 3.11 backport);
# tests/integration/emulation checks that the two agree.
DEVICE_REQUIREMENTS = ("numpy>=1.24", "apache-tvm-ffi==0.1.14.post0", "Pillow>=10")

# The backend runtimes of the aarch64 board, so that onnxruntime and litert artifacts are
# validated where they will run: onnxruntime is the release the build host validates against
# (the artifact asks for onnxruntime>=it), ai-edge-litert setup.cfg's pin.  Locked with every
# dependency the plain device install would pull (pip then resolves nothing itself) and each
# wheel's sha256 for cp311 aarch64, so that a changed or substituted file on the index fails
# the build instead of ending up on the board.  numpy comes from DEVICE_REQUIREMENTS.
AARCH64_BACKEND_WHEELS = (
    ("onnxruntime==1.32.0", "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c"),
    ("ai-edge-litert==2.3.0", "853fc608f96da87bd5f3458465dfb9abbf18d5ae6b94eceacead407146f175ae"),
    ("flatbuffers==25.12.19", "7634f50c427838bb021c2d66a3d1168e9d199b0607e6329399f04846d42e20b4"),
    ("packaging==26.4", "81383611a09c1bc0b08b76e0fd5829d7c6824c65b27a6aee339da133f4233ea2"),
    ("protobuf==7.36.2", "e11e1f0180583a2af89db6a2ecd9e8dc40aa6d2988ca175bfd0e6d12ea72d74e"),
    ("ml-dtypes==0.6.0", "7728c0420ec1c338564fc8b01015ff2d58567e70f17fedce5a0a7c0308c0d5b9"),
    ("backports-strenum==1.2.8", "fc297cb26971f7d5e15a478a06a78575197f81daea47975771b1aae996dcccf4"),
    ("tqdm==4.70.1", "c293e525e6fef9c20e8728fd4612df02a0aa31bb5fe91ecd93e123b1b7bffa73"),
    ("typing-extensions==4.16.0", "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8"),
)

# Debian's name for each profile arch (dpkg --print-architecture on the board).
DEBIAN_ARCHES = {"aarch64": "arm64", "armv7l": "armhf", "x86_64": "amd64"}


@dataclass(frozen=True)
class Recipe:
    """What goes into the sysroot of one architecture.

    packages: Debian packages installed with their dependencies (no Recommends).
    wheels: requirements downloaded from PyPI for the profile's wheel platform tags.
    locked: (name==version, sha256) wheels installed exactly as pinned, without resolving
        dependencies, each checked against its hash.
    imports: modules the emulated Python must import once the sysroot is built.
    links: (guest path, target) symlinks that the packages' maintainer scripts would make
        (update-alternatives), since unpacking runs no maintainer script.
    missing: what the device install has that this architecture's sysroot cannot, and why.
    """

    arch: str
    debian_arch: str
    packages: tuple[str, ...]
    wheels: tuple[str, ...]
    imports: tuple[str, ...]
    locked: tuple[tuple[str, str], ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    missing: tuple[str, ...] = ()

    def digest(self, platform_tags: tuple[str, ...]) -> str:
        """Identifies the recipe, so that a cache entry built from another is rebuilt."""
        data = {
            "schema": SCHEMA_VERSION,
            "suite": DEBIAN_SUITE,
            "platform_tags": list(platform_tags),
            **dataclasses.asdict(self),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# libstdc++6 and libgcc-s1 are what manylinux wheels (tvm-ffi) and the artifact's
# libtvm_runtime.so take from the system; python3.11 brings libc6, zlib, libffi, ...
RECIPES = {
    "aarch64": Recipe(
        arch="aarch64",
        debian_arch="arm64",
        packages=("python3.11", "libstdc++6", "libgcc-s1"),
        wheels=DEVICE_REQUIREMENTS,
        locked=AARCH64_BACKEND_WHEELS,
        imports=("numpy", "tvm_ffi", "PIL.Image", "onnxruntime", "ai_edge_litert.interpreter"),
    ),
    # PyPI has no armv7l wheels of numpy, Pillow or apache-tvm-ffi (tvm-ffi ships only an
    # sdist for it) and apache-tvm no armv7l runtime library, so the 32-bit board gets
    # Debian's numpy (1.24) and Pillow (9.4) and no TVM runtime: enough for Python/numpy
    # work and for backends with armhf builds, not for TVM artifacts.
    "armv7l": Recipe(
        arch="armv7l",
        debian_arch="armhf",
        packages=("python3.11", "python3-numpy", "python3-pil", "libstdc++6", "libgcc-s1"),
        wheels=(),
        imports=("numpy", "PIL.Image"),
        # Debian's numpy links libblas.so.3 and liblapack.so.3, which libblas3 and
        # liblapack3 provide only through update-alternatives in their postinst.
        links=(
            ("/usr/lib/arm-linux-gnueabihf/libblas.so.3", "blas/libblas.so.3"),
            ("/usr/lib/arm-linux-gnueabihf/liblapack.so.3", "lapack/liblapack.so.3"),
        ),
        missing=(
            "apache-tvm-ffi: PyPI has no armv7l wheel (only an sdist, not built here)",
            "libtvm_runtime.so: apache-tvm publishes no armv7l release",
        ),
    ),
}


@dataclass(frozen=True)
class Sysroot:
    """A built, cached userland for one profile; ``root`` is what qemu's ``-L`` gets."""

    profile: str
    path: Path  # the cache entry: root/ and sysroot.json
    arch: str
    debian_arch: str
    suite: str
    qemu_binary: str
    qemu_cpu: str
    qemu_version: str  # the QEMU that built (and checked) it
    python: str  # guest path of the interpreter
    packages: tuple[tuple[str, str], ...]  # (Debian package, version), sorted
    wheels: tuple[str, ...]  # wheel file names
    missing: tuple[str, ...]
    notes: tuple[str, ...]  # how this build differs from the recipe (an update suite left out)
    recipe: str
    size_bytes: int
    build_seconds: float
    built_at: str  # UTC, ISO 8601

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def python_path(self) -> Path:
        """The interpreter as a host path (qemu is given the program by its host path)."""
        return self.host_path(self.python)

    def host_path(self, guest: str) -> Path:
        """Where a guest path lies inside the sysroot on this host."""
        return self.root / guest.lstrip("/")

    def python_packages(self) -> dict[str, str]:
        """Python distributions inside, name -> version: the wheels and Debian's python3-*."""
        found: dict[str, str] = {}
        for name in self.wheels:
            dist, version = name.split("-")[:2]
            found[dist.replace("_", "-").lower()] = version
        for package, version in self.packages:
            if package.startswith("python3-") and package != "python3-minimal":
                # "1:1.24.2-1+deb12u1" -> "1.24.2": without the epoch and Debian revision
                upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
                found.setdefault(package.removeprefix("python3-"), upstream)
        return found

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["schema"] = SCHEMA_VERSION
        data["path"] = str(self.path)
        data["root"] = str(self.root)
        data["packages"] = {name: version for name, version in self.packages}
        data["wheels"] = list(self.wheels)
        data["missing"] = list(self.missing)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def load(cls, path: Path) -> Sysroot:
        """Read ``path/sysroot.json``; the entry may have moved, so ``path`` wins over the file."""
        file = path / MANIFEST_NAME
        try:
            data = json.loads(file.read_text())
            if data.get("schema") != SCHEMA_VERSION:
                raise ValueError(f"schema {data.get('schema')!r}")
            return cls(
                profile=data["profile"],
                path=path,
                arch=data["arch"],
                debian_arch=data["debian_arch"],
                suite=data["suite"],
                qemu_binary=data["qemu_binary"],
                qemu_cpu=data["qemu_cpu"],
                qemu_version=data["qemu_version"],
                python=data["python"],
                packages=tuple(sorted((str(k), str(v)) for k, v in data["packages"].items())),
                wheels=tuple(data["wheels"]),
                missing=tuple(data["missing"]),
                notes=tuple(data["notes"]),
                recipe=data["recipe"],
                size_bytes=int(data["size_bytes"]),
                build_seconds=float(data["build_seconds"]),
                built_at=data["built_at"],
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(
                f"unreadable sysroot record {file}: {exc}", hint="rebuild it with `edgekiln emulate PROFILE --rebuild`"
            ) from None

    def save(self) -> None:
        data = self.to_dict()
        del data["path"], data["root"]  # where it lies is where it is read from
        (self.path / MANIFEST_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def resolve_profile(profile: DeviceProfile | str) -> DeviceProfile:
    """The profile itself, or the one with that name; UserError when it cannot be emulated."""
    import platform

    from edgekiln.device_profiles import get_profile

    if isinstance(profile, str):
        profile = get_profile(profile)
    if profile.emulation is None:
        host = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
        if profile.cpu.arch == host:
            raise UserError(
                f"profile {profile.id} ({profile.cpu.arch}) runs natively on this host and has no "
                f"emulated board; run the command directly"
            )
        raise UserError(f"profile {profile.id} has no [emulation] table (qemu_binary, cpu) to emulate it with")
    if profile.cpu.arch not in RECIPES:
        raise UserError(
            f"no emulated board for {profile.cpu.arch} (profile {profile.id}); "
            f"emulated architectures: {', '.join(sorted(RECIPES))}"
        )
    return profile


def recipe_for(profile: DeviceProfile) -> Recipe:
    return RECIPES[resolve_profile(profile).cpu.arch]
