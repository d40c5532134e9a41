"""Row bookkeeping for sequences stored time-major, padded or packed.

A sequence of T steps is stored as N rows: step t owns rows [offset_t, offset_t + batch_t). Padded
input (T, B, I) is the case batch_t = B for every t. Packed input is torch's PackedSequence layout:
batch sorted by decreasing length, so the active rows of each step are a prefix of the batch and
short sequences never compute on padding.
"""

import functools
import itertools

import torch


def time_steps(batch_sizes: list[int] | None, num_rows: int, batch: int, reverse: bool) -> list[tuple[int, int]]:
    """(row offset, active batch) of each time step, in the order the recurrence visits them."""
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
