"""backend="persistent": one cooperative CUDA launch runs every time step of one direction of one layer.

Each CTA keeps the rows of W_hh of its hidden units (all gates) in shared memory for the whole sequence; h goes
through global memory, one grid barrier per step (csrc/persistent/). This module holds the capacity model, a pure
function that says whether that kernel fits a GPU and how it partitions the work, and the driver that runs it.

The capacity model mirrors csrc/persistent/partition.h, which the launcher sizes the launch from; the CPU tests
compile that header and check that the two agree, and that the compiled kernels use no more shared memory or
registers than assumed here. The backward is persistent too (W_hh's columns of each CTA's units on chip) where
plan_backward says it fits; elsewhere it runs the compiled CUDA driver's step loop on the same saved activations.

Run on an H200 (benchmarks/results/nvidia-h200.md): matches cuDNN in the GPU tests, 0.22-0.47x cuDNN's time for the
LSTM at B=1 T=1024 H=512, slower at B >= 16; "auto" picks it only where it was measured fastest
(fused_rnn.backends.CUDA_PERSISTENT_FASTER).
"""

import functools
import itertools
from dataclasses import dataclass

import torch

from fused_rnn.backends import native
from fused_rnn.bptt import gradients_after_the_loop
from fused_rnn.cells import CELLS
from fused_rnn.packing import previous_hidden

# Mirrors of csrc/persistent/partition.h (tests/test_persistent_partition.py checks them against the header).
THREADS = 256
MAX_REGISTERS_PER_THREAD = 128  # what __launch_bounds__(THREADS, 2) caps each thread at on a 64K-register SM
BATCH_TILE = 8
BACKWARD_BATCH_TILE = 4
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


