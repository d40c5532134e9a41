"""LSTM/GRU inference on CPU: torch.nn, ONNX Runtime's fused LSTM/GRU and fused_rnn, interleaved in one process.

    python -m benchmarks.cpu_inference [--quick] [--threads 1 2] [--out benchmarks/results/cpu_inference]

Contenders, all float32, all holding the weights of one torch.nn layer initialised from --seed:
- torch.nn: the nn.LSTM/nn.GRU layer under torch.no_grad().
- onnxruntime: that layer exported by torch.onnx's TorchScript exporter (ONNX's LSTM/GRU operators), run by an
  onnxruntime.InferenceSession on the CPUExecutionProvider with intra_op_num_threads = the thread count, its
  threads not spinning between runs (they would take the cores the next contender needs).
- fused_rnn.cpu: fused_rnn.LSTM/GRU with backend="cpu" (the compiled C++ kernels).
- fused_rnn.auto: fused_rnn.LSTM/GRU with backend="auto", what a user gets.
Every contender's output is checked against the float64 torch.nn layer before it is timed; one that fails is
reported, not timed. Peak memory is measured in a fresh subprocess per (config, contender, mode).
Writes OUT.json (rows and environment) and OUT.md (the tables), and prints the tables.
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import onnxruntime
import torch
from torch import nn
from tqdm import tqdm

import fused_rnn
from benchmarks.timing import time_interleaved
from fused_rnn.backends import Workload, native, resolve


@dataclass(frozen=True)
class Config:
    cell: str
    batch: int
    steps: int
    hidden: int  # input size = hidden size

    @property
    def name(self) -> str:
        return f"{self.cell} B={self.batch} T={self.steps} H={self.hidden}"


CONFIGS = [
    Config(cell, batch, steps, 512) for cell in ("lstm", "gru") for batch, steps in ((1, 100), (64, 100), (1, 1024))
]
# Both cells and a batch of 1 and of more, in as few configs as can be: each costs six peak-memory processes.
QUICK_CONFIGS = [Config("lstm", 1, 8, 16), Config("gru", 4, 8, 16)]
# The peak-memory subprocess's first call: the real call's batch (so that "auto" picks the same backend for both:
# it weighs the batch) and at least TINY_ROWS rows (steps x batch), small enough to add nothing measurable (a buffer
# the real call reuses from it counts as nothing: with T=8 at B=64, torch.nn's GRU training measured 118 MiB instead
# of 140), big enough to load every library and kernel the real call uses. At 2 rows the GRU's input projection (2x512
# by 512x1536) stayed below the size where fused_rnn's driver moves to oneDNN, so oneDNN's one-time 6 MiB (kept after
# its first call, measured) was counted as the real call's; with a batch of 1 before a batch of 64, "auto" warmed up
# the compiled kernels and then ran torch.nn's LSTM, whose one-time 4 MiB were counted (measured).
TINY_ROWS = 8


def warm_up_config(config: Config) -> Config:
    """The shape of the peak-memory subprocess's first call before `config`'s."""
    return Config(config.cell, config.batch, max(1, TINY_ROWS // config.batch), config.hidden)


TORCH, ONNXRUNTIME, FUSED_CPU, FUSED_AUTO = "torch.nn", "onnxruntime", "fused_rnn.cpu", "fused_rnn.auto"
CONTENDERS = (TORCH, ONNXRUNTIME, FUSED_CPU, FUSED_AUTO)
# Backward is measured only where the contender trains at all: ONNX Runtime's session is inference only, and
# "auto" is "cpu" or "torch" (torch.nn's kernels), both measured already.
FWBW_CONTENDERS = (TORCH, FUSED_CPU)
TORCH_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU}
FUSED_LAYERS = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}
MAX_RELATIVE_ERROR = 1e-5
# (warmup, repeats) rounds; each round calls every contender once.
RUNS = {"full": (3, 15), "quick": (1, 3)}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cpu_inference"

PEAK_MEMORY_METHOD = f"""\
Peak memory: for each (config, contender, mode) a fresh Python process builds the layer and the input, makes one
call on a short input (the same batch, at least {TINY_ROWS} rows: T=8 at B=1, T=1 at B=64) so that one-time costs
(loading onnxruntime's and the compiled kernels' code, oneDNN's and onnxruntime's caches, ONNX Runtime's session
setup) are not counted, resets its peak resident set to the current one (writing 5 to /proc/self/clear_refs), makes
one call of the real shape and reports VmHWM (/proc/self/status) minus the resident set before the call, in MiB: the
most memory the call held at once beyond what the process already held. Not getrusage's ru_maxrss: a child's
ru_maxrss starts at its parent's high-water mark (fork copies it and exec keeps it), so beside this benchmark's own
process it read 0 for every call; and without the reset, memory freed before the call and reused by it would be
hidden below the earlier high-water mark. Limits: these are resident pages (KiB granularity on Linux), not bytes
allocated; malloc keeps freed blocks and ONNX Runtime its memory arena, so a buffer reused from the tiny call counts
as nothing; the smallest shapes' figures are noise. fw: forward under torch.no_grad() (session.run for onnxruntime);
fwbw: forward, output.sum().backward() to the weights and the input. Measured with the first --threads value.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_inference",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (for the tests)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (default: 0)")
    parser.add_argument(
        "--measure-peak",
        nargs=7,
        metavar=("CELL", "BATCH", "STEPS", "HIDDEN", "CONTENDER", "MODE", "ONNX_PATH"),
        help=argparse.SUPPRESS,  # the peak-memory subprocess's entry point; prints the MiB
    )
    args = parser.parse_args(argv)
    if min(args.threads) < 1:
        parser.error("--threads must be at least 1")
    return args


