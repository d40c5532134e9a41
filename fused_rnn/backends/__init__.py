"""Which implementations can serve a call here, and which one backend="auto" picks.

- "reference": plain PyTorch ops step by step (fused_rnn.reference); any device and dtype. The oracle.
- "triton": fused Triton cell kernels (fused_rnn.backends.triton) on CUDA GPUs, or on CPU under the
  Triton interpreter when TRITON_INTERPRET=1 was set before fused_rnn was imported (slow; for tests).
- "torch": torch.nn's own recurrent kernels (fused_rnn.backends.torch_rnn): oneDNN on CPU, cuDNN on GPU; for a cell
  module's step, torch.nn's cell ops (torch.lstm_cell, torch.gru_cell, ...), as torch.nn's cells run them.
- "cpu": the compiled whole-sequence CPU kernels of csrc/ (fused_rnn.backends.native), float32 and float64.
- "cuda": the compiled CUDA kernels of csrc/ on CUDA tensors: the C++ driver runs a cuBLAS GEMM and one fused
  step kernel per step, with no Python per step; float16, bfloat16, float32, float64.
- "persistent": one cooperative launch of csrc/persistent/ per direction and layer runs every step, W_hh on chip
  (fused_rnn.backends.persistent); LSTM and GRU without projection, float16, bfloat16, float32, where the capacity
  model says the weights fit the GPU's shared memory.

"auto" runs, on CUDA, torch.nn's own kernels ("torch", cuDNN) wherever they serve the call, except where the committed
GPU results (benchmarks/results/nvidia-h200.md) show another backend faster: "persistent" for the LSTM at batch <= 8,
hidden <= 512 on Hopper (CUDA_PERSISTENT_FASTER); with torch.use_deterministic_algorithms(True) (cuDNN's RNN is not
reproducible everywhere) a sequence runs on "triton" (the reference where Triton cannot run).
cuDNN's backward, as torch.nn's, cannot itself be differentiated: for double backward on CUDA pass a fused backend.
On CPU "auto" picks "cpu" for the shapes where the committed measurements (benchmarks/results/cpu_native/cpu.md,
cpu_inference.md) show it faster than torch.nn, else "torch", which on CPU is 2-18x faster than the reference
(benchmarks/results/cpu.md) and keeps double backward and torch.compile. A cell module's step (LSTMCell, GRUCell,
RNNCell) on CPU runs on "torch", torch.nn's own cell op (benchmarks/results/cells_cpu.md). The layers beyond
torch.nn (IndRNN, LayerNorm LSTM/GRU, the multi-head cells) choose among their own backends (their functional
modules' chosen_backend).

Zoneout (LSTM and GRU, with or without projection) runs on "triton", "cpu", "cuda" and "reference"; "auto" picks
"triton" on CUDA and "cpu" on CPU (the reference where those cannot run: benchmarks/results/zoneout_cpu.md, the Triton
interpreter is far slower), and "torch" and "persistent" refuse it by name.

Under torch.compile or torch.export a PackedSequence's batch sizes are data (fused_rnn.packing.checked_layout), which
the fused ops take as they are, while torch's decomposition of torch.nn's packed op needs their values: where "auto"
would run "torch" on packed input it then runs "cpu" on CPU and "triton" on CUDA (Workload.traced_packed), and "torch"
and the step-by-step reference refuse it by name.
"""

import importlib.util
import os
from typing import NamedTuple

import torch

from fused_rnn import tuning
from fused_rnn.backends import native, persistent

