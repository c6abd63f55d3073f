"""``edgekiln fleet package …`` and ``edgekiln fleet deploy …``: signed packages and staged
deployment plans, as an operator (see ``edgekiln.fleet.deployments``).

    edgekiln fleet package upload PKG
    edgekiln fleet package list [--handle NAME]
    edgekiln fleet deploy create PLAN --fleet FLEET --model-handle NAME --model-version V
                                 --stage NAME:SELECT[:POLICY][:budget=MS] ...
    edgekiln fleet deploy start-stage|stop-stage PLAN STAGE
    edgekiln fleet deploy describe PLAN
    edgekiln fleet deploy list-devices PLAN STAGE
    edgekiln fleet deploy list

A stage's SELECT is ``percent=N``, ``devices=NAME,NAME`` or ``contains=TEXT`` (Edge
Manager's PERCENTAGE, SELECTION, NAMECONTAINS); POLICY is ``rollback`` (the default,
ROLLBACK_ON_FAILURE) or ``do-nothing``; ``budget=MS`` is the p50 latency budget the
device's health check applies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

STAGE_HELP = (
    "a stage, in order: NAME:SELECT[:POLICY][:budget=MS] with SELECT percent=N | devices=A,B | contains=TEXT, "
    "POLICY rollback (default) | do-nothing; e.g. canary:devices=cam-1 all:percent=100"
)
_SUBSETS = {"percent": "PERCENTAGE", "devices": "SELECTION", "contains": "NAMECONTAINS"}
_POLICIES = {
    "rollback": "ROLLBACK_ON_FAILURE",
    "rollback_on_failure": "ROLLBACK_ON_FAILURE",
    "do-nothing": "DO_NOTHING",
    "do_nothing": "DO_NOTHING",
}


def register(commands: argparse._SubParsersAction, client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``package`` and ``deploy`` to ``edgekiln fleet``."""
    package = commands.add_parser("package", help="upload signed packages to the fleet, list them")
    package_commands = package.add_subparsers(dest="package_command", metavar="ACTION")
    package_commands.required = True
    upload = package_commands.add_parser("upload", help="upload a signed package (edgekiln package -o PKG)")
    upload.add_argument("package", metavar="PKG", type=Path)
    listing = package_commands.add_parser("list", help="the uploaded packages")
    listing.add_argument("--handle", help="only this model handle")
    for p in (upload, listing):
        client_options(p)
        p.set_defaults(func=run_package)

    deploy = commands.add_parser("deploy", help="staged deployment plans (Edge Manager's deployment API)")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", metavar="ACTION")
    deploy_commands.required = True
    create = deploy_commands.add_parser("create", help="create a deployment plan (no stage starts)")
    create.add_argument("plan", metavar="PLAN")
    create.add_argument("--fleet", required=True, help="the device fleet")
    create.add_argument("--model-handle", required=True, help="the package's model handle")
    create.add_argument("--model-version", required=True, type=int, help="the package's version")
    create.add_argument("--stage", action="append", required=True, metavar="SPEC", help=STAGE_HELP)
    parsers = [create]
    for action, help_text in (
        ("start-stage", "start a stage (after the stage before it has finished)"),
        ("stop-stage", "stop a stage: devices that have not fetched the package do not get it"),
        ("list-devices", "the devices of a stage, with their status and reason"),
    ):
        p = deploy_commands.add_parser(action, help=help_text)
        p.add_argument("plan", metavar="PLAN")
        p.add_argument("stage", metavar="STAGE")
        parsers.append(p)
    describe = deploy_commands.add_parser("describe", help="a plan's stages with per-stage device counts and reasons")
    describe.add_argument("plan", metavar="PLAN")
    parsers += [describe, deploy_commands.add_parser("list", help="every plan, with its stages' status")]
    for p in parsers:
        client_options(p)
        p.set_defaults(func=run_deploy)


def parse_stage(spec: str) -> dict[str, Any]:
    """One ``--stage`` value as a DeploymentStage body; a UserError names what is wrong."""
    from edgekiln.errors import UserError

    name, *parts = spec.split(":")
    selection: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if eq and key in _SUBSETS and not selection:
            kind = _SUBSETS[key]
            selection = {"device_subset_type": kind}
            if kind == "PERCENTAGE":
                selection["percentage"] = _number(value, spec, int)
            elif kind == "SELECTION":
                selection["device_names"] = [v.strip() for v in value.split(",") if v.strip()]
            else:
                selection["device_name_contains"] = value
        elif eq and key == "budget":
            config["latency_budget_ms"] = _number(value, spec, float)
        elif not eq and key in _POLICIES:
            config["failure_handling_policy"] = _POLICIES[key]
        else:
            raise UserError(f"--stage {spec!r}: {part!r} is not understood", hint=STAGE_HELP)
    if not name or not selection:
        raise UserError(f"--stage {spec!r} needs a name and one of percent=, devices=, contains=", hint=STAGE_HELP)
    stage: dict[str, Any] = {"stage_name": name, "device_selection_config": selection}
    if config:
        stage["deployment_config"] = config
    return stage


