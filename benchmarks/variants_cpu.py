"""IndRNN on CPU: fused_rnn's paths against the fairest baselines, in one process, medians.

    python -m benchmarks.variants_cpu [--quick] [--out benchmarks/results/variants_cpu]

Contenders, all float32 and all computing h' = relu(x W^T + b + u * h) over the same weights:
- plain_loop: what one writes in plain PyTorch: the input projection of all steps as one GEMM, then a Python loop
  of `relu(xw[t] + u * h)`, outputs stacked. The fairest baseline: the same equations, no library.
- plain_loop_compiled: torch.compile(plain_loop, fullgraph=True) (inductor; the loop unrolls over T).
- fused_rnn_reference: fused_rnn.indrnn's oracle, one `x W^T` per step (backend="reference").
- fused_rnn_torch: the fused op with its recurrence as a loop of in-place torch ops (backend="torch").
- fused_rnn_cpu: the fused op with its recurrence as one compiled C++ parallel region (backend="cpu").
- fused_rnn_auto: what fused_rnn.IndRNN runs on CPU with backend="auto".
Each contender's output is checked against the float64 reference before it is timed.
Writes OUT.json (the rows) and OUT.md (the table, with ratios to plain_loop).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.timing import time_runs
from fused_rnn.indrnn import functional

# (batch, steps, hidden); input size = hidden
SHAPES = [(1, 100, 256), (16, 100, 512), (64, 100, 1024)]
QUICK_SHAPES = [(2, 8, 16)]


def plain_loop(x, h0, weight_ih, weight_hh, bias_ih):
    projection = torch.nn.functional.linear(x, weight_ih, bias_ih)
    h, outputs = h0, []
    for t in range(x.shape[0]):
        h = torch.relu(projection[t] + weight_hh * h)
        outputs.append(h)
    return torch.stack(outputs), h


def fused_rnn_path(backend):
    def run(x, h0, weight_ih, weight_hh, bias_ih):
        return functional.indrnn(x, h0, weight_ih, weight_hh, bias_ih, backend=backend)

    return run


def contenders():
    return {
        "plain_loop": plain_loop,
        "plain_loop_compiled": torch.compile(plain_loop, fullgraph=True, dynamic=False),
        "fused_rnn_reference": fused_rnn_path("reference"),
        "fused_rnn_torch": fused_rnn_path("torch"),
        "fused_rnn_cpu": fused_rnn_path("cpu"),
        "fused_rnn_auto": fused_rnn_path("auto"),
    }


def make_inputs(batch, steps, hidden, seed=0):
    """(x, h0, weight_ih, u, bias_ih) drawn as fused_rnn.IndRNN initialises its parameters, from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    uniform = lambda *shape, low, high: torch.rand(shape, generator=generator) * (high - low) + low
    bound = hidden**-0.5
    weight_ih = uniform(hidden, hidden, low=-bound, high=bound)
    bias_ih = uniform(hidden, low=-bound, high=bound)
    u = uniform(hidden, low=0.0, high=1.0)
    x = torch.randn(steps, batch, hidden, generator=generator)
    return x, torch.zeros(batch, hidden), weight_ih, u, bias_ih


def max_relative_error(run, tensors) -> float:
    """Normwise error of run's output against the float64 reference."""
    exact, _ = functional.indrnn(*(t.double() for t in tensors), backend="reference")
    with torch.no_grad():
        got, _ = run(*tensors)
    return ((got.double() - exact).norm() / exact.norm()).item()


def measure(shapes, warmup, repeats):
    rows = []
    for batch, steps, hidden in shapes:
        tensors = make_inputs(batch, steps, hidden)
        for name, run in contenders().items():
            error = max_relative_error(run, tensors)
            for mode in ("fw", "fwbw"):
                leaves = [t.clone().requires_grad_(mode == "fwbw") for t in tensors]

                def call(run=run, leaves=leaves, mode=mode):
                    if mode == "fw":
                        with torch.no_grad():
                            run(*leaves)
                    else:
                        output, _ = run(*leaves)
                        output.sum().backward()

                def reset(leaves=leaves):
                    for leaf in leaves:
                        leaf.grad = None

                start = time.perf_counter()
                timing = time_runs(call, reset, torch.device("cpu"), warmup, repeats)
                rows.append(
                    {
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
                print(f"B{batch} T{steps} H{hidden} {mode:4} {name:20} {timing.median_ms:9.3f} ms", flush=True)
    return rows


def environment() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def markdown(result) -> str:
    env = result["environment"]
    lines = [
        "# IndRNN on CPU",
        "",
        f"{env['date']}; {env['cpu']}, {env['threads']} thread(s); torch {env['torch']}; commit {env['commit']}. "
        f"Warmup {result['warmup']}, repeats {result['repeats']}, one process. Generated by "
        "`python -m benchmarks.variants_cpu`.",
        "",
        "ms: median of one call (fw: forward under no_grad; fwbw: forward, output.sum(), backward to the input and "
        "every weight). x plain: ms / plain_loop's ms for the same shape and mode. rel. error: normwise error of "
        "the float32 output against the float64 reference.",
        "",
        "| B | T | H | mode | contender | ms | x plain | rel. error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["batch"], r["steps"], r["hidden"], r["mode"])
    plain = {key(r): r["median_ms"] for r in result["rows"] if r["contender"] == "plain_loop"}
    for r in result["rows"]:
        ratio = r["median_ms"] / plain[key(r)]
        lines.append(
            f"| {r['batch']} | {r['steps']} | {r['hidden']} | {r['mode']} | {r['contender']} | "
            f"{r['median_ms']:.3g} | {ratio:.2f} | {r['relative_error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def provenance(result, command: str, timing: str) -> str:
    """A results table's first line: date, machine, threads, torch, commit, how it was timed (`timing`), the command
    that made it and the machine's load while it ran."""
    env, load = result["environment"], result["environment"]["load_average"]
    return (
        f"{env['date']}; {env['cpu']}, {env['threads']} thread(s); torch {env['torch']}; commit {env['commit']}. "
        f"{timing}, one process. Generated by `{command}`. 1-minute load average of the (shared) machine: "
        f"{load['before']:.1f} before, {load['after']:.1f} after, on {load['cpus']} CPUs; figures are medians, "
        "p20-p80 in the JSON."
    )


INTERLEAVED = "timed rounds, each calling every contender once (interleaved, in a new random order each round)"


def run_command_line(doc, argv, measure, shapes, quick_shapes, markdown) -> dict:
    """The command line the CPU variant benchmarks share: --quick (tiny shapes, few repeats, for the tests),
    --threads, --out (OUT.json with the rows, OUT.md from markdown(result)). measure(shapes, warmup, repeats) gives
    the rows; the machine's 1-minute load average before and after goes in the environment (the machine is shared:
    it says how much the figures may be disturbed)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (for the tests)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warmup, repeats = (1, 3) if args.quick else (3, 15)
    load_before = os.getloadavg()[0]
    rows = measure(quick_shapes if args.quick else shapes, warmup, repeats)
    load = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    result = {"environment": {**environment(), "load_average": load}, "warmup": warmup, "repeats": repeats}
    result["rows"] = rows
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
    return result


def main(argv=None) -> dict:
    return run_command_line(__doc__, argv, measure, SHAPES, QUICK_SHAPES, markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
