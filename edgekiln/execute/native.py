"""Run an artifact through its bundled native runtime (``bin/edgekiln-run``), on this host or
on the profile's emulated board, and read back every output.

This is how compile validates an artifact built with ``--native-runtime``: the device's own
code path (no Python, the C API of libedgekiln), so an emulated board needs no Python
packages, only its C library. Inputs and outputs travel as .npy files in a temporary folder
that the emulated process sees at its host path.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekiln.errors import BackendError
from edgekiln.execute.inputs import Samples
from edgekiln.runtime.native import RUNNER

_TIMEOUT_S = 1800  # an emulated ARM board runs a ResNet-50 sample in about a minute


def run_native(root: Path, batches: Sequence[Sequence[np.ndarray]], profile: Any = None) -> Samples:
    """The outputs of the extracted artifact at ``root`` on ``batches``, computed by its
    ``bin/edgekiln-run``; on ``profile``'s emulated board when ``profile`` is given."""
    runner = root / RUNNER
    if not runner.is_file():
        raise BackendError(f"the artifact at {root} bundles no native runtime ({RUNNER})")
    with tempfile.TemporaryDirectory(prefix="edgekiln-native-") as tmp:
        work = Path(tmp)
        args = []
        for k, batch in enumerate(batches):
            names = []
            for i, array in enumerate(batch):
                np.save(work / f"in{k}_{i}.npy", np.ascontiguousarray(array))
                names.append(str(work / f"in{k}_{i}.npy"))
            args.append(",".join(names))
        (work / "out").mkdir()
        argv = [str(runner), str(root), *args, "--top-k", "1", "--outputs", str(work / "out")]
        if profile is None:
            cmd, env = argv, None
        else:
            from edgekiln import emulation

            cmd, env = emulation.command(profile, argv)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BackendError(f"the native runtime did not finish within {_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise BackendError(f"the native runtime failed: {last}")
        return [_outputs(work / "out", k) for k in range(len(batches))]


def _outputs(folder: Path, k: int) -> list[np.ndarray]:
    found = []
    while (path := folder / f"{k}_{len(found)}.npy").is_file():
        found.append(np.load(path, allow_pickle=False))
    if not found:
        raise BackendError(f"the native runtime wrote no outputs for sample {k}")
    return found
