"""LayerNorm LSTM/GRU's fused sequence as registered torch.library ops, with their autograd formula.

`fused_rnn::layernorm_rnn_forward` runs one direction of one layer with fused_rnn.layernorm.sequence's driver (the
input GEMM and its normalization once, then per step one GEMM and one fused kernel: Triton's, or the compiled one of
csrc/) and returns, besides the output and final states, what the backward needs. `fused_rnn::layernorm_rnn_backward`
walks the steps in reverse (one kernel and one GEMM per step) and forms the weight, bias and gain gradients after the
loop. Fake implementations let torch.compile trace both with no graph break. When the backward must itself be
differentiable (create_graph=True), it recomputes through the reference, so higher-order gradients are exact.
"""

import contextlib

import torch

from fused_rnn import eager
from fused_rnn.layernorm import reference, sequence

# The differentiable inputs of the forward op, in its order (after `cell`), and the backward op's outputs.
LEAVES = (
    "input",
    "h0",
    "c0",
    "weight_ih",
    "weight_hh",
    "bias_ih",
    "bias_hh",
    "norm_ih_weight",
    "norm_hh_weight",
    "norm_c_weight",
    "norm_c_bias",
)

# The ops' return types, spelled out as torch.library's schema inference needs: output, h_n, c_n and seven saved
# tensors; a gradient per leaf.
FORWARD_OUTPUTS = tuple[(torch.Tensor,) * 10]
BACKWARD_OUTPUTS = tuple[(torch.Tensor,) * len(LEAVES)]


def _on_device_of(tensor: torch.Tensor):
    # Triton launches on the current CUDA device; make the tensors' device current.
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _run_forward(
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
    norm_c_weight: torch.Tensor | None,
    norm_c_bias: torch.Tensor | None,
    batch_sizes: list[int] | None,
    reverse: bool,
    save: bool,
    step_kernel: str = "triton",
) -> FORWARD_OUTPUTS:
    """One direction of one LayerNorm LSTM ("lstm") or GRU ("gru") layer, fused.

    Args: as fused_rnn.layernorm.reference.sequence, with input as (N, I) time-major rows and every tensor
        contiguous; save: keep what the backward needs (else those outputs have no rows); step_kernel: what runs the
        step loop, "triton" or "native" (fused_rnn.layernorm.sequence). Not named `kernel`: inductor passed it
        by name, at its default value, to its FallbackKernel.create(kernel, ...), which then failed (packed input).

    Returns:
        output (N, H), h_n (B, H), c_n (B, H) (empty for the GRU), then the saved tensors: x W_ih^T (N, G * H) and
        its per-row mean and 1 / std (N, 1), the gate activations (N, 4H), the normalized h W_hh^T (N, G * H), the
        cell's saved states (N, 2H or H) and the per-row 1 / std of the step's normalizations (N, 2 or 1).
    """
    with _on_device_of(input):
        return sequence.sequence_forward(
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
            norm_c_weight,
            norm_c_bias,
            batch_sizes,
            reverse,
            save,
            step_kernel,
        )


layernorm_rnn_forward = torch.library.custom_op("fused_rnn::layernorm_rnn_forward", mutates_args=())(_run_forward)


def forward(*arguments):
    """layernorm_rnn_forward's outputs (same arguments, all given), differentiable when `save` (the one before
    step_kernel); in plain eager mode without the registered op's cost (fused_rnn.eager)."""
    return _FORWARD(arguments[1], *arguments, differentiable=arguments[-2])


@layernorm_rnn_forward.register_fake
def _(
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
    norm_c_weight,
    norm_c_bias,
    batch_sizes,
    reverse,
    save,
    step_kernel="triton",
):
    c_n = torch.empty_like(c0) if cell == "lstm" else input.new_empty(0)
    saved = sequence.saved_outputs(cell, input, h0.shape[1], save)
    return (input.new_empty(input.shape[0], h0.shape[1]), torch.empty_like(h0), c_n, *saved)


