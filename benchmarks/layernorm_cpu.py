"""LayerNorm LSTM and GRU on CPU: fused_rnn's paths against the fairest baselines, in one process, medians.

    python -m benchmarks.layernorm_cpu [--quick] [--out benchmarks/results/layernorm_cpu]

Contenders, all float32 and all computing the same equations (fused_rnn/layernorm/reference.py) over the same weights:
- nn_loop: what one writes with torch.nn: a step module of nn.LayerNorm modules and matmuls (LayerNorm of x W_ih^T,
  of h W_hh^T and, for the LSTM, of c'), called once per time step in a Python loop, outputs stacked. The fairest
  baseline: the same equations, no library.
- nn_loop_compiled: torch.compile(nn_loop, fullgraph=True) (inductor; the loop unrolls over T).
- fused_rnn_reference: fused_rnn.layernorm's oracle (backend="reference").
- fused_rnn_torch: the loop of torch ops with the input projection hoisted (backend="torch"; "auto" until the
  compiled kernels).
- fused_rnn_auto: what fused_rnn.LayerNormLSTM/GRU run on CPU with backend="auto": the compiled step loop ("cpu",
  csrc/cpu/layernorm.cpp) where the extension is built.
Each contender's output is checked against the float64 reference before it is timed.
Writes OUT.json (the rows) and OUT.md (the table, with ratios to nn_loop).
"""

import sys
import time

import torch
from torch import nn

from benchmarks.timing import time_runs
from benchmarks.variants_cpu import provenance, run_command_line
from fused_rnn.layernorm import functional

# (batch, steps, hidden); input size = hidden. Small: the compiled loop unrolls over T and compiles per shape and mode.
SHAPES = [(1, 16, 128), (32, 16, 256)]
QUICK_SHAPES = [(2, 4, 8)]
CELLS = ("lstm", "gru")


class NNLayerNormLSTMCell(nn.Module):
    """The LayerNorm LSTM step composed of torch.nn parts, holding the same tensors as fused_rnn's functional API."""

    def __init__(self, weight_ih, weight_hh, bias_ih, gain_ih, gain_hh, gain_c, shift_c):
        super().__init__()
        width, hidden = weight_hh.shape
        self.weight_ih, self.weight_hh, self.bias = weight_ih, weight_hh, bias_ih
        self.norm_ih = nn.LayerNorm(width, bias=False)
        self.norm_hh = nn.LayerNorm(width, bias=False)
        self.norm_c = nn.LayerNorm(hidden)
        self.norm_ih.weight, self.norm_hh.weight = nn.Parameter(gain_ih), nn.Parameter(gain_hh)
        self.norm_c.weight, self.norm_c.bias = nn.Parameter(gain_c), nn.Parameter(shift_c)

    def forward(self, x, h, c):
        gates = self.norm_ih(x @ self.weight_ih.T) + self.norm_hh(h @ self.weight_hh.T) + self.bias
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(self.norm_c(c)), c


class NNLayerNormGRUCell(nn.Module):
    """The LayerNorm GRU step composed of torch.nn parts."""

    def __init__(self, weight_ih, weight_hh, bias_ih, bias_hh, gain_ih, gain_hh):
        super().__init__()
        width = weight_hh.shape[0]
        self.weight_ih, self.weight_hh = weight_ih, weight_hh
        self.norm_ih, self.norm_hh = nn.LayerNorm(width), nn.LayerNorm(width)
        self.norm_ih.weight, self.norm_ih.bias = nn.Parameter(gain_ih), nn.Parameter(bias_ih)
        self.norm_hh.weight, self.norm_hh.bias = nn.Parameter(gain_hh), nn.Parameter(bias_hh)

    def forward(self, x, h):
        a_r, a_z, a_n = self.norm_ih(x @ self.weight_ih.T).chunk(3, 1)
        u_r, u_z, u_n = self.norm_hh(h @ self.weight_hh.T).chunk(3, 1)
        r, z = torch.sigmoid(a_r + u_r), torch.sigmoid(a_z + u_z)
        n = torch.tanh(a_n + r * u_n)
        return (1 - z) * n + z * h


def nn_loop(step, x, states):
    """The step module called over the sequence: (output, final hidden state)."""
    outputs = []
    for t in range(x.shape[0]):
        states = step(x[t], *states) if isinstance(step, NNLayerNormLSTMCell) else (step(x[t], *states),)
        outputs.append(states[0])
    return torch.stack(outputs), states[0]


def nn_contender(loop):
    """prepare(cell, weights) -> (run(x, states), parameters) for a loop over a torch.nn step module."""

    def prepare(cell, weights):
        copies = [w.detach().clone() for w in weights]
        step = NNLayerNormLSTMCell(*copies) if cell == "lstm" else NNLayerNormGRUCell(*copies)
        return (lambda x, states: loop(step, x, states)), list(step.parameters())

    return prepare


