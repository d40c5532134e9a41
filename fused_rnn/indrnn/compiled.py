"""IndRNN's recurrence as compiled kernels: the "cpu" and "cuda" backends of the fused op.

Same contract as fused_rnn.indrnn.torch_loop, so the custom op, its fake implementation and its autograd serve
every recurrence. The ops dispatch on the tensors' device. On CPU (csrc/cpu/indrnn.cpp, float32 and float64) the
whole sequence is one parallel region, each thread owning (row, block of units) lanes for every step: IndRNN's
units are independent, so no barrier is needed. On CUDA (csrc/cuda/indrnn.cu, also float16 and bfloat16) it is one
kernel, one thread per (row, unit) lane walking every step.
"""

from fused_rnn.backends import native


def recurrence_forward(projection, weight_hh, h0, batch_sizes, reverse, relu):
    """(output (N, H), h_n (B, H)) of h' = act(projection + u * h) over all rows; all inputs contiguous."""
    return native.ops().indrnn_recurrence_forward(projection, weight_hh, h0, batch_sizes, reverse, relu)


def recurrence_backward(grad_output, grad_h_n, output, h0, weight_hh, batch_sizes, reverse, relu):
    """(d pre-activation (N, H), d h0 (B, H), d u (H,)) of recurrence_forward; all inputs contiguous."""
    return native.ops().indrnn_recurrence_backward(
        grad_output, grad_h_n, output, h0, weight_hh, batch_sizes, reverse, relu
    )