def make_torch_layer(config: Config, seed: int) -> nn.RNNBase:
    """The float32 torch.nn layer whose weights every contender holds."""
    torch.manual_seed(seed)
    return TORCH_LAYERS[config.cell](config.hidden, config.hidden).eval()


def make_input(config: Config, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(config.steps, config.batch, config.hidden, generator=generator)


def export_onnx(layer: nn.RNNBase, config: Config, path: Path) -> Path:
    """`layer` as ONNX's LSTM/GRU operator, for any batch and length (so the peak subprocess can warm up small)."""
    example = make_input(config, seed=0)
    # The TorchScript exporter (dynamo=False) emits ONNX's recurrent operators, which ONNX Runtime runs fused;
    # see tests/test_deploy.py.
    torch.onnx.export(
        layer,
        (example,),
        path,
        input_names=["x"],
        output_names=["output"],
        dynamic_axes={"x": {0: "steps", 1: "batch"}},
        dynamo=False,
    )
    return path


def make_module(contender: str, layer: nn.RNNBase, cell: str) -> nn.Module:
    if contender == TORCH:
        return layer
    backend = {FUSED_CPU: "cpu", FUSED_AUTO: "auto"}[contender]
    module = FUSED_LAYERS[cell](layer.input_size, layer.hidden_size, backend=backend)
    module.load_state_dict(layer.state_dict())
    return module.eval()


def make_session(onnx_path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ONNX Runtime's pool threads otherwise spin for a while after each run, on the cores the next contender's
    # threads need: measured, fused_rnn's per-step barrier then took up to 1.7x its time alone at 2 threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(onnx_path, sess_options=options, providers=["CPUExecutionProvider"])


def inference_call(runner: nn.Module | onnxruntime.InferenceSession, x: torch.Tensor):
    """A call without arguments that runs `runner` on `x` and returns the output sequence."""
    if isinstance(runner, onnxruntime.InferenceSession):
        feed = {"x": x.numpy()}  # prepared here, outside the timed call
        return lambda: torch.from_numpy(runner.run(None, feed)[0])

    def call():
        with torch.no_grad():
            return runner(x)[0]

    return call


def training_call(module: nn.Module, x: torch.Tensor):
    """A call that runs forward and output.sum().backward() to the weights and to the input."""
    leaf = x.detach().clone().requires_grad_()

    def call():
        module.zero_grad(set_to_none=True)
        leaf.grad = None
        module(leaf)[0].sum().backward()

    return call


def relative_error(output: torch.Tensor, exact: torch.Tensor) -> float:
    """Normwise: ||output - exact|| / ||exact||."""
    return ((output.double() - exact).norm() / exact.norm()).item()


def measure_times(config: Config, onnx_path: Path, threads: int, warmup: int, repeats: int, seed: int) -> list[dict]:
    """One row per contender: its error against float64 torch.nn and, when below MAX_RELATIVE_ERROR, its times."""
    torch.set_num_threads(threads)
    layer = make_torch_layer(config, seed)
    x = make_input(config, seed)
    with torch.no_grad():
        exact = copy.deepcopy(layer).double()(x.double())[0]
    runners = {name: make_module(name, layer, config.cell) for name in CONTENDERS if name != ONNXRUNTIME}
    runners[ONNXRUNTIME] = make_session(onnx_path, threads)
    calls = {name: inference_call(runners[name], x) for name in CONTENDERS}
    workload = Workload(config.cell, config.batch, False, False, config.hidden)
    auto_runs = resolve("auto", x.device, x.dtype, workload=workload)
    rows = {}
    for name, call in calls.items():
        error = relative_error(call(), exact)
        rows[name] = {
            **asdict(config),
            "config": config.name,
            "threads": threads,
            "contender": name,
            "runs_backend": auto_runs if name == FUSED_AUTO else None,
            "relative_error": error,
            "passed_check": error < MAX_RELATIVE_ERROR,
            "ms": None,
            "ms_p20": None,
            "ms_p80": None,
        }
    timed = {name: call for name, call in calls.items() if rows[name]["passed_check"]}
    for name, timing in time_interleaved(timed, warmup, repeats).items():
        rows[name].update(ms=timing.median_ms, ms_p20=timing.p20_ms, ms_p80=timing.p80_ms)
    for row in rows.values():
        row["x_torch"] = _ratio(row["ms"], rows[TORCH]["ms"])
        row["x_onnxruntime"] = _ratio(row["ms"], rows[ONNXRUNTIME]["ms"])
    return list(rows.values())


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


def measure_peak(config: Config, contender: str, mode: str, onnx_path: Path, seed: int) -> float:
    """MiB that one call of the real shape holds at its peak beyond the resident set before it (PEAK_MEMORY_METHOD)."""
    layer = make_torch_layer(config, seed)
    x = make_input(config, seed)
    tiny = make_input(warm_up_config(config), seed)
    if contender == ONNXRUNTIME:
        runner = make_session(onnx_path, torch.get_num_threads())
    else:
        runner = make_module(contender, layer, config.cell)
    bind = inference_call if mode == "fw" else training_call
    warm_up, call = bind(runner, tiny), bind(runner, x)
    warm_up()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set
    before = _status_kib("VmHWM")
    call()
    return (_status_kib("VmHWM") - before) / 1024


def _status_kib(field: str) -> int:
    """A memory figure of /proc/self/status, such as VmHWM, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no {field}")


def measure_peaks(configs: list[Config], onnx_paths: dict[Config, Path], threads: int, seed: int) -> list[dict]:
    """A row per config, contender and mode, each measured by `--measure-peak` in a fresh process."""
    jobs = [
        (config, contender, mode)
        for config in configs
        for mode, contenders in (("fw", CONTENDERS), ("fwbw", FWBW_CONTENDERS))
        for contender in contenders
    ]

    def run(job: tuple[Config, str, str]) -> dict:
        config, contender, mode = job
        arguments = [config.cell, config.batch, config.steps, config.hidden, contender, mode, onnx_paths[config]]
        command = [sys.executable, "-m", "benchmarks.cpu_inference", "--threads", str(threads)]
        command += ["--seed", str(seed), "--measure-peak", *map(str, arguments)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        # The error's last line, cut short: a failed build of the kernels ends in a whole compiler command line.
        failure = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        peak = float(done.stdout.split()[-1]) if failure is None else None
        return {"config": config.name, "contender": contender, "mode": mode, "peak_mib": peak, "failure": failure}

    # Each process's peak is its own, so they can run side by side; none runs while anything is timed.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        rows = list(tqdm(pool.map(run, jobs), total=len(jobs), desc="peak memory", unit="process"))
    torch_peaks = {(r["config"], r["mode"]): r["peak_mib"] for r in rows if r["contender"] == TORCH}
    for row in rows:
        row["x_torch"] = _ratio(row["peak_mib"], torch_peaks[row["config"], row["mode"]])
    return rows


def environment(args: argparse.Namespace, warmup: int, repeats: int) -> dict:
    from benchmarks import report  # here, not at the top: it imports matplotlib, which each peak process would pay

    env = report.describe_environment(torch.device("cpu"))
    del env["cpu_threads"]  # torch's setting when this is called; the thread counts measured are below
    return {
        **env,
        "onnxruntime": onnxruntime.__version__,
        "cpu_instruction_set": native.cpu_instruction_set(),
        "threads": args.threads,
        "peak_memory_threads": args.threads[0],
        "warmup": warmup,
        "repeats": repeats,
        "seed": args.seed,
        "quick": args.quick,
    }


def markdown(document: dict) -> str:
    env = document["environment"]
    commit = (env["git_commit"] or "unknown") + (" with uncommitted changes" if env["git_tracked_changes"] else "")
    lines = [
        "# LSTM/GRU inference on CPU: torch.nn, ONNX Runtime and fused_rnn",
        "",
        f"{env['date_utc']}; {env['device_name']} ({env['cpu_instruction_set']} build of fused_rnn's kernels); "
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, fused_rnn {env['fused_rnn']}; commit {commit}. "
        f"Warmup {env['warmup']} and {env['repeats']} timed rounds, each calling every contender once (interleaved, "
        "in turn). Generated by `python -m benchmarks.cpu_inference"
        + (" --quick" if env["quick"] else "")
        + f" --threads {' '.join(map(str, env['threads']))}`.",
        "",
        "ms: median time of one inference call (forward under torch.no_grad(); session.run for onnxruntime) on "
        "(T, B, I=H) float32 input. x torch.nn, x onnxruntime: ms / their ms in the same run. rel. error: normwise "
        f"error of the output against torch.nn in float64 (a contender above {MAX_RELATIVE_ERROR:g} is not timed). "
        "fused_rnn.auto runs the backend in brackets.",
    ]
    for threads in env["threads"]:
        lines += [
            "",
            f"## {threads} thread{'s' if threads > 1 else ''}",
            "",
            "| config | contender | ms | x torch.nn | x onnxruntime | rel. error |",
            "|---|---|---|---|---|---|",
        ]
        for r in (r for r in document["times"] if r["threads"] == threads):
            name = r["contender"] + (f" ({r['runs_backend']})" if r["runs_backend"] else "")
            ms = f"{r['ms']:.3g}" if r["passed_check"] else "failed check"
            lines.append(
                f"| {r['config']} | {name} | {ms} | {_format_ratio(r['x_torch'])} | "
                f"{_format_ratio(r['x_onnxruntime'])} | {r['relative_error']:.1e} |"
            )
    lines += ["", "## Peak memory", "", PEAK_MEMORY_METHOD, ""]
    lines += ["| config | contender | mode | MiB | x torch.nn |", "|---|---|---|---|---|"]
    for r in document["peak_memory"]:
        mib = f"failed: {r['failure']}" if r["failure"] else f"{r['peak_mib']:.1f}"
        lines.append(f"| {r['config']} | {r['contender']} | {r['mode']} | {mib} | {_format_ratio(r['x_torch'])} |")
    return "\n".join(lines) + "\n"


def _format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> dict | None:
    """Measure, print the tables and write OUT.json and OUT.md; returns what OUT.json holds."""
    args = parse_args(argv)
    if args.measure_peak:
        cell, batch, steps, hidden, contender, mode, onnx_path = args.measure_peak
        torch.set_num_threads(args.threads[0])
        config = Config(cell, int(batch), int(steps), int(hidden))
        print(measure_peak(config, contender, mode, Path(onnx_path), args.seed))
        return None

    warmup, repeats = RUNS["quick" if args.quick else "full"]
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    times, onnx_paths = [], {}
    threads_before = torch.get_num_threads()  # restored, for callers of main() such as the tests
    with tempfile.TemporaryDirectory() as directory:
        try:
            for index, config in enumerate(tqdm(configs, desc="timing", unit="config")):
                layer = make_torch_layer(config, args.seed)
                onnx_paths[config] = export_onnx(layer, config, Path(directory) / f"layer{index}.onnx")
                for threads in args.threads:
                    times += measure_times(config, onnx_paths[config], threads, warmup, repeats, args.seed)
        finally:
            torch.set_num_threads(threads_before)
        peaks = measure_peaks(configs, onnx_paths, args.threads[0], args.seed)
    document = {"environment": environment(args, warmup, repeats), "times": times, "peak_memory": peaks}
    text = markdown(document)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)
    print("wrote", args.out.with_suffix(".json"), "and", args.out.with_suffix(".md"))
    return document


if __name__ == "__main__":
    main()
