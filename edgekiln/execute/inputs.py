"""Inputs for running a model, and the comparison of its outputs with a reference.

Compile's validation, the benchmark harness and auto's timing all feed a model the same
inputs and judge its outputs the same way, so "validated" and "benchmarked" mean one thing.
A package carries outputs recorded where it was built (:func:`encode_outputs`), and the
device's health check reads them back (:func:`decode_outputs`) to compare with its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekiln.artifact.manifest import TensorSpec
from edgekiln.errors import BackendError, EdgekilnError

Samples = list[list[np.ndarray]]  # per sample, one array per input (or output)


def make_inputs(
    specs: Sequence[TensorSpec],
    count: int,
    seed: int = 0,
    preprocessing: Mapping[str, Any] | None = None,
    image: Any = None,
) -> Samples:
    """``count`` input samples for a model with inputs ``specs``.

    With ``preprocessing`` and an ``image`` (a path or an importlib.resources file) and a
    single input, the first sample is that image preprocessed as the model expects it,
    repeated over the batch; the rest are seeded random tensors (standard normal for float
    inputs, integers in [-128, 127) clipped to the dtype's range otherwise). The same
    ``seed`` gives the same samples.
    """
    rng = np.random.default_rng(seed)
    samples: Samples = []
    if count > 0 and preprocessing and image is not None and len(specs) == 1:
        picture = _image_sample(specs[0], preprocessing, image)
        if picture is not None:
            samples.append([picture])
    while len(samples) < count:
        samples.append([random_tensor(spec, rng) for spec in specs])
    return samples[:count]


def _image_sample(spec: TensorSpec, preprocessing: Mapping[str, Any], image: Any) -> np.ndarray | None:
    from importlib.resources import as_file

    from edgekiln.runtime.preprocess import preprocess

    single = (1, *spec.shape[1:])
    try:
        with as_file(image) as path:
            tensor = preprocess(Path(path), preprocessing, single)
    except (ImportError, OSError, EdgekilnError):
        return None  # no Pillow, or no image: that sample is a random one instead
    batch = spec.shape[0] if spec.shape else 1
    return np.ascontiguousarray(np.repeat(tensor, batch, axis=0)).astype(spec.dtype)


def random_tensor(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """One seeded tensor of ``spec``'s shape and dtype."""
    if spec.dtype.startswith("float"):
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    if spec.dtype == "bool":
        return rng.integers(0, 2, size=spec.shape).astype(bool)
    info = np.iinfo(spec.dtype)
    return rng.integers(max(info.min, -128), min(info.max, 127), size=spec.shape, dtype=spec.dtype)


@dataclass(frozen=True)
class OutputDiff:
    """How far a candidate's outputs are from a reference's, over every sample."""

    max_abs_diff: tuple[float, ...]  # per output; inf where any element is NaN or infinite
    top1_agreement: float  # of the first output, per row (a batch of N has N rows)
    samples: int
    # Per output: max |a - b| / |b| over the reference's non-zero elements, and the largest
    # |a - b| - rtol * |b| (numpy's allclose passes where it is <= atol).
    max_rel_diff: tuple[float, ...] = ()
    max_excess: tuple[float, ...] = ()

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff, default=0.0)

    @property
    def worst_rel(self) -> float:
        return max(self.max_rel_diff, default=0.0)

    def failing(self, atol: float, rtol: float) -> list[int]:
        """Indices of the outputs that are not allclose(candidate, reference, rtol, atol);
        ``rtol`` must be the one given to :func:`compare_outputs`."""
        excess = self.max_excess or self.max_abs_diff
        return [i for i, e in enumerate(excess) if not e <= atol]  # NaN fails too


def compare_outputs(
    reference: Sequence[Sequence[np.ndarray]],
    candidate: Sequence[Sequence[np.ndarray]],
    names: Sequence[str] | None = None,
    rtol: float = 0.0,
) -> OutputDiff:
    """Max abs and relative difference per output, how far each is beyond ``rtol`` (see
    :class:`OutputDiff`), and top-1 agreement of the first output, row by row.

    Raises BackendError when the two disagree in sample count, output count or any shape
    (``names`` name the outputs in that message).
    """
    if len(reference) != len(candidate):
        raise BackendError(f"{len(candidate)} output samples against {len(reference)} from the reference")
    width = len(reference[0]) if reference else 0
    worst = [0.0] * width
    worst_rel = [0.0] * width
    excess = [-math.inf] * width
    agree = rows_seen = 0
    for ref, got in zip(reference, candidate):
        if len(got) != len(ref):
            raise BackendError(f"the model gives {len(got)} outputs; the reference gives {len(ref)}")
        for i, (r, g) in enumerate(zip(ref, got)):
            if r.shape != g.shape:
                label = f"output {names[i]!r}" if names and i < len(names) else f"output {i}"
                raise BackendError(f"{label} has shape {list(g.shape)}; the reference gives {list(r.shape)}")
            if r.size:
                ref64 = r.astype(np.float64)
                delta = np.abs(ref64 - g.astype(np.float64))
                diff = float(np.max(delta))
                worst[i] = max(worst[i], diff if math.isfinite(diff) else math.inf)
                beyond = float(np.max(delta - rtol * np.abs(ref64)))
                excess[i] = max(excess[i], beyond if math.isfinite(beyond) else math.inf)
                nonzero = ref64 != 0
                if nonzero.any():
                    rel = float(np.max(delta[nonzero] / np.abs(ref64[nonzero])))
                    worst_rel[i] = max(worst_rel[i], rel if math.isfinite(rel) else math.inf)
        if width:
            r0, g0 = ref[0], got[0]
            rows = r0.shape[0] if r0.ndim >= 2 else 1
            agree += int(np.sum(np.argmax(r0.reshape(rows, -1), axis=1) == np.argmax(g0.reshape(rows, -1), axis=1)))
            rows_seen += rows
    excess = [max(e, 0.0) if e != -math.inf else 0.0 for e in excess]
    return OutputDiff(
        tuple(worst), agree / rows_seen if rows_seen else 0.0, len(reference), tuple(worst_rel), tuple(excess)
    )


def encode_outputs(samples: Sequence[Sequence[np.ndarray]]) -> tuple[list[list[dict[str, Any]]], bytes]:
    """Outputs recorded on one machine for another to compare against: per sample, per output
    ``{"dtype", "shape"}``, and the arrays' bytes, little-endian, one after another."""
    arrays = [[np.ascontiguousarray(a, dtype=np.dtype(a.dtype).newbyteorder("<")) for a in s] for s in samples]
    specs = [[{"dtype": str(a.dtype.newbyteorder("=")), "shape": list(a.shape)} for a in s] for s in arrays]
    return specs, b"".join(a.tobytes() for s in arrays for a in s)


def decode_outputs(specs: Sequence[Sequence[Mapping[str, Any]]], data: bytes) -> Samples:
    """The arrays :func:`encode_outputs` wrote, in this machine's byte order; ``specs`` must
    account for ``data`` (whoever received them checked that)."""
    offset, samples = 0, []
    for sample in specs:
        arrays = []
        for spec in sample:
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            arrays.append(np.frombuffer(data, dtype, count, offset).reshape(spec["shape"]).astype(spec["dtype"]))
            offset += count * dtype.itemsize
        samples.append(arrays)
    return samples
