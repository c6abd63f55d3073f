"""Where compile validates an artifact: ``--validate-on auto|host|emulator|none``.

The choice is explicit and said out loud because its cost differs by two orders of
magnitude: a worker on this host takes seconds, the same worker on an emulated board takes
minutes (qemu-user runs every instruction of the model through a translator). ``auto``, the
default, validates where the artifact can run at all: on this host when it can execute the
target, else on the profile's emulated board when that board is already built (building
one is a download nobody should get unasked) and carries the artifact's runtime, else
nowhere, with the reason recorded. An unvalidated ARM artifact is the worse outcome than a
slow compile, so auto takes the emulator when it can; the line compile prints names the
choice and the flag that changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

from edgekiln.errors import DependencyError, UserError
from edgekiln.execute.runners import EmulatedRunner, LocalRunner, Runner, emulated_board_problem, unmet_requirements

if TYPE_CHECKING:  # pragma: no cover
    from edgekiln.device_profiles import DeviceProfile
    from edgekiln.execute.progress import Progress

AUTO = "auto"
CHOICES = (AUTO, "host", "emulator", "none")
FLAG = "--validate-on"


@dataclass(frozen=True)
class ValidationSite:
    """Where validation runs (``host``, ``emulator``) or that it does not (``none``), and why.

    requested: what was asked for (one of CHOICES); why: one line, for the console and, when
    nothing is validated, for the manifest's reason.
    """

    where: Literal["host", "emulator", "none"]
    requested: str
    why: str

    def describe(self, profile: DeviceProfile) -> str:
        """The line compile prints before it starts."""
        place = {
            "host": "this host",
            "emulator": f"the emulated {_name(profile)} board (qemu-user; minutes, not seconds)",
            "none": "nowhere (the artifact is not validated)",
        }[self.where]
        others = "|".join(c for c in CHOICES[1:] if c != self.where)
        how = "chosen by --validate-on auto" if self.requested == AUTO else f"{FLAG} {self.requested}"
        return f"validate on: {place} -- {how}: {self.why}; change with {FLAG} {others}"

    def runner(self, profile: DeviceProfile, progress: Progress | None = None) -> Runner:
        if self.where == "emulator":
            return EmulatedRunner(profile, progress=progress)
        return LocalRunner()

    def board_problem(
        self, profile: DeviceProfile, packages: Sequence[str], *, native: bool, progress: Progress | None = None
    ) -> str | None:
        """Why this emulated board cannot run an artifact needing ``packages``, or None.

        Asked for by name, the board is built first when it is not (and a board that still
        cannot run the artifact is an error, not a skip); chosen by auto, only a built one counts.
        """
        if self.where != "emulator":
            return None
        if self.requested == AUTO:
            return emulated_board_problem(profile, python=not native, packages=packages)
        from edgekiln.emulation import ensure_sysroot

        sysroot = ensure_sysroot(profile, progress=progress)
        if native:
            return None
        lacking = list(sysroot.missing) + unmet_requirements(packages, sysroot.python_packages())
        if lacking:
            raise DependencyError(
                f"{FLAG} emulator: the emulated {_name(profile)} board lacks " + "; ".join(lacking),
                hint=f"validate with {FLAG} none, or choose a backend whose runtime the board carries",
            )
        return None


def choose(profile: DeviceProfile, requested: str, *, host_problem: str | None, native: bool) -> ValidationSite:
    """The validation site for ``profile``; ``host_problem`` is why this host cannot execute
    the target (None: it can). Raises UserError when the named site cannot be used."""
    if requested not in CHOICES:
        raise UserError(f"{FLAG} takes {', '.join(CHOICES)}, not {requested!r}")
    if requested == "none":
        return ValidationSite("none", requested, f"not validated ({FLAG} none)")
    if requested == "host":
        if host_problem:
            raise UserError(
                f"{FLAG} host: this machine cannot execute {profile.id} ({host_problem})",
                hint=f"use {FLAG} emulator" if profile.emulation is not None else f"use {FLAG} none",
            )
        return ValidationSite("host", requested, "asked for")
    if requested == "emulator":
        if profile.emulation is None:
            raise UserError(
                f"{FLAG} emulator: profile {profile.id} has no emulated board",
                hint=f"use {FLAG} host" if not host_problem else f"use {FLAG} none",
            )
        return ValidationSite("emulator", requested, "asked for")
    if not host_problem:
        return ValidationSite("host", requested, f"this host can execute {profile.id}")
    board = emulated_board_problem(profile, python=not native)
    if board is None:
        return ValidationSite(
            "emulator", requested, f"this machine cannot execute the target ({host_problem}) and its board is built"
        )
    return ValidationSite("none", requested, f"this machine cannot execute the target ({host_problem}) and {board}")


def _name(profile: DeviceProfile) -> str:
    return profile.aliases[0] if profile.aliases else profile.id
