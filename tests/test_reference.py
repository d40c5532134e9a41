"""The oracle itself: fused_rnn.reference against torch.nn's own single-layer kernels."""

import pytest
import torch
from torch import nn

from fused_rnn import reference

from checks import TOLERANCE, assert_close, gradients
from layers import packed_batch_sizes

TORCH_LAYER = {
    "lstm": lambda i, h: nn.LSTM(i, h),
    "gru": lambda i, h: nn.GRU(i, h),
    "rnn_tanh": lambda i, h: nn.RNN(i, h, nonlinearity="tanh"),
    "rnn_relu": lambda i, h: nn.RNN(i, h, nonlinearity="relu"),
}
CELLS = list(TORCH_LAYER)


def torch_layer_and_weights(cell, input_size, hidden):
    layer = TORCH_LAYER[cell](input_size, hidden).double()
    return layer, [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0, None]


@pytest.mark.parametrize("steps, batch, input_size, hidden", [(1, 1, 1, 1), (5, 3, 4, 7), (3, 2, 6, 33)])
@pytest.mark.parametrize("cell", CELLS)
def test_sequence_matches_torch_nn(cell, steps, batch, input_size, hidden):
    layer, weights = torch_layer_and_weights(cell, input_size, hidden)
    x = torch.randn(steps, batch, input_size, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True) if cell == "lstm" else None
    hx = (h0[None], c0[None]) if cell == "lstm" else h0[None]
    expected_output, expected_state = layer(x, hx)
    expected = (
        (expected_output, *(s[0] for s in expected_state))
        if cell == "lstm"
        else (expected_output, expected_state[0], None)
    )
    ours = reference.sequence(cell, x, h0, c0, *weights, None, False)
    leaves = [x, h0, c0, *weights[:4]]
    atol, rtol = TOLERANCE[torch.float64]
    for name, e, o in zip(["output", "h_n", "c_n"], expected, ours):
        assert_close(name, e, o, atol, rtol)
    for name, e, o in zip(
        ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"], gradients(expected, leaves), gradients(ours, leaves)
    ):
        assert_close(f"grad {name}", e, o, atol, rtol)


@pytest.mark.parametrize("cell", CELLS)
def test_reverse_packed_matches_torch_nn_bidirectional(cell):
    """reverse=True over packed rows is the backward direction of torch.nn's bidirectional layer."""
    torch_layer = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell, nn.RNN)
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    layer = torch_layer(3, 5, bidirectional=True, **extra).double()
    lengths = [4, 3, 1]
    padded = torch.randn(4, 3, 3, dtype=torch.float64)
    packed = nn.utils.rnn.pack_padded_sequence(padded, lengths)
    expected_output, expected_state = layer(packed)
    h_n = expected_state[0] if cell == "lstm" else expected_state
    batch_sizes = packed_batch_sizes(lengths)
    weights = [getattr(layer, f"{n}_l0_reverse") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    zeros = torch.zeros(3, 5, dtype=torch.float64)
    output, ours_h_n, _ = reference.sequence(
        cell, packed.data, zeros, zeros if cell == "lstm" else None, *weights, None, batch_sizes, True
    )
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", expected_output.data[:, 5:], output, atol, rtol)
    assert_close("h_n", h_n[1], ours_h_n, atol, rtol)


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward(cell):
    """The reference supports higher-order gradients (it is what create_graph=True recomputes through)."""
    layer, weights = torch_layer_and_weights(cell, 2, 3)
    weights = [w.detach().clone().requires_grad_() if w is not None else None for w in weights]
    if cell == "rnn_relu":  # away from relu's kink, where finite differences are wrong
        with torch.no_grad():
            weights[2].add_(2.0)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True) if cell == "lstm" else None

    def run(*leaves):
        return tuple(o for o in reference.sequence(cell, *leaves, None, False) if o is not None)

    assert torch.autograd.gradgradcheck(run, [x, h0, c0, *weights], fast_mode=True)
