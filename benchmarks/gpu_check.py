"""One prepared run for a GPU machine: environment, install, tests, compute-sanitizer, benchmarks vs cuDNN.

    python -m benchmarks.gpu_check OUTDIR              # on the GPU machine: about 8 minutes at most
    python -m benchmarks.gpu_check --dry-run OUTDIR    # the same pipeline on CPU at tiny sizes (CI runs it)
    python -m benchmarks.gpu_check --skip sanitizer OUTDIR   # leave a part out (a rerun on short device time)

Each part runs in its own process with its own time limit, so a part that fails, crashes or hangs does not
stop the others; the run ends with one summary line per part (also in OUTDIR/summary.txt) and exits 1 if any
part failed. The install comes first, so that no later part compiles the kernels on first use. OUTDIR gets 8
files: environment.log (the install's output, then versions, GPU, driver, commit),
tests.log, sanitizer.log, benchmarks.log, the benchmark results <device>.json and <device>.md (as
benchmarks.run writes them, ready to commit to benchmarks/results/), <device>.png (time relative to torch.nn
per case) and summary.txt.

The benchmarks time every fused_rnn backend that runs on the GPU except the reference (the oracle: plain
PyTorch ops per step, minutes for the standard configs), cells one after another (LSTM first), until their
time is up. The dry run installs with pip's --dry-run, runs one small test file, runs the sanitizer's workload
on the Triton interpreter (compute-sanitizer needs a GPU), and times tiny configurations with the reference too.
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
from dataclasses import dataclass
from pathlib import Path

from benchmarks.configs import STANDARD_CONFIGS, Config

REPOSITORY = Path(__file__).resolve().parent.parent
# Seconds per part on the GPU machine; together under 8 minutes. The benchmarks stop starting new cases
# BENCHMARK_MARGIN_S before their limit, so what was measured gets written.
TIME_LIMITS_S = {"install": 80, "environment": 30, "tests": 150, "sanitizer": 75, "benchmarks": 135}
# Of the sanitizer's time: racecheck of a small persistent forward+backward (the kernels that share memory across
# warps and exchange state between CTAs); memcheck of every backend gets the rest.
RACECHECK_S = 20
BENCHMARK_MARGIN_S = 15
GPU_RUNS = (2, 10)  # (warmup, repeats) per measurement: enough for a median at GPU noise, within the budget
DRY_RUN_CONFIGS = [
    Config("dry_b2_t4_h8", batch=2, steps=4, input_size=8, hidden_size=8, cells=("lstm", "gru")),
    Config("dry_varlen_b3_t4_h8", batch=3, steps=4, input_size=8, hidden_size=8, min_steps=2, cells=("lstm",)),
]
# What the tests part runs, batch after batch within its time: first the tests marked gpu, which only a GPU can run
# (the backends against torch.nn and float64, determinism); then the files of the layers beyond torch.nn, whose
# Triton kernels run compiled on the GPU there (CI runs them in the interpreter). The whole suite would not fit. The
# dry run: one quick file, to check the plumbing.
GPU_TEST_BATCHES = [
    ["-m", "gpu"],
    [f"tests/test_{name}.py" for name in ("zoneout", "layernorm", "multihead", "slstm_cell", "indrnn")],
]
DRY_RUN_TESTS = ["tests/test_readme.py"]
SANITIZED_CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
NOT_KERNEL_BACKENDS = ("auto", "reference", "torch")  # plain PyTorch ops: nothing of ours for memcheck to check
ENVIRONMENT_LOG = "environment.log"


@dataclass
class Outcome:
    ok: bool
    line: str
    """The part's summary line, after its name."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("outdir", type=Path, help="where the files go (created if missing)")
    parser.add_argument("--dry-run", action="store_true", help="on CPU, tiny sizes; checks the pipeline itself")
    parser.add_argument(
        "--skip", action="append", default=[], choices=list(TIME_LIMITS_S), help="leave this part out (repeatable)"
    )
    parser.add_argument(
        "--part", choices=("environment", "workload", "persistent-workload", "benchmarks"), help=argparse.SUPPRESS
    )
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    if args.part == "environment":
        return print_environment()
    if args.part == "workload":
        return sanitized_workload(args.dry_run)
    if args.part == "persistent-workload":
        return persistent_workload(args.dry_run)
    if args.part == "benchmarks":
        return run_benchmarks(args.outdir, args.dry_run, args.seconds)

    parts = {
        "install": install,
        "environment": check_environment,
        "tests": run_tests,
        "sanitizer": run_sanitizer,
        "benchmarks": benchmark,
    }
    summary, all_ok = [], True
    for name, part in parts.items():
        if name in args.skip:
            summary.append(f"{name}: skipped (--skip)")
            print(summary[-1], flush=True)
            continue
        start = time.monotonic()
        try:
            outcome = part(args.outdir, args.dry_run, TIME_LIMITS_S[name])
        except Exception as error:  # a bug in one part must not cost the GPU time of the others
            outcome = Outcome(False, f"FAILED: {type(error).__name__}: {error}")
        summary.append(f"{name}: {outcome.line} ({time.monotonic() - start:.0f} s)")
        print(summary[-1], flush=True)
        all_ok &= outcome.ok
    text = "\n".join(summary) + "\n"
    (args.outdir / "summary.txt").write_text(text)
    print("\nsummary\n" + text, end="")
    return 0 if all_ok else 1


