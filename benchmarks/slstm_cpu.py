"""sLSTM and the headed LSTM on CPU: fused_rnn's paths against the fairest baselines, in one process, medians.

    python -m benchmarks.slstm_cpu [--quick] [--out benchmarks/results/slstm_cpu]

Contenders, all float32, one layer with num_heads heads (block-diagonal recurrent weight), same weights:
- plain_loop: what one writes in plain PyTorch: the input projection of all steps as one GEMM, then a Python loop of
  one batched product over heads (torch.bmm) and the cell's equations in torch ops; outputs stacked; autograd's
  backward. The fairest baseline: the same equations, no library.
- plain_loop_compiled: torch.compile(plain_loop, fullgraph=True) (inductor; the loop unrolls over T).
- fused_rnn_reference: fused_rnn.multihead's oracle (backend="reference").
- fused_rnn_torch: the fused op with its pointwise step as torch ops per step and a hand-written backward
  (backend="torch", what "auto" ran on CPU before the compiled kernel).
- fused_rnn_auto: what fused_rnn.sLSTM / fused_rnn.MultiHeadLSTM run on CPU with backend="auto": the compiled CPU
  kernel (backend="cpu", csrc/cpu/multihead.cpp: the whole step loop in one call) where it is built.
Each contender's output is checked against the float64 reference before it is timed.
Writes OUT.json (the rows) and OUT.md (the table, with ratios to plain_loop).
"""

import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.timing import time_runs
from benchmarks.variants_cpu import run_command_line
from fused_rnn.multihead import functional

# (cell, batch, steps, hidden, heads); input size = hidden
SHAPES = [
    ("slstm", 1, 20, 128, 4),
    ("slstm", 16, 20, 256, 4),
    ("lstm", 1, 20, 128, 4),
    ("lstm", 16, 20, 256, 4),
]
QUICK_SHAPES = [("slstm", 2, 6, 16, 2), ("lstm", 2, 6, 16, 2)]
GATES = 4


def plain_loop(cell, x, state, weight_ih, weight_hh, bias_ih, bias_hh):
    heads, _, head_dim = weight_hh.shape
    batch = x.shape[1]
    projection = F.linear(x, weight_ih, bias_ih)
    if bias_hh is not None:
        projection = projection + bias_hh
    recurrent = weight_hh.transpose(1, 2)
    h, *rest = state
    outputs = []
    for t in range(x.shape[0]):
        by_head = torch.bmm(h.view(batch, heads, head_dim).transpose(0, 1), recurrent)  # (heads, B, 4 * head_dim)
        gates = projection[t] + by_head.view(heads, batch, GATES, head_dim).permute(1, 2, 0, 3).reshape(batch, -1)
        if cell == "slstm":
            c, n, m = rest
            i_pre, f_pre, z_pre, o_pre = gates.chunk(4, 1)
            kept = torch.where(n == 0, float("-inf"), F.logsigmoid(f_pre) + m)
            m = torch.maximum(kept, i_pre)
            i_gate, f_gate = torch.exp(i_pre - m), torch.exp(kept - m)
            c = f_gate * c + i_gate * torch.tanh(z_pre)
            n = f_gate * n + i_gate
            h = torch.sigmoid(o_pre) * c / n
            rest = (c, n, m)
        else:
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * rest[0] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            rest = (c,)
        outputs.append(h)
    return torch.stack(outputs), (h, *rest)


def fused_rnn_path(backend):
    def run(cell, x, state, weight_ih, weight_hh, bias_ih, bias_hh):
        return functional.run(cell, x, state, weight_ih, weight_hh, bias_ih, bias_hh, backend=backend)

    return run


def contenders():
    return {
        "plain_loop": plain_loop,
        "plain_loop_compiled": torch.compile(plain_loop, fullgraph=True, dynamic=False),
        "fused_rnn_reference": fused_rnn_path("reference"),
        "fused_rnn_torch": fused_rnn_path("torch"),
        "fused_rnn_auto": fused_rnn_path("auto"),
    }


def make_inputs(cell, batch, steps, hidden, heads, seed=0):
    """(x, state, weight_ih, weight_hh, bias_ih, bias_hh) as the modules initialise them, from a fixed seed; the
    zero initial state (the sLSTM's n0 = 0 takes the first step's stabilizer from the input gate)."""
    generator = torch.Generator().manual_seed(seed)
    bound = hidden**-0.5
    uniform = lambda *shape: (torch.rand(shape, generator=generator) * 2 - 1) * bound
    head_dim = hidden // heads
    weight_ih, weight_hh = uniform(GATES * hidden, hidden), uniform(heads, GATES * head_dim, head_dim)
    bias_ih = uniform(GATES * hidden)
    bias_hh = None if cell == "slstm" else uniform(GATES * hidden)
    x = torch.randn(steps, batch, hidden, generator=generator)
    state = tuple(torch.zeros(batch, hidden) for _ in range(4 if cell == "slstm" else 2))
    return x, state, weight_ih, weight_hh, bias_ih, bias_hh


