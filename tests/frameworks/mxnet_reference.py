"""Reference exports made by real MXNet, for the MXNet importer's tests.

Two faces:

* a script for the MXNet Python (``.venv-mxnet``, MXNet 1.9 with numpy 1.x)::

      python tests/frameworks/mxnet_reference.py NAME OUT_DIR [--seed 0] [--batch 1] [--size 224]
      python tests/frameworks/mxnet_reference.py --operator-cases OUT_DIR

  builds a Gluon model zoo network with seeded random weights, exports it to
  ``OUT_DIR/NAME-symbol.json`` + ``OUT_DIR/NAME-0000.params`` and saves ``input.npy`` and
  ``output.npy`` (what MXNet computes from the exported files) and ``report.json``;

* a module the tests import under the main venv (numpy 2, no MXNet), which runs that script
  in a subprocess: MXNet 1.x cannot share an environment with numpy 2.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve()
SKIP_REASON = "the MXNet reference environment .venv-mxnet is not built (make test builds it)"


@functools.cache
def mxnet_python() -> str | None:
    """The Python that has MXNet: ``$EDGEKILN_MXNET_PYTHON``, else ``.venv-mxnet``'s if MXNet
    imports there, else None."""
    configured = os.environ.get("EDGEKILN_MXNET_PYTHON")
    if configured:
        # Set on purpose, so a broken one should fail the tests loudly, not skip them.
        return configured
    candidate = REPO_ROOT / ".venv-mxnet" / "bin" / "python"
    if not candidate.exists():
        return None
    try:
        probe = subprocess.run([str(candidate), "-c", "import mxnet"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return str(candidate) if probe.returncode == 0 else None


def require_mxnet_python() -> str:
    """The MXNet Python, or skip the calling test; with ``EDGEKILN_REQUIRE_MXNET=1`` (CI) fail
    instead, so a missing environment is never a silent skip."""
    import pytest

    python = mxnet_python()
    if python is None:
        if os.environ.get("EDGEKILN_REQUIRE_MXNET") == "1":
            pytest.fail(f"{SKIP_REASON}, and EDGEKILN_REQUIRE_MXNET=1 says it must be")
        pytest.skip(SKIP_REASON)
    return python


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The machines this runs on are small and shared; MXNet would otherwise start a thread per core.
    env.setdefault("OMP_NUM_THREADS", "2")
    env.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
    return env


def run_mxnet(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run Python ``code`` under the MXNet Python with ``args`` as sys.argv[1:]; raise with its
    stderr if it fails."""
    python = mxnet_python()
    if python is None:
        raise RuntimeError(SKIP_REASON)
    proc = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=_env())
    if proc.returncode != 0:
        raise RuntimeError(f"MXNet script failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def export_gluon(name: str, out_dir: Path, seed: int = 0, *, batch: int = 1, size: int = 224) -> dict:
    """Export Gluon zoo model ``name`` with real MXNet into ``out_dir``; returns
    {"symbol", "params", "input", "output", "report"}."""
    python = mxnet_python()
    if python is None:
        raise RuntimeError(SKIP_REASON)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [python, str(SCRIPT), name, str(out_dir), "--seed", str(seed), "--batch", str(batch), "--size", str(size)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1200, env=_env())
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"exporting {name} with MXNet failed (exit {exc.returncode}):\n{exc.stderr[-4000:]}"
        ) from exc
    return {
        "symbol": out_dir / f"{name}-symbol.json",
        "params": out_dir / f"{name}-0000.params",
        "input": np.load(out_dir / "input.npy"),
        "output": np.load(out_dir / "output.npy"),
        "report": json.loads((out_dir / "report.json").read_text()),
    }


def export_operator_cases(out_dir: Path) -> dict[str, dict]:
    """Small MXNet graphs, one or a few operators each, with MXNet's outputs on seeded inputs:
    {case: {"symbol", "params", "inputs": {name: array}, "outputs": [array]}}."""
    python = mxnet_python()
    if python is None:
        raise RuntimeError(SKIP_REASON)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [python, str(SCRIPT), "--operator-cases", str(out_dir)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600, env=_env())
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"exporting the operator cases with MXNet failed:\n{exc.stderr[-4000:]}") from exc
    cases = {}
    for name in json.loads((out_dir / "cases.json").read_text()):
        io = np.load(out_dir / f"{name}-io.npz")
        cases[name] = {
            "symbol": out_dir / f"{name}-symbol.json",
            "params": out_dir / f"{name}-0000.params",
            "inputs": {k[3:]: io[k] for k in io.files if k.startswith("in_")},
            "outputs": [io[f"out_{i}"] for i in range(sum(k.startswith("out_") for k in io.files))],
        }
    return cases


# ---- the script side: runs only under the MXNet Python -------------------------------------