def _run_backward(
    cell: str,
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor | None,
    input: torch.Tensor,
    h0: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    norm_ih_weight: torch.Tensor,
    norm_hh_weight: torch.Tensor,
    norm_c_weight: torch.Tensor | None,
    norm_c_bias: torch.Tensor | None,
    output: torch.Tensor,
    saved: list[torch.Tensor],
    batch_sizes: list[int] | None,
    reverse: bool,
    needs_grad: list[bool],
    step_kernel: str = "triton",
) -> BACKWARD_OUTPUTS:
    """Gradients of the forward op's LEAVES, each empty unless its needs_grad entry is set."""
    with _on_device_of(input):
        return sequence.sequence_backward(
            cell,
            grad_output,
            grad_h_n,
            grad_c_n,
            input,
            h0,
            weight_ih,
            weight_hh,
            norm_ih_weight,
            norm_hh_weight,
            norm_c_weight,
            norm_c_bias,
            output,
            saved,
            batch_sizes,
            reverse,
            needs_grad,
            step_kernel,
        )


layernorm_rnn_backward = torch.library.custom_op("fused_rnn::layernorm_rnn_backward", mutates_args=())(_run_backward)


@layernorm_rnn_backward.register_fake
def _(
    cell,
    grad_output,
    grad_h_n,
    grad_c_n,
    input,
    h0,
    weight_ih,
    weight_hh,
    norm_ih_weight,
    norm_hh_weight,
    norm_c_weight,
    norm_c_bias,
    output,
    saved,
    batch_sizes,
    reverse,
    needs_grad,
    step_kernel="triton",
):
    vector = norm_ih_weight.shape
    cell_vector = norm_c_weight.shape if norm_c_weight is not None else (0,)
    shapes = [input.shape, h0.shape, h0.shape, weight_ih.shape, weight_hh.shape, vector, vector, vector, vector]
    shapes += [cell_vector, cell_vector]
    return tuple(input.new_empty(shape if needed else (0,)) for shape, needed in zip(shapes, needs_grad, strict=True))


def _setup_context(ctx, inputs, output):
    cell, *leaves, batch_sizes, reverse, _, kernel = inputs
    ctx.cell, ctx.batch_sizes, ctx.reverse, ctx.kernel = cell, batch_sizes, reverse, kernel
    ctx.save_for_backward(*leaves, output[0], *output[3:])
    ctx.mark_non_differentiable(*output[3:])


def _backward(ctx, grad_output, grad_h_n, grad_c_n, *_grad_saved):
    leaves = ctx.saved_tensors[: len(LEAVES)]
    output, *saved = ctx.saved_tensors[len(LEAVES) :]
    needs_grad = [
        t is not None and needed for t, needed in zip(leaves, ctx.needs_input_grad[1 : 1 + len(LEAVES)], strict=True)
    ]
    if torch.is_grad_enabled():
        grads = _differentiable_backward(ctx, leaves, needs_grad, grad_output, grad_h_n, grad_c_n)
    else:
        input, h0, _, weight_ih, weight_hh, _, _, norm_ih_weight, norm_hh_weight, norm_c_weight, norm_c_bias = leaves
        found = _BACKWARD(
            grad_output,
            ctx.cell,
            grad_output.contiguous(),
            grad_h_n.contiguous(),
            grad_c_n.contiguous() if ctx.cell == "lstm" else None,
            input,
            h0,
            weight_ih,
            weight_hh,
            norm_ih_weight,
            norm_hh_weight,
            norm_c_weight,
            norm_c_bias,
            output,
            saved,
            ctx.batch_sizes,
            ctx.reverse,
            needs_grad,
            ctx.kernel,
        )
        grads = [g if needed else None for g, needed in zip(found, needs_grad)]
    return (None, *grads, None, None, None, None)


def _differentiable_backward(ctx, leaves, needs_grad, grad_output, grad_h_n, grad_c_n):
    """The backward as autograd-visible reference ops, so that it can itself be differentiated."""
    wanted = [i for i, needed in enumerate(needs_grad) if needed]
    with torch.enable_grad():
        output, h_n, c_n = reference.sequence(ctx.cell, *leaves, ctx.batch_sizes, ctx.reverse)
        outputs, grad_outputs = [output, h_n], [grad_output, grad_h_n]
        if c_n is not None:
            outputs.append(c_n)
            grad_outputs.append(grad_c_n)
        found = torch.autograd.grad(
            outputs, [leaves[i] for i in wanted], grad_outputs, create_graph=True, allow_unused=True
        )
    grads = [None] * len(leaves)
    for i, g in zip(wanted, found):
        grads[i] = g
    return grads


layernorm_rnn_forward.register_autograd(_backward, setup_context=_setup_context)
_FORWARD = eager.Op(layernorm_rnn_forward, _run_forward, _setup_context, _backward)
_BACKWARD = eager.Op(layernorm_rnn_backward, _run_backward)
