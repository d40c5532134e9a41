"""backend="auto" tuned on the machine it runs on, as cudnn.benchmark and Triton's autotuner do.

The committed measurements behind "auto"'s rules (fused_rnn.backends) come from a few machines. So the first call of
a class of shapes here (the cell, dtype, training or inference, padded or packed input, a projection, and the batch,
hidden size and length rounded up to powers of two) times the backends that can serve it on inputs of that class's
shape, side by side in one process, and remembers the fastest: in memory, and in a JSON file keyed by the machine
(the GPU and its driver, or the CPU's model, instruction set and threads) and the versions of torch, triton and
fused_rnn, so that later processes skip the timing. torch.nn's kernels, what "auto" replaces, keep a call unless
another backend took at most MARGIN of their time: a tie within the noise never costs a user speed.

Never while tracing (torch.compile, torch.export) or while a CUDA graph is being captured: the committed rules decide
there. Tuning is opt-in for now: FUSED_RNN_AUTOTUNE=1 turns it on (see ENABLED for why). The file is $FUSED_RNN_CACHE_DIR/autotune.json (default
$XDG_CACHE_HOME/fused_rnn, else ~/.cache/fused_rnn); a file that cannot be read is ignored and rewritten, and two
processes that write it at once each keep the other's entries but for the ones they race on (each write replaces
the file whole, after merging what it holds).
"""

import functools
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: writes are not serialized there
    fcntl = None

# Off unless FUSED_RNN_AUTOTUNE=1: on the 2-core CPU it was built on, the speed gate (benchmarks/gate.py) with tuning on
# failed 4 to 8 of 20 runs: torch.nn's LSTM call there runs at two speeds (3.0 or 4.5-5.6 ms at B=8 H=512 T=16) that
# the timed inputs do not predict for the user's, so near-ties between "cpu" and torch.nn flipped from run to run,
# and a tuned LSTM took up to 1.74x torch.nn's time. The committed rules pass the gate; tuning waits for a measurement
# that transfers (and for its first run on a GPU).
ENABLED = os.environ.get("FUSED_RNN_AUTOTUNE", "0") == "1"
MARGIN = 0.9
LONGEST_TIMED_STEPS = 64  # longer sequences are timed at this length: the per-step costs decide there
# A backend's first calls at a new shape create oneDNN's primitives and fill caches (measured: the first four calls
# of a small LayerNorm LSTM took 100-700x its later ones), so several untimed rounds come first, and each timed call
# follows an untimed one of the same backend.
WARMUP, ROUNDS = 3, 7
SAY_WHEN_LONGER_S = 1.0
FILE_VERSION = 1

_winners: dict[str, str] = {}  # by the file's keys
_known: dict[tuple, str] = {}  # the same winners by the call's own terms, without building a key
_file_read = False


def cache_file() -> Path:
    directory = os.environ.get("FUSED_RNN_CACHE_DIR")
    if directory is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        directory = Path(base) / "fused_rnn"
    return Path(directory) / "autotune.json"


def applies() -> bool:
    """Whether a call may be tuned now: tuning is on, and nothing is being traced or captured."""
    if not ENABLED or torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def winner(device: torch.device, dtype: torch.dtype, workload, candidates: list[str]) -> str:
    """The fastest of `candidates` ("torch" among them, or the first one standing for what is replaced) for calls of
    `workload`'s class on `device`/`dtype`: remembered, or timed now."""
    shape = _shape(workload)
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    known = (
        device,
        dtype,
        workload.cell,
        workload.training,
        workload.packed,
        workload.projected,
        threads,
        *shape.values(),
    )
    found = _known.get(known)
    if found in candidates:  # every call of a tuned layer asks: the fast way
        return found
    key = _key(device, dtype, workload)
    if key not in _winners:
        _read_file()
    if key not in _winners or _winners[key] not in candidates:
        start = time.perf_counter()
        times = measure(device, dtype, workload, candidates)
        _winners[key] = fastest(times)
        seconds = time.perf_counter() - start
        _write_file({key: {"winner": _winners[key], "ms": times}})
        if seconds > SAY_WHEN_LONGER_S:
            print(
                f"fused_rnn: 'auto' timed {', '.join(candidates)} for {workload.cell} {str(dtype)[6:]} "
                f"{'training' if workload.training else 'inference'} B={shape['batch']} H={shape['hidden']} "
                f"T={shape['steps']} in {seconds:.1f} s: {_winners[key]} (remembered in {cache_file()})",
                file=sys.stderr,
            )
    _known[known] = _winners[key]
    return _winners[key]


def fastest(times: dict[str, float]) -> str:
    """The backend of `times` (ms per call, the replaced one first) that "auto" runs: the replaced one unless
    another took at most MARGIN of its time, then the fastest."""
    replaced = next(iter(times))
    best = min(times, key=times.get)
    return best if times[best] <= MARGIN * times[replaced] else replaced