def _number(value: str, spec: str, kind: type) -> Any:
    from edgekiln.errors import UserError

    try:
        return kind(value)
    except ValueError:
        raise UserError(f"--stage {spec!r}: {value!r} is not a number") from None


def run_package(args: argparse.Namespace) -> int:
    from edgekiln.cli.fleet import _admin
    from edgekiln.errors import UserError

    admin = _admin(args)
    if args.package_command == "list":
        result = admin.call("GET", "/v1/packages" + (f"?handle={quote(args.handle, safe='')}" if args.handle else ""))
        print(json.dumps(result, indent=2) if args.json else _render_packages(result["packages"]))
        return 0
    if not args.package.is_file():
        raise UserError(f"package {args.package} is not a file")
    result = admin.call("PUT", "/v1/packages", upload=args.package)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"uploaded {result['model_handle']} version {result['model_version']} for {result['profile']} "
            f"({result['size']} bytes, sha256 {result['sha256'][:16]}…, key {result['key_id']})"
        )
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    from edgekiln.cli.fleet import _admin

    action = args.deploy_command
    stages = [parse_stage(s) for s in args.stage] if action == "create" else []
    admin = _admin(args)
    plan = quote(getattr(args, "plan", "") or "", safe="")
    stage = quote(getattr(args, "stage", "") or "", safe="") if action != "create" else ""
    if action == "create":
        body = {
            "edge_deployment_plan_name": args.plan,
            "device_fleet_name": args.fleet,
            "model_handle": args.model_handle,
            "model_version": args.model_version,
            "stages": stages,
        }
        result = admin.call("POST", "/v1/deployment-plans", body)
    elif action in ("start-stage", "stop-stage"):
        verb = action.split("-")[0]
        result = admin.call("POST", f"/v1/deployment-plans/{plan}/stages/{stage}/{verb}")
    elif action == "list-devices":
        result = admin.call("GET", f"/v1/deployment-plans/{plan}/stages/{stage}/devices")
    elif action == "list":
        result = admin.call("GET", "/v1/deployment-plans")
    else:
        result = admin.call("GET", f"/v1/deployment-plans/{plan}")
    if args.json:
        print(json.dumps(result, indent=2))
    elif action == "list-devices":
        print(render_devices(result))
    elif action == "list":
        print("\n\n".join(render_plan(p) for p in result["plans"]) or "no deployment plans")
    else:
        print(render_plan(result))
    return 0


def _render_packages(packages: list[dict[str, Any]]) -> str:
    rows = [f"{'handle':<24} {'version':>7}  {'profile':<28} {'size':>10}  sha256"]
    rows += [
        f"{p['model_handle']:<24} {p['model_version']:>7}  {p['profile']:<28} {p['size']:>10}  {p['sha256'][:16]}…"
        for p in packages
    ]
    return "\n".join(rows) if packages else "no packages"


def render_plan(plan: dict[str, Any]) -> str:
    """DescribeEdgeDeploymentPlan for people: one line per stage with its counts, then the
    failure reasons."""
    model = plan["model_configs"][0]
    lines = [
        f"plan {plan['edge_deployment_plan_name']}: fleet {plan['device_fleet_name']}, model "
        f"{model['model_handle']} version {model['model_version']} ({plan['package']['profile']}) — {plan['status']}"
    ]
    if plan.get("halted_reason"):
        lines.append(f"  halted by a failure under ROLLBACK_ON_FAILURE: {plan['halted_reason']}")
    lines.append(
        f"  {'stage':<16} {'status':<14} {'pending':>7} {'in prog':>7} {'ok':>5} {'failed':>6} "
        f"{'rolled back':>11} {'stopped':>7}  policy"
    )
    for s in plan["stages"]:
        c = s["device_counts"]
        lines.append(
            f"  {s['stage_name']:<16} {s['deployment_status']['stage_status']:<14} {c['pending']:>7} "
            f"{c['in_progress']:>7} {c['succeeded']:>5} {c['failed']:>6} {c['rolled_back']:>11} {c['stopped']:>7}  "
            f"{s['deployment_config']['failure_handling_policy']}"
        )
        for r in s["failure_reasons"]:
            extra = f" (rollback {r['rollback_seconds']:.2f} s)" if r.get("rollback_seconds") is not None else ""
            failed = f"; rollback failed: {r['rollback_failure_reason']}" if r.get("rollback_failure_reason") else ""
            lines.append(f"      {r['device_name']}: {r['status']}: {r['reason']}{extra}{failed}")
    return "\n".join(lines)


def render_devices(result: dict[str, Any]) -> str:
    rows = [f"{'device':<32} {'status':<14} {'result':<26} reason"]
    rows += [
        f"{d['device_name']:<32} {d['device_deployment_status']:<14} {d['result_status'] or '-':<26} "
        f"{d['device_deployment_status_message']}"
        for d in result["device_deployment_summaries"]
    ]
    return "\n".join(rows)
