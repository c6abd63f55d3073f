"""``edgekiln compile``: build an artifact for one device profile."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

HELP = "compile a model for a device profile into an artifact (.tar.gz)"
_IMPORTED = time.perf_counter()


def add_framework_option(parser: argparse.ArgumentParser) -> None:
    """``--framework``, as compile and tune take it."""
    parser.add_argument(
        "--framework",
        type=str.lower,  # Neo's API spells them PYTORCH, TFLITE ...
        choices=("onnx", "pytorch", "tflite", "mxnet", "keras", "tensorflow"),
        help="the model's framework, in any case (PYTORCH as Neo wrote it); default: found from the files",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile",
        help=HELP,
        description=(
            "Compile MODEL for the device profile TARGET. MODEL is a model file of any framework "
            "SageMaker Neo accepted -- ONNX (.onnx), PyTorch (TorchScript .pt/.pth, torch.export "
            ".pt2), TFLite (.tflite, fp32 or int8), MXNet (PREFIX-symbol.json + PREFIX-NNNN.params, "
            "read without MXNet), Keras (.h5, .keras), TensorFlow (SavedModel folder) -- a folder "
            "or a Neo-style .tar.gz holding one, or a built-in model such as zoo:resnet18. The "
            "artifact is validated against ONNX Runtime when this machine can execute the target, "
            "and written to OUT only when everything succeeded."
        ),
    )
    _add_model_and_target_arguments(parser)
    _add_input_and_manifest_arguments(parser)
    _add_backend_and_validation_arguments(parser)
    _add_quantization_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.set_defaults(func=run)


def _add_model_and_target_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, the device profile, the artifact path and the framework."""
    parser.add_argument(
        "model", metavar="MODEL", help="model file, folder or .tar.gz, or zoo:NAME (see `edgekiln zoo list`)"
    )
    parser.add_argument(
        "--target",
        "-t",
        required=True,
        metavar="PROFILE",
        help="device profile id or alias (see `edgekiln profiles list`)",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="OUT.tar.gz",
        help="artifact path (default: NAME-PROFILE.tar.gz in the current directory)",
    )
    add_framework_option(parser)


def _add_input_and_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    """Input shapes, and the model's name and version in the manifest."""
    parser.add_argument(
        "--input-config",
        metavar="JSON",
        help="input shapes as Neo's DataInputConfig, e.g. '{\"data\": [1, 3, 224, 224]}' "
        "(a list of shapes names them input0, input1...); needed for TorchScript and MXNet. "
        "TFLite/Keras/TensorFlow inputs keep their NHWC layout unless the shape is given in "
        "NCHW, which the artifact then takes",
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="[NAME:]DIMS",
        help="fixed input shape, e.g. 1,3,224,224 or input:1,3,224,224; repeat per input "
        "(the same as --input-config in another form)",
    )
    parser.add_argument(
        "--preprocess",
        metavar="JSON|PRESET",
        help="how images become the model's input, recorded in the manifest so that images work in "
        "run, predict, the agent, --calibration and the accuracy gate: a preset (imagenet-torch, "
        "imagenet-tf, imagenet-caffe) or a JSON object with the keys layout, color, resize, crop, "
        "mean, std, scale (and optionally preset, whose keys it changes); see the README",
    )
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per line in output order, bundled in the artifact (their count must "
        "equal the model's output width)",
    )
    parser.add_argument("--name", help="model name in the manifest (default: file stem or zoo name)")
    parser.add_argument("--model-version", default="1", help="model version in the manifest (default: 1)")


