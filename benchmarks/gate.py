"""The speed gate on CPU: what backend="auto" runs against torch.nn's own layer, side by side in one process.

    python -m benchmarks.gate [--against torch.nn onnxruntime] [--rounds N] [--cases lstm-infer-B1-H256-1t ...]

Cases: the LSTM and the GRU, inference (under no_grad) and training (forward, output.sum(), backward to the input
and the weights), batch 1, 8 and 64, hidden (= input) size 256 and 512, T=16, float32, at 1 and 2 threads: 48.
Contenders hold the same weights: fused_rnn's layer on "auto" (tuned on this machine unless FUSED_RNN_AUTOTUNE=0, as
users get it), torch.nn's layer, and, with --against onnxruntime, ONNX Runtime running that layer exported to ONNX's
LSTM/GRU operators (inference only; its threads do not spin between runs). Each round calls every contender once,
each call after an untimed one of the same contender, in a new random order; a case's figure is the median over the
rounds of auto's time divided by the other's in the same round. The gate fails (exit 1) where that median is above
LIMITS: 1.10x torch.nn's time, 1.15x ONNX Runtime's. The table goes to standard output.
"""

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import cpu_inference
from benchmarks.cpu_inference import FUSED_AUTO as AUTO
from benchmarks.cpu_inference import ONNXRUNTIME as ORT
from benchmarks.cpu_inference import TORCH

LIMITS = {TORCH: 1.10, ORT: 1.15}
STEPS = 16
# Rounds per case. In 5 runs on an idle 2-core VM an unchanged main passed 4: every case stayed within 1.04x but the
# LSTM's training at B=1 H=512 on 1 thread, 0.32-0.36x in four runs and 2.86x in one (torch.nn's LSTM call runs at two
# speeds there). Not in CI until that case is understood and 20 runs of 20 pass.
ROUNDS = 15


@dataclass(frozen=True)
class Case:
    cell: str
    training: bool
    batch: int
    hidden: int
    threads: int

    @property
    def name(self) -> str:
        mode = "train" if self.training else "infer"
        return f"{self.cell}-{mode}-B{self.batch}-H{self.hidden}-{self.threads}t"


CASES = [
    Case(cell, training, batch, hidden, threads)
    for threads, cell, training, batch, hidden in itertools.product(
        (1, 2), ("lstm", "gru"), (False, True), (1, 8, 64), (256, 512)
    )
]


def measure(case: Case, against: list[str], rounds: int, onnx_paths: dict) -> dict[str, float]:
    """other contender -> the median over rounds of auto's time / its time, for `case`."""
    torch.set_num_threads(case.threads)
    config = cpu_inference.Config(case.cell, case.batch, STEPS, case.hidden)
    layer = cpu_inference.make_torch_layer(config, seed=0)
    x = cpu_inference.make_input(config, seed=0)
    modules = {TORCH: layer.train(case.training), AUTO: cpu_inference.make_module(AUTO, layer, case.cell)}
    modules[AUTO].train(case.training)
    make_call = cpu_inference.training_call if case.training else cpu_inference.inference_call
    calls = {name: make_call(module, x) for name, module in modules.items()}
    others = [name for name in against if name == TORCH or not case.training]
    if ORT in others:
        key = (case.cell, case.hidden)
        if key not in onnx_paths:
            onnx_paths[key] = cpu_inference.export_onnx(layer.eval(), config, onnx_paths["directory"] / f"{key}.onnx")
            layer.train(case.training)
        calls[ORT] = cpu_inference.inference_call(cpu_inference.make_session(onnx_paths[key], case.threads), x)
    times = {name: [] for name in calls}
    order = random.Random(0)
    calls[AUTO]()  # the first call of a class of shapes tunes "auto": not a round's figure
    for _ in range(rounds):
        for name in order.sample(list(calls), len(calls)):
            calls[name]()  # settles caches after whatever ran before
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {other: statistics.median(a / b for a, b in zip(times[AUTO], times[other], strict=True)) for other in others}


def failures(ratios: dict[str, dict[str, float]]) -> list[str]:
    """One line per case and contender whose median ratio is above its limit."""
    return [
        f"{case}: auto took {ratio:.2f}x {other}'s time (limit {LIMITS[other]:.2f}x)"
        for case, by_other in ratios.items()
        for other, ratio in by_other.items()
        if ratio > LIMITS[other]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", nargs="+", choices=(TORCH, ORT), default=[TORCH])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    names = [case.name for case in CASES]
    parser.add_argument("--cases", nargs="+", choices=names, default=names, metavar="CASE", help="default: all 48")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    ratios = {}
    with tempfile.TemporaryDirectory() as directory:
        onnx_paths = {"directory": Path(directory)}
        for case in (case for case in CASES if case.name in args.cases):
            ratios[case.name] = measure(case, args.against, args.rounds, onnx_paths)
            figures = "  ".join(f"{ratio:.2f}x {other}" for other, ratio in ratios[case.name].items())
            print(f"{case.name:24} auto: {figures}", flush=True)
    torch.set_num_threads(threads)
    failed = failures(ratios)
    for line in failed:
        print(f"FAILED {line}")
    print(
        f"speed gate: {len(ratios) - len({line.split(':')[0] for line in failed})} of {len(ratios)} cases within "
        f"{', '.join(f'{LIMITS[other]:.2f}x {other}' for other in args.against)} ({args.rounds} rounds, "
        f"{time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
