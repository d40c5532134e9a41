"""IndRNN's oracle: plain PyTorch ops step by step; autograd does the backward.

It follows the equation literally, one `x W^T` product per step, runs on any device and dtype (float64 included),
and is what every other path is tested against and what double backward recomputes through.
"""

import torch
import torch.nn.functional as F

from fused_rnn.packing import time_steps

NONLINEARITIES = ("relu", "tanh")


def _activation(pre: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    return torch.relu(pre) if nonlinearity == "relu" else torch.tanh(pre)


def cell(x, h, weight_ih, weight_hh, bias_ih=None, nonlinearity="relu"):
    """One IndRNN step: h' = act(x W^T + b + u * h), with u = weight_hh a vector of hidden_size."""
    return _activation(F.linear(x, weight_ih, bias_ih) + weight_hh * h, nonlinearity)


def sequence(
    input: torch.Tensor,
    h0: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    batch_sizes: list[int] | None = None,
    reverse: bool = False,
    nonlinearity: str = "relu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of one IndRNN layer over a whole sequence.

    Args:
        input: (T, B, I), or rows (N, I): packed when batch_sizes is given, else T * B time-major rows.
        h0: (B, H).
        weight_ih: (H, I). weight_hh: (H,), the elementwise recurrent weight u. bias_ih: (H,) or None.
        batch_sizes: active batch per time step (PackedSequence.batch_sizes), or None.
        reverse: run from the last time step to the first.

    Returns:
        output (same leading shape as input, H features) and h_n (B, H).
    """
    return _run(
        input, h0, batch_sizes, reverse, lambda x, h, rows: cell(x, h, weight_ih, weight_hh, bias_ih, nonlinearity)
    )


def _run(input, h0, batch_sizes, reverse, step):
    """Applies step(x, h, rows) -> h' to each time step's active rows in the recurrence's order."""
    rows = input.reshape(-1, input.shape[-1])
    state, outputs = h0, {}
    for offset, batch in time_steps(batch_sizes, rows.shape[0], h0.shape[0], reverse):
        active = slice(offset, offset + batch)
        new = step(rows[active], state[:batch], active)
        outputs[offset] = new
        # Rows past the active batch keep their state: their sequences have ended (or, reversed, not yet begun).
        state = new if batch == state.shape[0] else torch.cat([new, state[batch:]])
    output = torch.cat([outputs[offset] for offset in sorted(outputs)])
    return output.reshape(*input.shape[:-1], output.shape[-1]), state
