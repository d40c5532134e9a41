"""Row bookkeeping for sequences stored time-major, padded or packed.

A sequence of T steps is stored as N rows: step t owns rows [offset_t, offset_t + batch_t). Padded
input (T, B, I) is the case batch_t = B for every t. Packed input is torch's PackedSequence layout:
batch sorted by decreasing length, so the active rows of each step are a prefix of the batch and
short sequences never compute on padding.
"""

import functools
import itertools

import torch


def checked_layout(input, batch_sizes) -> list[int] | None:
    """batch_sizes as a list (None for padded input), once input (T, B, I) or packed rows (N, I) and it describe a
    valid layout; TypeError/ValueError naming what does not.

    While torch.compile or torch.export traces, a PackedSequence's batch_sizes tensor is data: its values are SymInts
    without a value (unbacked), which the fused ops take as arguments and read when they run. The checks then become
    the graph's runtime assertions (torch._check), and they also bound every batch size by the row count, which
    decides the kernels' 32-bit offset checks without the values.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if batch_sizes is None:
        if input.dim() != 3:
            raise ValueError(f"input must be 3-D (T, B, I), got shape {tuple(input.shape)}")
        if input.shape[0] == 0 or input.shape[1] == 0:
            raise ValueError(f"input must have at least one time step and one batch entry, got {tuple(input.shape)}")
        return None
    if isinstance(batch_sizes, torch.Tensor):
        batch_sizes = batch_sizes.tolist()
    if input.dim() != 2:
        raise ValueError(f"packed input must be 2-D (N, I) when batch_sizes is given, got shape {tuple(input.shape)}")
    if torch.compiler.is_compiling():
        # No message functions: strict torch.export fails on them ("'function' object has no attribute is_quantized").
        torch._check(len(batch_sizes) > 0)
        for earlier, later in zip(batch_sizes, batch_sizes[1:]):
            torch._check(earlier >= later)
        torch._check(batch_sizes[-1] >= 1)
        torch._check(batch_sizes[0] <= input.shape[0])
        torch._check(sum(batch_sizes) == input.shape[0])
        return list(batch_sizes)
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or batch_sizes[-1] < 1 or any(a < b for a, b in zip(batch_sizes, batch_sizes[1:])):
        raise ValueError(f"batch_sizes must be positive and non-increasing, got {batch_sizes}")
    if sum(batch_sizes) != input.shape[0]:
        raise ValueError(f"batch_sizes sum to {sum(batch_sizes)} but input has {input.shape[0]} rows")
    return batch_sizes


def time_steps(batch_sizes: list[int] | None, num_rows: int, batch: int, reverse: bool) -> list[tuple[int, int]]:
    """(row offset, active batch) of each time step, in the order the recurrence visits them.

    A loop over them in Python cannot be traced for packed input, whose batch sizes are data under tracing
    (checked_layout): the fused ops loop at run time; a step-by-step loop traced there raises a ValueError."""
    if batch_sizes is not None and torch.compiler.is_compiling():
        raise ValueError(
            "packed input cannot run step by step (backend 'reference', or 'auto' where no fused kernel serves the "
            "call) under torch.compile or torch.export: a PackedSequence's batch sizes are data there; use a fused "
            "backend ('cpu' on CPU for float32/float64, 'triton' or 'cuda' on CUDA), or padded input"
        )
    if batch_sizes is None:
        steps = [(offset, batch) for offset in range(0, num_rows, batch)]
    else:
        offsets = itertools.accumulate(batch_sizes[:-1], initial=0)
        steps = list(zip(offsets, batch_sizes))
    return steps[::-1] if reverse else steps


def previous_hidden(
    output: torch.Tensor, h0: torch.Tensor, batch_sizes: list[int] | None, reverse: bool
) -> torch.Tensor:
    """The hidden state each row's step started from, as an (N, H) tensor.

    Row (t, b) started from the output of (t - 1, b) (t + 1 when reverse), or from h0[b] when that
    step does not exist or was not active for b.
    """
    batch = h0.shape[0]
    if batch_sizes is None:
        if reverse:
            return torch.cat([output[batch:], h0])
        return torch.cat([h0, output[:-batch]])
    index = previous_rows(tuple(batch_sizes), reverse, output.device)
    return torch.cat([output, h0]).index_select(0, index)


@functools.lru_cache(maxsize=64)
def previous_rows(batch_sizes: tuple[int, ...], reverse: bool, device: torch.device) -> torch.Tensor:
    """previous_hidden's row index into cat([output, h0]).

    Cached per layout and device: built on the CPU once, not copied to a GPU (a host sync, and impossible
    inside CUDA graph capture) on every backward.
    """
    sizes = torch.tensor(batch_sizes)
    num_steps, num_rows = len(batch_sizes), int(sizes.sum())
    offsets = torch.cumsum(sizes, 0) - sizes
    step = torch.repeat_interleave(torch.arange(num_steps), sizes)
    row_in_batch = torch.arange(num_rows) - offsets[step]
    prev_step = step + 1 if reverse else step - 1
    exists = (prev_step >= 0) & (prev_step < num_steps)
    prev_step = prev_step.clamp(0, num_steps - 1)
    from_output = exists & (row_in_batch < sizes[prev_step])
    return torch.where(from_output, offsets[prev_step] + row_in_batch, num_rows + row_in_batch).to(device)


@functools.lru_cache(maxsize=64)
def reversed_rows(batch_sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Row index that reverses every packed sequence within its own length (an involution).

    Row (t, b) maps to (length_b - 1 - t, b); reversed sequences have the same lengths, so the
    batch_sizes stay valid. Cached per layout and device, as previous_rows.
    """
    sizes = torch.tensor(batch_sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    step = torch.repeat_interleave(torch.arange(len(batch_sizes)), sizes)
    row_in_batch = torch.arange(int(sizes.sum())) - offsets[step]
    lengths = (sizes[None, :] > torch.arange(batch_sizes[0])[:, None]).sum(1)
    return (offsets[lengths[row_in_batch] - 1 - step] + row_in_batch).to(device)
