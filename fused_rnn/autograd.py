"""The fused sequence as registered torch.library ops, with their autograd formula.

`fused_rnn::sequence_forward` / `fused_rnn::sequence_backward` run one direction of one layer
through the fused driver. Registering them (with fake shape functions) lets torch.compile trace
models that use them with no graph break, and the same ops serve eager mode. The backward is the
hand-written BPTT; when the backward itself must be differentiable (create_graph=True, e.g. a
gradient penalty), it recomputes through fused_rnn.reference so higher-order gradients are exact.
"""

import contextlib

import torch

from fused_rnn import eager, reference


def _triton_sequence():
    # Imported on first use so that importing fused_rnn never compiles or interprets Triton code.
    from fused_rnn.backends.triton import sequence

    return sequence


def _driver(backend: str):
    """The sequence driver of `backend`: the Python one of the Triton kernels, or the C++ one of csrc/ ("cpu",
    "cuda"), or the persistent kernels' ("persistent"), which take the same arguments and return the same outputs,
    saved activations included."""
    if backend in ("cpu", "cuda"):
        from fused_rnn.backends import graphs, native

        return graphs.WholeCalls(native.ops()) if backend == "cuda" else native.ops()
    if backend == "persistent":
        from fused_rnn.backends import persistent

        return persistent
    return _triton_sequence()


