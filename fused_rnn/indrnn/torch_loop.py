"""IndRNN's recurrence as a loop of in-place torch ops: the CPU path of the fused op (backend "torch").

Same contract as fused_rnn.backends.triton.indrnn's recurrence_forward/recurrence_backward, so the custom op, its
fake implementation and its autograd serve both. The backward is written out, not left to autograd: per step
the forward is one multiply-add and one activation, the backward three ops, with no graph to build or walk, and
the du reduction is one product and sum over all rows after the loop. State and carried gradient stay in
float32 for float16/bfloat16 storage, as in the Triton kernel.
"""

import torch

from fused_rnn.backends.triton.indrnn import accumulate_dtype
from fused_rnn.packing import previous_hidden, time_steps


def recurrence_forward(projection, weight_hh, h0, batch_sizes, reverse, relu):
    """(output (N, H), h_n (B, H)) of h' = act(projection + u * h) over all rows."""
    acc = accumulate_dtype(h0.dtype)
    output = torch.empty_like(projection)
    # Float32/float64 steps are computed straight into the output, which then serves as the state: two ops per
    # step. Lower precision goes through a float32 buffer, so the carried state is not rounded.
    in_place = output.dtype == acc
    u, state = weight_hh.to(acc), h0.to(acc, copy=True)
    pre, h = torch.empty_like(state), state
    for offset, batch in time_steps(batch_sizes, projection.shape[0], h0.shape[0], reverse):
        rows = slice(offset, offset + batch)
        step = output[rows] if in_place else pre[:batch]
        torch.addcmul(projection[rows], u, h[:batch], out=step)
        step.clamp_(min=0) if relu else step.tanh_()  # clamp keeps NaN, as torch.relu
        if not in_place:
            output[rows] = step
        if batch == state.shape[0]:
            h = step
        else:  # rows past the active batch keep their state
            if h is not state:
                state.copy_(h)
            state[:batch] = step
            h = state
    return output, h.to(h0.dtype, copy=True)


def recurrence_backward(grad_output, grad_h_n, output, h0, weight_hh, batch_sizes, reverse, relu):
    """(d pre-activation (N, H), d h0 (B, H), d u (H,)) of recurrence_forward."""
    acc = accumulate_dtype(h0.dtype)
    u, dh = weight_hh.to(acc), grad_h_n.to(acc, copy=True)
    grad_pre = torch.empty(output.shape, dtype=acc, device=output.device)
    zero = grad_pre.new_zeros(())
    for offset, batch in reversed(time_steps(batch_sizes, output.shape[0], h0.shape[0], reverse)):
        rows = slice(offset, offset + batch)
        carried = dh[:batch]
        carried += grad_output[rows]
        h = output[rows]
        if relu:
            torch.where(h > 0, carried, zero, out=grad_pre[rows])
        else:
            torch.mul(carried, 1 - h.to(acc).square(), out=grad_pre[rows])
        torch.mul(grad_pre[rows], u, out=carried)
    grad_u = (grad_pre * previous_hidden(output, h0, batch_sizes, reverse)).sum(0)
    return grad_pre.to(output.dtype), dh.to(h0.dtype), grad_u.to(weight_hh.dtype)
