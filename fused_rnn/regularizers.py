"""Regularizers for recurrent layers that torch.nn lacks: DropConnect on the recurrent weights, locked dropout.

- `WeightDrop` (Wan et al. 2013's DropConnect on W_hh, as AWD-LSTM's WeightDrop and haste's `dropout`): one mask
  per recurrent weight per forward pass, shared by every time step, so the recurrence keeps one consistent
  matrix; the fused layers still run one kernel path with the masked matrix.
- `LockedDropout` (variational dropout, Gal & Ghahramani 2016): one mask per sequence over its features, shared
  by every time step, for the inputs and outputs of recurrent layers.

Both draw from torch's default generator, so a seed reproduces the masks, and are the identity in eval mode.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence


def _checked_probability(p) -> float:
    # p = 1 would scale the kept weights by 1 / (1 - p) = inf.
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
        raise ValueError(f"p must be a number in [0, 1), got {p!r}")
    return float(p)


class WeightDrop(nn.Module):
    """DropConnect on a module's recurrent weights: each forward pass in training runs `module` with every chosen
    weight replaced by `dropout(weight, p)`: one Bernoulli(1 - p) mask per weight, scaled by 1 / (1 - p).

    The masks are drawn in the order of `weights`, from torch's default generator, once per call, so every time
    step of that call sees the same matrix; gradients flow to the original parameters through the mask. In eval
    mode the module runs with its own weights. The parameters stay the module's own (the state_dict gains only the
    `module.` prefix), and nothing is modified in place.

    Wrap a whole layer (fused_rnn.LSTM/GRU/RNN/IndRNN, or torch.nn's): a cell stepped in a Python loop would draw a
    new mask on every step.

    Args:
        module: the layer whose weights to drop.
        p: probability of dropping each element, in [0, 1).
        weights: names of the parameters to drop; by default every parameter whose name starts with "weight_hh".

    Example::

        lstm = fused_rnn.WeightDrop(fused_rnn.LSTM(32, 64, num_layers=2), p=0.5)
        output, (h_n, c_n) = lstm(x)
    """

    def __init__(self, module: nn.Module, p: float, weights: list[str] | tuple[str, ...] | None = None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.p = _checked_probability(p)
        parameters = dict(module.named_parameters())
        if weights is None:
            weights = tuple(name for name in parameters if name.startswith("weight_hh"))
            if not weights:
                raise ValueError(f"{type(module).__name__} has no parameter named weight_hh*; name them in weights=")
        weights = tuple(weights)
        missing = [name for name in weights if name not in parameters]
        if missing:
            raise ValueError(f"weights {missing} are not parameters of {type(module).__name__}")
        self.weights = weights

    def extra_repr(self) -> str:
        return f"p={self.p}, weights={list(self.weights)}"

    def forward(self, *args, **kwargs):
        if not self.training or self.p == 0:
            return self.module(*args, **kwargs)
        parameters = dict(self.module.named_parameters())
        dropped = {name: F.dropout(parameters[name], self.p, training=True) for name in self.weights}
        return functional_call(self.module, dropped, args, kwargs)


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by all its time steps (variational dropout).

    Each sequence b gets one Bernoulli(1 - p) mask over the features, scaled by 1 / (1 - p), applied at every step.
    The mask is drawn as a (B, features) tensor in the batch's own order, so a PackedSequence (whose rows are
    sorted by length) gets the same mask per sequence as the padded batch it was packed from. Identity in eval.

    Args:
        p: probability of dropping each feature of a sequence, in [0, 1).
        batch_first: padded input is (B, T, features) rather than (T, B, features).

    Shape: input (T, B, F), (B, T, F) when batch_first, or a PackedSequence; output the same.
    """

    def __init__(self, p: float = 0.5, batch_first: bool = False):
        super().__init__()
        self.p = _checked_probability(p)
        self.batch_first = bool(batch_first)

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", batch_first=True" if self.batch_first else "")

    def forward(self, input):
        if not self.training or self.p == 0:
            return input
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            mask = self._mask(batch_sizes[0].item(), data)
            if sorted_indices is not None:
                mask = mask.index_select(0, sorted_indices)  # position j of each step holds sequence sorted_indices[j]
            # Row r of step t holds position r - offset_t of that step.
            offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
            positions = torch.arange(data.shape[0]) - torch.repeat_interleave(offsets, batch_sizes)
            positions = positions.to(data.device)
            return PackedSequence(data * mask[positions], batch_sizes, sorted_indices, unsorted_indices)
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
        if input.dim() != 3:
            raise ValueError(f"input must be 3-D ({'B, T' if self.batch_first else 'T, B'}, F), got {input.dim()}-D")
        batch_dim = 0 if self.batch_first else 1
        mask = self._mask(input.shape[batch_dim], input)
        return input * mask.unsqueeze(1 - batch_dim)

    def _mask(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(batch, features): Bernoulli(1 - p) / (1 - p), drawn once per call."""
        return like.new_empty(batch, like.shape[-1]).bernoulli_(1 - self.p).div_(1 - self.p)
