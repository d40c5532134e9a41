"""Speed check for CI on a GPU: fail when a fused backend is slower than its target ratio to cuDNN.

    python -m benchmarks.check --results benchmarks/results/nvidia-h100-80gb-hbm3.json
    python -m benchmarks.check                   # on a GPU machine: measure the targeted configs first

Exits 1 when a targeted measurement misses its target or failed to run, 0 when all meet theirs, and 0
with a "SKIPPED" message when there is nothing a GPU measured to check.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import run
from benchmarks.contenders import fused_contender

# (config, mode) -> the most time the fused backend may take, as a multiple of torch.nn's (cuDNN's)
# time in the same dtype, for every cell and dtype measured. BENCHMARKS.md level A: forward+backward
# at or below cuDNN of the same dtype on every standard configuration.
TARGETS = {
    ("fastrnns", "fwbw"): 1.0,
    ("fastrnns_2layer", "fwbw"): 1.0,
    ("fastrnns_bidir", "fwbw"): 1.0,
    ("b1_t1024_h512", "fwbw"): 1.0,
    ("b16_t1024_h768", "fwbw"): 1.0,
    ("b64_t256_h1024", "fwbw"): 1.0,
    ("b256_t256_h1024", "fwbw"): 1.0,
    ("deepbench_h2048", "fwbw"): 1.0,
    ("varlen", "fwbw"): 1.0,
}


def check(results: list[dict], backend: str = "triton") -> tuple[list[str], list[str]]:
    """(passed, failed): one line per targeted measurement of `backend`, as lines to print."""
    contender = fused_contender(backend)
    passed, failed = [], []
    for r in results:
        target = TARGETS.get((r["config"], r["mode"]))
        if r["contender"] != contender or target is None:
            continue
        name = f"{r['config']} {r['cell']} {r['dtype']} {r['mode']}"
        if r["failure"] or r["ratio_to_torch"] is None:
            failed.append(f"FAIL {name}: not measured ({r['failure'] or 'no torch.nn time to compare with'})")
            continue
        met = r["ratio_to_torch"] <= target
        line = f"{name}: {r['ms']:.3f} ms = {r['ratio_to_torch']:.2f}x torch.nn (target <= {target:.2f}x)"
        (passed if met else failed).append(f"{'ok  ' if met else 'FAIL'} {line}")
    return passed, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, help="a results JSON from benchmarks.run (default: measure now)")
    parser.add_argument("--backend", default="triton", help="the fused_rnn backend held to the targets")
    args = parser.parse_args(argv)

    if args.results is None:
        if not torch.cuda.is_available():
            print(
                "SKIPPED: the speed targets are for CUDA GPUs and none is available here; nothing was checked. "
                "Pass --results PATH to check results measured on a GPU."
            )
            return 0
        with tempfile.TemporaryDirectory() as directory:
            configs = sorted({config for config, _ in TARGETS})
            modes = sorted({mode for _, mode in TARGETS})
            results = run.main(["--config", *configs, "--mode", *modes, "--backend", args.backend, "--out", directory])
        device = "cuda"
    else:
        document = json.loads(args.results.read_text())
        results, device = document["results"], document["environment"]["device"]
    if device != "cuda":
        print(
            f"SKIPPED: the speed targets are for CUDA GPUs; {args.results} was measured on {device}. "
            "Nothing was checked."
        )
        return 0

    passed, failed = check(results, args.backend)
    print("\n".join(passed + failed))
    if not passed and not failed:
        print(f"FAIL: no fused_rnn.{args.backend} measurement of a targeted (config, mode): {sorted(TARGETS)}")
        return 1
    print(f"{len(passed)} met their target, {len(failed)} did not")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
