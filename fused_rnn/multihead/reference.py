"""The oracle of the multi-head cells: plain PyTorch ops step by step; autograd does the backward.

Three cells share one recurrent structure, FlashRNN's multi-head recurrence: the hidden state of hidden_size units is
split into num_heads heads of head_dim = hidden_size / num_heads units, and each head's units feed only that head's
gates. The recurrent weight is block-diagonal, stored as one (gates * head_dim, head_dim) matrix per head:
weight_hh (num_heads, gates * head_dim, head_dim). Gate pre-activations are laid out gate-major, (gates, hidden_size),
as in torch.nn, so unit j of head k in gate g is column g * hidden_size + k * head_dim + j, and with num_heads=1,
weight_hh[0] is torch.nn's weight_hh.

- "lstm": torch.nn.LSTM's cell, gates i, f, g, o.
- "gru": torch.nn.GRU's cell, gates r, z, n; the recurrent bias of n stays inside r * (...).
- "slstm": the xLSTM paper's sLSTM (Beck et al. 2024), in FlashRNN's gate order i, f, z, o, with state (h, c, n, m):
      i~, f~, z~, o~ = x W^T + b + (headed) h_{t-1} R^T
      log f = log sigmoid(f~) (forget_gate="sigmoid", the paper's default) or f~ (forget_gate="exp")
      m_t  = max(log f + m_{t-1}, i~)                  the stabilizer; i~ alone while the state is empty (n_{t-1} = 0)
      i'   = exp(i~ - m_t),  f' = exp(log f + m_{t-1} - m_t)  (0 while the state is empty)
      c_t  = f' c_{t-1} + i' tanh(z~),  n_t = f' n_{t-1} + i',  h_t = sigmoid(o~) c_t / n_t
  c and n are the paper's unstabilized states scaled by exp(-m_t), so h is the paper's h exactly. An empty state
  (n = 0: the zero initial state) has no past to keep; taking m_t = i~ there, as FlashRNN does, keeps n_t >= 1 from
  then on, so h never divides by a small n.

It runs on any device and dtype (float64 included), is what every other path is tested against, and is what double
backward recomputes through.
"""

import torch
import torch.nn.functional as F

from fused_rnn.packing import time_steps

GATES = {"lstm": 4, "gru": 3, "slstm": 4}
STATES = {"lstm": ("h", "c"), "gru": ("h",), "slstm": ("h", "c", "n", "m")}
FORGET_GATES = ("sigmoid", "exp")


def recurrent_gates(h: torch.Tensor, weight_hh: torch.Tensor) -> torch.Tensor:
    """h (B, H) through the block-diagonal weight_hh (num_heads, G * head_dim, head_dim): (B, G * H), gate-major."""
    heads, gate_rows, head_dim = weight_hh.shape
    batch = h.shape[0]
    per_head = torch.einsum("bkd,kgd->bkg", h.reshape(batch, heads, head_dim), weight_hh)  # (B, heads, G * head_dim)
    return per_head.reshape(batch, heads, gate_rows // head_dim, head_dim).transpose(1, 2).reshape(batch, -1)


def slstm_state_update(gates, c, n, m, forget_gate="sigmoid"):
    """(h', c', n', m') from the sLSTM's pre-activations (B, 4H) in order i, f, z, o and the state (c, n, m)."""
    i_pre, f_pre, z_pre, o_pre = gates.chunk(4, 1)
    log_f = F.logsigmoid(f_pre) if forget_gate == "sigmoid" else f_pre
    # -inf where the state is empty: then m' = i~ and f' = exp(-inf) = 0, with no inf * 0 in the gradient.
    kept = torch.where(n == 0, float("-inf"), log_f + m)
    m_new = torch.where(i_pre >= kept, i_pre, kept)  # not torch.maximum, which splits the gradient at ties
    i_gate, f_gate = torch.exp(i_pre - m_new), torch.exp(kept - m_new)
    c_new = f_gate * c + i_gate * torch.tanh(z_pre)
    n_new = f_gate * n + i_gate
    return torch.sigmoid(o_pre) * c_new / n_new, c_new, n_new, m_new


def cell(cell_name, x, state, weight_ih, weight_hh, bias_ih=None, bias_hh=None, forget_gate="sigmoid"):
    """One step of `cell_name`: x (B, I), state a tuple as STATES[cell_name] names it, each (B, H); the new state."""
    h = state[0]
    input_gates = F.linear(x, weight_ih, bias_ih)
    hidden_gates = recurrent_gates(h, weight_hh)
    if bias_hh is not None:
        hidden_gates = hidden_gates + bias_hh
    if cell_name == "slstm":
        return slstm_state_update(input_gates + hidden_gates, *state[1:], forget_gate)
    if cell_name == "lstm":
        i, f, g, o = (input_gates + hidden_gates).chunk(4, 1)
        c_new = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    x_r, x_z, x_n = input_gates.chunk(3, 1)
    h_r, h_z, h_n = hidden_gates.chunk(3, 1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return ((1 - z) * n + z * h,)


def sequence(
    cell_name: str,
    input: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    batch_sizes: list[int] | None = None,
    reverse: bool = False,
    forget_gate: str = "sigmoid",
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One direction of one layer over a whole sequence.

    Args:
        cell_name: "lstm", "gru" or "slstm".
        input: (T, B, I), or rows (N, I): packed when batch_sizes is given, else T * B time-major rows.
        state: the initial state, one (B, H) tensor per name in STATES[cell_name].
        weight_ih: (G * H, I). weight_hh: (num_heads, G * head_dim, head_dim). bias_ih, bias_hh: (G * H,) or None
            (the sLSTM has bias_ih only: a second bias would only add to it).
        batch_sizes: active batch per time step (PackedSequence.batch_sizes), or None.
        reverse: run from the last time step to the first.
        forget_gate: the sLSTM's forget gate, "sigmoid" or "exp".

    Returns:
        output (same leading shape as input, H features) and the final state, shaped like `state`.
    """
    rows = input.reshape(-1, input.shape[-1])
    batch = state[0].shape[0]
    outputs = {}
    for offset, active in time_steps(batch_sizes, rows.shape[0], batch, reverse):
        new = cell(
            cell_name,
            rows[offset : offset + active],
            tuple(s[:active] for s in state),
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
            forget_gate,
        )
        outputs[offset] = new[0]
        # Rows past the active batch keep their state: their sequences have ended (or, reversed, not yet begun).
        state = new if active == batch else tuple(torch.cat([n, s[active:]]) for n, s in zip(new, state))
    output = torch.cat([outputs[offset] for offset in sorted(outputs)])
    return output.reshape(*input.shape[:-1], output.shape[-1]), tuple(state)
