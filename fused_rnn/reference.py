"""The oracle: recurrent layers as plain PyTorch ops, one time step after another.

Runs on any device and dtype (float64 included); autograd does the backward, so double backward
works. Every fused kernel is tested against this module, and the fused backends fall back to it
to compute higher-order gradients.
"""

import torch
import torch.nn.functional as F

from fused_rnn.cells import CELLS
from fused_rnn.packing import time_steps


def lstm_cell(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None):
    """One LSTM step: returns (h', c'); h' is projected by weight_hr when given."""
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if weight_hr is not None:
        h = F.linear(h, weight_hr)
    return h, c


def gru_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One GRU step: returns h'."""
    x_r, x_z, x_n = F.linear(x, weight_ih, bias_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh"):
    """One Elman RNN step: returns h'."""
    pre = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def sequence(
    cell: str,
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    weight_hr: torch.Tensor | None = None,
    batch_sizes: list[int] | None = None,
    reverse: bool = False,
    zoneout: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One direction of one layer over a whole sequence.

    Args:
        cell: "lstm", "gru", "rnn_tanh" or "rnn_relu".
        input: (T, B, I), or packed rows (N, I) when batch_sizes is given.
        h0: (B, H_out). c0: (B, H) for LSTM, else None.
        batch_sizes: active batch per time step (PackedSequence.batch_sizes), or None.
        reverse: run from the last time step to the first.
        zoneout: keep weights d, one row per input row: (N, H_out + H) for the LSTM (h's, then c's), (N, H) for the
            GRU (fused_rnn.functional.zoneout_keep draws them). Each step's new state becomes
            d * previous + (1 - d) * new (Krueger et al. 2016), and that is also the step's output. None: no zoneout.

    Returns:
        output (same leading shape as input, H_out features), h_n (B, H_out), c_n (B, H) or None.
    """
    spec = CELLS[cell]
    rows = input.reshape(-1, input.shape[-1])
    weights = (weight_ih, weight_hh, bias_ih, bias_hh)
    state = (h0, c0) if spec.has_cell_state else (h0,)
    outputs = {}
    for offset, batch in time_steps(batch_sizes, rows.shape[0], h0.shape[0], reverse):
        x = rows[offset : offset + batch]
        active = tuple(s[:batch] for s in state)
        if cell == "lstm":
            new = lstm_cell(x, *active, *weights, weight_hr)
        elif cell == "gru":
            new = (gru_cell(x, *active, *weights),)
        else:
            new = (rnn_cell(x, *active, *weights, nonlinearity=cell.removeprefix("rnn_")),)
        if zoneout is not None:
            keep = zoneout[offset : offset + batch].split([s.shape[-1] for s in active], dim=-1)
            new = tuple(zoneout_update(d, old, n) for d, old, n in zip(keep, active, new))
        outputs[offset] = new[0]
        state = tuple(torch.cat([n, s[batch:]]) for n, s in zip(new, state))
    output = torch.cat([outputs[offset] for offset in sorted(outputs)])
    output = output.reshape(*input.shape[:-1], output.shape[-1])
    return output, state[0], state[1] if spec.has_cell_state else None


def zoneout_update(keep: torch.Tensor, previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """keep * previous + (1 - keep) * new, in the states' dtype: zoneout's state update."""
    return (keep * previous + (1 - keep) * new).to(new.dtype)