def _operator_cases(out_dir: Path) -> list[str]:
    """Write each case's symbol, params and MXNet's own outputs (inference mode) to out_dir."""
    import mxnet as mx

    rng = np.random.default_rng(0)
    sym = mx.sym
    names: list[str] = []

    def case(name, net, shapes, fixed=None):
        fixed = fixed or {}
        arg_shapes, _, aux_shapes = net.infer_shape(**shapes)
        args, aux = {}, {}
        for arg, shape in zip(net.list_arguments(), arg_shapes):
            if arg in shapes:
                continue
            value = fixed.get(arg)
            args[arg] = mx.nd.array(value if value is not None else rng.standard_normal(shape) * 0.5)
        for arg, shape in zip(net.list_auxiliary_states(), aux_shapes):
            value = rng.uniform(0.5, 2.0, shape) if arg.endswith("var") else rng.standard_normal(shape) * 0.3
            aux[arg] = mx.nd.array(value)
        inputs = {k: mx.nd.array(rng.standard_normal(v).astype(np.float32)) for k, v in shapes.items()}
        exe = net.bind(mx.cpu(), {**args, **inputs}, aux_states=aux, grad_req="null")
        outs = exe.forward(is_train=False)
        net.save(str(out_dir / f"{name}-symbol.json"))
        mx.nd.save(
            str(out_dir / f"{name}-0000.params"),
            {**{f"arg:{k}": v for k, v in args.items()}, **{f"aux:{k}": v for k, v in aux.items()}},
        )
        np.savez(
            out_dir / f"{name}-io.npz",
            **{f"in_{k}": v.asnumpy() for k, v in inputs.items()},
            **{f"out_{i}": o.asnumpy() for i, o in enumerate(outs)},
        )
        names.append(name)

    x = sym.var("data")
    img = {"data": (2, 4, 9, 9)}
    # Defaults on purpose: the JSON then leaves eps (1e-3) and fix_gamma (True) out.
    case("batchnorm_defaults", sym.BatchNorm(x, name="bn"), img)
    case("batchnorm_eps_gamma", sym.BatchNorm(x, eps=2e-5, fix_gamma=False, name="bn"), img)
    case(
        "conv_dilate_group_bias",
        sym.Convolution(
            x, kernel=(3, 3), num_filter=6, num_group=2, dilate=(2, 2), pad=(2, 1), stride=(1, 2), name="conv"
        ),
        img,
    )
    case(
        "conv1d",
        sym.Convolution(x, kernel=(3,), num_filter=5, pad=(1,), no_bias=True, name="conv"),
        {"data": (2, 3, 11)},
    )
    pool = {"data": (1, 3, 8, 8)}
    for kind in ("max", "avg", "sum"):
        case(
            f"pool_{kind}_valid",
            sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type=kind, name="pool"),
            {"data": (1, 3, 9, 9)},
        )
    case("pool_max_full", sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pooling_convention="full", name="pool"), pool)
    case(
        "pool_avg_full",
        sym.Pooling(
            x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="avg", pooling_convention="full", name="pool"
        ),
        pool,
    )
    case(
        "pool_avg_exclude_pad",
        sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="avg", count_include_pad=False, name="pool"),
        {"data": (1, 3, 7, 7)},
    )
    case("pool_global_max", sym.Pooling(x, kernel=(1, 1), global_pool=True, name="pool"), img)
    case("pool_global_avg", sym.Pooling(x, kernel=(1, 1), global_pool=True, pool_type="avg", name="pool"), img)
    for act in ("relu", "sigmoid", "tanh", "softrelu", "softsign"):
        case(f"activation_{act}", sym.Activation(x, act_type=act, name="act"), img)
    case("leaky", sym.LeakyReLU(x, slope=0.1, name="act"), img)
    for act in ("elu", "selu", "gelu", "rrelu"):
        # [0]: rrelu also outputs its training mask.
        case(f"leaky_{act}", sym.LeakyReLU(x, act_type=act, name="act")[0], img)
    case("clip", sym.clip(x, a_min=-0.5, a_max=0.75, name="clip"), img)
    case("fc_flatten", sym.FullyConnected(x, num_hidden=7, name="fc"), img)
    case("fc_no_flatten", sym.FullyConnected(x, num_hidden=7, flatten=False, name="fc"), {"data": (2, 3, 5)})
    case("fc_no_bias", sym.FullyConnected(x, num_hidden=7, no_bias=True, name="fc"), {"data": (2, 6)})
    scale = sym.var("scale", shape=(1, 4, 1, 1))
    y = sym.var("other")
    case(
        "binary",
        sym.elemwise_sub(sym.broadcast_mul(x, scale, name="mul"), y, name="sub") / 3.0 + 1.5,
        {"data": (2, 4, 3, 3), "other": (2, 4, 3, 3)},
    )
    # _mul_scalar, _rdiv_scalar, _plus_scalar, _rminus_scalar, elemwise_mul
    case("scalars", 2.0 - (0.5 * (1.0 / (x * x + 1.0))) - 0.25, img)
    case(
        "broadcast_div_add_n",
        sym.add_n(sym.broadcast_div(x, sym.var("d", shape=(1, 4, 1, 1))), x, x, name="sum"),
        img,
        fixed={"d": rng.uniform(1, 2, (1, 4, 1, 1))},
    )
    case("concat", sym.concat(sym.relu(x), sym.sigmoid(x), dim=1, name="cat"), img)
    case("concat_last", sym.Concat(x, sym.tanh(x), dim=3, name="cat"), img)
    case("identity_ops", sym.BlockGrad(sym.Dropout(sym.identity(x), p=0.5), name="stop"), img)
    case("softmax_axis_temp", sym.softmax(x, axis=1, temperature=2.0, name="sm"), img)
    case("log_softmax", sym.log_softmax(x, name="lsm"), img)
    case("softmax_output", sym.SoftmaxOutput(sym.FullyConnected(x, num_hidden=5, name="fc"), name="softmax"), img)
    # Not above rank 2: there MXNet's MKLDNN and native SoftmaxOutput kernels disagree.
    case("softmax_output_preserve", sym.SoftmaxOutput(x, preserve_shape=True, name="softmax"), img)
    case("softmax_output_multi", sym.SoftmaxOutput(x, multi_output=True, name="softmax"), img)
    case("softmax_activation_channel", sym.SoftmaxActivation(x, mode="channel", name="sa"), img)
    case("softmax_activation_instance", sym.SoftmaxActivation(x, name="sa"), img)
    case("reshape", sym.reshape(x, shape=(0, -1, 3), name="rs"), img)
    case("transpose", sym.transpose(sym.transpose(x, axes=(0, 2, 3, 1)), name="tr"), img)
    multi = sym.Group([sym.relu(x, name="a"), sym.sigmoid(x, name="b")])
    case("two_outputs", multi, img)
    (out_dir / "cases.json").write_text(json.dumps(names))
    return names


