"""The multi-head cells' fused sequence as registered torch.library ops, with their autograd formula.

`fused_rnn::multihead_forward` runs one direction of one layer of the sLSTM or the headed LSTM/GRU through
fused_rnn.multihead.sequence (Triton kernels, or torch ops on CPU); `fused_rnn::multihead_backward` runs its
backpropagation through time. Fake implementations let torch.compile trace them with no graph break. When the
backward must itself be differentiable (create_graph=True), it recomputes through the reference, so higher-order
gradients are exact.

A state the cell does not have (c for the GRU, n and m for the LSTM) is passed as None and returned empty.
"""

import contextlib

import torch

from fused_rnn import eager
from fused_rnn.multihead import reference, sequence
from fused_rnn.multihead.reference import STATES


def _on_device_of(tensor: torch.Tensor):
    # Triton launches on the current CUDA device; make the tensors' device current.
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _present(cell, h0, c0, n0, m0):
    return (h0, c0, n0, m0)[: len(STATES[cell])]


def _padded(cell, tensors, like):
    """The state tuple of `cell` as (h, c, n, m), with empty tensors for what the cell has not."""
    return (*tensors, *(like.new_empty(0) for _ in range(4 - len(STATES[cell]))))


def _run_forward(
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    n0: torch.Tensor | None,
    m0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    batch_sizes: list[int] | None,
    reverse: bool,
    cell: str,
    forget_gate: str,
    save: bool,
    step_kernel: str = "triton",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one layer, fused.

    Args:
        input: (N, I) time-major rows (fused_rnn.packing). h0, c0, n0, m0: (B, H), those the cell has, else None.
        weight_ih: (G * H, I). weight_hh: (num_heads, G * head_dim, head_dim). bias_ih, bias_hh: (G * H,) or None.
        batch_sizes: active rows per step for packed input, None for N = T * B padded rows.
        reverse: run from the last step to the first. cell: "lstm", "gru" or "slstm".
        forget_gate: the sLSTM's, "sigmoid" or "exp". save: keep what the backward needs.
        step_kernel: what runs the pointwise step, "triton" or "torch" (not named `kernel`: inductor passed it by
            name, at its default value, to its FallbackKernel.create(kernel, ...), which then failed on packed input).
            All tensors contiguous.

    Returns:
        output (N, H), h_n, c_n, n_n, m_n (B, H) or empty, and the saved activations (empty unless save).
    """
    with _on_device_of(input):
        output, state, saved = sequence.sequence_forward(
            cell,
            input,
            _present(cell, h0, c0, n0, m0),
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
            batch_sizes,
            reverse,
            save,
            forget_gate == "exp",
            step_kernel,
        )
        return output, *_padded(cell, state, input), saved


multihead_forward = torch.library.custom_op("fused_rnn::multihead_forward", mutates_args=())(_run_forward)


def forward(*arguments):
    """multihead_forward's outputs (same arguments, all given), differentiable when `save` (the one before
    step_kernel); in plain eager mode without the registered op's cost (fused_rnn.eager)."""
    return _FORWARD(arguments[0], *arguments, differentiable=arguments[-2])


@multihead_forward.register_fake
def _(
    input,
    h0,
    c0,
    n0,
    m0,
    weight_ih,
    weight_hh,
    bias_ih,
    bias_hh,
    batch_sizes,
    reverse,
    cell,
    forget_gate,
    save,
    step_kernel="triton",
):
    hidden = h0.shape[1]
    state = tuple(torch.empty_like(h0) for _ in STATES[cell])
    saved_rows = input.shape[0] if save else 0
    acc = sequence.accumulate_dtype(input.dtype)
    saved = input.new_empty(saved_rows, sequence.SAVED_WIDTH[cell] * hidden, dtype=acc)
    return input.new_empty(input.shape[0], hidden), *_padded(cell, state, input), saved