def _on_device_of(tensor: torch.Tensor):
    # Triton launches on the current CUDA device and stream; for tensors on another GPU it would race
    # with the GEMMs there or fault, so make their device current.
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
    weight_hr: torch.Tensor | None,
    batch_sizes: list[int] | None,
    reverse: bool,
    save: bool,
    backend: str = "triton",
    zoneout: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one layer, fused.

    Args:
        cell: "lstm", "gru", "rnn_tanh" or "rnn_relu".
        input: (N, I) rows, time-major (fused_rnn.packing). All tensors contiguous.
        h0: (B, H_out). c0: (B, H) for the LSTM, else None.
        batch_sizes: active rows per step for packed input, None for N = T * B padded rows.
        reverse: run from the last step to the first.
        save: keep what the backward needs.
        backend: whose driver runs it, "triton", "cpu" / "cuda" (the compiled kernels of csrc/) or "persistent".
        zoneout: keep weights (N, H_out + H) for the LSTM, (N, H) for the GRU (see fused_rnn.reference.sequence),
            or None; every driver but the persistent kernels' takes them.

    Returns:
        output (N, H_out), h_n (B, H_out), c_n (B, H) or empty, then the saved activations and the
        LSTM projection's input (both empty unless save).
    """
    zoneout_argument = {} if zoneout is None else {"zoneout": zoneout}
    with _on_device_of(input):
        return _driver(backend).sequence_forward(
            cell,
            input,
            h0,
            c0,
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
            weight_hr,
            batch_sizes,
            reverse,
            save,
            **zoneout_argument,
        )


sequence_forward = torch.library.custom_op("fused_rnn::sequence_forward", mutates_args=())(_run_forward)


def forward(
    cell, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse, save, backend, zoneout
):
    """sequence_forward's outputs, differentiable when `save`; in plain eager mode without the registered op's cost
    (fused_rnn.eager)."""
    arguments = (cell, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse, save)
    return _FORWARD(input, *arguments, backend, zoneout, differentiable=save)


@sequence_forward.register_fake
def _(
    cell,
    input,
    h0,
    c0,
    weight_ih,
    weight_hh,
    bias_ih,
    bias_hh,
    weight_hr,
    batch_sizes,
    reverse,
    save,
    backend="triton",
    zoneout=None,
):
    return _triton_sequence().forward_outputs(cell, input, h0, c0, weight_hh, weight_hr, save)


def _run_backward(
    cell: str,
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor | None,
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    weight_hr: torch.Tensor | None,
    output: torch.Tensor,
    saved: torch.Tensor,
    projection_input: torch.Tensor,
    batch_sizes: list[int] | None,
    reverse: bool,
    needs_grad: list[bool],
    backend: str = "triton",
    zoneout: torch.Tensor | None = None,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    """Gradients of input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr; absent ones empty.

    grad_output: (N, H_out), or for backend "cpu" (1, H_out), the gradient of every row."""
    zoneout_argument = {} if zoneout is None else {"zoneout": zoneout}
    with _on_device_of(input):
        return _driver(backend).sequence_backward(
            cell,
            grad_output,
            grad_h_n,
            grad_c_n,
            input,
            h0,
            c0,
            weight_ih,
            weight_hh,
            weight_hr,
            output,
            saved,
            projection_input,
            batch_sizes,
            reverse,
            needs_grad,
            **zoneout_argument,
        )


sequence_backward = torch.library.custom_op("fused_rnn::sequence_backward", mutates_args=())(_run_backward)


@sequence_backward.register_fake
def _(
    cell,
    grad_output,
    grad_h_n,
    grad_c_n,
    input,
    h0,
    c0,
    weight_ih,
    weight_hh,
    weight_hr,
    output,
    saved,
    projection_input,
    batch_sizes,
    reverse,
    needs_grad,
    backend="triton",
    zoneout=None,
):
    return _triton_sequence().backward_outputs(input, h0, c0, weight_ih, weight_hh, weight_hr, needs_grad)


def _setup_context(ctx, inputs, output):
    (
        cell,
        input,
        h0,
        c0,
        weight_ih,
        weight_hh,
        bias_ih,
        bias_hh,
        weight_hr,
        batch_sizes,
        reverse,
        _,
        backend,
        zoneout,
    ) = inputs
    out, _, _, saved, projection_input = output
    ctx.cell, ctx.batch_sizes, ctx.reverse, ctx.backend = cell, batch_sizes, reverse, backend
    ctx.save_for_backward(
        input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, zoneout, out, saved, projection_input
    )
    ctx.mark_non_differentiable(saved, projection_input)
    # Otherwise autograd fills a zero gradient for `saved` ([N, 5H] for the LSTM) on every backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_saved, _grad_projection_input):
    *tensors, zoneout, output, saved, projection_input = ctx.saved_tensors
    input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = tensors
    needs_grad = ctx.needs_input_grad[1:9]
    grad_output = _zeros_if_none(grad_output, output)
    grad_h_n = _zeros_if_none(grad_h_n, h0)
    grad_c_n = _zeros_if_none(grad_c_n, c0)
    if torch.is_grad_enabled():
        grads = _differentiable_backward(ctx, tensors, zoneout, needs_grad, grad_output, grad_h_n, grad_c_n)
    else:
        if ctx.backend == "cpu" and grad_output.stride(0) == 0:
            # Every row's gradient is the same (an expanded one, e.g. output.sum()'s): the CPU loop reads one row for
            # all rather than an [N, H] copy.
            grad_output = grad_output[:1]
        grads = _BACKWARD(
            grad_output,
            ctx.cell,
            grad_output.contiguous(),
            grad_h_n.contiguous(),
            grad_c_n.contiguous() if c0 is not None else None,
            input,
            h0,
            c0,
            weight_ih,
            weight_hh,
            weight_hr,
            output,
            saved,
            projection_input,
            ctx.batch_sizes,
            ctx.reverse,
            [t is not None and needed for t, needed in zip(tensors, needs_grad, strict=True)],
            ctx.backend,
            zoneout,
        )
        grads = [g if t is not None and needed else None for g, t, needed in zip(grads, tensors, needs_grad)]
    return (None, *grads, None, None, None, None, None)


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return torch.zeros_like(like) if grad is None and like is not None else grad


def _differentiable_backward(ctx, tensors, zoneout, needs_grad, grad_output, grad_h_n, grad_c_n):
    """The backward as autograd-visible reference ops, so that it can itself be differentiated."""
    wanted = [i for i, (t, needed) in enumerate(zip(tensors, needs_grad)) if t is not None and needed]
    with torch.enable_grad():
        output, h_n, c_n = reference.sequence(ctx.cell, *tensors, ctx.batch_sizes, ctx.reverse, zoneout)
        outputs, grad_outputs = [output, h_n], [grad_output, grad_h_n]
        if c_n is not None:
            outputs.append(c_n)
            grad_outputs.append(grad_c_n)
        found = torch.autograd.grad(
            outputs, [tensors[i] for i in wanted], grad_outputs, create_graph=True, allow_unused=True
        )
    grads = [None] * len(tensors)
    for i, g in zip(wanted, found):
        grads[i] = g
    return grads


sequence_forward.register_autograd(_backward, setup_context=_setup_context)


_FORWARD = eager.Op(sequence_forward, _run_forward, _setup_context, _backward)
_BACKWARD = eager.Op(sequence_backward, _run_backward)
