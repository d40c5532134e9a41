"""Time fused_rnn's backends against torch.nn (cuDNN on GPU) and a per-step cell loop, in one process.

    python -m benchmarks.run                      # standard configs, every backend that runs here
    python -m benchmarks.run --quick              # small CPU-sized configs (the demo; any machine)
    python -m benchmarks.run --sweep              # time per step vs batch size and vs length, with a plot
    python -m benchmarks.run --config fastrnns --cell lstm --dtype bf16 --mode fwbw

Writes <out>/<device>.json (environment and every measurement), <device>.md (the table) and, with
--sweep, <device>.png, and prints the table.
"""

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import fused_rnn
from benchmarks import report
from benchmarks.configs import CELLS, CONFIGS, QUICK_CONFIGS, QUICK_SWEEP, STANDARD_CONFIGS, SWEEP, Config
from benchmarks.contenders import (
    FUSED_PREFIX,
    NAIVE,
    TORCH,
    fused_contender,
    make_contender,
    make_input,
    make_torch_layer,
    output_tensor,
    workload,
)
from benchmarks.timing import peak_memory_mb, time_interleaved, time_runs
from fused_rnn.backends import Workload, resolve

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fw", "fwbw")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# (warmup, repeats): CPU contenders are timed interleaved, a round calling each once; 15 rounds keep the medians of
# 0.1 ms calls within a few percent on this 2-core machine.
DEFAULT_RUNS = {"cpu": (2, 15), "cuda": (5, 20)}
_MEASURED_FIELDS = ("ms", "ms_p20", "ms_p80", "ms_per_step", "peak_memory_mb", "max_diff_vs_torch")


@dataclass
class Measurement:
    """One contender timed on one case: a row of the results (report.add_ratios adds the two ratios)."""

    config: str
    cell: str
    dtype: str
    mode: str
    contender: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    packed: bool
    sweep_axes: list[str]
    ms: float | None
    ms_p20: float | None
    ms_p80: float | None
    ms_per_step: float | None
    peak_memory_mb: float | None
    max_diff_vs_torch: float | None
    failure: str | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        epilog=_describe_configs(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cell", nargs="+", choices=CELLS, help="cells to run (default: each config's own, listed below)"
    )
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="default: all")
    parser.add_argument(
        "--config",
        nargs="+",
        choices=list(CONFIGS),
        metavar="NAME",
        help="configurations, listed below (default: the standard ones; the quick ones with --quick; none with "
        "--sweep)",
    )
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=["auto", *fused_rnn.available_backends()],
        help="fused_rnn backends (default: 'auto', what a user gets, and every one that runs on the device, except "
        "triton on CPU, where it runs in the Triton interpreter, orders of magnitude slower)",
    )
    parser.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES), help="default: both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: %(default)s")
    parser.add_argument("--quick", action="store_true", help="small CPU-sized configs (and sweep)")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="time per step vs batch size and vs sequence length, plotted to <device>.png; runs no other configs "
        "unless --config names some",
    )
    parser.add_argument("--warmup", type=int, help="untimed calls before timing (default: 2 on CPU, 5 on CUDA)")
    parser.add_argument("--repeats", type=int, help="timed calls; the median is reported (default: 15 CPU, 20 CUDA)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads while timing (default: 1): per-step RNN work is too small to share, and OpenMP "
        "threads waiting on busy cores can make every op 100x slower",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default: 0)")
    args = parser.parse_args(argv)

    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    default_warmup, default_repeats = DEFAULT_RUNS.get(args.device.type, DEFAULT_RUNS["cpu"])
    args.warmup = default_warmup if args.warmup is None else args.warmup
    args.repeats = default_repeats if args.repeats is None else args.repeats
    if args.warmup < 0 or args.repeats < 1 or args.threads < 1:
        parser.error("--warmup must be >= 0, --repeats and --threads >= 1")
    try:
        args.backend = _select_backends(args.backend, args.device)
    except ValueError as error:
        parser.error(str(error))
    return args