def relative_error(run, cell, tensors) -> float:
    """Normwise error of run's output against the float64 reference."""
    x, state, *weights = tensors
    double = lambda t: t.double() if t is not None else None
    exact, _ = functional.run(cell, double(x), tuple(map(double, state)), *map(double, weights), backend="reference")
    with torch.no_grad():
        got, _ = run(cell, *tensors)
    return ((got.double() - exact).norm() / exact.norm()).item()


def measure(shapes, warmup, repeats):
    rows = []
    for cell, batch, steps, hidden, heads in shapes:
        tensors = make_inputs(cell, batch, steps, hidden, heads)
        for name, run in contenders().items():
            error = relative_error(run, cell, tensors)
            for mode in ("fw", "fwbw"):
                x, state, *weights = tensors
                leaves = [x.clone().requires_grad_(mode == "fwbw")]
                leaves += [w.clone().requires_grad_(mode == "fwbw") if w is not None else None for w in weights]

                def call(run=run, leaves=leaves, mode=mode, state=state, cell=cell):
                    if mode == "fw":
                        with torch.no_grad():
                            run(cell, leaves[0], state, *leaves[1:])
                    else:
                        output, _ = run(cell, leaves[0], state, *leaves[1:])
                        output.sum().backward()

                def reset(leaves=leaves):
                    for leaf in leaves:
                        if leaf is not None:
                            leaf.grad = None

                start = time.perf_counter()
                timing = time_runs(call, reset, torch.device("cpu"), warmup, repeats)
                rows.append(
                    {
                        "cell": cell,
                        "batch": batch,
                        "steps": steps,
                        "hidden": hidden,
                        "heads": heads,
                        "mode": mode,
                        "contender": name,
                        "median_ms": timing.median_ms,
                        "p20_ms": timing.p20_ms,
                        "p80_ms": timing.p80_ms,
                        "relative_error": error,
                        "seconds_with_warmup": time.perf_counter() - start,
                    }
                )
                print(
                    f"{cell} B{batch} T{steps} H{hidden} NH{heads} {mode:4} {name:20} {timing.median_ms:9.3f} ms",
                    flush=True,
                )
    return rows


FLASHRNN_NOTE = (
    'FlashRNN (Pöppel, Beck, Hochreiter 2024, arXiv:2412.07752) publishes GPU figures only: "up to 50x speed-ups '
    "over a vanilla PyTorch implementation\" (the paper's abstract) and its fused CUDA kernels 2x to 5x faster than "
    "its alternating ones (its README); its Triton kernels take head_dim <= 64. We did not find the GPU those figures "
    "were measured on in the parts of the paper and README we could read, and FlashRNN has no CPU path, so no figure "
    "of theirs stands beside these CPU rows; GPU rows belong in benchmarks.gpu_check."
)


def markdown(result) -> str:
    env = result["environment"]
    lines = [
        "# sLSTM and the headed LSTM on CPU",
        "",
        f"{env['date']}; {env['cpu']}, {env['threads']} thread(s); torch {env['torch']}; commit {env['commit']}. "
        f"Warmup {result['warmup']}, repeats {result['repeats']}, one process. Generated by "
        "`python -m benchmarks.slstm_cpu`.",
        "",
        "ms: median of one call of one layer (fw: forward under no_grad; fwbw: forward, output.sum(), backward to the "
        "input and every weight). x plain: ms / plain_loop's ms for the same shape and mode. rel. error: normwise "
        "error of the float32 output against the float64 reference.",
        "",
        "| cell | B | T | H | heads | mode | contender | ms | x plain | rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["cell"], r["batch"], r["steps"], r["hidden"], r["heads"], r["mode"])
    plain = {key(r): r["median_ms"] for r in result["rows"] if r["contender"] == "plain_loop"}
    for r in result["rows"]:
        ratio = r["median_ms"] / plain[key(r)]
        lines.append(
            f"| {r['cell']} | {r['batch']} | {r['steps']} | {r['hidden']} | {r['heads']} | {r['mode']} | "
            f"{r['contender']} | {r['median_ms']:.3g} | {ratio:.2f} | {r['relative_error']:.1e} |"
        )
    return "\n".join(lines) + "\n\n" + FLASHRNN_NOTE + "\n"


def main(argv=None) -> dict:
    return run_command_line(__doc__, argv, measure, SHAPES, QUICK_SHAPES, markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