NAMES = ("auto", "triton", "cuda", "persistent", "cpu", "torch", "reference")
NATIVE_CPU_DTYPES = (torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on `device`, or None when they can."""
    if not _TRITON_INSTALLED:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda" and TRITON_INTERPRETER:
        return "TRITON_INTERPRET=1 is set, which runs Triton on CPU tensors only"
    if device.type == "cpu" and not TRITON_INTERPRETER:
        return "on CPU the Triton kernels run only in the interpreter (TRITON_INTERPRET=1 before importing fused_rnn)"
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels do not run on {device.type} tensors"
    return None


class Workload(NamedTuple):
    """What "auto" weighs on CPU: the cell, the batch, packed or padded input, and whether a backward follows;
    and what "persistent" must fit on chip: the hidden size, and whether the LSTM has a projection; whether
    the call has zoneout, which only some backends run; whether it is one step of a cell module (LSTMCell...); and
    whether it is packed input traced by torch.compile or torch.export, whose batch sizes are then data that only
    the fused ops take (torch's decomposition of its packed RNN op and the reference's loop need their values)."""

    cell: str
    batch: int
    packed: bool
    training: bool
    hidden: int = 0
    projected: bool = False
    zoneout: bool = False
    single_step: bool = False
    traced_packed: bool = False
    steps: int = 0


def native_cpu_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the compiled CPU kernels cannot run a call on `device`/`dtype`, or None when they can."""
    if device.type != "cpu":
        return f"it runs CPU tensors only, got {device.type}"
    if dtype not in NATIVE_CPU_DTYPES:
        return f"dtype {dtype} is not supported (float32 and float64 are)"
    return native.unavailable()


def _native_cuda_unavailable(device: torch.device | None, dtype: torch.dtype) -> str | None:
    """Why the compiled CUDA kernels cannot run a call on `device`/`dtype` (None: whether they run here at all)."""
    reason = native.unavailable()
    if reason is not None:
        return reason
    if not native.built_with_cuda():
        why = native.cuda_unbuildable()
        return f"the compiled extension was built without CUDA{f' ({why})' if why else ''}; reinstall with nvcc"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if device is not None and device.type != "cuda":
        return f"it runs CUDA tensors only, got {device.type}"
    if dtype not in TRITON_DTYPES:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64 are)"
    return None


def _persistent_unavailable(device: torch.device, dtype: torch.dtype, workload: Workload | None) -> str | None:
    """Why the persistent kernels cannot run this call, given that the compiled CUDA kernels can, or None. Without
    the call's shape, whether they run here at all (each call is checked against the capacity model)."""
    if workload is None:
        return persistent.unavailable(device, dtype)
    return persistent.unavailable(device, dtype, workload.cell, workload.hidden, workload.batch, workload.projected)


# The largest batch up to which "cpu" took at most 0.9x torch.nn's time (a margin over this machine's noise) in
# every measured config of benchmarks/results/cpu_native/cpu.md (float32, 1 thread, H 32-512), per
# (cell, packed, training); 0 where it never did or nothing was measured. torch.nn's oneDNN LSTM is strong on
# padded input; on packed input torch.nn is slow for every cell.
NATIVE_CPU_FASTEST_BATCH = {
    ("lstm", False, False): 0,  # 0.94-1.16x torch.nn's time (0.94x at B=1 T=1024, 1.01x at B=64)
    ("lstm", False, True): 0,  # 0.97-1.19x
    ("lstm", True, False): 64,  # 0.35-0.40x
    ("lstm", True, True): 64,  # 0.21-0.27x
    ("gru", False, False): 64,  # 0.26-0.59x
    ("gru", False, True): 64,  # 0.12-0.53x
    ("gru", True, False): 64,  # 0.33-0.43x
    ("gru", True, True): 64,  # 0.19-0.28x
    ("rnn_tanh", False, False): 64,  # 0.44-0.51x
    ("rnn_tanh", False, True): 64,  # 0.29-0.48x
    ("rnn_tanh", True, False): 0,  # not measured
    ("rnn_tanh", True, True): 0,
}


# The padded LSTM's inference at batch 1, where "cpu" reads W_hh in place from this hidden size on (csrc/cpu/
# recurrence.h): 0.82-1.00x torch.nn's time in every committed measurement there (benchmarks/results/cpu_inference.md,
# H=512, T=100 and 1024, 1 and 2 threads: 0.82, 1.00, 0.85, 0.94; cpu_native/cpu.md b1_t1024_h512 0.94x), against
# 0.99-1.16x at H=32-64, where a call's fixed costs weigh most.
NATIVE_CPU_LSTM_INFERENCE_MIN_HIDDEN = 512


class PersistentRange(NamedTuple):
    """Calls "auto" runs on "persistent" on CUDA: `cell` without a projection, batch <= max_batch, hidden <= max_hidden,
    on a GPU of compute capability `capability`; `measured` names the committed configs the range stands on."""

    cell: str
    max_batch: int
    max_hidden: int
    capability: tuple[int, int]
    measured: tuple[str, ...]