def _shape(workload) -> dict:
    """The shape a class is timed at: batch, hidden size and length rounded up to powers of two (the length to at
    most LONGEST_TIMED_STEPS)."""
    power = lambda n: 1 << max(int(n) - 1, 0).bit_length()  # noqa: E731
    return {
        "batch": power(workload.batch),
        "hidden": power(workload.hidden),
        "steps": min(power(workload.steps or 1), LONGEST_TIMED_STEPS),
    }


def _key(device, dtype, workload) -> str:
    shape = _shape(workload)
    parts = [
        _machine(device),
        f"torch {torch.__version__}",
        f"triton {_version('triton')}",
        f"fused_rnn {_version('fused_rnn')}",
        workload.cell,
        str(dtype),
        "training" if workload.training else "inference",
        "packed" if workload.packed else "padded",
        "projected" if workload.projected else "",
        f"B{shape['batch']} H{shape['hidden']} T{shape['steps']}",
    ]
    return "|".join(parts)


def _machine(device) -> str:
    if device.type == "cuda":
        driver = getattr(torch._C, "_cuda_getDriverVersion", lambda: "unknown")()
        return f"{torch.cuda.get_device_name(device)} driver {driver}"
    return f"{_cpu_model()} {torch.backends.cpu.get_cpu_capability()} {torch.get_num_threads()} threads"


@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def measure(device, dtype, workload, candidates: list[str]) -> dict[str, float]:
    """The best ms per call of each candidate on one layer and direction of the class's shape (input size = hidden
    size), called in turn, WARMUP rounds then ROUNDS timed ones, each timed call after an untimed one of the same
    backend; a backward follows each forward in training."""
    from fused_rnn import functional
    from fused_rnn.cells import CELLS

    shape = _shape(workload)
    batch, hidden, steps = shape["batch"], shape["hidden"], shape["steps"]
    spec = CELLS[workload.cell]
    generator = torch.Generator().manual_seed(0)

    def tensor(*size):
        return (torch.randn(size, generator=generator) * hidden**-0.5).to(device, dtype)

    gates = spec.gates * hidden
    proj = hidden // 2 if workload.projected else 0
    out = proj or hidden
    weights = [
        tensor(gates, hidden),
        tensor(gates, out),
        tensor(gates),
        tensor(gates),
        tensor(proj, hidden) if proj else None,
    ]
    x = tensor(steps * batch, hidden) if workload.packed else tensor(steps, batch, hidden)
    h0, c0 = tensor(batch, out), tensor(batch, hidden) if spec.has_cell_state else None
    batch_sizes = [batch] * steps if workload.packed else None
    leaves = [t for t in (x, *weights) if t is not None]
    for t in leaves:
        t.requires_grad_(workload.training)

    def call(backend):
        with torch.set_grad_enabled(workload.training):
            output, _, _ = functional.sequence(workload.cell, x, h0, c0, *weights, batch_sizes, False, backend)
            if workload.training:
                torch.autograd.grad(output.float().sum(), leaves)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {backend: [] for backend in candidates}
    for round_ in range(WARMUP + ROUNDS):
        for backend in candidates:
            call(backend)
            start = time.perf_counter()
            call(backend)
            if round_ >= WARMUP:
                times[backend].append((time.perf_counter() - start) * 1e3)
    # The best round, not the median: on this CPU torch.nn's LSTM call alternates between two speeds (3.0 and 4.5-5.6
    # ms at B=8 H=512 T=16, measured), and medians of 7 rounds that caught the slow one picked a backend that then
    # took 1.10-1.20x torch.nn's time in the speed gate; the best of 7 gave the same order every time.
    return {backend: min(ms) for backend, ms in times.items()}


def _read_file() -> None:
    global _file_read
    if _file_read:
        return
    _file_read = True
    for key, entry in _load(cache_file()).items():
        _winners.setdefault(key, entry["winner"])


def _load(path: Path) -> dict:
    """The file's entries; none when it is missing, unreadable or of another version."""
    try:
        content = json.loads(path.read_text())
        entries = content["entries"] if content.get("version") == FILE_VERSION else {}
        return {key: entry for key, entry in entries.items() if isinstance(entry.get("winner"), str)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_file(new: dict) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            entries = _load(path) | new
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".autotune-", delete=False) as file:
                json.dump({"version": FILE_VERSION, "entries": entries}, file, indent=1)
            os.replace(file.name, path)
    except OSError:  # a read-only home: the winners stay in memory
        pass


def forget() -> None:
    """Forget what this process remembers (the file stays), so the file is read again."""
    global _file_read
    _winners.clear()
    _known.clear()
    _file_read = False
