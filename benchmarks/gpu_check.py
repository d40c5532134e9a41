"""One prepared run for a GPU machine: install, environment, tests, compute-sanitizer, benchmarks against cuDNN.

    python -m benchmarks.gpu_check OUTDIR                     # on the GPU machine: at most 11 minutes
    python -m benchmarks.gpu_check --dry-run OUTDIR           # print the plan: each part, its budget, the total
    python -m benchmarks.gpu_check --only tests,sanitizer OUTDIR   # rerun some parts (install first if not built)
    python -m benchmarks.gpu_check --skip benchmarks OUTDIR   # leave parts out
    python -m benchmarks.gpu_check --rehearse OUTDIR          # every part on CPU at tiny sizes (CI runs it)

The parts run in this order, the most valuable first, each in its own process(es) with a time limit set from the
last GPU run's log, so that a part that fails, crashes or hangs costs only its own budget: install (so that no later
part compiles the kernels on first use), environment, the tests that failed on the last GPU run, the tests marked
gpu, the variant layers' test files (in parallel processes on the one GPU), the reduced torch.compile/export matrix,
compute-sanitizer (memcheck of every kernel family, racecheck and synccheck of the persistent kernels), the step
loops replayed as CUDA graphs against the plain loops and cuDNN, the core benchmark cases missing from this GPU's
committed results, and the variant layers' benchmarks. Each test's result, and a failure's reason, reach the log as
the test ends, so a part killed at its limit still says what failed and why. The run ends with one summary line per
part (also in OUTDIR/summary.txt) and exits 1 if any part failed.

OUTDIR gets: environment.log (the install's output, then versions, GPU, driver, commit), one log per part, the
benchmark results <device>.json/.md/.png (as benchmarks.run writes them, ready to commit to benchmarks/results/), the
variant results <device>-variants.json/.md, and summary.txt. Nothing the committed results already cover is measured
again unless --remeasure; then a case more than 1.3x slower against cuDNN than in the committed results of the same
GPU fails the benchmarks part (a regression).
"""

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.configs import STANDARD_CONFIGS, Config

REPOSITORY = Path(__file__).resolve().parent.parent
# What gpu_check's own work may take on the GPU machine (the machine's start comes on top): the parts' budgets add up
# to at most this.
TOTAL_BUDGET_S = 11 * 60
BENCHMARK_MARGIN_S = 10  # the benchmarks start no case this close to their limit, so what was measured gets written
# Of the sanitizer's budget: racecheck and synccheck of a small persistent forward+backward each; memcheck of every
# kernel family gets the rest.
PERSISTENT_CHECK_S = 20
GPU_RUNS = (2, 10)  # (warmup, repeats) per measurement: enough for a median at GPU noise, within the budget
# On the GPU the benchmarks part times cuDNN (torch.nn) against the backends that may beat it: "persistent", "triton"
# (its step loops replayed as CUDA graphs since the last GPU run, where its Python loop took 100-190 us per step) and
# the C++ step loop ("cuda"). fused_rnn.torch is cuDNN itself behind our layer (0.63-1.49x torch.nn's time measured).
GPU_BENCHMARK_BACKENDS = ("persistent", "triton", "cuda")
# Besides the standard configs: the edges of "auto"'s persistent range (fused_rnn.backends.CUDA_PERSISTENT_FASTER),
# measured so far only at its corner B=1 H=512.
RANGE_CONFIGS = [
    Config("b8_t1024_h512", batch=8, steps=1024, input_size=512, hidden_size=512, cells=("lstm",)),
    Config("b1_t1024_h256", batch=1, steps=1024, input_size=256, hidden_size=256, cells=("lstm",)),
]
REHEARSAL_CONFIGS = [
    Config("dry_b2_t4_h8", batch=2, steps=4, input_size=8, hidden_size=8, cells=("lstm", "gru")),
    Config("dry_varlen_b3_t4_h8", batch=3, steps=4, input_size=8, hidden_size=8, min_steps=2, cells=("lstm",)),
]
PYTEST = [
    "-m",
    "pytest",
    "-v",
    "-rfEs",
    "--durations=10",
    "-p",
    "no:cacheprovider",
    "-p",
    "benchmarks.gpu_check_pytest",
]
# The tests that failed on the last GPU run (benchmarks/results/gpu_check/tests.log, 2026-11-30): first, so that
# whatever else runs out of time, they are answered.
FAILED_LAST_RUN = [
    "tests/test_zoneout.py::test_reference_matches_the_plain_loop",
    "tests/test_zoneout.py::test_reference_matches_the_plain_loop_on_packed_rows",
    "tests/test_indrnn.py::test_module_bidirectional_two_layers_on_unsorted_packed_input",
]
GPU_TESTS = ["-m", "gpu", "tests"]
# The variant layers' files, whose Triton kernels run compiled on the GPU there (CI runs them in the interpreter):
# 937 tests, about 0.8 s each on the last run (most of it compiling kernels), so they run in VARIANT_SHARDS processes
# on the one GPU at once (the machine has 16 cores).
VARIANT_TEST_FILES = [f"tests/test_{name}.py" for name in ("zoneout", "layernorm", "multihead", "slstm_cell", "indrnn")]
VARIANT_SHARDS = 6
REHEARSAL_TESTS = ["tests/test_readme.py"]
SANITIZED_CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
NOT_KERNEL_BACKENDS = ("auto", "reference", "torch")  # plain PyTorch ops: nothing of ours for memcheck to check
ENVIRONMENT_LOG = "environment.log"


