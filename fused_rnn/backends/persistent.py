"""backend="persistent": one cooperative CUDA launch runs every time step of one direction of one layer.

Each CTA keeps the rows of W_hh of its hidden units (all gates) in shared memory for the whole sequence; h goes
through global memory, one grid barrier per step (csrc/persistent/). This module holds the capacity model, a pure
function that says whether that kernel fits a GPU and how it partitions the work, and the driver that runs it.

The capacity model mirrors csrc/persistent/partition.h, which the launcher sizes the launch from; the CPU tests
compile that header and check that the two agree, and that the compiled kernels use no more shared memory or
registers than assumed here. The backward runs the level-A driver of the "cuda" backend on the activations the
persistent forward saved (same layout): the persistent backward is still to be written.

Unverified on a GPU: "auto" never picks this backend.
"""

import functools
import itertools
from dataclasses import dataclass

import torch

from fused_rnn.backends import native
from fused_rnn.cells import CELLS

# Mirrors of csrc/persistent/partition.h (tests/test_persistent_partition.py checks them against the header).
THREADS = 256
MAX_REGISTERS_PER_THREAD = 128  # what __launch_bounds__(THREADS, 2) caps each thread at on a 64K-register SM
BATCH_TILE = 8
ALIGNMENT = 16
CELLS_SUPPORTED = ("lstm", "gru")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FP32_BYTES = 4


@dataclass(frozen=True)
class DeviceLimits:
    """What the partition depends on, as cudaDeviceGetAttribute reports it."""

    multiprocessors: int
    shared_memory_per_block_optin: int
    """Bytes of shared memory one block may use after cudaFuncSetAttribute raises its limit."""
    registers_per_multiprocessor: int
    max_threads_per_block: int


# Datasheet values, for the model's verdicts where no GPU is at hand; on a GPU, device_limits() reads the device.
H100_SXM = DeviceLimits(132, 227 * 1024, 65536, 1024)  # the H200 has the same SMs
A100 = DeviceLimits(108, 163 * 1024, 65536, 1024)


@dataclass(frozen=True)
class Partition:
    """How one layer's recurrence is split over the GPU, and whether it fits (`reason` says why not)."""

    reason: str | None
    ctas: int
    """One per SM at most, so that all are co-resident for the grid barrier."""
    units_per_cta: int
    """Hidden units per CTA, all gates of each (the last CTA may own fewer)."""
    weight_bytes: int
    """The CTA's rows of W_hh in shared memory: gates * units_per_cta * hidden elements."""
    h_tile_bytes: int
    """BATCH_TILE rows of h staged in shared memory as fp32."""
    preact_bytes: int
    """h W_hh^T of the staged rows, fp32."""
    cell_bytes: int
    """The LSTM cell state of the CTA's units for the whole batch, fp32 (0 for the GRU)."""
    smem_bytes: int
    """Dynamic shared memory per CTA: the regions above, each aligned to 16 bytes."""
    exchange_bytes: int
    """Global memory for h between steps: two buffers of [batch, hidden] (by step parity)."""

    @property
    def fits(self) -> bool:
        return self.reason is None


