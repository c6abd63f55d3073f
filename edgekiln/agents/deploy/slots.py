"""Installed versions of each model handle, in slots, with two pointers.

Layout under the slots directory::

    <handle>/v<N>/            one complete, verified, extracted artifact (a slot)
    <handle>/.v<N>.partial/   a slot being written; never loaded, removed at start
    <handle>/current          symlink -> v<N>: the version being installed or run
    <handle>/committed        symlink -> v<M>: the last version that passed its health check

A slot appears under its final name only by a rename after every member was extracted and
checked, so a half-extracted slot is never loaded. A pointer moves by writing a new symlink
beside it and renaming it over the old one, then fsyncing the directory: after a power cut
it names the old slot or the new one. ``current != committed`` means a trial is running (or
was, when the agent was killed): the committed slot serves meanwhile.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgekiln.agents.durable import fsync_dir
from edgekiln.artifact.names import check_name
from edgekiln.artifact.package import unpack
from edgekiln.errors import IntegrityError

POINTERS = ("current", "committed")


class Slots:
    """The slots of every handle under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def handles(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def slot(self, handle: str, version: int) -> Path:
        return self.root / check_name(handle, "model handle") / f"v{int(version)}"

    def pointer(self, handle: str, name: str) -> int | None:
        """The version a pointer names, or None (absent, or naming no complete slot)."""
        link = self.root / check_name(handle, "model handle") / name
        try:
            target = os.readlink(link)
        except OSError:
            return None
        if not (target.startswith("v") and target[1:].isdigit()):
            return None
        return int(target[1:]) if (link.parent / target).is_dir() else None

    def set_pointer(self, handle: str, name: str, version: int | None) -> None:
        """Point ``name`` at slot ``version`` (None removes it), atomically and durably."""
        directory = self.root / check_name(handle, "model handle")
        link = directory / name
        if version is None:
            link.unlink(missing_ok=True)
        else:
            tmp = directory / f".{name}.new"
            tmp.unlink(missing_ok=True)
            os.symlink(f"v{int(version)}", tmp)
            os.replace(tmp, link)
        fsync_dir(directory)

    def install(self, handle: str, version: int, artifact: Path) -> Path:
        """Extract the verified ``artifact`` into slot ``version`` (checking every member
        against its manifest again) and publish the slot by renaming it into place."""
        final = self.slot(handle, version)
        if final.is_dir():
            return final  # a crash after the rename: the slot is complete already
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.parent / f".v{int(version)}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        unpack(artifact, partial)
        _fsync_tree(partial)
        os.replace(partial, final)
        fsync_dir(final.parent)
        return final

    def remove(self, handle: str, version: int) -> None:
        path = self.slot(handle, version)
        if path.is_dir():
            # Renamed out of the way first, so that a crash mid-delete leaves no slot that looks whole.
            doomed = path.parent / f".v{int(version)}.partial"
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(path, doomed)
            fsync_dir(path.parent)
            shutil.rmtree(doomed, ignore_errors=True)

    def clean(self, handle: str, keep: set[int]) -> None:
        """Remove partial slots and every slot but ``keep`` and the pointers' targets."""
        directory = self.root / check_name(handle, "model handle")
        keep = keep | {v for v in (self.pointer(handle, p) for p in POINTERS) if v is not None}
        for entry in directory.iterdir():
            name = entry.name
            if name.startswith(".") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            elif name.startswith("v") and name[1:].isdigit() and int(name[1:]) not in keep and entry.is_dir():
                self.remove(handle, int(name[1:]))


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def check_slot(path: Path) -> None:
    """A slot is a directory with its manifest; anything else is not loaded."""
    if not (path / "manifest.json").is_file():
        raise IntegrityError(f"slot {path.name} is incomplete (no manifest.json)")
