"""LayerNorm LSTM/GRU's fused driver for one direction of one layer: the input projection and its normalization once,
the step loop, and the weight, bias, gain and input gradients as single GEMMs/reductions after it.

The step loop (per step `h W_hh^T` as one GEMM and the rows' pointwise work as one kernel, forward and backward)
runs as Triton kernels (kernel="triton", fused_rnn.backends.triton.layernorm) or as one call of the compiled op
(kernel="native", csrc/cpu/layernorm.cpp: CPU threads with SIMD rows on CPU tensors, a CUDA block per row on CUDA
tensors), with the same contract and the same saved tensors. Math and carried state are in ACC: fp32 for
fp16/bf16/fp32 storage, fp64 for fp64.
"""

import torch

from fused_rnn.backends import native
from fused_rnn.layernorm.reference import EPS, GATES
from fused_rnn.packing import previous_hidden

KERNELS = ("triton", "native")


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 math for fp32/fp16/bf16 storage; float64 stays float64 so gradcheck can test the kernels."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _recurrence(kernel: str):
    """(forward, backward) step loops of `kernel`; the Triton module is imported on first use, so importing fused_rnn
    never compiles or interprets Triton code."""
    if kernel == "native":
        ops = native.ops()
        return ops.layernorm_recurrence_forward, ops.layernorm_recurrence_backward
    from fused_rnn.backends.triton import layernorm

    return layernorm.recurrence_forward, layernorm.recurrence_backward


def saved_step_outputs(cell, input_normalized, hidden, save):
    """Empty (activations, hidden_normalized, cell, rstd) as the step loop returns them: no rows unless save."""
    rows, gates = (input_normalized.shape[0] if save else 0), GATES[cell]
    lstm = cell == "lstm"
    return (
        input_normalized.new_empty(rows, 4 * hidden),
        input_normalized.new_empty(rows, gates * hidden),
        input_normalized.new_empty(rows, (2 if lstm else 1) * hidden),
        input_normalized.new_empty(rows, 2 if lstm else 1),
    )


def saved_outputs(cell: str, input: torch.Tensor, hidden: int, save: bool) -> tuple[torch.Tensor, ...]:
    """Empty (input_gates, input_mean, input_rstd, activations, hidden_normalized, cell, rstd) as sequence_forward
    returns them: per row, in ACC; no rows unless save."""
    rows, acc = (input.shape[0] if save else 0), accumulate_dtype(input.dtype)
    input_part = input.new_empty(rows, GATES[cell] * hidden, dtype=acc)
    statistics = (input.new_empty(rows, 1, dtype=acc), input.new_empty(rows, 1, dtype=acc))
    return (input_part, *statistics, *saved_step_outputs(cell, input_part, hidden, save))


def _gemms(kernel, tensor):
    return native.gemms(kernel == "native" and tensor.device.type == "cpu")


def normalized_input(input, weight_ih, bias_ih, norm_ih_weight, kernel):
    """(LN(x W_ih^T) * gain + bias, x W_ih^T, mean, rstd) for all rows at once, in ACC: one GEMM, one layer_norm."""
    acc = accumulate_dtype(input.dtype)
    input_gates = _gemms(kernel, input).product(input, weight_ih, None).to(acc)
    bias = bias_ih.to(acc) if bias_ih is not None else None
    normed, mean, rstd = torch.ops.aten.native_layer_norm(
        input_gates, [input_gates.shape[1]], norm_ih_weight.to(acc), bias, EPS
    )
    return normed, input_gates, mean.reshape(-1, 1), rstd.reshape(-1, 1)


def sequence_forward(
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
    kernel,
):
    """One direction of one layer; see fused_rnn.layernorm.autograd for the arguments and outputs."""
    input_normalized, input_gates, input_mean, input_rstd = normalized_input(
        input, weight_ih, bias_ih, norm_ih_weight, kernel
    )
    output, h_n, c_n, *step_saved = _recurrence(kernel)[0](
        cell,
        input_normalized,
        weight_hh,
        norm_hh_weight,
        bias_hh,
        norm_c_weight,
        norm_c_bias,
        h0,
        c0,
        batch_sizes,
        reverse,
        save,
    )
    if save:
        return (output, h_n, c_n, input_gates, input_mean, input_rstd, *step_saved)
    return (output, h_n, c_n, *saved_outputs(cell, input, h0.shape[1], False))


def sequence_backward(
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
    kernel,
):
    """Backpropagation through time for one direction of one layer.

    needs_grad says which of (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, norm_ih_weight, norm_hh_weight,
    norm_c_weight, norm_c_bias) want a gradient (never those the cell lacks: the GRU's c0 and cell norm, the LSTM's
    bias_hh; bias_ih is the LSTM's one bias); the others come back empty and their GEMMs are skipped.
    """
    input_gates, input_mean, input_rstd, activations, hidden_normed, cell_saved, rstd = saved
    hidden = h0.shape[1]
    grad_gates, grad_hidden_gates, grad_cell_side, grad_h0, grad_c0 = _recurrence(kernel)[1](
        cell,
        grad_output,
        grad_h_n,
        grad_c_n,
        weight_hh,
        norm_hh_weight,
        norm_c_weight,
        norm_c_bias,
        activations,
        hidden_normed,
        cell_saved,
        rstd,
        batch_sizes,
        reverse,
    )
    # After the loop: the input normalization's backward over all rows at once, then GEMMs and column sums.
    width = weight_hh.shape[0]
    need_input_gates = any(needs_grad[i] for i in (0, 3, 5, 7))
    grad_input_gates, grad_norm_ih, _ = torch.ops.aten.native_layer_norm_backward(
        grad_gates,
        input_gates,
        [width],
        input_mean,
        input_rstd,
        norm_ih_weight.to(grad_gates.dtype),
        None,
        [need_input_gates, needs_grad[7], False],
    )
    if need_input_gates:
        grad_input_gates = grad_input_gates.to(input.dtype)
    # The LSTM's gate pre-activation is also the gradient of LN(h W_hh^T) * gain_hh; the GRU's differs in its n-part.
    recurrent = grad_gates if cell == "lstm" else grad_cell_side
    gemms = _gemms(kernel, input)
    compute = (  # in needs_grad's order
        lambda: gemms.product(grad_input_gates, weight_ih.t(), None),
        lambda: grad_h0,
        lambda: grad_c0,
        lambda: gemms.weight_gradient(grad_input_gates, input),
        lambda: gemms.weight_gradient(grad_hidden_gates, previous_hidden(output, h0, batch_sizes, reverse)),
        lambda: grad_gates.sum(0),
        lambda: recurrent.sum(0),
        lambda: grad_norm_ih,
        lambda: (recurrent * hidden_normed).sum(0),
        lambda: (grad_cell_side * cell_saved[:, hidden:]).sum(0),
        lambda: grad_cell_side.sum(0),
    )
    # One tensor per absent gradient: a custom op's outputs may not alias each other.
    return tuple(
        gradient().to(input.dtype) if needed else input.new_empty(0)
        for gradient, needed in zip(compute, needs_grad, strict=True)
    )
