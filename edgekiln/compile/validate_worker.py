"""Child process of compile-time validation: runs an extracted artifact through the device
runtime.  It must not import the TVM compiler (the artifact brings its own runtime).

Usage: python -m edgekiln.compile.validate_worker ROOT INPUTS.npz OUTPUTS.npz DEVICE
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(argv: list[str]) -> int:
    root, inputs_path, outputs_path, device = argv
    from edgekiln.runtime.model import Model

    model = Model(root, device=device)
    count = len(model.get_input_names())
    with np.load(inputs_path) as data:
        batches = sorted({int(k.split("_")[0]) for k in data.files})
        results = {}
        outputs = 0
        for b in batches:
            out = model.run([data[f"{b}_{i}"] for i in range(count)])
            outputs = len(out)
            for o, array in enumerate(out):
                results[f"{b}_{o}"] = array
    np.savez(outputs_path, **results)
    print(json.dumps({"outputs": outputs, "compiler_loaded": "tvm" in sys.modules}))
    return 0


if __name__ == "__main__":
    from edgekiln.errors import EdgekilnError

    try:
        sys.exit(main(sys.argv[1:]))
    except EdgekilnError as exc:
        # One line for the parent to quote; it turns it into a BackendError.
        print(exc.one_line(), file=sys.stderr)
        sys.exit(1)