# "auto" on CUDA runs torch.nn's own kernels (cuDNN) wherever they serve the call, except where the committed GPU
# results (benchmarks/results/nvidia-h200.json: H200, torch 2.11.0+cu130 with cuDNN 9.19, triton 3.6.0) show another
# backend faster for that class of shapes. There "persistent" took 0.22-0.47x cuDNN's time for the LSTM at B=1 T=1024
# H=512 in every dtype and mode, 0.98-1.32x at B=16 H=768 and 5-18x at B=64-256; "triton" took 2.7-20x and "cuda"
# 0.95-13x everywhere. The range reaches up to batch 8 because the persistent kernel computes one whole tile of
# kBatchTile = 8 rows per step for any batch up to 8 (csrc/persistent/forward.cu: rows past the batch are zeros), so
# its step costs what it cost at batch 1 plus one warp reduction per extra row; and down from hidden 512 because each
# CTA then owns fewer rows of W_hh for the same one grid barrier per step. Not fp16 at batch 8: there cuDNN runs its
# own persistent algorithm (fp16 only, batch a multiple of 8), which was not measured against ours.
CUDA_PERSISTENT_FASTER = (
    PersistentRange("lstm", max_batch=8, max_hidden=512, capability=(9, 0), measured=("b1_t1024_h512",)),
)


@torch.compiler.assume_constant_result  # asked while tracing: a tuple from the driver, which dynamo cannot trace
def _compute_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _persistent_measured_faster(device: torch.device, dtype: torch.dtype, workload: Workload) -> bool:
    if workload.projected or workload.single_step:  # measured on sequences of 1024 steps, not on one cell step
        return False
    if dtype == torch.float16 and workload.batch % 8 == 0:
        return False
    ranges = [
        r
        for r in CUDA_PERSISTENT_FASTER
        if workload.cell == r.cell and workload.batch <= r.max_batch and workload.hidden <= r.max_hidden
    ]
    return (
        bool(ranges)
        and _native_cuda_unavailable(device, dtype) is None
        and _compute_capability(device) in [r.capability for r in ranges]
        and _persistent_unavailable(device, dtype, workload) is None
    )


def _cuda_auto(device: torch.device, dtype: torch.dtype, workload: Workload | None, triton_reason: str | None) -> str:
    """What "auto" runs on CUDA: "persistent" where the committed GPU results show it faster than cuDNN, else torch.nn's
    own kernels ("torch"); with torch.use_deterministic_algorithms(True) a sequence runs on "triton" (the reference
    where Triton cannot run), since cuDNN's RNN is not bit-reproducible on every cuDNN and CUDA version (torch.nn.LSTM's
    documentation) and the fused backends use no atomics. A cell module's step stays on torch's cell op
    (torch.lstm_cell, ...: cuBLAS GEMMs and a pointwise kernel, not cuDNN's RNN) in either case."""
    if workload is not None and _persistent_measured_faster(device, dtype, workload):
        return "persistent"
    if not torch.are_deterministic_algorithms_enabled() or (workload is not None and workload.single_step):
        return "torch"
    return "triton" if triton_reason is None else "reference"


def native_cpu_is_faster(workload: Workload) -> bool:
    """Whether "cpu" beat torch.nn's CPU kernels at this shape in the committed measurements
    (benchmarks/results/cpu_native/cpu.md, cpu_inference.md): "auto" picks it only there. rnn_relu is rnn_tanh's
    kernel with a cheaper activation, so it follows rnn_tanh's measurements."""
    if workload.single_step:
        return False  # a cell module's step: torch.nn's cell op was faster in every committed case but two
    cell = "rnn_tanh" if workload.cell == "rnn_relu" else workload.cell
    if (cell, workload.packed, workload.training, workload.projected) == ("lstm", False, False, False):
        return workload.batch == 1 and workload.hidden >= NATIVE_CPU_LSTM_INFERENCE_MIN_HIDDEN
    return workload.batch <= NATIVE_CPU_FASTEST_BATCH[cell, workload.packed, workload.training]