def _run_backward(
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor | None,
    grad_n_n: torch.Tensor | None,
    grad_m_n: torch.Tensor | None,
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    n0: torch.Tensor | None,
    m0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    output: torch.Tensor,
    saved: torch.Tensor,
    batch_sizes: list[int] | None,
    reverse: bool,
    cell: str,
    forget_gate: str,
    needs_grad: list[bool],
    step_kernel: str = "triton",
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    """Gradients of input, h0, c0, n0, m0, weight_ih, weight_hh, bias_ih, bias_hh; each empty unless its needs_grad
    entry is set (needs_grad has one entry per tensor, the states the cell has not included)."""
    states = len(STATES[cell])
    needed = [needs_grad[0], *needs_grad[1 : 1 + states], *needs_grad[5:]]
    with _on_device_of(input):
        grads = sequence.sequence_backward(
            cell,
            grad_output,
            _present(cell, grad_h_n, grad_c_n, grad_n_n, grad_m_n),
            input,
            _present(cell, h0, c0, n0, m0),
            weight_ih,
            weight_hh,
            output,
            saved,
            batch_sizes,
            reverse,
            forget_gate == "exp",
            needed,
            step_kernel,
        )
    return grads[0], *_padded(cell, grads[1 : 1 + states], input), *grads[1 + states :]


multihead_backward = torch.library.custom_op("fused_rnn::multihead_backward", mutates_args=())(_run_backward)


@multihead_backward.register_fake
def _(
    grad_output,
    grad_h_n,
    grad_c_n,
    grad_n_n,
    grad_m_n,
    input,
    h0,
    c0,
    n0,
    m0,
    weight_ih,
    weight_hh,
    output,
    saved,
    batch_sizes,
    reverse,
    cell,
    forget_gate,
    needs_grad,
    step_kernel="triton",
):
    bias = weight_ih.shape[:1]
    shapes = [input.shape, *[h0.shape] * 4, weight_ih.shape, weight_hh.shape, bias, bias]
    return tuple(input.new_empty(shape if needed else (0,)) for shape, needed in zip(shapes, needs_grad, strict=True))


def _setup_context(ctx, inputs, output):
    *leaves, batch_sizes, reverse, cell, forget_gate, _, kernel = inputs
    ctx.batch_sizes, ctx.reverse, ctx.cell = batch_sizes, reverse, cell
    ctx.forget_gate, ctx.kernel = forget_gate, kernel
    ctx.save_for_backward(*leaves, output[0], output[5])
    ctx.mark_non_differentiable(output[5])


def _backward(ctx, grad_output, grad_h_n, grad_c_n, grad_n_n, grad_m_n, _grad_saved):
    *leaves, output, saved = ctx.saved_tensors
    needs_grad = [leaf is not None and needed for leaf, needed in zip(leaves, ctx.needs_input_grad[:9], strict=True)]
    grad_state = [grad_h_n, grad_c_n, grad_n_n, grad_m_n]
    if torch.is_grad_enabled():
        grads = _differentiable_backward(ctx, leaves, needs_grad, grad_output, grad_state)
    else:
        input, h0, c0, n0, m0, weight_ih, weight_hh, _, _ = leaves
        present = len(STATES[ctx.cell])
        found = _BACKWARD(
            grad_output,
            grad_output.contiguous(),
            *(g.contiguous() if i < present else None for i, g in enumerate(grad_state)),
            input,
            h0,
            c0,
            n0,
            m0,
            weight_ih,
            weight_hh,
            output,
            saved,
            ctx.batch_sizes,
            ctx.reverse,
            ctx.cell,
            ctx.forget_gate,
            needs_grad,
            ctx.kernel,
        )
        grads = [g if needed else None for g, needed in zip(found, needs_grad)]
    return (*grads, None, None, None, None, None, None)


def _differentiable_backward(ctx, leaves, needs_grad, grad_output, grad_state):
    """The backward as autograd-visible reference ops, so that it can itself be differentiated."""
    input, h0, c0, n0, m0, weight_ih, weight_hh, bias_ih, bias_hh = leaves
    present = len(STATES[ctx.cell])
    wanted = [i for i, needed in enumerate(needs_grad) if needed]
    with torch.enable_grad():
        output, state = reference.sequence(
            ctx.cell,
            input,
            (h0, c0, n0, m0)[:present],
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
            ctx.batch_sizes,
            ctx.reverse,
            ctx.forget_gate,
        )
        found = torch.autograd.grad(
            [output, *state],
            [leaves[i] for i in wanted],
            [grad_output, *grad_state[:present]],
            create_graph=True,
            allow_unused=True,
        )
    grads = [None] * len(leaves)
    for i, g in zip(wanted, found):
        grads[i] = g
    return grads


multihead_forward.register_autograd(_backward, setup_context=_setup_context)
_FORWARD = eager.Op(multihead_forward, _run_forward, _setup_context, _backward)
_BACKWARD = eager.Op(multihead_backward, _run_backward)