def _units_and_ctas(hidden: int, device: DeviceLimits) -> tuple[int, int]:
    """Units per CTA: the fewest that keep to one CTA per SM. More CTAs share the weights and the work, and a
    larger slice only needs more shared memory, so when this partition does not fit, none does."""
    if hidden <= 0:
        return 0, 0
    units = -(-hidden // device.multiprocessors)
    return units, -(-hidden // units)


def _refusal(cell, hidden, batch, dtype, device, ctas, units, regions: dict[str, int], smem_bytes) -> str | None:
    """Why the kernel cannot run this configuration (the first reason found), or None when it fits."""
    if cell not in CELLS_SUPPORTED:
        return f"the persistent kernels exist for {' and '.join(CELLS_SUPPORTED)}, not {cell}"
    if dtype not in DTYPES:
        return f"dtype {dtype} is not supported (float32, bfloat16, float16 are)"
    if hidden <= 0 or batch <= 0:
        return f"hidden ({hidden}) and batch ({batch}) must be positive"
    if THREADS > device.max_threads_per_block:
        return f"a CTA has {THREADS} threads, the device allows {device.max_threads_per_block} per block"
    if THREADS * MAX_REGISTERS_PER_THREAD > device.registers_per_multiprocessor:
        return (
            f"a CTA needs {THREADS} x {MAX_REGISTERS_PER_THREAD} registers, an SM has "
            f"{device.registers_per_multiprocessor}"
        )
    if smem_bytes > device.shared_memory_per_block_optin:
        parts = ", ".join(f"{name} {nbytes / 1024:.1f} KiB" for name, nbytes in regions.items())
        return (
            f"each of {ctas} CTAs needs {smem_bytes / 1024:.1f} KiB of shared memory ({units} units: {parts}) but a "
            f"block may use {device.shared_memory_per_block_optin / 1024:.1f} KiB on this "
            f"{device.multiprocessors}-SM GPU"
        )
    return None


def _packed_bytes(regions) -> int:
    """Bytes of consecutive shared-memory regions, each starting on an ALIGNMENT boundary."""
    total = 0
    for nbytes in regions:
        total = _align(_align(total) + nbytes)
    return total


def plan(cell: str, hidden: int, batch: int, dtype: torch.dtype, device: DeviceLimits) -> Partition:
    """The persistent forward's partition of one direction of one layer on `device`, and whether it fits."""
    gates = CELLS[cell].gates
    units, ctas = _units_and_ctas(hidden, device)
    regions = {
        "W_hh slice": gates * units * hidden * dtype.itemsize,
        "h tile": BATCH_TILE * hidden * FP32_BYTES,
        "gates": BATCH_TILE * gates * units * FP32_BYTES,
        "cell state": batch * units * FP32_BYTES if CELLS[cell].has_cell_state else 0,
    }
    smem_bytes = _packed_bytes(regions.values())
    return Partition(
        reason=_refusal(cell, hidden, batch, dtype, device, ctas, units, regions, smem_bytes),
        ctas=ctas,
        units_per_cta=units,
        weight_bytes=regions["W_hh slice"],
        h_tile_bytes=regions["h tile"],
        preact_bytes=regions["gates"],
        cell_bytes=regions["cell state"],
        smem_bytes=smem_bytes,
        exchange_bytes=2 * batch * hidden * dtype.itemsize,
    )


@dataclass(frozen=True)
class BackwardPartition:
    """The persistent backward's partition: the forward's CTAs and units, its own shared memory."""

    reason: str | None
    ctas: int
    units_per_cta: int
    weight_bytes: int
    """W_hh's columns of the CTA's units: gates * hidden * units_per_cta elements."""
    grad_tile_bytes: int
    """BACKWARD_BATCH_TILE rows of the step's gate gradients (all units), fp32."""
    dh_bytes: int
    """Gradient reaching h through W_hh, [batch, units_per_cta] fp32."""
    dc_bytes: int
    """LSTM dc, or the GRU's part of dh that skips W_hh, [batch, units_per_cta] fp32."""
    smem_bytes: int
    exchange_bytes: int
    """Global memory for the gate gradients between steps: two buffers of [batch, gates * hidden] fp32."""

    @property
    def fits(self) -> bool:
        return self.reason is None


def plan_backward(cell: str, hidden: int, batch: int, dtype: torch.dtype, device: DeviceLimits) -> BackwardPartition:
    """The persistent backward's partition of one direction of one layer on `device`, and whether it fits."""
    gates = CELLS[cell].gates
    units, ctas = _units_and_ctas(hidden, device)
    regions = {
        "W_hh columns": gates * units * hidden * dtype.itemsize,
        "gate gradient tile": BACKWARD_BATCH_TILE * gates * hidden * FP32_BYTES,
        "dh": batch * units * FP32_BYTES,
        "dc": batch * units * FP32_BYTES,
    }
    smem_bytes = _packed_bytes(regions.values())
    return BackwardPartition(
        reason=_refusal(cell, hidden, batch, dtype, device, ctas, units, regions, smem_bytes),
        ctas=ctas,
        units_per_cta=units,
        weight_bytes=regions["W_hh columns"],
        grad_tile_bytes=regions["gate gradient tile"],
        dh_bytes=regions["dh"],
        dc_bytes=regions["dc"],
        smem_bytes=smem_bytes,
        exchange_bytes=2 * batch * gates * hidden * FP32_BYTES,
    )


# ---------------------------------------------------------------------------------------------- the driver


@torch.compiler.assume_constant_result  # a device's constants, asked while tracing: read outside the traced region
def device_limits(device: torch.device) -> DeviceLimits:
    """The limits of CUDA device `device`, read by the compiled extension as the launcher reads them."""
    return _device_limits(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def _device_limits(index: int) -> DeviceLimits:
    return DeviceLimits(*native.ops().persistent_device_limits(index))


def has_kernels() -> bool:
    """Whether the compiled extension was built with the persistent kernels (its CUDA half)."""
    try:
        return native.has_kernel("persistent_forward", "cuda")
    except RuntimeError:  # an extension built without them does not define the op at all
        return False


def unavailable(
    device: torch.device,
    dtype: torch.dtype,
    cell: str | None = None,
    hidden: int = 0,
    batch: int = 0,
    projected: bool = False,
) -> str | None:
    """Why the persistent kernels cannot run a call (a str), or None when they can.

    Checks, in order: a CUDA tensor, the dtype, the kernels compiled in; then, given the call's shape (cell not
    None), no projection and the capacity model on this device: a layer that does not fit on chip, or whose CTAs
    could not all be resident, is refused here rather than risking a grid barrier that never completes.
    """
    if device.type != "cuda":
        return f"it runs CUDA tensors only, got {device.type}"
    if dtype not in DTYPES:
        return f"dtype {dtype} is not supported (float32, bfloat16, float16 are)"
    if not has_kernels():
        return "the compiled extension has no persistent kernels (it was built without CUDA)"
    if cell is None:
        return None
    if projected:
        return "proj_size is not supported (the persistent kernels have no projection)"
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


def sequence_backward(
    cell,
    grad_output,
    grad_h_n,
    grad_c_n,
    input,
    h0,
    c0,
    weight_ih,
    weight_hh,
    weight_hr,
    output,
    saved,
    projection_input,
    batch_sizes,
    reverse,
    needs_grad,
):
    """Backpropagation through time: one persistent launch for the steps when plan_backward says it fits, else
    the compiled CUDA driver's step loop (level A) on the same saved activations; then the weight, bias and input
    gradients as single GEMMs over all rows. Arguments and outputs as fused_rnn.autograd.sequence_backward's."""
    spec = CELLS[cell]
    (batch, hidden), dtype = h0.shape, input.dtype
    if not plan_backward(cell, hidden, batch, dtype, device_limits(input.device)).fits:
        return native.ops().sequence_backward(
            cell,
            grad_output,
            grad_h_n,
            grad_c_n,
            input,
            h0,
            c0,
            weight_ih,
            weight_hh,
            weight_hr,
            output,
            saved,
            projection_input,
            batch_sizes,
            reverse,
            needs_grad,
        )
    h_prev = previous_hidden(output, h0, batch_sizes, reverse)
    grad_input_gates = input.new_empty(input.shape[0], weight_hh.shape[0])
    # Only the GRU's gradients w.r.t. the input and hidden projections differ (n = tanh(x_n + r * h_n)).
    grad_hidden_gates = torch.empty_like(grad_input_gates) if spec.is_gru else grad_input_gates
    grad_h0 = torch.empty_like(h0)
    grad_c0 = torch.empty_like(c0) if spec.has_cell_state else input.new_empty(0)
    packed = None if batch_sizes is None else step_rows(tuple(batch_sizes), input.device)
    grad_exchange = input.new_empty(2, batch, weight_hh.shape[0], dtype=torch.float32)
    native.ops().persistent_backward(
        cell,
        saved,
        grad_output,
        grad_h_n,
        grad_c_n,
        h_prev if spec.is_gru else None,
        weight_hh,
        packed,
        reverse,
        grad_input_gates,
        grad_hidden_gates,
        grad_h0,
        grad_c0,
        grad_exchange,
    )
    return gradients_after_the_loop(
        needs_grad,
        input,
        h_prev,
        weight_ih,
        grad_input_gates,
        grad_hidden_gates,
        grad_h0=lambda: grad_h0,
        grad_c0=lambda: grad_c0,
        grad_weight_hr=lambda: input.new_empty(0),  # no projection: the persistent kernels refuse weight_hr
    )
