"""Emulated boards: run a profile's ARM code on the x86-64 build host under qemu-user.

``ensure_sysroot(profile)`` builds (once, then from the cache) a Debian userland of the
board's architecture with the device install's Python packages; ``run(profile, argv)``
runs a program there, ``python`` meaning the board's Python; ``python_prefix(profile)``
gives the command prefix and environment for callers that build their own command lines.

Both modules import only the standard library at import time; nothing is built, run or
downloaded until a function is called.
"""

from edgekiln.emulation.runner import command, guest_env, python_prefix, run
from edgekiln.emulation.sysroot import Sysroot, cache_dir, ensure_sysroot, find_qemu, find_sysroot

__all__ = [
    "Sysroot",
    "cache_dir",
    "command",
    "ensure_sysroot",
    "find_qemu",
    "find_sysroot",
    "guest_env",
    "python_prefix",
    "run",
]
