"""Zoneout LSTM and GRU on CPU: fused_rnn against the fairest baselines, in one process, medians.

    python -m benchmarks.zoneout_cpu [--quick] [--out benchmarks/results/zoneout_cpu]

Contenders, all float32, training mode (masks drawn every call), one layer over the same weights:
- cell_loop: what one writes in plain PyTorch: torch.nn.LSTMCell / GRUCell stepped in a Python loop, the zoneout
  masks drawn once for all steps (one torch.bernoulli), h (and c) blended with their previous values per step.
- cell_loop_compiled: torch.compile(cell_loop, fullgraph=True) (inductor; the loop unrolls over T).
- fused_rnn_auto: fused_rnn.LSTM / GRU(zoneout=...) with backend="auto"; on CPU that runs the compiled CPU kernels
  ("cpu", zoneout in their cell math) when the extension loads.
- fused_rnn_reference: the same layer with backend="reference", the step-by-step PyTorch loop "auto" ran on CPU
  before the compiled kernels had zoneout.
- fused_rnn_triton_interpreter: the Triton kernels under TRITON_INTERPRET=1 (smallest shape only): why "auto" does
  not pick them on CPU.
Each contender's output in evaluation mode (d = p, no randomness) is checked against the float64 reference first.
Writes OUT.json (the rows) and OUT.md (the table, with ratios to cell_loop).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import fused_rnn
from benchmarks.variants_cpu import environment

# (batch, steps, hidden); input size = hidden
SHAPES = [(1, 20, 64), (16, 20, 256)]
QUICK_SHAPES = [(2, 8, 16)]
ZONEOUT = {"lstm": (0.05, 0.5), "gru": 0.1}  # Krueger et al.'s rates for the LSTM's h and c; a GRU's h
INTERPRETER_ROW = "fused_rnn_triton_interpreter"


def rates(cell):
    p = ZONEOUT[cell]
    return p if isinstance(p, tuple) else (p,)


class CellLoop(torch.nn.Module):
    """Zoneout as plain PyTorch: a torch.nn cell stepped in a loop, masks drawn once per call."""

    def __init__(self, cell, layer):
        super().__init__()
        self.cell_name = cell
        torch_cell = torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell
        self.cell = torch_cell(layer.input_size, layer.hidden_size).to(layer.weight_hh_l0.dtype)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(self.cell, name).data.copy_(getattr(layer, f"{name}_l0").data)

    def forward(self, x):
        steps, batch, _ = x.shape
        hidden = self.cell.hidden_size
        states = [x.new_zeros(batch, hidden) for _ in rates(self.cell_name)]
        p = torch.cat([x.new_full((hidden,), q) for q in rates(self.cell_name)])
        keep = torch.bernoulli(p.expand(steps, batch, -1)) if self.training else p.expand(steps, batch, -1)
        keep = keep.split(hidden, dim=-1)
        outputs = []
        for t in range(steps):
            new = self.cell(x[t], tuple(states) if self.cell_name == "lstm" else states[0])
            new = new if self.cell_name == "lstm" else (new,)
            states = [d[t] * old + (1 - d[t]) * n for d, old, n in zip(keep, states, new)]
            outputs.append(states[0])
        return torch.stack(outputs)


class OutputOf(torch.nn.Module):
    """A layer's output alone, as a module, so that .eval() and .parameters() reach the layer."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)[0]


def make_layer(cell, hidden, seed=0):
    torch.manual_seed(seed)
    layer_class = fused_rnn.LSTM if cell == "lstm" else fused_rnn.GRU
    return layer_class(hidden, hidden, zoneout=ZONEOUT[cell])


def contenders(cell, layer):
    loop = CellLoop(cell, layer)
    reference_layer = make_layer(cell, layer.hidden_size)
    reference_layer.load_state_dict(layer.state_dict())
    reference_layer.backend = "reference"
    return {
        "cell_loop": loop,
        "cell_loop_compiled": torch.compile(loop, fullgraph=True, dynamic=False),
        "fused_rnn_auto": lambda x: layer(x)[0],
        "fused_rnn_reference": OutputOf(reference_layer),
    }


def relative_error(cell, layer, run, x) -> float:
    """Normwise error of run's evaluation-mode output (d = p) against the float64 reference layer."""
    exact_layer = make_layer(cell, layer.hidden_size).double().eval()
    exact_layer.load_state_dict(layer.state_dict())
    exact = exact_layer(x.double())[0]
    owners = [m for m in (layer, getattr(run, "_orig_mod", run)) if isinstance(m, torch.nn.Module)]
    for module in owners:
        module.eval()
    with torch.no_grad():
        got = run(x)
    for module in owners:
        module.train()
    return ((got.double() - exact).norm() / exact.norm()).item()


