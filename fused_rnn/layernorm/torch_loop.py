"""LayerNorm LSTM/GRU as a loop of torch ops with autograd's backward: backend "torch", CPU's "auto".

The same equations as the reference, arranged as the fused driver arranges them: the input projection of all steps
is one GEMM and its normalization one layer_norm, so that each step is one GEMM, one layer_norm and the pointwise
cell math (benchmarks/results/layernorm_cpu.md compares it with the reference and with a torch.nn-composed loop). For
float16/bfloat16 the math and the carried states are float32 (as in the Triton kernels); only the outputs are rounded.
"""

import torch
import torch.nn.functional as F

from fused_rnn.layernorm.reference import EPS
from fused_rnn.packing import time_steps


def sequence(
    cell,
    input,
    h0,
    c0,
    weight_ih,
    weight_hh,
    bias_ih,
    bias_hh,
    norm_ih_weight,
    norm_hh_weight,
    norm_c_weight=None,
    norm_c_bias=None,
    batch_sizes=None,
    reverse=False,
):
    """As fused_rnn.layernorm.reference.sequence."""
    if input.dtype in (torch.float16, torch.bfloat16):
        tensors = (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, norm_ih_weight, norm_hh_weight)
        tensors += (norm_c_weight, norm_c_bias)
        widened = [t.float() if t is not None else None for t in tensors]
        output, h_n, c_n = sequence(cell, *widened, batch_sizes, reverse)
        return output.to(input.dtype), h_n.to(input.dtype), c_n.to(input.dtype) if c_n is not None else None
    rows = input.reshape(-1, input.shape[-1])
    width = weight_hh.shape[0]
    input_part = F.layer_norm(F.linear(rows, weight_ih), (width,), norm_ih_weight, bias_ih, EPS)
    steps = time_steps(batch_sizes, rows.shape[0], h0.shape[0], False)
    # One split, not a slice per step: each slice's backward would write a zero-filled gradient of all rows.
    step_inputs = dict(zip((offset for offset, _ in steps), input_part.split([batch for _, batch in steps])))
    hidden = h0.shape[1]
    state = (h0, c0) if cell == "lstm" else (h0,)
    outputs = {}
    for offset, batch in steps[::-1] if reverse else steps:
        h = state[0][:batch]
        recurrent = F.layer_norm(F.linear(h, weight_hh), (width,), norm_hh_weight, bias_hh, EPS)
        x = step_inputs[offset]
        if cell == "lstm":
            i, f, g, o = (x + recurrent).chunk(4, dim=-1)
            c = torch.sigmoid(f) * state[1][:batch] + torch.sigmoid(i) * torch.tanh(g)
            normed_c = F.layer_norm(c, (hidden,), norm_c_weight, norm_c_bias, EPS)
            new = (torch.sigmoid(o) * torch.tanh(normed_c), c)
        else:
            x_r, x_z, x_n = x.chunk(3, dim=-1)
            u_r, u_z, u_n = recurrent.chunk(3, dim=-1)
            r, z = torch.sigmoid(x_r + u_r), torch.sigmoid(x_z + u_z)
            n = torch.tanh(x_n + r * u_n)
            new = (n + z * (h - n),)
        outputs[offset] = new[0]
        # Rows past the active batch keep their state: their sequences have ended (or, reversed, not yet begun).
        state = tuple(n if batch == s.shape[0] else torch.cat([n, s[batch:]]) for n, s in zip(new, state))
    output = torch.cat([outputs[offset] for offset in sorted(outputs)])
    output = output.reshape(*input.shape[:-1], output.shape[-1])
    return output, state[0], state[1] if cell == "lstm" else None