def _add_backend_and_validation_arguments(parser: argparse.ArgumentParser) -> None:
    """Backend choice and options, and the numerical validation against ONNX Runtime."""
    parser.add_argument(
        "--backend",
        default="auto",
        help="tvm, onnxruntime, litert, openvino (x86-64 CPUs), or auto (default): build the backends the profile "
        "allows, except untuned TVM where evidence shows it slow (it needs tuning records for "
        "90%% of the model's FLOPs, unless nothing else runs on the target); when this machine "
        "can run the target, time them against ONNX Runtime on the host's cores (each runtime in "
        "two worker processes, taken in turn) until each "
        "one's 95%% CI lies within 10%% of the leader's or more than 10%% above it (20 pairs "
        "before one is named fastest), or the budget (40 pairs, 60 s) "
        "runs out (ties and undecided timings "
        "keep the first in the evidence order measured on this host's kind of CPU), else keep "
        "the first that builds in the evidence table's order (see README)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="validation: absolute tolerance (atol, default: 1e-4); an output element passes when "
        "|artifact - reference| <= atol + rtol x |reference|, as numpy's allclose",
    )
    parser.add_argument(
        "--rtol", type=float, default=1e-5, help="validation: relative tolerance (default: 1e-5, numpy's)"
    )
    parser.add_argument("--validation-samples", type=int, default=3, help="inputs compared (default: 3)")
    parser.add_argument(
        "--validate-on",
        choices=("auto", "host", "emulator", "none"),
        default="auto",
        help="where to validate: host (this machine), emulator (the profile's emulated board "
        "under qemu-user: minutes instead of seconds; built first when it is not), none (the "
        "manifest records 'not validated'), or auto (default): the host when it can execute the "
        "target, else the emulated board when it is built and carries the backend's runtime, "
        "else none. The choice is printed before compiling",
    )
    parser.add_argument(
        "--no-validate", action="store_true", help="skip numerical validation (the same as --validate-on none)"
    )
    parser.add_argument(
        "--native-runtime",
        action="store_true",
        help="tvm: bundle libedgekiln and edgekiln-run (built by `edgekiln build-runtime`, once per "
        "architecture) so the device needs no Python, and validate through them, on the emulated "
        "board when this machine cannot run the target",
    )
    parser.add_argument(
        "--no-ptx",
        action="store_true",
        help="CUDA profiles: embed only SASS for the profile's GPU, no PTX (the tvm option embed_ptx=false)",
    )
    parser.add_argument(
        "--tuning-db",
        metavar="PATH",
        help="tvm: a tuning database (written by `edgekiln tune --tuning-db`); its records come "
        "before those in edgekiln's cache and those shipped with edgekiln (each build takes the "
        "records tuned for its CPU: the profile's, and its CPU variants')",
    )
    parser.add_argument(
        "--backend-option",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the backend named with --backend, e.g. num_threads=2 for litert, "
        "optimization=basic for onnxruntime, inference_threads=2 for openvino or "
        "cpu_variants=false for tvm (no AVX-512 build beside the x86_64 one); repeat per "
        "option (an unknown key lists the valid ones)",
    )


def _add_quantization_arguments(parser: argparse.ArgumentParser) -> None:
    """Post-training int8 quantization and its accuracy gate."""
    parser.add_argument(
        "--quantize",
        choices=("int8", "int8-auto"),
        help="post-training int8 quantization with an accuracy gate; int8-auto keeps the most "
        "sensitive layers in fp32 until the gate passes",
    )
    parser.add_argument(
        "--calibration",
        metavar="PATH",
        help="calibration data: a folder of images (labelled by sub-folder, optional) or .npy/.npz",
    )
    parser.add_argument(
        "--validation",
        metavar="PATH",
        help="accuracy-gate data, same formats (default: every 5th calibration sample, held out)",
    )
    parser.add_argument("--calibration-samples", type=int, default=100, help="calibration inputs used (default: 100)")
    parser.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=0.01,
        help="int8 top-1 must be >= (1 - this) x fp32 top-1 (default: 0.01, MLPerf's 99%% rule)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.compile.frontends import model_stem, parse_input_shapes
    from edgekiln.compile.quantize import QuantizeOptions
    from edgekiln.compile.validate import ValidationOptions
    from edgekiln.device_profiles import get_profile
    from edgekiln.errors import UserError
    from edgekiln.execute.progress import ConsoleProgress

    input_shape = parse_input_shapes(args.input_config, args.input_shape)
    profile = get_profile(args.target)
    output = args.output
    if output is None:
        stem = args.name or (
            args.model.split(":", 1)[-1] if args.model.startswith("zoo:") else model_stem(Path(args.model.rstrip("/")))
        )
        output = f"{stem}-{profile.aliases[0] if profile.aliases else profile.id.replace('/', '-')}.tar.gz"
    backend_options = _backend_options(args)
    options = CompileOptions(
        backend=args.backend,
        backend_options=backend_options,
        validation=ValidationOptions(
            tolerance_abs=args.tolerance, tolerance_rel=args.rtol, samples=args.validation_samples
        ),
        preprocessing=args.preprocess,
        labels=args.labels,
        validate=not args.no_validate,
        validate_on=args.validate_on,
        native_runtime=args.native_runtime,
        quantize=None
        if args.quantize is None
        else QuantizeOptions(
            mode=args.quantize,
            calibration=args.calibration,
            validation=args.validation,
            calibration_samples=args.calibration_samples,
            accuracy_tolerance=args.accuracy_tolerance,
        ),
    )
    if args.quantize is None and (args.calibration or args.validation):
        raise UserError("--calibration and --validation only apply with --quantize int8")
    # Said before the work starts: validating on an emulated board turns seconds into minutes.
    print(options.validation_site(profile).describe(profile), file=sys.stderr, flush=True)
    artifact = compile_model(
        args.model,
        args.target,
        output,
        input_shape=input_shape,
        framework=args.framework,
        name=args.name,
        version=args.model_version,
        options=options,
        progress=ConsoleProgress(),
    )
    summary = artifact.summary()
    # The whole command, from the process's start: the manifest's figure ends before packing
    # and leaves out the interpreter's start and imports.
    summary["compile_seconds"] = round(_seconds_since_start(), 2)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['artifact']}: {summary['model']} for {summary['profile']} "
            f"({summary['backend']}, {summary['target_triple']}), {summary['size_bytes'] / 1e6:.1f} MB",
            file=sys.stdout,
        )
        for line in _validation_lines(artifact.manifest.validation):
            print(f"  {line}")
        selection = artifact.manifest.backend_selection
        if selection is not None:
            print(f"  backend {selection.chosen} chosen by --backend {selection.mode}: {selection.reason}")
        if artifact.manifest.quantization:
            g = artifact.manifest.quantization["accuracy_gate"]
            print(
                f"  int8 accuracy gate passed: top-1 {g['int8_top1']:.4f} vs fp32 {g['fp32_top1']:.4f}, "
                f"agreement {g['top1_agreement']:.4f} on {g['samples']} inputs"
                + (f"; {len(g['fp32_layers'])} layers kept in fp32" if g["fp32_layers"] else "")
            )
    return 0