def time_interleaved(cell, layer, runs, x, parameters, warmup, repeats) -> list[dict]:
    """Rows (fw, fwbw) for each contender on input x, each checked first. The contenders take turns within every
    repeat, so the load of a shared machine falls on all of them alike."""
    steps, batch, hidden = x.shape
    errors = {name: relative_error(cell, layer, run, x) for name, run in runs.items()}
    rows = []
    for mode in ("fw", "fwbw"):
        leaf = x.clone().requires_grad_(mode == "fwbw")

        def call(run, leaf=leaf, mode=mode):
            for t in [leaf, *parameters]:
                t.grad = None
            start = time.perf_counter()
            if mode == "fw":
                with torch.no_grad():
                    run(leaf)
            else:
                run(leaf).sum().backward()
            return (time.perf_counter() - start) * 1e3

        for run in runs.values():
            for _ in range(warmup):
                call(run)
        times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(call(run))
        for name, measured in times.items():
            median, p20, p80 = (
                torch.tensor(measured, dtype=torch.float64)
                .quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
                .tolist()
            )
            rows.append(
                {
                    "cell": cell,
                    "zoneout": ZONEOUT[cell],
                    "batch": batch,
                    "steps": steps,
                    "hidden": hidden,
                    "mode": mode,
                    "contender": name,
                    "median_ms": median,
                    "p20_ms": p20,
                    "p80_ms": p80,
                    "relative_error": errors[name],
                }
            )
            print(f"{cell} B{batch} T{steps} H{hidden} {mode:4} {name:28} {median:9.3f} ms", file=sys.stderr)
    return rows


def make_input(batch, steps, hidden):
    return torch.randn(steps, batch, hidden, generator=torch.Generator().manual_seed(1))


def measure(shapes, warmup, repeats) -> list[dict]:
    rows = []
    for cell in ("lstm", "gru"):
        for batch, steps, hidden in shapes:
            torch._dynamo.reset()  # every CellLoop shares one forward, whose recompilations dynamo caps
            layer = make_layer(cell, hidden)
            runs = contenders(cell, layer)
            parameters = [
                *layer.parameters(),
                *runs["cell_loop"].parameters(),
                *runs["fused_rnn_reference"].parameters(),
            ]
            rows += time_interleaved(cell, layer, runs, make_input(batch, steps, hidden), parameters, warmup, repeats)
    return rows


def measure_interpreter(shape) -> list[dict]:
    """The zoned layers forced onto the Triton kernels (under the interpreter) at one shape, 1 warmup, 3 repeats."""
    rows = []
    for cell in ("lstm", "gru"):
        layer = make_layer(cell, shape[2])
        layer.backend = "triton"
        runs = {INTERPRETER_ROW: lambda x, layer=layer: layer(x)[0]}
        rows += time_interleaved(cell, layer, runs, make_input(*shape), list(layer.parameters()), 1, 3)
    return rows


def interpreter_rows(shape, threads) -> list[dict]:
    """fused_rnn_auto's layer forced onto the Triton kernels under the interpreter, in a subprocess (the interpreter
    must be chosen before Triton is imported)."""
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "benchmarks.zoneout_cpu", "--interpreter-row", ",".join(map(str, shape))]
    done = subprocess.run(
        [*command, "--threads", str(threads)], env=environment, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def markdown(result) -> str:
    env = result["environment"]
    lines = [
        "# Zoneout LSTM and GRU on CPU",
        "",
        f"{env['date']}; {env['cpu']}, {env['threads']} thread(s); torch {env['torch']}; commit {env['commit']}. "
        f"Warmup {result['warmup']}, repeats {result['repeats']}, the contenders taking turns within each repeat, one "
        "process (the interpreter row in a subprocess, 1 warmup, 3 repeats). "
        "Generated by `python -m benchmarks.zoneout_cpu`.",
        "",
        "One layer, float32, training mode (zoneout masks drawn every call; LSTM p_hidden, p_cell = 0.05, 0.5, GRU "
        "p = 0.1), input size = hidden size. ms: median of one call (fw: forward under no_grad; fwbw: forward, "
        "output.sum(), backward to the input and every weight). x loop: ms / cell_loop's ms for the same cell, shape "
        "and mode. rel. error: normwise error of the evaluation-mode (d = p) float32 output against the float64 "
        "reference.",
        "",
        "| cell | B | T | H | mode | contender | ms | x loop | rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["cell"], r["batch"], r["steps"], r["hidden"], r["mode"])
    loop = {key(r): r["median_ms"] for r in result["rows"] if r["contender"] == "cell_loop"}
    for r in sorted(result["rows"], key=lambda r: (key(r)[0], *key(r)[1:4], r["mode"])):
        ratio = r["median_ms"] / loop[key(r)]
        lines.append(
            f"| {r['cell']} | {r['batch']} | {r['steps']} | {r['hidden']} | {r['mode']} | {r['contender']} | "
            f"{r['median_ms']:.3g} | {ratio:.2f} | {r['relative_error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one tiny shape, few repeats (for the tests)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--interpreter-row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.interpreter_row is not None:
        rows = measure_interpreter(tuple(map(int, args.interpreter_row.split(","))))
        print(json.dumps(rows))
        return {"rows": rows}
    warmup, repeats = (1, 3) if args.quick else (2, 20)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    rows = measure(shapes, warmup, repeats) + interpreter_rows(shapes[0], args.threads)
    result = {"environment": environment(), "warmup": warmup, "repeats": repeats, "rows": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
