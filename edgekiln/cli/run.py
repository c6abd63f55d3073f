"""``edgekiln run``: run an artifact on images or .npy arrays on this device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run an artifact on images or .npy inputs",
        description=(
            "Run ARTIFACT on each INPUT: an image (PNG/JPEG, preprocessed as the manifest says) "
            "is classified and its top-k classes printed; a .npy array is fed to the model as is "
            "and the output shapes and top-k indices printed. A model that outputs probabilities "
            "(it ends in Softmax) is reported as it is; logits are reported with their softmax. "
            '--json states which under "scores": "probabilities" or "logits".'
        ),
    )
    parser.add_argument("artifact", metavar="ARTIFACT", help="artifact .tar.gz or extracted directory")
    parser.add_argument("inputs", metavar="INPUT", nargs="+", help="image file or .npy array")
    parser.add_argument("--top-k", type=int, default=5, help="classes to show (default: 5)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edgekiln.errors import UserError
    from edgekiln.runtime.model import Model, top_classes
    from edgekiln.runtime.preprocess import IMAGE_SUFFIXES

    for item in args.inputs:
        path = Path(item)
        if not path.is_file():
            raise UserError(f"input {item} does not exist")
        if path.suffix.lower() not in IMAGE_SUFFIXES + (".npy",):
            raise UserError(f"input {item} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a .npy array")
    model = Model(args.artifact, device=args.device)
    results = []
    for item in args.inputs:
        path = Path(item)
        outputs: list = []
        if path.suffix.lower() == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise UserError(f"{item} is not a readable .npy array: {exc}") from None
            outputs = model.run([array])
            top = top_classes(outputs[0].reshape(-1), model.labels, args.top_k, model.manifest.scores)
        else:
            top = model.predict(path, top_k=args.top_k)
        # What the model's output holds: "probability" is the model's own for "probabilities",
        # the softmax of its logits (also given as "logit") for "logits".
        entry = {"input": item, "scores": "logits" if "logit" in top[0] else "probabilities", "top": top}
        if outputs:
            entry["outputs"] = [{"name": n, "shape": list(o.shape)} for n, o in zip(model.get_output_names(), outputs)]
        results.append(entry)
    if args.json:
        print(json.dumps({"artifact": args.artifact, "profile": model.manifest.profile, "results": results}, indent=2))
        return 0
    for entry in results:
        source = "softmax of the model's logits" if entry["scores"] == "logits" else "the model's own probabilities"
        print(f"{entry['input']}: ({source})")
        for rank, cls in enumerate(entry["top"], 1):
            print(f"  {rank}. {cls['label']:<32} (class {cls['index']:>4})  p={cls['probability']:.4f}")
    return 0