def _align(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def plan(cell: str, hidden: int, batch: int, dtype: torch.dtype, device: DeviceLimits) -> Partition:
    """The persistent kernel's partition of one direction of one layer on `device`, and whether it fits.

    Units per CTA is the fewest that keep to one CTA per SM: more CTAs share the weights and the work, and a
    larger slice only needs more shared memory, so when this partition does not fit, none does.
    """
    gates = CELLS[cell].gates
    element_bytes = dtype.itemsize
    units = -(-hidden // device.multiprocessors) if hidden > 0 else 0
    ctas = -(-hidden // units) if hidden > 0 else 0
    weight_bytes = gates * units * hidden * element_bytes
    h_tile_bytes = BATCH_TILE * hidden * FP32_BYTES
    preact_bytes = BATCH_TILE * gates * units * FP32_BYTES
    cell_bytes = batch * units * FP32_BYTES if CELLS[cell].has_cell_state else 0
    smem_bytes = _align(_align(_align(weight_bytes) + h_tile_bytes) + preact_bytes)
    smem_bytes = _align(smem_bytes + cell_bytes)
    reason = None
    if cell not in CELLS_SUPPORTED:
        reason = f"the persistent kernels exist for {' and '.join(CELLS_SUPPORTED)}, not {cell}"
    elif dtype not in DTYPES:
        reason = f"dtype {dtype} is not supported (float32, bfloat16, float16 are)"
    elif hidden <= 0 or batch <= 0:
        reason = f"hidden ({hidden}) and batch ({batch}) must be positive"
    elif THREADS > device.max_threads_per_block:
        reason = f"a CTA has {THREADS} threads, the device allows {device.max_threads_per_block} per block"
    elif THREADS * MAX_REGISTERS_PER_THREAD > device.registers_per_multiprocessor:
        reason = (
            f"a CTA needs {THREADS} x {MAX_REGISTERS_PER_THREAD} registers, an SM has "
            f"{device.registers_per_multiprocessor}"
        )
    elif smem_bytes > device.shared_memory_per_block_optin:
        reason = (
            f"each of {ctas} CTAs needs {smem_bytes / 1024:.1f} KiB of shared memory ({units} units: W_hh slice "
            f"{weight_bytes / 1024:.1f} KiB, h tile {h_tile_bytes / 1024:.1f} KiB, gates {preact_bytes / 1024:.1f} "
            f"KiB, cell state {cell_bytes / 1024:.1f} KiB) but a block may use "
            f"{device.shared_memory_per_block_optin / 1024:.1f} KiB on this {device.multiprocessors}-SM GPU"
        )
    return Partition(
        reason=reason,
        ctas=ctas,
        units_per_cta=units,
        weight_bytes=weight_bytes,
        h_tile_bytes=h_tile_bytes,
        preact_bytes=preact_bytes,
        cell_bytes=cell_bytes,
        smem_bytes=smem_bytes,
        exchange_bytes=2 * batch * hidden * element_bytes,
    )


# ---------------------------------------------------------------------------------------------- the driver


def device_limits(device: torch.device) -> DeviceLimits:
    """The limits of CUDA device `device`, read by the compiled extension as the launcher reads them."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DeviceLimits(*native.ops().persistent_device_limits(index))


def has_kernels() -> bool:
    """Whether the compiled extension was built with the persistent kernels (its CUDA half)."""
    try:
        return native.has_kernel("persistent_forward", "cuda")
    except RuntimeError:  # an extension built without them does not define the op at all
        return False


def unavailable(cell: str, hidden: int, batch: int, projected: bool, device: torch.device, dtype: torch.dtype):
    """Why the persistent kernels cannot run this call (a str), or None when they can.

    Checks, in order: a CUDA tensor, no projection, the kernels compiled in, and the capacity model on this
    device: a configuration that does not fit on chip, or whose CTAs could not all be resident, is refused
    here rather than risking a grid barrier that never completes.
    """
    if device.type != "cuda":
        return f"it runs CUDA tensors only, got {device.type}"
    if projected:
        return "proj_size is not supported (the persistent kernels have no projection)"
    if not has_kernels():
        return "the compiled extension has no persistent kernels (it was built without CUDA)"
    return plan(cell, hidden, batch, dtype, device_limits(device)).reason


@functools.lru_cache(maxsize=64)
def step_rows(batch_sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """int32 [steps, 2]: (row offset, active batch) of each step of packed input, on `device`.

    Cached per layout and device, as fused_rnn.packing's row indices: copied to the GPU once, not per call.
    """
    offsets = itertools.accumulate(batch_sizes[:-1], initial=0)
    return torch.tensor(list(zip(offsets, batch_sizes, strict=True)), dtype=torch.int32).to(device)


def sequence_forward(
    cell, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse, save
):
    """One direction of one layer: the input projection as one GEMM, then one persistent launch for all steps.
    Arguments and outputs as fused_rnn.autograd.sequence_forward's (weight_hr must be None)."""
    spec = CELLS[cell]
    rows, (batch, hidden) = input.shape[0], h0.shape
    if bias_ih is None:
        input_gates = torch.mm(input, weight_ih.t())
    else:
        input_gates = torch.addmm(bias_ih, input, weight_ih.t())
    output = input.new_empty(rows, hidden)
    h_n = torch.empty_like(h0)
    c_n = torch.empty_like(c0) if spec.has_cell_state else input.new_empty(0)
    saved = input.new_empty(rows if save else 0, spec.saved_width * hidden, dtype=torch.float32)
    packed = None if batch_sizes is None else step_rows(tuple(batch_sizes), input.device)
    h_exchange = input.new_empty(2, batch, hidden)
    native.ops().persistent_forward(
        cell, input_gates, weight_hh, bias_hh, h0, c0, packed, reverse, output, h_n, c_n, saved, h_exchange
    )
    return output, h_n, c_n, saved, input.new_empty(0, hidden)


def sequence_backward(*args):
    """The compiled CUDA driver's backward (level A) on the activations the persistent forward saved, which are
    laid out as every backend's (fused_rnn.cells); arguments as fused_rnn.autograd.sequence_backward's."""
    return native.ops().sequence_backward(*args)
