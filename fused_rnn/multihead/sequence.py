"""The multi-head sequence driver: GEMMs plus one fused pointwise kernel per time step, forward and backward.

Forward: the input projection of all steps is one GEMM; each step is one bmm over heads (each head's h times its own
(G * head_dim, head_dim) block of the recurrent weight) and one pointwise kernel. Backward walks the steps in reverse
with one pointwise kernel and one bmm per step; the input, weight and bias gradients are single GEMMs/reductions over
all steps afterwards. No atomics, so results are deterministic.

The pointwise step runs as Triton kernels (kernel="triton") or as torch ops (kernel="torch"), with the same contract
(fused_rnn.backends.triton.multihead.forward_step/backward_step). Rows follow fused_rnn.packing: state buffers hold
the whole batch and each step reads and writes the prefix of rows it has active. The compiled kernels run the whole
step loop in one call, with the same layouts (the GEMMs before and after stay here): kernel="cpu" on CPU
(csrc/cpu/multihead.cpp: each thread walks every step for its own heads), kernel="cuda" on CUDA (per step a bmm over
heads and one step kernel launched from C++, csrc/cuda/multihead.cu).
"""

import torch

from fused_rnn.backends import native
from fused_rnn.multihead.reference import GATES
from fused_rnn.packing import previous_hidden, time_steps

SAVED_WIDTH = {"lstm": 5, "gru": 4, "slstm": 7}  # ACC values per hidden unit saved for the backward


