"""One step of fused_rnn's cells (LSTMCell, GRUCell, RNNCell) against torch.nn's on CPU, medians, one process.

    python -m benchmarks.cells_cpu [--quick] [--threads N] [--out benchmarks/results/cells_cpu]

Each call is one step from a given state, input size = hidden size, float32: "fw" without grad, "fwbw" with
loss = h'.sum() and a backward to the input, the state and every weight. Contenders: torch.nn's cell; fused_rnn's
cell on "auto" (what a user gets) and on "cpu" (the compiled sequence kernels run for one step). Every contender's
output is checked against torch.nn's before timing. Writes OUT.json (the rows) and OUT.md (the table, with each
contender's time relative to torch.nn's).
"""

import functools
import sys
import time

import torch
from torch import nn

import fused_rnn
from benchmarks.timing import time_interleaved
from benchmarks.variants_cpu import INTERLEAVED, provenance, run_command_line

CELLS = {
    "lstm": (nn.LSTMCell, fused_rnn.LSTMCell),
    "gru": (nn.GRUCell, fused_rnn.GRUCell),
    "rnn_tanh": (nn.RNNCell, fused_rnn.RNNCell),
}
SHAPES = [(1, 64), (1, 512), (16, 256), (64, 64), (64, 1024)]  # (batch, hidden)
QUICK_SHAPES = [(2, 8)]
BASELINE = "torch.nn"
FUSED_BACKENDS = ("auto", "cpu")
MODES = ("fw", "fwbw")
SAMPLE_SECONDS = 2e-3


def contenders(cell, hidden):
    """name -> module: torch.nn's cell and fused_rnn's on each backend, holding the same weights."""
    torch.manual_seed(0)
    torch_class, fused_class = CELLS[cell]
    reference = torch_class(hidden, hidden)
    modules = {BASELINE: reference}
    for backend in FUSED_BACKENDS:
        modules[f"fused_rnn.{backend}"] = fused_rnn.from_torch(torch_class(hidden, hidden), backend=backend)
        modules[f"fused_rnn.{backend}"].load_state_dict(reference.state_dict())
    return modules


def step_call(module, x, state, mode):
    """One step of `module` as the benchmark times it (a fresh backward each time in "fwbw")."""
    if mode == "fw":

        def forward():
            with torch.no_grad():
                module(x, state)

        return forward
    leaves = [x, *(state if isinstance(state, tuple) else (state,)), *module.parameters()]

    def training_step():
        for leaf in leaves:
            leaf.grad = None
        out = module(x, state)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return training_step


def calls_per_sample(call, sample_seconds=SAMPLE_SECONDS) -> int:
    """How many calls of `call` one timed sample makes so that it lasts about `sample_seconds`: a step of a small
    cell takes 10-20 us, where one call per sample would time the timer and the scheduler."""
    call()
    start = time.perf_counter()
    call()
    return max(1, round(sample_seconds / (time.perf_counter() - start)))


def repeated(call, times):
    for _ in range(times):
        call()


def measure(shapes, warmup, repeats):
    rows = []
    for cell in CELLS:
        for batch, hidden in shapes:
            modules = contenders(cell, hidden)
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(batch, hidden, generator=generator).requires_grad_()
            h = torch.randn(batch, hidden, generator=generator).requires_grad_()
            state = (h, torch.randn(batch, hidden, generator=generator).requires_grad_()) if cell == "lstm" else h
            expected = modules[BASELINE](x, state)
            for name, module in modules.items():
                got = module(x, state)
                for e, g in zip(*(o if isinstance(o, tuple) else (o,) for o in (expected, got)), strict=True):
                    torch.testing.assert_close(g, e, msg=lambda m, n=name: f"{n}: {m}")
            for mode in MODES:
                steps = {name: step_call(module, x, state, mode) for name, module in modules.items()}
                inner = calls_per_sample(steps[BASELINE])
                calls = {name: functools.partial(repeated, step, inner) for name, step in steps.items()}
                for name, timing in time_interleaved(calls, warmup, repeats).items():
                    rows.append(
                        {
                            "cell": cell,
                            "batch": batch,
                            "hidden": hidden,
                            "mode": mode,
                            "contender": name,
                            "median_ms": timing.median_ms / inner,
                            "p20_ms": timing.p20_ms / inner,
                            "p80_ms": timing.p80_ms / inner,
                            "calls_per_sample": inner,
                        }
                    )
                    print(f"{cell} B{batch} H{hidden} {mode} {name:16} {timing.median_ms / inner:9.4f} ms", flush=True)
    return rows


def markdown(result) -> str:
    lines = [
        "# One step of a cell on CPU",
        "",
        provenance(
            result,
            "python -m benchmarks.cells_cpu",
            f"Warmup {result['warmup']} and {result['repeats']} {INTERLEAVED}",
        ),
        "",
        "ms: median of one call of the cell (each sample times calls_per_sample calls in a row, about "
        f"{SAMPLE_SECONDS * 1e3:g} ms), one step from a given state, float32, input size = hidden size; fw "
        "without grad, fwbw with h'.sum() and a backward to the input, the state and every weight. x torch.nn: ms / "
        "torch.nn's ms. Outputs checked equal to torch.nn's before timing.",
        "",
        "| cell | B | H | mode | contender | ms | x torch.nn |",
        "|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["cell"], r["batch"], r["hidden"], r["mode"])
    baseline = {key(r): r["median_ms"] for r in result["rows"] if r["contender"] == BASELINE}
    for r in result["rows"]:
        lines.append(
            f"| {r['cell']} | {r['batch']} | {r['hidden']} | {r['mode']} | {r['contender']} | "
            f"{r['median_ms']:.3g} | {r['median_ms'] / baseline[key(r)]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return run_command_line(__doc__, argv, measure, SHAPES, QUICK_SHAPES, markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
