"""Random single-layer weights and inputs in torch.nn's layout, for the functional tests."""

import torch

from fused_rnn.cells import CELLS


def layer_weights(cell, input_size, hidden, *, bias=True, proj=0, dtype=torch.float64, device="cpu"):
    """(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) leaves requiring grad, scaled like torch.nn's init."""
    gates = CELLS[cell].gates * hidden
    hidden_out = proj or hidden
    scale = hidden**-0.5

    def param(*shape):
        return (
            ((torch.rand(shape, dtype=torch.float64) * 2 - 1) * scale).to(dtype=dtype, device=device).requires_grad_()
        )

    return (
        param(gates, input_size),
        param(gates, hidden_out),
        param(gates) if bias else None,
        param(gates) if bias else None,
        param(proj, hidden) if proj else None,
    )


def packed_batch_sizes(lengths: list[int]) -> list[int]:
    """PackedSequence.batch_sizes for sequences of these lengths (sorted longest first)."""
    lengths = sorted(lengths, reverse=True)
    return [sum(length > t for length in lengths) for t in range(lengths[0])]


def sequence_inputs(
    cell,
    steps,
    batch,
    input_size,
    hidden,
    *,
    proj=0,
    lengths=None,
    initial_state=True,
    dtype=torch.float64,
    device="cpu",
):
    """(input, h0, c0, batch_sizes): padded (T, B, I) input, or packed rows when lengths are given."""
    batch_sizes = packed_batch_sizes(lengths) if lengths else None
    rows = sum(batch_sizes) if batch_sizes else None
    shape = (rows, input_size) if batch_sizes else (steps, batch, input_size)
    make = lambda *s: torch.randn(s, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
    x = make(*shape)
    if not initial_state:
        return x, None, None, batch_sizes
    h0 = make(batch, proj or hidden)
    c0 = make(batch, hidden) if CELLS[cell].has_cell_state else None
    return x, h0, c0, batch_sizes