def _steps(kernel: str):
    """The module with forward_step/backward_step for `kernel`, imported on first use (so importing fused_rnn never
    compiles or interprets Triton code)."""
    if kernel == "torch":
        from fused_rnn.multihead import torch_steps

        return torch_steps
    from fused_rnn.backends.triton import multihead

    return multihead


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _by_head(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """(bs, heads * width) rows as a (heads, bs, width) view: the batch of a bmm over heads."""
    return rows.view(rows.shape[0], heads, -1).transpose(0, 1)


def sequence_forward(
    cell, input, state, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse, save, exp_forget, kernel
):
    """(output (N, H), final state tuple, saved (N, SAVED_WIDTH * H) ACC or (0, ...)) of one direction of one layer.

    state: the initial (B, H) tensors STATES[cell] names; all inputs contiguous.
    """
    heads, _, head_dim = weight_hh.shape
    batch, hidden = state[0].shape
    acc = accumulate_dtype(input.dtype)
    input_gates = native.gemms(kernel == "cpu").product(input, weight_ih, bias_ih)
    if kernel in ("cpu", "cuda"):  # the whole step loop in one call of the compiled kernels
        states = (*state, *(None,) * (4 - len(state)))
        output, *final, saved = native.ops().multihead_recurrence_forward(
            cell, input_gates, weight_hh, bias_hh, *states, batch_sizes, reverse, save, exp_forget
        )
        return output, tuple(final[: len(state)]), saved
    steps = _steps(kernel)
    hidden_gates = input.new_empty(batch, GATES[cell] * hidden)  # head-major rows
    recurrent = weight_hh.transpose(1, 2)  # (heads, head_dim, G * head_dim)
    output = input.new_empty(input.shape[0], hidden)
    saved = input.new_empty(input.shape[0] if save else 0, SAVED_WIDTH[cell] * hidden, dtype=acc)
    h = state[0].clone()
    carried = tuple(s.to(acc, copy=True) for s in state[1:])

    for offset, active in time_steps(batch_sizes, input.shape[0], batch, reverse):
        rows = slice(offset, offset + active)
        torch.bmm(_by_head(h[:active], heads), recurrent, out=_by_head(hidden_gates[:active], heads))
        steps.forward_step(
            cell,
            input_gates[rows],
            hidden_gates[:active],
            bias_hh,
            h,
            carried,
            output[rows],
            saved[rows] if save else None,
            head_dim,
            exp_forget,
        )
    return output, (h, *(s.to(input.dtype) for s in carried)), saved


def sequence_backward(
    cell,
    grad_output,
    grad_state,
    input,
    state,
    weight_ih,
    weight_hh,
    output,
    saved,
    batch_sizes,
    reverse,
    exp_forget,
    needs_grad,
    kernel,
):
    """Gradients of (input, *state, weight_ih, weight_hh, bias_ih, bias_hh), each empty unless needs_grad says so.

    grad_state: the gradients of the final state, shaped like `state`.
    """
    heads, _, head_dim = weight_hh.shape
    batch, hidden = state[0].shape
    gates, acc = GATES[cell], accumulate_dtype(input.dtype)
    h_prev = previous_hidden(output, state[0], batch_sizes, reverse)
    if kernel in ("cpu", "cuda"):  # the whole step loop in one call of the compiled kernels
        grads = (*grad_state, *(None,) * (4 - len(grad_state)))
        grad_input_gates, grad_hidden_gates, *state_grads = native.ops().multihead_recurrence_backward(
            cell, grad_output, *grads, output, saved, h_prev, weight_hh, batch_sizes, reverse, exp_forget
        )
        return _gradients(
            input,
            state,
            weight_ih,
            weight_hh,
            h_prev,
            grad_input_gates,
            grad_hidden_gates,
            state_grads[: len(state)],
            needs_grad,
            native.gemms(kernel == "cpu"),
        )
    steps = _steps(kernel)
    grad_input_gates = input.new_empty(output.shape[0], gates * hidden)  # gate-major
    grad_hidden_gates = torch.empty_like(grad_input_gates)  # head-major
    dh = grad_state[0].clone()
    # What is carried from step to step besides dh stays in ACC: the gradients of c, n, m, and the GRU's gradient
    # through h' = z * h + ... (which starts at 0: grad_h_n is in dh).
    if cell == "gru":
        carried = (torch.zeros_like(dh, dtype=acc),)
    else:
        carried = tuple(g.to(acc, copy=True) for g in grad_state[1:])

    for offset, active in reversed(time_steps(batch_sizes, output.shape[0], batch, reverse)):
        rows = slice(offset, offset + active)
        steps.backward_step(
            cell,
            dh,
            grad_output[rows],
            carried,
            saved[rows],
            h_prev[rows],
            grad_input_gates[rows],
            grad_hidden_gates[rows],
            head_dim,
            exp_forget,
        )
        torch.bmm(_by_head(grad_hidden_gates[rows], heads), weight_hh, out=_by_head(dh[:active], heads))

    if cell == "gru":
        state_grads = ((dh + carried[0]).to(input.dtype),)
    else:
        state_grads = (dh, *(g.to(input.dtype) for g in carried))
    return _gradients(
        input,
        state,
        weight_ih,
        weight_hh,
        h_prev,
        grad_input_gates,
        grad_hidden_gates,
        state_grads,
        needs_grad,
        native.TorchGemms,
    )


def _gradients(
    input, state, weight_ih, weight_hh, h_prev, grad_input_gates, grad_hidden_gates, state_grads, needs_grad, gemms
):
    """sequence_backward's outputs from the gate gradients of every row: the input, weight and bias gradients as
    single GEMMs (gemms: fused_rnn.backends.native.gemms) and sums."""
    heads, rows, head_dim = weight_hh.shape[0], weight_hh.shape[1], weight_hh.shape[2]
    gates = rows // head_dim
    empty = lambda: input.new_empty(0)  # one per absent gradient: a custom op's outputs may not alias each other
    by_head = grad_hidden_gates.view(-1, heads, gates * head_dim)
    compute = (
        lambda: gemms.product(grad_input_gates, weight_ih.t(), None),
        lambda: gemms.weight_gradient(grad_input_gates, input),
        lambda: torch.bmm(by_head.permute(1, 2, 0), _by_head(h_prev, heads)),
        lambda: grad_input_gates.sum(0),
        lambda: by_head.sum(0).view(heads, gates, head_dim).transpose(0, 1).reshape(-1),
    )
    need_input, *need_state = needs_grad[: 1 + len(state)]
    need_weights = needs_grad[1 + len(state) :]
    return (
        compute[0]() if need_input else empty(),
        *(g if needed else empty() for g, needed in zip(state_grads, need_state, strict=True)),
        *(f() if needed else empty() for f, needed in zip(compute[1:], need_weights, strict=True)),
    )
