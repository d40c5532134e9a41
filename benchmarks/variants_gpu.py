"""The layers beyond torch.nn on a GPU: each on its fused backends against the same equations in plain PyTorch.

    python -m benchmarks.variants_gpu OUTDIR [--seconds S] [--remeasure] [--dry-run] [--layers NAME ...]

Layers: IndRNN, LayerNorm LSTM/GRU, sLSTM, multi-head LSTM/GRU (4 heads) and the LSTM/GRU with zoneout (0.1), one
layer, B=16, T=100, input and hidden 256, float32 and bfloat16. Contenders, on the same weights:
- fused_rnn.auto, .triton, .cuda and .torch (the layer's own loop of torch ops inside its op), where each runs here;
- plain_loop: the layer on backend="reference", a Python loop of the cell's equations in plain torch ops per step,
  with autograd's backward: what one writes without a library;
- plain_loop_compiled: that loop under torch.compile(fullgraph=True) (its first call compiles the unrolled loop:
  these are timed after every other contender, as the time left allows);
- torch.nn.LSTM at the same shape, for scale.
ms is the median of one call's GPU time (CUDA events) after warm-up; fw: forward under no_grad; fwbw: forward,
loss = output.sum(), backward. rel. error: normwise error of the output against the float64 reference.

OUTDIR/<device>-variants.json gets the rows, and .md the table, starting from the committed
benchmarks/results/<device>-variants.json, whose cases are not measured again unless --remeasure: copy both files
there to commit them. --dry-run: on CPU at tiny sizes (Triton in the interpreter), to check the code.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import fused_rnn
from benchmarks import report
from benchmarks.timing import time_runs

SHAPE = {"batch": 16, "steps": 100, "input_size": 256, "hidden_size": 256}
DRY_RUN_SHAPE = {"batch": 2, "steps": 4, "input_size": 8, "hidden_size": 8}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ("fw", "fwbw")
FUSED = ("auto", "triton", "cuda", "torch")
COMPILED = "plain_loop_compiled"
RUNS = (2, 10)  # (warm-up, timed) calls per measurement on the GPU
# Normwise error of the output against float64 above which a contender's figure is marked as failed.
ERROR_BOUND = {torch.float32: 1e-3, torch.bfloat16: 5e-2}


def layers() -> dict:
    """name -> make(input_size, hidden_size, backend): the variant layers, one layer each."""
    return {
        "indrnn": lambda i, h, backend: fused_rnn.IndRNN(i, h, backend=backend),
        "layernorm_lstm": lambda i, h, backend: fused_rnn.LayerNormLSTM(i, h, backend=backend),
        "layernorm_gru": lambda i, h, backend: fused_rnn.LayerNormGRU(i, h, backend=backend),
        "slstm": lambda i, h, backend: fused_rnn.sLSTM(i, h, num_heads=4, backend=backend),
        "multihead_lstm": lambda i, h, backend: fused_rnn.MultiHeadLSTM(i, h, num_heads=4, backend=backend),
        "multihead_gru": lambda i, h, backend: fused_rnn.MultiHeadGRU(i, h, num_heads=4, backend=backend),
        "zoneout_lstm": lambda i, h, backend: fused_rnn.LSTM(i, h, zoneout=0.1, backend=backend),
        "zoneout_gru": lambda i, h, backend: fused_rnn.GRU(i, h, zoneout=0.1, backend=backend),
    }


def contenders(source: torch.nn.Module, shape: dict, device, dtype) -> dict:
    """contender -> module on `device`/`dtype` with `source`'s weights: the fused backends that run this layer here
    (a backend that refuses a first tiny call is left out), the plain loop, and torch.nn's LSTM of the same shape."""
    found = {}
    probe = torch.randn(2, 1, shape["input_size"], device=device, dtype=dtype)
    for backend in (*FUSED, "reference"):
        module = copy.deepcopy(source).to(device, dtype)
        module.backend = backend
        try:
            with torch.no_grad():
                module(probe)
        except ValueError:  # this backend cannot serve the layer here (named in its message)
            continue
        found["plain_loop" if backend == "reference" else f"fused_rnn.{backend}"] = module
    lstm = torch.nn.LSTM(shape["input_size"], shape["hidden_size"], device=device, dtype=dtype)
    found["torch.nn.LSTM"] = lstm
    return found


def relative_error(module, exact, x) -> float | None:
    """Normwise error of `module`'s output for `x` against `exact` (float64); None for torch.nn's LSTM (other
    equations)."""
    if isinstance(module, torch.nn.LSTM):
        return None
    torch.manual_seed(0)  # zoneout's masks: evaluation mode uses none, but keep any draw reproducible
    with torch.no_grad():
        got = module(x)[0].double()
    return ((got - exact).norm() / exact.norm()).item()