def _module_command(outdir: Path, dry_run: bool, part: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.gpu_check", str(outdir), "--part", part, *extra] + (
        ["--dry-run"] if dry_run else []
    )


def _environment(dry_run: bool) -> dict:
    """The child processes' environment: the dry run runs the Triton kernels in the interpreter, a GPU run compiled."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    if dry_run:
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


def check_environment(outdir: Path, dry_run: bool, time_limit_s: float) -> Outcome:
    log = outdir / ENVIRONMENT_LOG
    status = run_logged(
        _module_command(outdir, dry_run, "environment"), log, time_limit_s, _environment(dry_run), mode="a"
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


def install(outdir: Path, dry_run: bool, time_limit_s: float) -> Outcome:
    """pip install the project, building whatever its setup builds (the CUDA extension, where there is one)."""
    log = outdir / ENVIRONMENT_LOG
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index"]
    command += ["--disable-pip-version-check", "-e", "."] + (["--dry-run"] if dry_run else [])
    environment = _environment(dry_run) | {"MAX_JOBS": "16"}
    status = run_logged(command, log, time_limit_s, environment)
    if status != 0:
        return _failed(status, log, time_limit_s)
    return Outcome(True, f"ok: {_last_line(log)}")


# ---- tests ----


def run_tests(outdir: Path, dry_run: bool, time_limit_s: float) -> Outcome:
    log = outdir / "tests.log"
    # -v: one line per test as it ends, so a batch killed at the time limit still shows what passed and failed
    pytest = [sys.executable, "-m", "pytest", "-v", "-rfEs", "--durations=15", "-p", "no:cacheprovider"]
    deadline = time.monotonic() + time_limit_s
    results = []
    for index, selection in enumerate([DRY_RUN_TESTS] if dry_run else GPU_TEST_BATCHES):
        written = log.stat().st_size if index else 0
        status = run_logged(
            pytest + selection, log, deadline - time.monotonic(), _environment(dry_run), "a" if index else "w"
        )
        if status is None:
            return _failed(status, log, time_limit_s)
        output = log.read_text(errors="replace")[written:]
        counts = re.findall(r"^=* ?(.*\b(?:passed|failed|error|errors|skipped)\b.*?) ?=*$", output, flags=re.M)
        results.append((status, f"{' '.join(selection)}: {counts[-1] if counts else _last_line(log)}"))
    ok = all(status == 0 for status, _ in results)
    return Outcome(ok, f"{'ok' if ok else 'FAILED'}: " + "; ".join(line for _, line in results))


# ---- compute-sanitizer ----


def run_sanitizer(outdir: Path, dry_run: bool, time_limit_s: float) -> Outcome:
    """compute-sanitizer memcheck on a small forward+backward of each backend with kernels of its own, then
    racecheck on the persistent backend's (both logged to sanitizer.log)."""
    log = outdir / "sanitizer.log"
    environment = _environment(dry_run)
    # Without the caching allocator every tensor is its own allocation, so memcheck sees overruns into neighbours.
    environment["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    sanitizer = _compute_sanitizer()
    workloads = {  # tool -> (workload, seconds, the workload's summary line prefix)
        "memcheck": (_module_command(outdir, dry_run, "workload"), time_limit_s - RACECHECK_S, "workload"),
        "racecheck": (_module_command(outdir, dry_run, "persistent-workload"), RACECHECK_S, "persistent-workload"),
    }
    lines, ok = [], True
    for mode, (tool, (workload, seconds, prefix)) in zip(("w", "a"), workloads.items()):
        if dry_run or sanitizer is None:
            reason = "dry run, no GPU" if dry_run else "compute-sanitizer not found on this machine"
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
            return _failed(status, log, seconds)
        if errors is None:  # the tool does not work on every machine; say so rather than fail the project
            lines.append(f"{tool} not checked: compute-sanitizer does not run here (exit {status})")
            continue
        failed = status != 0 or any(int(n) for n in re.findall(r"(\d+) (?:errors?|hazards?)", errors.group(0)))
        workload_line = re.findall(rf"^{prefix}: .*$", text, flags=re.M)
        lines.append(f"{tool} {errors.group(0)}; {workload_line[-1] if workload_line else ''}")
        ok &= not failed
    return Outcome(ok, ("ok: " if ok else "FAILED: ") + " | ".join(lines))


def sanitized_workload(dry_run: bool) -> int:
    """A small forward+backward (packed, bidirectional, 2 layers) per cell, and of the variants with kernels of their
    own (IndRNN, LayerNorm LSTM/GRU, sLSTM, multi-head GRU), on each backend with its own kernels."""
    import torch

    import fused_rnn

    device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
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
    for name, (make_layer, functional) in _variant_layers().items():  # the variants' kernels, where a backend has them
        for backend in backends:
            if not _variant_runs_on(functional, backend, device):
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
    """name -> (layer(backend, device), the functional module whose chosen_backend says where it runs): the layers
    beyond torch.nn with kernels of their own, 2 layers, bidirectional, hidden 33 (3 heads of 11)."""
    import fused_rnn
    from fused_rnn.indrnn import functional as indrnn
    from fused_rnn.layernorm import functional as layernorm
    from fused_rnn.multihead import functional as multihead

    def layer(kind, **extra):
        return lambda backend, device: kind(
            8, 33, num_layers=2, bidirectional=True, backend=backend, device=device, **extra
        )

    return {
        "indrnn": (layer(fused_rnn.IndRNN), indrnn),
        "layernorm_lstm": (layer(fused_rnn.LayerNormLSTM), layernorm),
        "layernorm_gru": (layer(fused_rnn.LayerNormGRU), layernorm),
        "slstm": (layer(fused_rnn.sLSTM, num_heads=3), multihead),
        "multihead_gru": (layer(fused_rnn.MultiHeadGRU, num_heads=3), multihead),
    }


def _variant_runs_on(functional, backend: str, device) -> bool:
    import torch

    try:
        return functional.chosen_backend(backend, device, torch.float32) == backend
    except ValueError:  # not one of the variant's backends, or it cannot run here
        return False


def _sanitized_shape(cell: str):
    """The shape of the sanitized workload's layers, as backend resolution weighs it."""
    from fused_rnn.backends import Workload

    return Workload(cell, batch=3, packed=True, training=True, hidden=33)


def persistent_workload(dry_run: bool) -> int:
    """A small forward+backward of the persistent kernels (LSTM and GRU, fp32 and bf16, packed, both directions),
    for racecheck: their CTAs share shared memory between warps and exchange state through global memory."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    import fused_rnn
    from fused_rnn.backends import Workload

    device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
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


def benchmark(outdir: Path, dry_run: bool, time_limit_s: float) -> Outcome:
    log = outdir / "benchmarks.log"
    budget = f"{time_limit_s - BENCHMARK_MARGIN_S:.0f}"
    command = _module_command(outdir, dry_run, "benchmarks", "--seconds", budget)
    status = run_logged(command, log, time_limit_s, _environment(dry_run))
    if status != 0:
        return _failed(status, log, time_limit_s)
    return Outcome(True, _last_line(log))


def run_benchmarks(outdir: Path, dry_run: bool, seconds: float) -> int:
    """Time every fused backend and torch.nn (cuDNN) on the standard configs, fp32/bf16/fp16, fw and fwbw.

    Cases not started within `seconds` are listed and left out; the last line sums up what was measured.
    """
    import torch

    import fused_rnn
    from benchmarks import report, run
    from benchmarks.contenders import TORCH, fused_contender
    from fused_rnn.backends import Workload

    stop_at = time.monotonic() + seconds
    device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    configs = DRY_RUN_CONFIGS if dry_run else STANDARD_CONFIGS
    backends = [b for b in fused_rnn.available_backends() if b != "auto" and (dry_run or b != "reference")]
    warmup, repeats = (1, 2) if dry_run else GPU_RUNS
    args = argparse.Namespace(device=device, warmup=warmup, repeats=repeats, seed=0, threads=1, mode=list(run.MODES))
    cells = dict.fromkeys(cell for config in configs for cell in config.cells)
    cases = [
        (config, cell, dtype) for cell in cells for config in configs if cell in config.cells for dtype in run.DTYPES
    ]
    cases = unmeasured_first(cases, committed_cases(report.RESULTS, report.device_slug(device)))
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
    settings = {"warmup": warmup, "repeats": repeats, "seed": 0, "quick": dry_run, "sweep": False}
    settings |= {"contenders": contenders, "argv": ["benchmarks.gpu_check"] + (["--dry-run"] if dry_run else [])}
    paths = report.write_reports(results, environment, settings, outdir)
    paths.append(paths[0].with_suffix(".png"))
    report.plot_ratios(results, environment, paths[-1])
    for config, cell, dtype in not_started:
        print(f"not started (time limit): {config.name} {cell} {dtype}")
    failed = [r for r in results if r["failure"]]
    for r in failed:
        print(f"failed: {r['config']} {r['cell']} {r['dtype']} {r['mode']} {r['contender']}: {r['failure']}")
    print(
        f"{len(results) - len(failed)} of {len(results)} measurements ok, {len(failed)} failed, "
        f"{len(not_started)} of {len(cases)} cases not started; {', '.join(contenders)} on "
        f"{environment['device_name']}; wrote {', '.join(path.name for path in paths)}"
    )
    return 1 if failed or not results else 0


def committed_cases(directory: Path, slug: str) -> set[tuple[str, str, str]]:
    """(config, cell, dtype) of every case in the committed results of this device (`slug`*.json in `directory`)."""
    cases = set()
    for path in directory.glob(f"{slug}*.json"):
        cases |= {(r["config"], r["cell"], r["dtype"]) for r in json.loads(path.read_text()).get("results", [])}
    return cases


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


if __name__ == "__main__":
    sys.exit(main())
