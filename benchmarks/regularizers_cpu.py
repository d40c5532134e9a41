"""DropConnect (WeightDrop) and locked dropout on CPU against the baselines one writes without fused_rnn, medians.

    python -m benchmarks.regularizers_cpu [--quick] [--out benchmarks/results/regularizers_cpu]

Training mode, float32, one forward and backward (output.sum()) per call, input size = hidden size.
- weight_drop: a 2-layer LSTM whose recurrent weights get DropConnect (p = 0.5, a mask per weight per call).
  Contenders: fused_rnn.WeightDrop around fused_rnn.LSTM ("auto"); AWD-LSTM's WeightDrop as one writes it for
  torch.nn.LSTM today (torch.func.functional_call with the dropped weights in place of weight_hh_l*: the fairest
  baseline, the same masks from the same generator, so the outputs are checked equal); and the same torch.nn.LSTM
  without DropConnect (what the regularizer costs).
- locked_dropout: variational dropout (p = 0.5) of a (T, B, H) activation, one mask per sequence shared by all steps.
  Contenders: fused_rnn.LockedDropout; AWD-LSTM's LockedDropout written out (a (1, B, H) Bernoulli mask scaled by
  1 / (1 - p), broadcast over time; the same mask, checked equal); and nn.Dropout (a mask per step: not locked, the
  cost of plain dropout).
haste's DropConnect and zoneout are CUDA-only (and unmaintained since 2020), so no haste row stands beside these.
Writes OUT.json (the rows) and OUT.md (the table, with ratios to the baseline written without fused_rnn).
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

import fused_rnn
from benchmarks.timing import time_interleaved
from benchmarks.variants_cpu import INTERLEAVED, provenance, run_command_line

P = 0.5
SHAPES = [(1, 100, 128), (16, 50, 256)]  # (batch, steps, hidden)
QUICK_SHAPES = [(2, 4, 8)]
BASELINE = {"weight_drop": "awd_weight_drop_torch_nn", "locked_dropout": "awd_locked_dropout"}


class AwdWeightDrop(nn.Module):
    """AWD-LSTM's WeightDrop for torch.nn.LSTM, as one writes it with today's torch: each call runs the layer through
    torch.func.functional_call with every weight_hh_l* replaced by its dropout."""

    def __init__(self, module: nn.Module, p: float):
        super().__init__()
        self.module, self.p = module, p
        self.names = [name for name, _ in module.named_parameters() if name.startswith("weight_hh")]

    def forward(self, x):
        dropped = {name: F.dropout(getattr(self.module, name), self.p, training=True) for name in self.names}
        return torch.func.functional_call(self.module, dropped, (x,))


class AwdLockedDropout(nn.Module):
    """AWD-LSTM's LockedDropout: a (1, B, H) Bernoulli(1 - p) mask scaled by 1 / (1 - p), broadcast over time."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        mask = x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(1 - self.p) / (1 - self.p)
        return mask.expand_as(x) * x


def weight_drop_contenders(hidden):
    """name -> (module, run(x) -> output); the fused_rnn layer holds torch.nn's initial weights."""
    torch.manual_seed(0)
    reference = nn.LSTM(hidden, hidden, num_layers=2)
    ours = fused_rnn.WeightDrop(fused_rnn.from_torch(reference), P)
    awd = AwdWeightDrop(reference, P)
    return {
        "fused_rnn_weight_drop": (ours, lambda x: ours(x)[0]),
        "awd_weight_drop_torch_nn": (awd, lambda x: awd(x)[0]),
        "torch_nn_without_drop": (reference, lambda x: reference(x)[0]),
    }


def locked_dropout_contenders(hidden):
    ours, awd, plain = fused_rnn.LockedDropout(P), AwdLockedDropout(P), nn.Dropout(P)
    return {
        "fused_rnn_locked_dropout": (ours, ours),
        "awd_locked_dropout": (awd, awd),
        "nn_dropout_per_step": (plain, plain),
    }


def checked_equal(kind, contenders, x):
    """The fused_rnn contender's output equals the baseline's for the same seed (the same masks)."""
    ours = next(run for name, (_, run) in contenders.items() if name.startswith("fused_rnn"))
    baseline = contenders[BASELINE[kind]][1]
    torch.manual_seed(1)
    expected = baseline(x)
    torch.manual_seed(1)
    got = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def measure(shapes, warmup, repeats):
    rows = []
    for kind, make in (("weight_drop", weight_drop_contenders), ("locked_dropout", locked_dropout_contenders)):
        for batch, steps, hidden in shapes:
            contenders = make(hidden)
            for module, _ in contenders.values():
                module.train()
            x = torch.randn(steps, batch, hidden, generator=torch.Generator().manual_seed(0))
            checked_equal(kind, contenders, x)
            calls = {}
            for name, (module, run) in contenders.items():
                leaves = (x.clone().requires_grad_(), *module.parameters())

                def call(run=run, leaves=leaves):
                    for leaf in leaves:  # a fresh backward each time: no accumulation into earlier gradients
                        leaf.grad = None
                    run(leaves[0]).sum().backward()

                calls[name] = call
            for name, timing in time_interleaved(calls, warmup, repeats).items():
                rows.append(
                    {
                        "kind": kind,
                        "batch": batch,
                        "steps": steps,
                        "hidden": hidden,
                        "contender": name,
                        "median_ms": timing.median_ms,
                        "p20_ms": timing.p20_ms,
                        "p80_ms": timing.p80_ms,
                    }
                )
                print(f"{kind} B{batch} T{steps} H{hidden} {name:26} {timing.median_ms:9.3f} ms", flush=True)
    return rows


def markdown(result) -> str:
    lines = [
        "# DropConnect and locked dropout on CPU",
        "",
        provenance(
            result,
            "python -m benchmarks.regularizers_cpu",
            f"Warmup {result['warmup']} and {result['repeats']} {INTERLEAVED}",
        ),
        "",
        "ms: median of one training call (forward, output.sum(), backward to the input and every weight), float32, "
        f"p = {P}, input size = hidden size. x baseline: ms / the baseline's ms (AWD-LSTM's WeightDrop on "
        "torch.nn.LSTM through torch.func.functional_call; AWD-LSTM's LockedDropout written out), whose outputs "
        "equal ours for the same seed (checked before timing). weight_drop is a 2-layer LSTM.",
        "",
        "| regularizer | B | T | H | contender | ms | x baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["kind"], r["batch"], r["steps"], r["hidden"])
    baseline = {key(r): r["median_ms"] for r in result["rows"] if r["contender"] == BASELINE[r["kind"]]}
    for r in result["rows"]:
        lines.append(
            f"| {r['kind']} | {r['batch']} | {r['steps']} | {r['hidden']} | {r['contender']} | "
            f"{r['median_ms']:.3g} | {r['median_ms'] / baseline[key(r)]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return run_command_line(__doc__, argv, measure, SHAPES, QUICK_SHAPES, markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