def available_backends() -> dict[str, str]:
    """Each backend's name -> whether it works on this machine, and why not when it does not."""
    cuda = torch.cuda.is_available()
    status = {
        "reference": "available: plain PyTorch ops on any device and dtype (the oracle; slow)",
        "torch": "available: torch.nn's own kernels (oneDNN on CPU, cuDNN on GPU); what 'auto' mostly runs",
    }
    reason = native_cpu_unavailable(torch.device("cpu"), torch.float32)
    if reason is None:
        status["cpu"] = (
            "available: compiled whole-sequence kernels on CPU tensors, float32 and float64, "
            f"{native.cpu_instruction_set()} build"
        )
    else:
        status["cpu"] = f"unavailable: {reason}"
    reason = _native_cuda_unavailable(None, torch.float32)
    if reason is None:
        status["cuda"] = f"available on CUDA ({torch.cuda.get_device_name()}): compiled step kernels, C++ step loop"
    else:
        status["cuda"] = f"unavailable: {reason}"
    reason = _native_cuda_unavailable(None, torch.float32)
    if reason is None and not persistent.has_kernels():
        reason = "the compiled extension has no persistent kernels"
    if reason is None:
        status["persistent"] = (
            f"available on CUDA ({torch.cuda.get_device_name()}) for LSTM/GRU layers whose weights fit on chip "
            "(fused_rnn.backends.persistent.plan); 'auto' picks it only where GPU results show it fastest"
        )
    else:
        status["persistent"] = f"unavailable: {reason}"
    reason = _triton_unavailable(torch.device("cuda" if cuda else "cpu"))
    if reason is not None:
        status["triton"] = f"unavailable: {reason}"
    elif TRITON_INTERPRETER:
        status["triton"] = "available on CPU through the Triton interpreter (TRITON_INTERPRET=1): correct, slow"
    else:
        status["triton"] = f"available on CUDA ({torch.cuda.get_device_name()})"
    return status


def checked_name(backend: str) -> str:
    """`backend` if it names one (ValueError otherwise), whether or not it can run here."""
    if backend not in NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, NAMES))}, got {backend!r}")
    return backend


def resolve(
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    offsets_fit_32_bits: bool = True,
    workload: Workload | None = None,
) -> str:
    """The backend that will run a call on `device`/`dtype`; raises ValueError when the one asked for can't.

    offsets_fit_32_bits: whether one step's largest [batch, gates * hidden] block is below 2**31 elements,
    the limit of the Triton kernels' 32-bit offsets.
    workload: the call's shape, for "auto" on CPU (without it "auto" never picks "cpu") and for "persistent"
        (without it, only whether the persistent kernels run here at all).
    """
    checked_name(backend)
    if workload is not None and workload.zoneout:
        return _resolve_zoneout(backend, device, dtype, offsets_fit_32_bits)
    if backend in ("reference", "torch"):
        return backend
    if backend == "cpu":
        reason = native_cpu_unavailable(device, dtype)
        if reason is not None:
            raise ValueError(f"backend='cpu' cannot run here: {reason}")
        return backend
    if backend == "cuda":
        reason = _native_cuda_unavailable(device, dtype)
        if reason is not None:
            raise ValueError(f"backend='cuda' cannot run here: {reason}")
        return backend
    if backend == "persistent":
        reason = _native_cuda_unavailable(device, dtype) or _persistent_unavailable(device, dtype, workload)
        if reason is not None:
            raise ValueError(f"backend='persistent' cannot run here: {reason}")
        return backend
    if backend == "triton":
        reason = _triton_cannot_run(device, dtype, offsets_fit_32_bits)
        if reason is not None:
            raise ValueError(f"backend='triton' cannot run here: {reason}")
        return backend
    if device.type == "cuda":
        chosen = _cuda_auto(device, dtype, workload, _triton_cannot_run(device, dtype, offsets_fit_32_bits))
    elif workload is not None and native_cpu_is_faster(workload) and native_cpu_unavailable(device, dtype) is None:
        chosen = "cpu"
    else:
        chosen = "torch"
    if chosen == "torch" and workload is not None and workload.traced_packed:
        return _fused_for_traced_packed(device, dtype, offsets_fit_32_bits)
    return _tuned(chosen, device, dtype, offsets_fit_32_bits, workload)


# What "auto" may tune among, per device type, torch.nn's kernels first (what a call is kept on unless another is
# clearly faster). Not Triton on CPU: there it runs in its interpreter.
TUNED_BACKENDS = {"cpu": ("torch", "cpu"), "cuda": ("torch", "persistent", "triton", "cuda")}