def _randomize_batchnorm(net, mx, rng: np.random.Generator, x) -> int:
    """Give every BatchNorm statistics near the ones its input really has, then perturb them.

    Random statistics unrelated to the activations make them grow or vanish with depth, and
    an identity BN (the fresh-init values) would hide a wrong BN conversion.  A pre-hook sees
    each BN's inference-mode input (earlier BNs already randomized), so one forward pass sets
    statistics that keep activations O(1) while gamma, beta and the offsets stay far from identity.
    """
    count = 0

    def calibrate(bn, inputs):
        nonlocal count
        count += 1
        data = inputs[0].asnumpy().astype(np.float64)
        axes = tuple(i for i in range(data.ndim) if i != 1)
        mean, var = data.mean(axis=axes), data.var(axis=axes)
        # A floor: a channel ReLU killed has variance 0, and eps alone would blow up any offset.
        var = np.maximum(var, 1e-2)
        channels = mean.shape[0]
        bn.running_mean.set_data(mx.nd.array(mean + rng.uniform(-0.2, 0.2, channels) * np.sqrt(var)))
        bn.running_var.set_data(mx.nd.array(var * rng.uniform(0.6, 1.6, channels)))
        # Negative scales too: a sign slip in the converter must show.
        signs = np.where(rng.random(channels) < 0.15, -1.0, 1.0)
        bn.gamma.set_data(mx.nd.array(signs * rng.uniform(0.5, 1.5, channels)))
        bn.beta.set_data(mx.nd.array(rng.uniform(-0.3, 0.3, channels)))

    handles = []

    def attach(block):
        if isinstance(block, mx.gluon.nn.BatchNorm):
            handles.append(block.register_forward_pre_hook(calibrate))
        for child in block._children.values():
            attach(child)

    attach(net)
    net(x)
    for handle in handles:
        handle.detach()
    return count


def _main(argv: list[str]) -> int:
    import argparse

    if argv[:1] == ["--operator-cases"] and len(argv) == 2:
        # MXNet 1.9's MKLDNN graph partitioner fails to bind identity -> Dropout -> BlockGrad;
        # the plain operators are the reference anyway.
        os.environ["MXNET_SUBGRAPH_BACKEND"] = "NONE"
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(_operator_cases(out)))
        return 0
    import mxnet as mx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)

    net = mx.gluon.model_zoo.vision.get_model(args.name, pretrained=False)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    x_np = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    x = mx.nd.array(x_np)
    net(x)  # deferred initialization needs one forward before parameters have shapes
    n_bn = _randomize_batchnorm(net, mx, rng, x)
    net.hybridize(static_alloc=False)
    direct = net(x).asnumpy()
    prefix = args.out_dir / args.name
    net.export(str(prefix), epoch=0)

    # The reference is what the exported files compute, not what the Python block computes.
    loaded = mx.gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"], f"{prefix}-0000.params")
    output = loaded(x).asnumpy().astype(np.float32)
    np.save(args.out_dir / "input.npy", x_np)
    np.save(args.out_dir / "output.npy", output)
    symbol = json.loads(Path(f"{prefix}-symbol.json").read_text())
    report = {
        "name": args.name,
        "mxnet_version": mx.__version__,
        "batchnorms": n_bn,
        "ops": sorted({n["op"] for n in symbol["nodes"]}),
        "output_shape": list(output.shape),
        "output_max_abs": float(np.abs(output).max()),
        "output_std": float(output.std()),
        "block_vs_export_max_abs": float(np.abs(direct - output).max()),
    }
    (args.out_dir / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
