"""``edgekiln agent-ctl``: talk to a running agent over its local gRPC API.

    edgekiln agent-ctl --socket PATH list
    edgekiln agent-ctl --socket PATH load ARTIFACT NAME
    edgekiln agent-ctl --socket PATH unload NAME
    edgekiln agent-ctl --socket PATH describe NAME
    edgekiln agent-ctl --socket PATH predict NAME INPUT [--top-k 5] [--capture]
    edgekiln agent-ctl --socket PATH capture-status CAPTURE_ID
    edgekiln agent-ctl --config agent.toml deploy PKG [--wait 120]
    edgekiln agent-ctl --config agent.toml deployments

``--config agent.toml`` instead of ``--socket`` takes the socket from the agent's config;
``deploy`` and ``deployments`` need it (they use the agent's inbox and deployment log).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agent-ctl",
        help="call a running agent's local API",
        description="Call the local gRPC API of a running edgekiln agent.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="the agent's Unix socket")
    where.add_argument("--config", metavar="AGENT.TOML", help="take the socket from this agent config")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default: 30)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="ctl_command", metavar="COMMAND")
    commands.required = True
    commands.add_parser("list", help="list loaded models")
    load = commands.add_parser("load", help="load a model artifact")
    load.add_argument(
        "url",
        metavar="ARTIFACT",
        help="artifact path on the device (relative: in the agent's "
        "model_dir); it must lie inside the agent's model_dirs",
    )
    load.add_argument("name", metavar="NAME", help="1-63 letters, digits and inner dashes")
    unload = commands.add_parser("unload", help="unload a model")
    unload.add_argument("name", metavar="NAME")
    describe = commands.add_parser("describe", help="describe a loaded model")
    describe.add_argument("name", metavar="NAME")
    predict = commands.add_parser("predict", help="classify an image (or run a .npy tensor)")
    predict.add_argument("name", metavar="NAME")
    predict.add_argument("input", metavar="INPUT", help="image file or .npy array")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--capture", action="store_true", help="also capture the input and output tensors")
    status = commands.add_parser("capture-status", help="status of a capture")
    status.add_argument("capture_id", metavar="CAPTURE_ID")
    deploy = commands.add_parser(
        "deploy",
        help="install a signed package on this device, without a fleet",
        description=(
            "Copy PKG into the agent's inbox (deploy.inbox_dir) and wait for the install to end: verify "
            "against deploy.trusted_keys, anti-rollback, unpack into a new slot, switch, health check, "
            "commit or roll back (deploy.local_failure_handling). Exits 0 when it SUCCEEDED, 1 otherwise."
        ),
    )
    deploy.add_argument("package", metavar="PKG", help="package from edgekiln package")
    deploy.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the result (default: 120)")
    commands.add_parser("deployments", help="list this device's deployments and their results")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekiln.agents.client import AgentClient

    if args.ctl_command in ("deploy", "deployments"):
        return _deployments(args)
    socket = args.socket
    if args.config:
        from edgekiln.agents.config import load_config

        socket = str(load_config(args.config).agent.socket)
    with AgentClient(socket, timeout=args.timeout) as client:
        result = _dispatch(client, args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_render(args.ctl_command, result))
    return 0


def _deployments(args: argparse.Namespace) -> int:
    from edgekiln.agents.config import load_config
    from edgekiln.agents.deploy import local
    from edgekiln.errors import UserError

    if not args.config:
        raise UserError(f"agent-ctl {args.ctl_command} needs --config (the agent's inbox and deployment log)")
    config = load_config(args.config)
    if args.ctl_command == "deployments":
        found = local.records(config)
        if args.json:
            print(json.dumps({"deployments": found}, indent=2))
            return 0
        for record in found:
            spec = record.get("spec") or {}
            print(
                f"{record['deployment_id']:<40} {spec.get('handle', '?')} v{spec.get('version', '?')} "
                f"{record.get('status', '?'):<26} {record.get('reason', '')}"
            )
        return 0
    record = local.wait(config, local.drop(config, Path(args.package)), args.wait)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        extra = f" (rollback took {record['rollback_seconds']} s)" if record.get("rollback_seconds") is not None else ""
        print(f"{record['deployment_id']}: {record['status']}: {record.get('reason', '')}{extra}")
    return 0 if record["status"] == "SUCCEEDED" else 1


def _dispatch(client: Any, args: argparse.Namespace) -> Any:
    command = args.ctl_command
    if command == "list":
        return {"models": client.list_models()}
    if command == "load":
        return client.load_model(args.url, args.name)
    if command == "unload":
        client.unload_model(args.name)
        return {"unloaded": args.name}
    if command == "describe":
        return client.describe_model(args.name)
    if command == "capture-status":
        return {"capture_id": args.capture_id, "status": client.capture_status(args.capture_id)}
    return _predict(client, args)


def _predict(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from edgekiln.errors import UserError
    from edgekiln.runtime.model import top_classes

    path = Path(args.input)
    if not path.is_file():
        raise UserError(f"input {args.input} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{args.input} is not a readable .npy array: {exc}") from None
        outputs = client.predict(args.name, [array])
        tensor = array
        top = top_classes(outputs[0].reshape(-1), None, args.top_k)
    else:
        answer = client.predict_image(args.name, path, top_k=args.top_k)
        tensor, outputs, top = answer["input"], answer["outputs"], answer["top"]
    scores = "logits" if "logit" in top[0] else "probabilities"
    result: dict[str, Any] = {"model": args.name, "input": args.input, "scores": scores, "top": top}
    if args.capture:
        described = client.describe_model(args.name)
        result["capture_id"] = client.capture(
            args.name,
            input_tensors={described["inputs"][0]["name"]: tensor},
            output_tensors={o["name"]: v for o, v in zip(described["outputs"], outputs)},
            inputs={"source": ("NONE", str(path).encode())},
        )
    return result


def _render(command: str, result: Any) -> str:
    if command == "list":
        if not result["models"]:
            return "no models loaded"
        return "\n".join(f"{m['name']:<24} {m['url']}" for m in result["models"])
    if command in ("load", "describe"):
        lines = [f"{result['name']}: {result['url']}"]
        for kind in ("inputs", "outputs"):
            for t in result[kind]:
                lines.append(f"  {kind[:-1]:<6} {t['name']:<16} {t['dtype']:<8} {t['shape']}")
        return "\n".join(lines)
    if command == "unload":
        return f"unloaded {result['unloaded']}"
    if command == "capture-status":
        return f"{result['capture_id']}: {result['status']}"
    source = "softmax of the logits" if result["scores"] == "logits" else "the model's probabilities"
    lines = [f"{result['input']} ({result['model']}, {source}):"]
    for rank, cls in enumerate(result["top"], 1):
        lines.append(f"  {rank}. {cls['label']:<32} (class {cls['index']:>4})  p={cls['probability']:.4f}")
    if "capture_id" in result:
        lines.append(f"  captured as {result['capture_id']}")
    return "\n".join(lines)