@dataclass
class Outcome:
    ok: bool
    line: str
    """The part's summary line, after its name."""


@dataclass(frozen=True)
class Part:
    name: str
    budget_s: int
    """Its time limit on the GPU machine, from the last run's log (what it took there, with a margin)."""
    what: str
    run: Callable[[Path, bool, float, argparse.Namespace], Outcome]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    names = [part.name for part in PARTS]
    parser.add_argument("outdir", type=Path, help="where the files go (created if missing)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with each part's budget; run nothing")
    parser.add_argument("--rehearse", action="store_true", help="every part on CPU at tiny sizes (CI runs it)")
    parser.add_argument("--only", type=_part_list, help=f"comma-separated parts to run, of: {', '.join(names)}")
    parser.add_argument("--skip", action="append", default=[], choices=names, help="leave this part out (repeatable)")
    parser.add_argument("--remeasure", action="store_true", help="time cases the committed results have too")
    parser.add_argument(
        "--part", choices=("environment", "workload", "persistent-workload", "benchmarks"), help=argparse.SUPPRESS
    )
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part == "environment":
        return print_environment()
    if args.part == "workload":
        return sanitized_workload(args.rehearse)
    if args.part == "persistent-workload":
        return persistent_workload(args.rehearse)
    if args.part == "benchmarks":
        return run_benchmarks(args.outdir, args.rehearse, args.seconds, args.remeasure)

    chosen = [part for part in PARTS if (args.only is None or part.name in args.only) and part.name not in args.skip]
    if args.dry_run:
        print(plan(chosen), end="")
        return 0
    args.outdir.mkdir(parents=True, exist_ok=True)
    summary, all_ok = [], True
    for part in PARTS:
        if part not in chosen:
            summary.append(f"{part.name}: not run ({'--only' if args.only is not None else '--skip'})")
            print(summary[-1], flush=True)
            continue
        start = time.monotonic()
        try:
            outcome = part.run(args.outdir, args.rehearse, part.budget_s, args)
        except Exception as error:  # a bug in one part must not cost the GPU time of the others
            outcome = Outcome(False, f"FAILED: {type(error).__name__}: {error}")
        summary.append(f"{part.name}: {outcome.line} ({time.monotonic() - start:.0f} s)")
        print(summary[-1], flush=True)
        all_ok &= outcome.ok
    text = "\n".join(summary) + "\n"
    (args.outdir / "summary.txt").write_text(text)
    print("\nsummary\n" + text, end="")
    return 0 if all_ok else 1


def _part_list(text: str) -> list[str]:
    names = [part.name for part in PARTS]
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(names)}; got {text!r}")
    return chosen


def plan(parts: list[Part]) -> str:
    """The parts in the order they run, each with its budget and what it does, and the total."""
    lines = [f"{index}. {part.name} ({part.budget_s} s): {part.what}" for index, part in enumerate(parts, 1)]
    total = sum(part.budget_s for part in parts)
    lines.append(f"total: {total} s of at most {TOTAL_BUDGET_S} s (the machine's start comes on top)")
    return "\n".join(lines) + "\n"


