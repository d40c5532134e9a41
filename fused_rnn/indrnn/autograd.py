"""IndRNN's fused sequence as registered torch.library ops, with their autograd formula.

`fused_rnn::indrnn_forward` runs one direction of one layer: the input projection of all steps as one GEMM, then
the whole recurrence, as one Triton kernel (step_kernel="triton"), one compiled CUDA kernel ("cuda"), one compiled
C++ parallel region ("cpu") or a loop of in-place torch ops ("torch").
`fused_rnn::indrnn_backward` runs the reverse walk, which yields the pre-activation gradient of every
row and du, then dW, db and dx as single GEMMs/reductions. Fake implementations let torch.compile trace them with
no graph break. When the backward must itself be differentiable (create_graph=True), it recomputes through the
reference, so higher-order gradients are exact.
"""

import contextlib

import torch

from fused_rnn import eager
from fused_rnn.backends import native
from fused_rnn.indrnn import reference


def _recurrence(kernel: str):
    """The module with recurrence_forward/recurrence_backward for `kernel`, "triton", "cuda", "cpu" or "torch"."""
    if kernel == "torch":
        from fused_rnn.indrnn import torch_loop

        return torch_loop
    if kernel in ("cpu", "cuda"):  # the compiled ops, which dispatch on the tensors' device
        from fused_rnn.indrnn import compiled

        return compiled
    # Imported on first use so that importing fused_rnn never compiles or interprets Triton code.
    from fused_rnn.backends.triton import indrnn

    return indrnn


