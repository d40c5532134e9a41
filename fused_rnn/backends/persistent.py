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

from dataclasses import dataclass

import torch

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