def _tuned(chosen: str, device: torch.device, dtype: torch.dtype, offsets_fit_32_bits: bool, workload) -> str:
    """ "auto"'s pick: `chosen` by the committed rules, or where tuning applies (fused_rnn.tuning) and more than one
    backend serves the call, the fastest of them on this machine. A cell module's step, zoneout and packed input
    being traced keep the rules."""
    if workload is None or workload.zoneout or workload.single_step or workload.traced_packed:
        return chosen
    if device.type not in TUNED_BACKENDS or not tuning.applies():
        return chosen
    serving = [b for b in TUNED_BACKENDS[device.type] if _serves(b, device, dtype, offsets_fit_32_bits, workload)]
    if len(serving) < 2:
        return chosen
    replaced = "torch" if "torch" in serving else chosen
    return tuning.winner(device, dtype, workload, [replaced] + [b for b in serving if b != replaced])


def _serves(backend, device, dtype, offsets_fit_32_bits, workload) -> bool:
    if backend == "torch":  # cuDNN's RNN is not reproducible everywhere
        return device.type != "cuda" or not torch.are_deterministic_algorithms_enabled()
    try:
        resolve(backend, device, dtype, offsets_fit_32_bits, workload)
    except ValueError:
        return False
    return True


def _fused_for_traced_packed(device: torch.device, dtype: torch.dtype, offsets_fit_32_bits: bool) -> str:
    """What "auto" runs instead of torch.nn's op for packed input whose batch sizes are data (Workload.traced_packed):
    the compiled kernels on CPU, Triton on CUDA; else the reference, whose loop then names the limit."""
    if device.type == "cpu":
        return "cpu" if native_cpu_unavailable(device, dtype) is None else "reference"
    return "triton" if _triton_cannot_run(device, dtype, offsets_fit_32_bits) is None else "reference"


def resolve_variant(backend: str, device: torch.device, dtype: torch.dtype, offsets_fit_32_bits: bool = True) -> str:
    """resolve() for the layers beyond torch.nn (IndRNN, LayerNorm LSTM/GRU, the multi-head cells), given a backend
    name their own checked_backend accepted: a named one as resolve() says (ValueError naming what is missing);
    "auto" on CUDA Triton (the reference where it cannot run; "cuda" waits for GPU measurements of these layers), on
    CPU their compiled kernels ("cpu", float32/float64: the fastest measured, benchmarks/results/variants_cpu.md,
    layernorm_cpu.md, slstm_cpu.md), else their loop of torch ops ("torch"), never the interpreter; elsewhere the
    reference."""
    if backend != "auto":
        return resolve(backend, device, dtype, offsets_fit_32_bits)
    if device.type == "cuda":
        return "triton" if _triton_cannot_run(device, dtype, offsets_fit_32_bits) is None else "reference"
    if device.type == "cpu":
        return "cpu" if native_cpu_unavailable(device, dtype) is None else "torch"
    return "reference"


def _triton_cannot_run(device: torch.device, dtype: torch.dtype, offsets_fit_32_bits: bool) -> str | None:
    """Why the Triton kernels cannot run a call on `device`/`dtype`, or None when they can."""
    reason = _triton_unavailable(device)
    if reason is None and dtype not in TRITON_DTYPES:
        reason = f"dtype {dtype} is not supported (float16, bfloat16, float32, float64 are)"
    if reason is None and not offsets_fit_32_bits:
        reason = "batch x hidden_size is too large for its 32-bit offsets; split the batch"
    return reason


def _resolve_zoneout(backend: str, device: torch.device, dtype: torch.dtype, offsets_fit_32_bits: bool) -> str:
    """resolve() for a call with zoneout: "triton", "cpu", "cuda" or "reference"; the others raise."""
    if backend == "reference":
        return backend
    if backend not in ("auto", "triton", "cpu", "cuda"):
        raise ValueError(
            f"backend={backend!r} cannot run zoneout (its kernels have no zoneout): use 'auto', 'triton', 'cpu', "
            "'cuda' or 'reference'"
        )
    if backend in ("cpu", "cuda"):
        unavailable = native_cpu_unavailable if backend == "cpu" else _native_cuda_unavailable
        reason = unavailable(device, dtype)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot run this zoneout call: {reason}")
        return backend
    reason = _triton_cannot_run(device, dtype, offsets_fit_32_bits)
    if backend == "triton":
        if reason is not None:
            raise ValueError(f"backend='triton' cannot run this zoneout call: {reason}")
        return backend
    if device.type == "cuda":
        return "triton" if reason is None else "reference"
    # On CPU the compiled kernels, else the reference loop; never the Triton interpreter, far slower than either
    # (benchmarks/results/zoneout_cpu.md).
    return "cpu" if native_cpu_unavailable(device, dtype) is None else "reference"
