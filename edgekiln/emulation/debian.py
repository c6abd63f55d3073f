"""Debian packages of a foreign architecture: resolved and downloaded by the host's apt-get
with private lists and state (apt checks them against the Debian archive keyring), and
unpacked with dpkg-deb without running any maintainer script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from edgekiln.emulation.recipe import (
    DEBIAN_KEYRING,
    DEBIAN_MIRROR_ENV,
    DEBIAN_SECURITY_MIRROR_ENV,
    DEBIAN_SUITE,
)
from edgekiln.errors import DependencyError


def check_host_tools() -> None:
    missing = [tool for tool in ("apt-get", "dpkg-deb", "tar") if shutil.which(tool) is None]
    if missing:
        raise DependencyError(
            f"building a sysroot needs {', '.join(missing)} on the build host (a Debian or Ubuntu host)",
            hint="install the Debian packages apt, dpkg and tar",
        )
    if not DEBIAN_KEYRING.is_file():
        raise DependencyError(
            f"building a sysroot needs the Debian archive keyring {DEBIAN_KEYRING}",
            hint="install the Debian package debian-archive-keyring (`make setup` does)",
        )


class Apt:
    """The host's apt-get, pointed at private lists, state and cache for one foreign arch.

    Nothing of the host's apt or dpkg state is read or written: its architecture list,
    installed packages, sources and pins do not matter, and neither root nor a lock is
    needed.  The host's apt.conf.d is kept so that its proxy settings still apply.
    """

    def __init__(self, work: Path, debian_arch: str) -> None:
        self.work = work
        self.debian_arch = debian_arch
        for sub in ("state/lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        (work / "state" / "status").touch()  # an empty dpkg status: nothing is installed
        mirror = os.environ.get(DEBIAN_MIRROR_ENV, "http://deb.debian.org/debian").rstrip("/")
        security = os.environ.get(DEBIAN_SECURITY_MIRROR_ENV, "http://deb.debian.org/debian-security").rstrip("/")
        signed = f"[signed-by={DEBIAN_KEYRING}]"
        # bookworm-updates and -security so that the sysroot gets the fixed libraries a
        # device installing today would get.
        (work / "sources.list").write_text(
            f"deb {signed} {mirror} {DEBIAN_SUITE} main\n"
            f"deb {signed} {mirror} {DEBIAN_SUITE}-updates main\n"
            f"deb {signed} {security} {DEBIAN_SUITE}-security main\n"
        )
        options = {
            "APT::Architecture": debian_arch,
            "APT::Architectures": debian_arch,
            "Dir::State": work / "state",
            "Dir::State::status": work / "state" / "status",
            "Dir::Cache": work / "cache",
            "Dir::Etc::SourceList": work / "sources.list",
            "Dir::Etc::SourceParts": work / "sources.list.d",
            "Dir::Etc::Preferences": work / "preferences",
            "Dir::Etc::PreferencesParts": work / "preferences.d",
            "Acquire::Languages": "none",
            "Debug::NoLocking": "1",
        }
        if os.geteuid() == 0:
            # apt would drop to the _apt user to download, which cannot write into root's
            # cache directory; it then warns and goes on as root anyway.
            options["APT::Sandbox::User"] = "root"
        self.last_output = ""
        self.options = [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]

    def _run(self, args: list[str], what: str, cwd: Path | None = None) -> str:
        cmd = ["apt-get", *self.options, *args]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
        )
        self.last_output = proc.stderr + proc.stdout
        if proc.returncode != 0:
            lines = [ln for ln in self.last_output.splitlines() if ln.strip()]
            # The first error names the cause; apt's last one is a summary ("Some index
            # files failed to download").
            errors = [ln for ln in lines if ln.startswith("E:")] or lines or ["no output"]
            raise DependencyError(
                f"cannot {what} (apt-get {args[0]} exited {proc.returncode}): {errors[0]}",
                hint=f"check that deb.debian.org (or ${DEBIAN_MIRROR_ENV}) is reachable",
            )
        return proc.stdout

    def update(self) -> list[str]:
        """Fetch the package lists; notes on the update suites that could not be had.

        The release suite is required.  -updates and -security only bring newer builds
        of some packages: a mirror caught mid-sync (a size or hash mismatch) costs those
        fixes, which the sysroot record then says, rather than the whole build.
        """
        what = f"download the Debian {DEBIAN_SUITE} {self.debian_arch} package lists"
        failed: DependencyError | None = None
        try:
            self._run(["update", "-qq"], what)
        except DependencyError as exc:
            failed = exc
        # apt-get update exits 0 when a source cannot be reached at all (only a warning),
        # and 100 when a file it got is wrong: both are "Failed to fetch" lines.
        failures = re.findall(r"^[EW]: Failed to fetch (\S+)(.*)$", self.last_output, re.M)
        suites = sorted({m.group(1) for url, _ in failures if (m := re.search(r"/dists/([^/]+)/", url))})
        lists = self.work / "state" / "lists"
        if not any(lists.glob(f"*_dists_{DEBIAN_SUITE}_main_binary-{self.debian_arch}_Packages*")):
            if failed is not None and not failures:
                raise failed
            cause = " ".join(" ".join(failures[0]).split()) if failures else "apt got no package list"
            raise DependencyError(
                f"cannot {what}: {cause}", hint=f"check that deb.debian.org (or ${DEBIAN_MIRROR_ENV}) is reachable"
            )
        if failed is not None and not suites:
            raise failed
        if not suites:
            return []
        cause = " ".join(" ".join(failures[0]).split())
        return [
            f"{', '.join(suites)} {self.debian_arch} package lists unavailable at build time, their "
            f"updates left out ({cause[:160]})"
        ]

    def resolve(self, packages: tuple[str, ...]) -> list[tuple[str, str]]:
        """The packages and everything they depend on, as (name, version)."""
        # apt's own resolver on an empty status file: exactly what installing them on a
        # fresh board would unpack, with alternatives chosen as apt chooses them.
        out = self._run(
            ["install", "--simulate", "--no-install-recommends", "-qq", *packages],
            f"resolve {', '.join(packages)} for {self.debian_arch}",
        )
        selected = []
        for line in out.splitlines():
            match = re.match(r"^Inst (\S+) \((\S+) ", line)
            if match:
                selected.append((match.group(1), match.group(2)))
        if not selected:
            raise DependencyError(f"apt resolved nothing to install for {', '.join(packages)} on {self.debian_arch}")
        return selected

    def download(self, selected: list[tuple[str, str]], into: Path) -> list[Path]:
        into.mkdir(parents=True, exist_ok=True)
        self._run(
            ["download", "-qq", *(f"{name}={version}" for name, version in selected)],
            f"download {len(selected)} Debian {self.debian_arch} packages",
            cwd=into,
        )
        debs = sorted(into.glob("*.deb"))
        if len(debs) != len(selected):
            raise DependencyError(f"apt downloaded {len(debs)} of {len(selected)} Debian packages")
        return debs


def unpack_debs(debs: list[Path], root: Path) -> None:
    # The merged-/usr layout of a bookworm system: /lib, /bin and /sbin are links into
    # /usr.  The packages still ship files under /lib (the dynamic loader), so these
    # links must exist first and tar must follow them (--keep-directory-symlink); `dpkg -x`
    # would replace them with directories.
    for sub in ("usr/lib", "usr/bin", "usr/sbin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for link in ("lib", "bin", "sbin"):
        os.symlink(f"usr/{link}", root / link)
    for deb in debs:
        unpack = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert unpack.stdout is not None
        tar = subprocess.run(
            ["tar", "-x", "--keep-directory-symlink", "--no-same-owner", "-C", str(root)],
            stdin=unpack.stdout,
            capture_output=True,
            text=True,
        )
        unpack.stdout.close()
        err = unpack.stderr.read().decode(errors="replace") if unpack.stderr else ""
        if unpack.wait() != 0 or tar.returncode != 0:
            raise DependencyError(f"cannot unpack {deb.name}: {(err or tar.stderr).strip().splitlines()[-1:]}")