def _on_device_of(tensor: torch.Tensor):
    # Triton launches on the current CUDA device; make the tensors' device current.
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _run_forward(
    input: torch.Tensor,
    h0: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    batch_sizes: list[int] | None,
    reverse: bool,
    nonlinearity: str,
    step_kernel: str = "triton",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of one IndRNN layer, fused.

    Args:
        input: (N, I) time-major rows (fused_rnn.packing). h0: (B, H). weight_ih: (H, I). weight_hh: (H,).
        bias_ih: (H,) or None. All contiguous.
        batch_sizes: active rows per step for packed input, None for N = T * B padded rows.
        reverse: run from the last step to the first. nonlinearity: "relu" or "tanh".
        step_kernel: what runs the recurrence, "triton", "cuda", "cpu" or "torch" (not named `kernel`: inductor passed
            it by name, at its default value, to its FallbackKernel.create(kernel, ...), which then failed on packed
            input).

    Returns:
        output (N, H) and h_n (B, H).
    """
    with _on_device_of(input):
        projection = native.gemms(step_kernel == "cpu").product(input, weight_ih, bias_ih)
        return _recurrence(step_kernel).recurrence_forward(
            projection, weight_hh, h0, batch_sizes, reverse, nonlinearity == "relu"
        )


indrnn_forward = torch.library.custom_op("fused_rnn::indrnn_forward", mutates_args=())(_run_forward)


def forward(input, h0, weight_ih, weight_hh, bias_ih, batch_sizes, reverse, nonlinearity, kernel):
    """indrnn_forward's outputs, differentiable; in plain eager mode without the registered op's cost
    (fused_rnn.eager)."""
    arguments = (input, h0, weight_ih, weight_hh, bias_ih, batch_sizes, reverse, nonlinearity, kernel)
    leaves = (input, h0, weight_ih, weight_hh, bias_ih)
    differentiable = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in leaves)
    return _FORWARD(input, *arguments, differentiable=differentiable)


@indrnn_forward.register_fake
def _(input, h0, weight_ih, weight_hh, bias_ih, batch_sizes, reverse, nonlinearity, step_kernel="triton"):
    return input.new_empty(input.shape[0], h0.shape[1]), torch.empty_like(h0)


def _run_backward(
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    input: torch.Tensor,
    h0: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    output: torch.Tensor,
    batch_sizes: list[int] | None,
    reverse: bool,
    nonlinearity: str,
    needs_grad: list[bool],
    step_kernel: str = "triton",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of input, h0, weight_ih, weight_hh, bias_ih, each empty unless its needs_grad entry is set."""
    with _on_device_of(input):
        grad_pre, grad_h0, grad_u = _recurrence(step_kernel).recurrence_backward(
            grad_output, grad_h_n, output, h0, weight_hh, batch_sizes, reverse, nonlinearity == "relu"
        )
        need_input, need_h0, need_weight_ih, need_weight_hh, need_bias = needs_grad
        empty = lambda: input.new_empty(0)  # one per absent gradient: a custom op's outputs may not alias each other
        gemms = native.gemms(step_kernel == "cpu")
        return (
            gemms.product(grad_pre, weight_ih.t(), None) if need_input else empty(),
            grad_h0 if need_h0 else empty(),
            gemms.weight_gradient(grad_pre, input) if need_weight_ih else empty(),
            grad_u if need_weight_hh else empty(),
            grad_pre.sum(0) if need_bias else empty(),
        )


indrnn_backward = torch.library.custom_op("fused_rnn::indrnn_backward", mutates_args=())(_run_backward)


@indrnn_backward.register_fake
def _(
    grad_output,
    grad_h_n,
    input,
    h0,
    weight_ih,
    weight_hh,
    output,
    batch_sizes,
    reverse,
    nonlinearity,
    needs_grad,
    step_kernel="triton",
):
    shapes = [input.shape, h0.shape, weight_ih.shape, weight_hh.shape, weight_hh.shape]
    return tuple(input.new_empty(shape if needed else (0,)) for shape, needed in zip(shapes, needs_grad, strict=True))


def _setup_context(ctx, inputs, output):
    input, h0, weight_ih, weight_hh, bias_ih, batch_sizes, reverse, nonlinearity, kernel = inputs
    ctx.batch_sizes, ctx.reverse, ctx.nonlinearity, ctx.kernel = batch_sizes, reverse, nonlinearity, kernel
    ctx.save_for_backward(input, h0, weight_ih, weight_hh, bias_ih, output[0])


def _backward(ctx, grad_output, grad_h_n):
    input, h0, weight_ih, weight_hh, bias_ih, output = ctx.saved_tensors
    leaves = (input, h0, weight_ih, weight_hh, bias_ih)
    needs_grad = [leaf is not None and needed for leaf, needed in zip(leaves, ctx.needs_input_grad[:5], strict=True)]
    if torch.is_grad_enabled():
        grads = _differentiable_backward(ctx, leaves, needs_grad, grad_output, grad_h_n)
    else:
        found = _BACKWARD(
            grad_output,
            grad_output.contiguous(),
            grad_h_n.contiguous(),
            input,
            h0,
            weight_ih,
            weight_hh,
            output,
            ctx.batch_sizes,
            ctx.reverse,
            ctx.nonlinearity,
            needs_grad,
            ctx.kernel,
        )
        grads = [g if needed else None for g, needed in zip(found, needs_grad)]
    return (*grads, None, None, None, None)


def _differentiable_backward(ctx, leaves, needs_grad, grad_output, grad_h_n):
    """The backward as autograd-visible reference ops, so that it can itself be differentiated."""
    wanted = [i for i, needed in enumerate(needs_grad) if needed]
    with torch.enable_grad():
        output, h_n = reference.sequence(*leaves, ctx.batch_sizes, ctx.reverse, ctx.nonlinearity)
        found = torch.autograd.grad(
            [output, h_n], [leaves[i] for i in wanted], [grad_output, grad_h_n], create_graph=True, allow_unused=True
        )
    grads = [None] * len(leaves)
    for i, g in zip(wanted, found):
        grads[i] = g
    return grads


indrnn_forward.register_autograd(_backward, setup_context=_setup_context)
_FORWARD = eager.Op(indrnn_forward, _run_forward, _setup_context, _backward)
_BACKWARD = eager.Op(indrnn_backward, _run_backward)
