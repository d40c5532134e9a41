"""The input forms recurrent layers and cells accept, as torch.nn's do, turned into fused_rnn's layout and back.

A layer takes (T, B, I), (B, T, I) when batch_first, unbatched (T, I), or a PackedSequence, sorted or not; the
kernels take time-major (T, B, I) or packed rows (N, I) with batch_sizes, and states in the packed batch's sorted
order. A cell takes (B, I) or unbatched (I,). Every layer family (torch.nn's cells, IndRNN, LayerNorm, multi-head)
converts through here, so all of them accept the same forms and refuse the same mistakes with the same errors.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import PackedSequence

Tensor = torch.Tensor


def checked_size(name: str, value) -> int:
    """`value` when it is a positive int (a size argument of a constructor); ValueError naming `name` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class LayerInput:
    """A layer's input as the kernels take it, and what it takes to give the output back in the input's form."""

    x: Tensor
    """(T, B, I) time-major, or packed rows (N, I)."""
    batch_sizes: list[int] | None
    """Active batch per step of packed input; None when padded."""
    batch: int
    unbatched: bool
    batch_first: bool
    packed: PackedSequence | None
    """The input itself when packed."""

    def sorted_states(self, states: Sequence[Tensor]) -> list[Tensor]:
        """Initial states (layers * directions, B, ·) in the order of the packed batch (sorted by length)."""
        if self.packed is None or self.packed.sorted_indices is None:
            return list(states)
        return [state.index_select(1, self.packed.sorted_indices) for state in states]

    def output(self, x: Tensor, finals: Sequence[Tensor]) -> tuple[Tensor | PackedSequence, list[Tensor]]:
        """The last layer's rows in the input's form, and the final states (layers * directions, B, ·) in the
        input's batch order and shape."""
        if self.packed is not None:
            packed = self.packed
            output = PackedSequence(x, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            if packed.unsorted_indices is not None:
                finals = [final.index_select(1, packed.unsorted_indices) for final in finals]
            return output, list(finals)
        if self.unbatched:
            return x.squeeze(1), [final.squeeze(1) for final in finals]
        return (x.transpose(0, 1) if self.batch_first else x), list(finals)


def layer_input(layer: str, input, input_size: int, batch_first: bool, hx=None) -> LayerInput:
    """`input` of layer `layer` (its class name, for the errors) as a LayerInput; TypeError/ValueError (torch.nn's
    messages) for what torch.nn's layers refuse. hx: the initial state(s) the layer was given, or None."""
    if isinstance(input, PackedSequence):
        x, batch_sizes = input.data, input.batch_sizes.tolist()
        if torch.compiler.is_compiling():
            # Traced, the batch sizes are values unknown until the graph runs (fused_rnn.packing.checked_layout); the
            # batch is also a size the graph knows: an unsorted sequence's index length, or a given state's.
            known = input.sorted_indices.shape[0] if input.sorted_indices is not None else _state_batch(hx)
            if known is not None:
                torch._check(batch_sizes[0] == known)
        layout = LayerInput(x, batch_sizes, batch_sizes[0], False, batch_first, input)
    else:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{layer}: Expected input to be 2D or 3D, got {input.dim()}D tensor")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else input.transpose(0, 1) if batch_first else input
        layout = LayerInput(x, None, x.shape[1], unbatched, batch_first, None)
    if layout.x.shape[-1] != input_size:
        raise ValueError(f"input.size(-1) must be equal to input_size. Expected {input_size}, got {x.shape[-1]}")
    return layout


def _state_batch(hx) -> int | None:
    """The batch of a layer's initial state(s) (layers * directions, B, ·), or None where none is a 3-D tensor (the
    layer then names what is wrong with it)."""
    states = hx if isinstance(hx, (tuple, list)) else (hx,)
    return next((s.shape[1] for s in states if isinstance(s, Tensor) and s.dim() == 3), None)


def cell_input(cell: str, input, input_size: int) -> tuple[Tensor, bool]:
    """(input as (B, I), whether it was unbatched) for cell `cell` (its class name, for the errors)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.dim() not in (1, 2):
        raise ValueError(f"{cell}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    if x.shape[1] != input_size:
        raise ValueError(f"input.size(-1) must be equal to input_size. Expected {input_size}, got {x.shape[1]}")
    return x, unbatched