def measure_case(name, make, shape, device, dtype, runs, compiled) -> list[dict]:
    """The rows of one layer and dtype: every contender but the compiled loop, or (compiled) that one alone."""
    torch.manual_seed(0)
    source = make(shape["input_size"], shape["hidden_size"], "reference").eval()
    x = torch.randn(shape["steps"], shape["batch"], shape["input_size"], device=device)
    with torch.no_grad():
        exact = copy.deepcopy(source).to(device, torch.float64)(x.double())[0]
    if compiled:
        found = {COMPILED: torch.compile(copy.deepcopy(source).to(device, dtype), fullgraph=True)}
    else:
        found = contenders(source, shape, device, dtype)
    rows = []
    for contender, module in found.items():
        error = relative_error(module, exact, x.to(dtype))
        for mode in MODES:
            rows.append(_timed(name, contender, module, x.to(dtype), mode, device, runs, error, shape, dtype))
    return rows


def _timed(name, contender, module, x, mode, device, runs, error, shape, dtype) -> dict:
    leaf = x.clone().requires_grad_(mode == "fwbw")

    module.train(mode == "fwbw")  # zoneout draws its masks in training only

    def call():
        if mode == "fw":
            with torch.no_grad():
                module(leaf)
        else:
            module(leaf)[0].float().sum().backward()

    def reset():
        leaf.grad = None
        module.zero_grad(set_to_none=True)

    row = {"layer": name, "dtype": {v: k for k, v in DTYPES.items()}[dtype], "mode": mode, "contender": contender}
    row |= shape | {"relative_error": error, "failure": None}
    if error is not None and not error <= ERROR_BOUND[dtype]:
        row["failure"] = f"output off by {error:.1e} (normwise) against float64"
    try:
        timing = time_runs(call, reset, device, *runs)
    except Exception as failure:  # one contender's failure must not cost the others' figures
        return row | {"ms": None, "failure": f"{type(failure).__name__}: {failure}"}
    return row | {"ms": timing.median_ms, "ms_p20": timing.p20_ms, "ms_p80": timing.p80_ms}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# The variant layers on {env['device_name']}",
        "",
        f"{env['date_utc']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; "
        f"commit {env['git_commit']}. Generated by `python -m benchmarks.variants_gpu` (gpu_check's "
        "variant-benchmarks part).",
        "",
        "ms: median GPU time of one call. x plain: ms / plain_loop's ms (the same equations in plain torch ops, step "
        "by step) in the same dtype and mode. rel. error: normwise error of the output against float64.",
        "",
        "| layer | B | T | H | dtype | mode | contender | ms | x plain | rel. error | failure |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["layer"], r["dtype"], r["mode"])  # noqa: E731
    plain = {key(r): r["ms"] for r in result["rows"] if r["contender"] == "plain_loop" and r["ms"]}
    for r in result["rows"]:
        ms = f"{r['ms']:.3g}" if r["ms"] is not None else "-"
        ratio = f"{r['ms'] / plain[key(r)]:.2f}" if r["ms"] is not None and key(r) in plain else "-"
        error = f"{r['relative_error']:.1e}" if r["relative_error"] is not None else "-"
        lines.append(
            f"| {r['layer']} | {r['batch']} | {r['steps']} | {r['hidden_size']} | {r['dtype']} | {r['mode']} | "
            f"{r['contender']} | {ms} | {ratio} | {error} | {r['failure'] or ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path, help="where <device>-variants.json and .md go")
    parser.add_argument("--seconds", type=float, default=600.0, help="start no case after this many seconds")
    parser.add_argument("--remeasure", action="store_true", help="measure the cases the committed results have too")
    parser.add_argument("--dry-run", action="store_true", help="on CPU at tiny sizes")
    parser.add_argument("--layers", nargs="+", choices=list(layers()), default=list(layers()), help="default: all")
    args = parser.parse_args(argv)
    stop_at = time.monotonic() + args.seconds
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    shape, runs = (DRY_RUN_SHAPE, (1, 2)) if args.dry_run else (SHAPE, RUNS)
    committed = report.RESULTS / f"{report.device_slug(device)}-variants.json"
    kept = json.loads(committed.read_text())["rows"] if committed.exists() and not args.remeasure else []
    measured = {(r["layer"], r["dtype"]) for r in kept}
    cases = [(layer, dtype) for layer in args.layers for dtype in DTYPES if (layer, dtype) not in measured]
    # First every case without the compiled loop, then the compiled loop of each as the time left allows.
    plan = [(layer, dtype, False) for layer, dtype in cases] + [(layer, dtype, True) for layer, dtype in cases]
    rows, not_started = [], []
    for layer, dtype, compiled in plan:
        if time.monotonic() > stop_at:
            not_started.append(f"{layer} {dtype}" + (" compiled" if compiled else ""))
            continue
        case_rows = measure_case(layer, layers()[layer], shape, device, DTYPES[dtype], runs, compiled)
        rows += case_rows
        for r in case_rows:
            print(
                f"{r['layer']} {r['dtype']} {r['mode']} {r['contender']}: {r['ms']} ms {r['failure'] or ''}", flush=True
            )
    replaced = {(r["layer"], r["dtype"], r["contender"]) for r in rows}
    rows = [r for r in kept if (r["layer"], r["dtype"], r["contender"]) not in replaced] + rows
    return report.write_gpu_rows(args.outdir, "variants", rows, device, markdown, not_started, "variant benchmarks")


if __name__ == "__main__":
    sys.exit(main())