def fused_rnn_contender(backend):
    """prepare(cell, weights) -> (run(x, states), parameters) for fused_rnn's functional API."""

    def prepare(cell, weights):
        parameters = [w.detach().clone().requires_grad_() for w in weights]

        def run(x, states):
            if cell == "lstm":
                output, (h_n, _) = functional.layernorm_lstm(x, tuple(states), *parameters, backend=backend)
                return output, h_n
            return functional.layernorm_gru(x, states[0], *parameters, backend=backend)

        return run, parameters

    return prepare


def contenders():
    return {
        "nn_loop": nn_contender(nn_loop),
        "nn_loop_compiled": nn_contender(torch.compile(nn_loop, fullgraph=True, dynamic=False)),
        "fused_rnn_reference": fused_rnn_contender("reference"),
        "fused_rnn_torch": fused_rnn_contender("torch"),
        "fused_rnn_auto": fused_rnn_contender("auto"),
    }


def make_inputs(cell, batch, steps, hidden, seed=0):
    """(x, states, weights) drawn as fused_rnn's LayerNorm layers initialise their parameters, from a fixed seed; the
    gains and shifts are moved off their init (1, 0) so that each matters."""
    generator = torch.Generator().manual_seed(seed)
    uniform = lambda *shape: (torch.rand(shape, generator=generator) * 2 - 1) * hidden**-0.5
    near = lambda center, *shape: center + 0.1 * torch.randn(shape, generator=generator)
    width = (4 if cell == "lstm" else 3) * hidden
    weights = [uniform(width, hidden), uniform(width, hidden), uniform(width)]
    weights += [] if cell == "lstm" else [uniform(width)]
    weights += [near(1.0, width), near(1.0, width)]
    weights += [near(1.0, hidden), near(0.0, hidden)] if cell == "lstm" else []
    x = torch.randn(steps, batch, hidden, generator=generator)
    states = [torch.zeros(batch, hidden) for _ in range(2 if cell == "lstm" else 1)]
    return x, states, weights


def relative_error(cell, run, x, states, weights) -> float:
    """Normwise error of run's output against the float64 reference."""
    exact_run, _ = fused_rnn_contender("reference")(cell, [w.double() for w in weights])
    exact, _ = exact_run(x.double(), [s.double() for s in states])
    with torch.no_grad():
        got, _ = run(x, states)
    return ((got.double() - exact).norm() / exact.norm()).item()


def measure(shapes, warmup, repeats):
    rows = []
    for cell in CELLS:
        for batch, steps, hidden in shapes:
            x, states, weights = make_inputs(cell, batch, steps, hidden)
            for name, prepare in contenders().items():
                run, parameters = prepare(cell, weights)
                error = relative_error(cell, run, x, states, weights)
                for mode in ("fw", "fwbw"):
                    x_leaf = x.clone().requires_grad_(mode == "fwbw")

                    def call(run=run, x_leaf=x_leaf, states=states, mode=mode):
                        if mode == "fw":
                            with torch.no_grad():
                                run(x_leaf, states)
                        else:
                            output, _ = run(x_leaf, states)
                            output.sum().backward()

                    def reset(leaves=(x_leaf, *parameters)):
                        for leaf in leaves:
                            leaf.grad = None

                    start = time.perf_counter()
                    timing = time_runs(call, reset, torch.device("cpu"), warmup, repeats)
                    rows.append(
                        {
                            "cell": cell,
                            "batch": batch,
                            "steps": steps,
                            "hidden": hidden,
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
                        f"{cell} B{batch} T{steps} H{hidden} {mode:4} {name:20} {timing.median_ms:9.3f} ms",
                        flush=True,
                    )
    return rows


def markdown(result) -> str:
    lines = [
        "# LayerNorm LSTM and GRU on CPU",
        "",
        provenance(
            result,
            "python -m benchmarks.layernorm_cpu",
            f"Warmup {result['warmup']}, repeats {result['repeats']}",
        ),
        "",
        "ms: median of one call (fw: forward under no_grad; fwbw: forward, output.sum(), backward to the input and "
        "every weight). x nn: ms / nn_loop's ms for the same cell, shape and mode. rel. error: normwise error of "
        "the float32 output against the float64 reference. Input size = hidden size.",
        "",
        "| cell | B | T | H | mode | contender | ms | x nn | rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["cell"], r["batch"], r["steps"], r["hidden"], r["mode"])
    baseline = {key(r): r["median_ms"] for r in result["rows"] if r["contender"] == "nn_loop"}
    for r in result["rows"]:
        ratio = r["median_ms"] / baseline[key(r)]
        lines.append(
            f"| {r['cell']} | {r['batch']} | {r['steps']} | {r['hidden']} | {r['mode']} | {r['contender']} | "
            f"{r['median_ms']:.3g} | {ratio:.2f} | {r['relative_error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return run_command_line(__doc__, argv, measure, SHAPES, QUICK_SHAPES, markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