def _describe_configs() -> str:
    lines = ["configurations (batch B, steps T, input I, hidden H; the cells they run by default):"]
    for config in CONFIGS.values():
        steps = f"T={config.min_steps}..{config.steps} packed" if config.packed else f"T={config.steps}"
        layers = f", {config.num_layers} layers" if config.num_layers > 1 else ""
        direction = ", bidirectional" if config.bidirectional else ""
        shape = f"B={config.batch} {steps} I={config.input_size} H={config.hidden_size}{layers}{direction}"
        lines.append(f"  {config.name:31} {shape}; {', '.join(config.cells)}")
    return "\n".join(lines)


def _select_backends(requested: list[str] | None, device: torch.device) -> list[str]:
    """The fused_rnn backends to time; raises ValueError when a requested one cannot run on `device`."""
    if requested is not None:
        for backend in requested:
            resolve(backend, device, torch.float32)
        return requested
    selected = ["auto"]
    for backend in fused_rnn.available_backends():
        if backend == "triton" and device.type == "cpu":
            continue
        try:
            resolve(backend, device, torch.float32)
        except ValueError:
            continue
        selected.append(backend)
    return selected


def _select_configs(args: argparse.Namespace) -> list[Config]:
    if args.config is not None:
        configs = [CONFIGS[name] for name in args.config]
    elif args.sweep:
        configs = []
    else:
        configs = QUICK_CONFIGS if args.quick else STANDARD_CONFIGS
    if args.sweep:
        configs += (QUICK_SWEEP if args.quick else SWEEP).configs()
    return configs


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmarks that `argv` selects, print the table, write the files; returns the results."""
    args = parse_args(argv)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if args.device.index is not None:
            torch.cuda.set_device(args.device)  # CUDA events time the current device's stream
    contenders = [fused_contender(backend) for backend in args.backend] + [TORCH, NAIVE]
    cases = [
        (config, cell, dtype)
        for config in _select_configs(args)
        for cell in args.cell or config.cells
        for dtype in args.dtype
    ]
    results, _ = measure_cases(cases, contenders, args)
    environment = report.describe_environment(args.device)

    settings = {
        "warmup": args.warmup,
        "repeats": args.repeats,
        "seed": args.seed,
        "quick": args.quick,
        "sweep": args.sweep,
        "contenders": contenders,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    paths = report.write_reports(results, environment, settings, args.out)
    print(f"{environment['device_name']}: warmup {args.warmup}, repeats {args.repeats}")
    print(report.format_table(results))
    print("wrote", ", ".join(str(path) for path in paths))
    return results


def measure_cases(
    cases: list[tuple[Config, str, str]], contenders: list[str], args: argparse.Namespace, stop_at: float | None = None
) -> tuple[list[dict], list[tuple[Config, str, str]]]:
    """(results with ratios, cases not started): every contender and mode of each (config, cell, dtype) case.

    stop_at: a time.monotonic() value; cases not begun by then are left out, so a caller with a time budget
    keeps what was measured.
    """
    results, not_started = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for index, (config, cell, dtype) in enumerate(progress := tqdm(cases, desc="benchmarks", unit="case")):
            if stop_at is not None and time.monotonic() > stop_at:
                not_started = cases[index:]
                break
            progress.set_postfix_str(f"{config.name} {cell} {dtype}")
            # e.g. the compiled CPU kernels in bf16 are left out: a refusal, not a measurement
            serving = [contender for contender in contenders if serves(contender, config, cell, dtype, args.device)]
            for mode in args.mode:
                for measurement in measure(config, cell, dtype, mode, serving, args):
                    if measurement.failure:
                        tqdm.write(
                            f"{config.name} {cell} {dtype} {mode} {measurement.contender} failed: {measurement.failure}"
                        )
                    results.append(asdict(measurement))
    finally:
        torch.set_num_threads(threads)
    report.add_ratios(results)
    return results, not_started


def serves(contender: str, config: Config, cell: str, dtype: str, device: torch.device) -> bool:
    """Whether `contender` runs this case: torch.nn and the cell loop always, a fused_rnn backend when it serves the
    device, dtype and shape (fused_rnn.backends.resolve accepts it)."""
    if not contender.startswith(FUSED_PREFIX):
        return True
    workload = Workload(cell, config.batch, config.packed, training=True, hidden=config.hidden_size)
    try:
        resolve(contender.removeprefix(FUSED_PREFIX), device, DTYPES[dtype], workload=workload)
    except ValueError:
        return False
    return True


@dataclass
class _Prepared:
    """A contender ready to be timed on one case and mode."""

    run: Callable[[], None]
    reset: Callable[[], None]
    steps: int
    difference: float


def measure(config: Config, cell: str, dtype: str, mode: str, contenders: list[str], args: argparse.Namespace):
    """Time every contender on one case and mode; a contender that raises is recorded as failed, not fatal.

    On CPU the contenders are timed interleaved (each round times each once, right after an untimed call of its own:
    time_interleaved), so that the load of a shared machine and its drift fall on all of them alike and none is timed
    in the wake of another; on CUDA one after another, each call timed with CUDA events.
    """
    prepared, failures = {}, {}
    for contender in contenders:
        try:
            prepared[contender] = _prepare(config, cell, dtype, mode, contender, args)
        except Exception as error:
            failures[contender] = f"{type(error).__name__}: {error}".splitlines()[0]
    timings = {}
    if args.device.type == "cuda":
        for contender, ready in prepared.items():
            timings[contender] = time_runs(ready.run, ready.reset, args.device, args.warmup, args.repeats)
    elif prepared:
        runs = {contender: ready.run for contender, ready in prepared.items()}
        resets = {contender: ready.reset for contender, ready in prepared.items()}
        timings = time_interleaved(runs, args.warmup, args.repeats, resets, settle=1)
    shape = {
        "batch": config.batch,
        "steps": config.steps,
        "input_size": config.input_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "bidirectional": config.bidirectional,
        "packed": config.packed,
        "sweep_axes": list(config.sweep_axes),
    }
    measurements = []
    for contender in contenders:
        if contender in failures:
            measured = dict.fromkeys(_MEASURED_FIELDS)
        else:
            ready, timing = prepared[contender], timings[contender]
            measured = {
                "ms": timing.median_ms,
                "ms_p20": timing.p20_ms,
                "ms_p80": timing.p80_ms,
                "ms_per_step": timing.median_ms / ready.steps,
                "peak_memory_mb": peak_memory_mb(ready.run, ready.reset, args.device),
                "max_diff_vs_torch": ready.difference,
            }
        failure = failures.get(contender)
        measurements.append(
            Measurement(config.name, cell, dtype, mode, contender, **shape, **measured, failure=failure)
        )
    return measurements


def _prepare(config: Config, cell: str, dtype: str, mode: str, contender: str, args: argparse.Namespace) -> _Prepared:
    """`contender`'s module on the case's weights and input, its output compared with torch.nn's, and one call of the
    workload made (so that a failing contender fails here, not while the others are timed)."""
    # Same seed for every contender of a case: the same weights and input each time.
    torch.manual_seed(args.seed)
    source = make_torch_layer(config, cell, DTYPES[dtype], args.device)
    input = make_input(config, DTYPES[dtype], args.device, args.seed)
    steps = len(input.batch_sizes) if config.packed else config.steps
    module = make_contender(contender, source, config, cell)
    with torch.no_grad():
        difference = (output_tensor(module(input)).float() - output_tensor(source(input)).float()).abs().max()
    run, reset = workload(module, input, mode)
    reset()
    run()
    return _Prepared(run, reset, steps, difference.item())


if __name__ == "__main__":
    main()