def _validation_lines(v: Any) -> list[str]:
    """The plain output's account of validation: both figures against both tolerances, the
    second reference, and any warning (such as an output that does not depend on the input)."""
    if v.status != "passed":
        return [v.reason if (v.reason or "").startswith("not validated") else f"not validated: {v.reason}"]
    if v.max_abs_diff is None:  # the int8 accuracy gate stood in for it
        lines = [f"validated: {v.reference}, top-1 agreement {v.top1_agreement:.2f} over {v.samples} samples"]
    else:
        lines = [
            f"validated: max abs diff {v.max_abs_diff:.2e}, max rel diff {v.max_rel_diff or 0:.2e} "
            f"(atol {v.tolerance_abs:g}, rtol {v.tolerance_rel or 0:g}), "
            f"top-1 agreement {v.top1_agreement:.2f} over {v.samples} samples"
            + (f" on {v.executed_on}" if getattr(v, "executed_on", None) else "")
        ]
    if v.second_reference:
        second = "" if v.second_max_abs_diff is None else f": max abs diff {v.second_max_abs_diff:.2e}"
        lines.append(f"second reference: {v.second_reference}{second}")
    return lines + [f"warning: {w}" for w in v.warnings]


def _seconds_since_start() -> float:
    """Wall seconds since this process started (Linux: from /proc; else since import)."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # Field 22, after the parenthesised command name: start time in clock ticks after boot.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


def _backend_options(args: argparse.Namespace) -> tuple:
    """--backend-option and --no-ptx, read through the backend's own option type."""
    from edgekiln.compile.backends import registry
    from edgekiln.errors import UserError

    items = list(args.backend_option or ())
    tvm_items = (["embed_ptx=false"] if args.no_ptx else []) + (
        [f"tuning_db={args.tuning_db}"] if args.tuning_db else []
    )
    if tvm_items:
        if args.backend not in ("tvm", "auto"):
            flag = "--no-ptx" if args.no_ptx else "--tuning-db"
            raise UserError(f"{flag} applies to the tvm backend, not {args.backend}")
        if args.backend == "auto":
            return (registry.get("tvm").options_type.from_strings(tvm_items),)
        items.extend(tvm_items)
    if not items:
        return ()
    if args.backend == "auto":
        raise UserError(
            "--backend-option needs the backend it is for",
            hint="name it with --backend tvm|onnxruntime|litert|openvino",
        )
    return (registry.get(args.backend).options_type.from_strings(items),)