def _module_command(outdir: Path, rehearse: bool, part: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.gpu_check", str(outdir), "--part", part, *extra] + (
        ["--rehearse"] if rehearse else []
    )


def _environment(rehearse: bool) -> dict:
    """The child processes' environment: the dry run runs the Triton kernels in the interpreter, a GPU run compiled."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    if rehearse:
        environment["TRITON_INTERPRET"] = "1"
    else:
        environment.pop("TRITON_INTERPRET", None)
    return environment


def run_logged(command: list[str], log: Path, time_limit_s: float, environment: dict, mode: str = "w") -> int | None:
    """Run `command` with its output in `log`; its exit status, or None when it ran past the limit and was killed."""
    with log.open(mode) as output:
        output.write(f"$ {' '.join(command)}\n")
        output.flush()
        process = subprocess.Popen(
            command, cwd=REPOSITORY, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait(timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the children it started go too
            process.wait()
            output.write(f"\nkilled after the part's time limit of {time_limit_s:.0f} s\n")
            return None


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _failed(status: int | None, log: Path, time_limit_s: float) -> Outcome:
    if status is None:
        return Outcome(False, f"FAILED: killed at its {time_limit_s:.0f} s limit; see {log.name}")
    return Outcome(False, f"FAILED (exit {status}): {_last_line(log)}; see {log.name}")


# ---- environment ----


def check_environment(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    log = outdir / ENVIRONMENT_LOG
    status = run_logged(
        _module_command(outdir, rehearse, "environment"), log, time_limit_s, _environment(rehearse), mode="a"
    )
    if status != 0:
        return _failed(status, log, time_limit_s)
    return Outcome(True, f"ok: {_last_line(log)}")


def print_environment() -> int:
    """Versions, device, driver, tools and commit; the last line sums them up."""
    import torch

    from benchmarks import report

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    environment = report.describe_environment(device)
    tools = {
        "nvidia-smi": ["nvidia-smi"],
        "nvidia-smi --query-gpu": ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
        "nvcc --version": ["nvcc", "--version"],
        "compute-sanitizer --version": [_compute_sanitizer() or "compute-sanitizer", "--version"],
    }
    print(json.dumps(environment, indent=1))
    # importlib.metadata rather than `pip list`, which takes seconds to start
    packages = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    print("\n## installed packages\n" + "\n".join(packages))
    for title, command in tools.items():
        print(f"\n## {title}", flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
            print(done.stdout + done.stderr, flush=True)
        except (OSError, subprocess.TimeoutExpired) as error:
            print(f"not available: {error}", flush=True)
    driver = _nvidia_driver()
    print(
        f"\n{environment['device_name']}"
        + (f", driver {driver}" if driver else "")
        + f", CUDA {environment['cuda']}, torch {environment['torch']}, triton {environment['triton']}, "
        f"python {environment['python']}, commit {(environment['git_commit'] or 'unknown')[:12]}"
        + (" with uncommitted changes" if environment["git_tracked_changes"] else "")
    )
    return 0


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None


def _compute_sanitizer() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("compute-sanitizer") or shutil.which("compute-sanitizer", path=f"{cuda_home}/bin")


# ---- install ----


def install(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    """pip install the project, building whatever its setup builds (the CUDA extension, where there is one)."""
    log = outdir / ENVIRONMENT_LOG
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index"]
    command += ["--disable-pip-version-check", "-e", "."] + (["--dry-run"] if rehearse else [])
    environment = _environment(rehearse) | {"MAX_JOBS": "16"}
    status = run_logged(command, log, time_limit_s, environment)
    if status != 0:
        return _failed(status, log, time_limit_s)
    return Outcome(True, f"ok: {_last_line(log)}")


# ---- tests ----


def failed_last_run(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    return run_pytest(outdir / "failed-before.log", FAILED_LAST_RUN, rehearse, time_limit_s)


def gpu_tests(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    return run_pytest(outdir / "gpu-tests.log", REHEARSAL_TESTS if rehearse else GPU_TESTS, rehearse, time_limit_s)


def variant_tests(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    selection = ["tests/test_slstm_cell.py", "-k", "steps_match or named_errors"] if rehearse else VARIANT_TEST_FILES
    return run_pytest(
        outdir / "variant-tests.log", selection, rehearse, time_limit_s, shards=2 if rehearse else VARIANT_SHARDS
    )


def run_pytest(log: Path, selection: list[str], rehearse: bool, time_limit_s: float, shards: int = 1) -> Outcome:
    """pytest on `selection`, in `shards` processes at once (each its own log beside `log`, joined into it at the
    end); the summary line counts the results and names the first failures with their reasons."""
    environment = _environment(rehearse)
    command = [sys.executable, *PYTEST, *selection]
    if shards == 1:
        logs, statuses = [log], [run_logged(command, log, time_limit_s, environment)]
    else:
        logs = [log.with_name(f"{log.stem}.shard{index}{log.suffix}") for index in range(shards)]
        environments = [environment | {"FUSED_RNN_TEST_SHARD": f"{index}/{shards}"} for index in range(shards)]
        statuses = run_logged_together([command] * shards, logs, time_limit_s, environments)
        log.write_text(
            "".join(
                f"## shard {index}/{shards}\n" + path.read_text(errors="replace") for index, path in enumerate(logs)
            )
        )
    texts = [path.read_text(errors="replace") for path in logs]
    passed, failed, errors, skipped = (
        sum(len(re.findall(rf"^\S+ {word}\b", text, flags=re.M)) for text in texts)
        for word in ("PASSED", "FAILED", "ERROR", "SKIPPED")
    )
    reasons = [line for text in texts for line in text.splitlines() if line.startswith("FAILED ") and ": " in line]
    counts = f"{passed} passed, {failed} failed, {errors} errors, {skipped} skipped"
    killed = any(status is None for status in statuses)
    # pytest exits 5 when it ran no test: a shard can be empty, a whole part cannot
    ok = not killed and all(status == 0 or (shards > 1 and status == 5) for status in statuses) and passed > 0
    line = ("ok: " if ok else "FAILED: ") + counts + (f"; killed at its {time_limit_s:.0f} s limit" if killed else "")
    if reasons:
        line += "; " + " | ".join(reasons[:3]) + (f" | and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    return Outcome(ok, f"{line}; see {log.name}")


def run_logged_together(
    commands: list[list[str]], logs: list[Path], time_limit_s: float, environments: list[dict]
) -> list[int | None]:
    """run_logged for several commands at once, all within one time limit: their exit statuses (None: killed)."""
    processes, outputs = [], []
    for command, log, environment in zip(commands, logs, environments, strict=True):
        output = log.open("w")
        output.write(f"$ {' '.join(command)}\n")
        output.flush()
        outputs.append(output)
        processes.append(
            subprocess.Popen(
                command,
                cwd=REPOSITORY,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + time_limit_s
    statuses = []
    for process, output in zip(processes, outputs):
        try:
            statuses.append(process.wait(timeout=max(deadline - time.monotonic(), 0)))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            output.write(f"\nkilled after the part's time limit of {time_limit_s:.0f} s\n")
            statuses.append(None)
        output.close()
    return statuses


def compile_matrix(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    """The reduced torch.compile / torch.export matrix (benchmarks.compile_matrix) on CUDA: its pairwise covers, in
    parallel processes; a case the time limit cut off counts as failed."""
    command = [sys.executable, "-m", "benchmarks.compile_matrix", "--reduced", "--jobs", "8"]
    command += ["--time-limit", f"{time_limit_s - BENCHMARK_MARGIN_S:.0f}"]
    command += ["--device", "cpu", "--only", "rnn_relu", "aot_eager"] if rehearse else ["--device", "cuda"]
    return _logged_part(outdir / "compile-matrix.log", command, time_limit_s, rehearse)


# ---- compute-sanitizer ----


def run_sanitizer(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    """compute-sanitizer memcheck on a small forward+backward of each kernel family on each backend with kernels of
    its own, then racecheck and synccheck on the persistent kernels' (all logged to sanitizer.log)."""
    log = outdir / "sanitizer.log"
    environment = _environment(rehearse)
    # Without the caching allocator every tensor is its own allocation, so memcheck sees overruns into neighbours.
    environment["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    sanitizer = _compute_sanitizer()
    persistent = _module_command(outdir, rehearse, "persistent-workload")
    workloads = {  # tool -> (workload, seconds, the workload's summary line prefix)
        "memcheck": (_module_command(outdir, rehearse, "workload"), time_limit_s - 2 * PERSISTENT_CHECK_S, "workload"),
        "racecheck": (persistent, PERSISTENT_CHECK_S, "persistent-workload"),
        "synccheck": (persistent, PERSISTENT_CHECK_S, "persistent-workload"),
    }
    lines, ok = [], True
    for mode, (tool, (workload, seconds, prefix)) in zip(("w", "a", "a"), workloads.items()):
        if rehearse or sanitizer is None:
            reason = "rehearsal, no GPU" if rehearse else "compute-sanitizer not found on this machine"
            status = run_logged(workload, log, seconds, environment, mode)
            if status != 0:
                return _failed(status, log, seconds)
            lines.append(f"{tool} not checked ({reason}); the workload alone ran: {_last_line(log)}")
            continue
        command = [sanitizer, "--tool", tool, "--error-exitcode", "3", "--target-processes", "all", *workload]
        status = run_logged(command, log, seconds, environment, mode)
        text = log.read_text(errors="replace").split(f"$ {' '.join(command)}")[-1]
        errors = re.search(r"ERROR SUMMARY: (\d+) errors?", text) or re.search(r"RACECHECK SUMMARY: .*", text)
        if status is None:
            lines.append(f"{tool} FAILED: killed at its {seconds:.0f} s limit")
            ok = False
            continue
        if errors is None:  # the tool does not work on every machine; say so rather than fail the project
            lines.append(f"{tool} not checked: compute-sanitizer does not run here (exit {status})")
            continue
        failed = status != 0 or any(int(n) for n in re.findall(r"(\d+) (?:errors?|hazards?)", errors.group(0)))
        workload_line = re.findall(rf"^{prefix}: .*$", text, flags=re.M)
        lines.append(f"{tool} {errors.group(0)}; {workload_line[-1] if workload_line else ''}")
        ok &= not failed
    return Outcome(ok, ("ok: " if ok else "FAILED: ") + " | ".join(lines))


def sanitized_workload(rehearse: bool) -> int:
    """A small forward+backward (packed, bidirectional, 2 layers) per cell, and of the variants with kernels of their
    own (IndRNN, LayerNorm LSTM/GRU, sLSTM, multi-head GRU) and of zoneout's, on each backend with its own kernels."""
    import torch

    import fused_rnn

    device = torch.device("cuda" if torch.cuda.is_available() and not rehearse else "cpu")
    backends = []
    for backend in fused_rnn.available_backends():
        if backend in NOT_KERNEL_BACKENDS:
            continue
        if any(_runs_on(backend, device, torch.float32, _sanitized_shape(cell)) for cell in SANITIZED_CELLS):
            backends.append(backend)
    if not backends:
        print(f"workload: no backend with kernels of its own runs on {device}")
        return 1
    layers = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "rnn_tanh": fused_rnn.RNN, "rnn_relu": fused_rnn.RNN}
    torch.manual_seed(0)
    for backend in backends:
        for cell in SANITIZED_CELLS:
            if not _runs_on(backend, device, torch.float32, _sanitized_shape(cell)):
                print(f"{backend} {cell}: not served by this backend, skipped", flush=True)
                continue
            extra = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
            layer = layers[cell](8, 33, num_layers=2, bidirectional=True, backend=backend, device=device, **extra)
            if not _gradients_finite(layer, device):
                print(f"workload: {backend} {cell}: non-finite gradient")
                return 1
            print(f"{backend} {cell}: forward+backward ok", flush=True)
    variant_runs = []
    for name, (make_layer, runs_on) in _variant_layers().items():  # the variants' kernels, where a backend has them
        for backend in backends:
            if not runs_on(backend, device):
                continue
            if not _gradients_finite(make_layer(backend, device), device):
                print(f"workload: {backend} {name}: non-finite gradient")
                return 1
            variant_runs.append(f"{name} on {backend}")
            print(f"{backend} {name}: forward+backward ok", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(
        f"workload: {', '.join(backends)} x {', '.join(SANITIZED_CELLS)}, and {', '.join(variant_runs) or 'no variant'}"
        f", forward+backward on {device}"
    )
    return 0


def _gradients_finite(layer, device) -> bool:
    """A packed forward and backward of `layer` (input size 8, lengths 5, 4, 2); whether every gradient is finite."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    x = torch.randn(5, 3, 8, device=device, requires_grad=True)
    output, _ = layer(pack_padded_sequence(x, [5, 4, 2]))
    output.data.square().sum().backward()
    return all(torch.isfinite(p.grad).all() for p in [x, *layer.parameters()])


def _variant_layers() -> dict:
    """name -> (layer(backend, device), runs_on(backend, device)): the layers beyond torch.nn with kernels of their
    own, and zoneout's kernels, 2 layers, bidirectional, hidden 33 (3 heads of 11)."""
    import torch

    import fused_rnn
    from fused_rnn.indrnn import functional as indrnn
    from fused_rnn.layernorm import functional as layernorm
    from fused_rnn.multihead import functional as multihead

    def layer(kind, **extra):
        return lambda backend, device: kind(
            8, 33, num_layers=2, bidirectional=True, backend=backend, device=device, **extra
        )

    def chosen_by(functional):
        def runs_on(backend, device):
            try:
                return functional.chosen_backend(backend, device, torch.float32) == backend
            except ValueError:  # not one of the variant's backends, or it cannot run here
                return False

        return runs_on

    def zoned(cell):
        return lambda backend, device: _runs_on(backend, device, torch.float32, _sanitized_shape(cell, zoneout=True))

    return {
        "indrnn": (layer(fused_rnn.IndRNN), chosen_by(indrnn)),
        "layernorm_lstm": (layer(fused_rnn.LayerNormLSTM), chosen_by(layernorm)),
        "layernorm_gru": (layer(fused_rnn.LayerNormGRU), chosen_by(layernorm)),
        "slstm": (layer(fused_rnn.sLSTM, num_heads=3), chosen_by(multihead)),
        "multihead_gru": (layer(fused_rnn.MultiHeadGRU, num_heads=3), chosen_by(multihead)),
        "zoneout_lstm": (layer(fused_rnn.LSTM, zoneout=(0.2, 0.1)), zoned("lstm")),
        "zoneout_gru": (layer(fused_rnn.GRU, zoneout=0.2), zoned("gru")),
    }


def _sanitized_shape(cell: str, zoneout: bool = False):
    """The shape of the sanitized workload's layers, as backend resolution weighs it."""
    from fused_rnn.backends import Workload

    return Workload(cell, batch=3, packed=True, training=True, hidden=33, zoneout=zoneout)


def persistent_workload(rehearse: bool) -> int:
    """A small forward+backward of the persistent kernels (LSTM and GRU, fp32 and bf16, packed, both directions),
    for racecheck: their CTAs share shared memory between warps and exchange state through global memory."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    import fused_rnn
    from fused_rnn.backends import Workload

    device = torch.device("cuda" if torch.cuda.is_available() and not rehearse else "cpu")
    layers = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}
    torch.manual_seed(0)
    ran = []
    for cell, dtype in [(cell, dtype) for cell in layers for dtype in (torch.float32, torch.bfloat16)]:
        # hidden 40 over 40 CTAs; batch 11 spans a full and a partial batch tile
        if not _runs_on("persistent", device, dtype, Workload(cell, 11, True, True, hidden=40)):
            continue
        layer = layers[cell](8, 40, bidirectional=True, backend="persistent", device=device, dtype=dtype)
        x = torch.randn(6, 11, 8, device=device, dtype=dtype, requires_grad=True)
        output, _ = layer(pack_padded_sequence(x, [6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1]))
        output.data.float().square().sum().backward()
        ran.append(f"{cell} {str(dtype).removeprefix('torch.')}")
        print(f"persistent {ran[-1]}: forward+backward ok", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if not ran:
        print(f"persistent-workload: the persistent backend does not run on {device}: nothing to check")
        return 0
    print(f"persistent-workload: {', '.join(ran)} forward+backward on {device}")
    return 0


# ---- benchmarks ----


def benchmark(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    budget = f"{time_limit_s - BENCHMARK_MARGIN_S:.0f}"
    extra = ["--seconds", budget] + (["--remeasure"] if args is not None and args.remeasure else [])
    command = _module_command(outdir, rehearse, "benchmarks", *extra)
    return _logged_part(outdir / "benchmarks.log", command, time_limit_s, rehearse)


def graph_benchmarks(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    command = [sys.executable, "-m", "benchmarks.graphs_gpu", str(outdir)]
    command += ["--seconds", f"{time_limit_s - BENCHMARK_MARGIN_S:.0f}"] + (["--dry-run"] if rehearse else [])
    return _logged_part(outdir / "graphs.log", command, time_limit_s, rehearse)


def variant_benchmarks(outdir: Path, rehearse: bool, time_limit_s: float, args=None) -> Outcome:
    command = [sys.executable, "-m", "benchmarks.variants_gpu", str(outdir)]
    command += ["--seconds", f"{time_limit_s - BENCHMARK_MARGIN_S:.0f}"]
    command += ["--remeasure"] if args is not None and args.remeasure else []
    command += ["--dry-run", "--layers", "indrnn", "zoneout_gru"] if rehearse else []
    return _logged_part(outdir / "variant-benchmarks.log", command, time_limit_s, rehearse)


def _logged_part(log: Path, command: list[str], time_limit_s: float, rehearse: bool) -> Outcome:
    """A part that is one command: its log's last line when it exits 0."""
    status = run_logged(command, log, time_limit_s, _environment(rehearse))
    if status != 0:
        return _failed(status, log, time_limit_s)
    return Outcome(True, _last_line(log))


def run_benchmarks(outdir: Path, rehearse: bool, seconds: float, remeasure: bool = False) -> int:
    """Time torch.nn (cuDNN) and the fused backends that can beat it on the standard configs and the edges of "auto"'s
    ranges, fp32/bf16/fp16, fw and fwbw: the cases the committed results of this GPU lack, or (remeasure) all of them,
    those lacking first, each compared with its committed figure.

    Cases not started within `seconds` are listed and left out; the last line sums up what was measured.
    """
    import torch

    import fused_rnn
    from benchmarks import report, run
    from benchmarks.contenders import TORCH, fused_contender
    from fused_rnn.backends import Workload

    stop_at = time.monotonic() + seconds
    device = torch.device("cuda" if torch.cuda.is_available() and not rehearse else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    configs = REHEARSAL_CONFIGS if rehearse else STANDARD_CONFIGS + RANGE_CONFIGS
    if rehearse:  # every backend that runs here, the reference and the Triton interpreter included
        backends = [b for b in fused_rnn.available_backends() if b != "auto"]
    else:
        backends = list(GPU_BENCHMARK_BACKENDS)
    warmup, repeats = (1, 2) if rehearse else GPU_RUNS
    args = argparse.Namespace(device=device, warmup=warmup, repeats=repeats, seed=0, threads=1, mode=list(run.MODES))
    cells = dict.fromkeys(cell for config in configs for cell in config.cells)
    cases = [
        (config, cell, dtype) for cell in cells for config in configs if cell in config.cells for dtype in run.DTYPES
    ]
    committed = committed_rows(report.RESULTS, report.device_slug(device))
    cases = cases_to_measure(cases, {(r["config"], r["cell"], r["dtype"]) for r in committed}, remeasure)
    results, not_started, contenders = [], [], {TORCH: None}
    for index, case in enumerate(cases):
        # Only the backends that serve this shape and dtype on this device: the others would only record refusals.
        config, cell, dtype = case
        shape = Workload(cell, config.batch, config.packed, training=True, hidden=config.hidden_size)
        here = [fused_contender(b) for b in backends if _runs_on(b, device, run.DTYPES[dtype], shape)] + [TORCH]
        contenders |= dict.fromkeys(here)
        measured, not_started = run.measure_cases([case], here, args, stop_at=stop_at)
        results += measured
        if not_started:
            not_started = cases[index:]
            break
    report.add_ratios(results)  # again, over all cases: the ratio to torch.nn's best dtype spans them
    contenders = list(contenders)
    environment = report.describe_environment(device)
    settings = {"warmup": warmup, "repeats": repeats, "seed": 0, "quick": rehearse, "sweep": False}
    settings |= {"contenders": contenders, "argv": ["benchmarks.gpu_check"] + (["--rehearse"] if rehearse else [])}
    paths = report.write_reports(results, environment, settings, outdir) if results else []
    if results:
        paths.append(paths[0].with_suffix(".png"))
        report.plot_ratios(results, environment, paths[-1])
    for config, cell, dtype in not_started:
        print(f"not started (time limit): {config.name} {cell} {dtype}")
    failed = [r for r in results if r["failure"]]
    for r in failed:
        print(f"failed: {r['config']} {r['cell']} {r['dtype']} {r['mode']} {r['contender']}: {r['failure']}")
    slower = regressions(results, committed)
    for line in slower:
        print(f"regression: {line}")
    print(
        f"{len(results) - len(failed)} of {len(results)} measurements ok, {len(failed)} failed, "
        f"{len(slower)} regressions (over {REGRESSION_FACTOR}x the committed ratio to cuDNN), "
        f"{len(not_started)} of {len(cases)} cases not started; {', '.join(contenders)} on "
        f"{environment['device_name']}; wrote {', '.join(path.name for path in paths) or 'nothing (no case to time)'}"
    )
    return 1 if failed or slower else 0


REGRESSION_FACTOR = 1.3


def regressions(results: list[dict], committed: list[dict]) -> list[str]:
    """The measurements whose time relative to torch.nn's (cuDNN's) in the same run is more than REGRESSION_FACTOR
    times the committed ratio of the same case and contender on this GPU: one line each."""
    key = lambda r: (r["config"], r["cell"], r["dtype"], r["mode"], r["contender"])  # noqa: E731
    before = {key(r): r["ratio_to_torch"] for r in committed if r.get("ratio_to_torch") and not r.get("failure")}
    lines = []
    for r in results:
        old = before.get(key(r))
        if old is not None and r.get("ratio_to_torch") and r["ratio_to_torch"] > REGRESSION_FACTOR * old:
            lines.append(f"{' '.join(key(r))}: {r['ratio_to_torch']:.2f}x cuDNN's time, committed {old:.2f}x")
    return lines


def committed_rows(directory: Path, slug: str) -> list[dict]:
    """Every benchmark row in the committed results of this device (`slug`*.json in `directory`)."""
    return [
        r for path in sorted(directory.glob(f"{slug}*.json")) for r in json.loads(path.read_text()).get("results", [])
    ]


def committed_cases(directory: Path, slug: str) -> set[tuple[str, str, str]]:
    """(config, cell, dtype) of every case in the committed results of this device (`slug`*.json in `directory`)."""
    return {(r["config"], r["cell"], r["dtype"]) for r in committed_rows(directory, slug)}


def cases_to_measure(cases: list, committed: set[tuple[str, str, str]], remeasure: bool) -> list:
    """The cases the committed results lack; with remeasure, every case, those first."""
    return (
        unmeasured_first(cases, committed)
        if remeasure
        else [c for c in cases if (c[0].name, c[1], c[2]) not in committed]
    )


def unmeasured_first(cases: list, committed: set[tuple[str, str, str]]) -> list:
    """`cases` with those not in the committed results first, each group in its order: a run that cannot time every
    case adds figures instead of repeating them."""
    return sorted(cases, key=lambda case: (case[0].name, case[1], case[2]) in committed)


def _runs_on(backend: str, device, dtype, workload=None) -> bool:
    """Whether `backend` serves calls on `device`/`dtype` (of the shape `workload`, which "persistent" needs)."""
    from fused_rnn.backends import resolve

    try:
        resolve(backend, device, dtype, workload=workload)
    except ValueError:
        return False
    return True


PARTS = [
    Part("install", 70, "pip install -e . (builds the CPU and CUDA kernels; 61 s last run)", install),
    Part("environment", 10, "versions, GPU, driver, tools, commit (7 s)", check_environment),
    Part(
        "failed-before", 40, "the tests that failed on the last GPU run: " + ", ".join(FAILED_LAST_RUN), failed_last_run
    ),
    Part("gpu-tests", 100, "pytest -m gpu: every backend against torch.nn in float64, graph replay (70 s)", gpu_tests),
    Part(
        "variant-tests",
        120,
        f"the variant layers' test files on CUDA, in {VARIANT_SHARDS} processes (937 tests, about 0.8 s each)",
        variant_tests,
    ),
    Part("compile-matrix", 60, "torch.compile and torch.export, the reduced matrix's 54 cases on CUDA", compile_matrix),
    Part(
        "sanitizer",
        90,
        "compute-sanitizer memcheck of every kernel family; racecheck, synccheck of persistent",
        run_sanitizer,
    ),
    Part("graphs", 45, "the step loops replayed as CUDA graphs against the plain loops and cuDNN", graph_benchmarks),
    Part("benchmarks", 70, "core cases missing from the committed results (GRU, RNN, the persistent range)", benchmark),
    Part("variant-benchmarks", 55, "the variant layers against plain and compiled PyTorch loops", variant_benchmarks),
]


if __name__ == "__main__":
    sys.exit(main())
