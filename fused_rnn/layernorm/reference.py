"""LayerNorm LSTM and GRU's oracle: plain PyTorch ops step by step; autograd does the backward.

The equations (Ba et al. 2016, "Layer Normalization", supplement eq. 20-22, in the form haste documents for its
LayerNormLSTM/LayerNormGRU, https://github.com/lmnt-com/haste/issues/1). LN(v; gamma, beta) normalizes each row v
to zero mean and unit (biased) variance over its whole width, then scales by gamma and shifts by beta; eps = 1e-5.

LSTM, gates i, f, g, o in torch.nn.LSTM's order, each normalization over the whole 4H row (all four gate blocks
together, as haste does: one mean and variance per row of x W_ih^T, one per row of h W_hh^T):
    gates = LN(x W_ih^T; gamma_ih, 0) + LN(h W_hh^T; gamma_hh, 0) + b
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h' = sigmoid(o) * tanh(LN(c'; gamma_c, beta_c))
The two gate normalizations have no shift of their own: b already is one (haste's and Ba et al.'s choice), so
there is one bias, b.

GRU, gates r, z, n in torch.nn.GRU's order, each normalization over the whole 3H row:
    a = LN(x W_ih^T; gamma_ih, 0) + b_ih,  u = LN(h W_hh^T; gamma_hh, 0) + b_hh
    r = sigmoid(a_r + u_r),  z = sigmoid(a_z + u_z),  n = tanh(a_n + r * u_n)
    h' = (1 - z) * n + z * h
The reset gate multiplies the normalized recurrent n-part after the matrix product and its bias, as in torch.nn.GRU
and haste's LayerNormGRU (arXiv 1406.1078v1's variant), so b_hh's n-part is kept apart from b_ih's.

Runs on any device and dtype (float64 included) and is what every other path is tested against and what double
backward recomputes through.
"""

import torch
import torch.nn.functional as F

from fused_rnn.packing import time_steps

EPS = 1e-5
CELLS = ("lstm", "gru")
GATES = {"lstm": 4, "gru": 3}


def _layer_norm(v, weight, bias=None):
    return F.layer_norm(v, (v.shape[-1],), weight, bias, EPS)


def lstm_cell(x, h, c, weight_ih, weight_hh, bias, norm_ih_weight, norm_hh_weight, norm_c_weight, norm_c_bias):
    """One LayerNorm LSTM step: returns (h', c')."""
    gates = _layer_norm(F.linear(x, weight_ih), norm_ih_weight) + _layer_norm(F.linear(h, weight_hh), norm_hh_weight)
    if bias is not None:
        gates = gates + bias
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(_layer_norm(c, norm_c_weight, norm_c_bias))
    return h, c


def gru_cell(x, h, weight_ih, weight_hh, bias_ih, bias_hh, norm_ih_weight, norm_hh_weight):
    """One LayerNorm GRU step: returns h'."""
    a_r, a_z, a_n = _layer_norm(F.linear(x, weight_ih), norm_ih_weight, bias_ih).chunk(3, dim=-1)
    u_r, u_z, u_n = _layer_norm(F.linear(h, weight_hh), norm_hh_weight, bias_hh).chunk(3, dim=-1)
    r = torch.sigmoid(a_r + u_r)
    z = torch.sigmoid(a_z + u_z)
    n = torch.tanh(a_n + r * u_n)
    return (1 - z) * n + z * h


def sequence(
    cell: str,
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    norm_ih_weight: torch.Tensor,
    norm_hh_weight: torch.Tensor,
    norm_c_weight: torch.Tensor | None = None,
    norm_c_bias: torch.Tensor | None = None,
    batch_sizes: list[int] | None = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One direction of one LayerNorm LSTM ("lstm") or GRU ("gru") layer over a whole sequence.

    Args:
        input: (T, B, I), or rows (N, I): packed when batch_sizes is given, else T * B time-major rows.
        h0: (B, H). c0: (B, H) for the LSTM, None for the GRU.
        weight_ih: (G * H, I). weight_hh: (G * H, H), G = 4 (LSTM) or 3 (GRU).
        bias_ih: (G * H,) or None: the LSTM's one bias b, the GRU's b_ih. bias_hh: the GRU's b_hh; None for the LSTM.
        norm_ih_weight, norm_hh_weight: (G * H,) gains of the input and recurrent normalizations.
        norm_c_weight, norm_c_bias: (H,) gain and shift of the LSTM's cell-state normalization; None for the GRU.
        batch_sizes: active batch per time step (PackedSequence.batch_sizes), or None.
        reverse: run from the last time step to the first.

    Returns:
        output (same leading shape as input, H features), h_n (B, H), c_n (B, H) for the LSTM or None.
    """
    rows = input.reshape(-1, input.shape[-1])
    state = (h0, c0) if cell == "lstm" else (h0,)
    outputs = {}
    for offset, batch in time_steps(batch_sizes, rows.shape[0], h0.shape[0], reverse):
        x = rows[offset : offset + batch]
        active = tuple(s[:batch] for s in state)
        if cell == "lstm":
            new = lstm_cell(
                x, *active, weight_ih, weight_hh, bias_ih, norm_ih_weight, norm_hh_weight, norm_c_weight, norm_c_bias
            )
        else:
            new = (gru_cell(x, *active, weight_ih, weight_hh, bias_ih, bias_hh, norm_ih_weight, norm_hh_weight),)
        outputs[offset] = new[0]
        # Rows past the active batch keep their state: their sequences have ended (or, reversed, not yet begun).
        state = tuple(n if batch == s.shape[0] else torch.cat([n, s[batch:]]) for n, s in zip(new, state))
    output = torch.cat([outputs[offset] for offset in sorted(outputs)])
    output = output.reshape(*input.shape[:-1], output.shape[-1])
    return output, state[0], state[1] if cell == "lstm" else None
