"""WeightDrop and LockedDropout: one mask shared by all steps, reproducible for a seed, identity in eval, and
gradients equal to those computed by hand with the same mask."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn import reference

from checks import TOLERANCE, assert_close, gradients

ATOL, RTOL = TOLERANCE[torch.float64]


def dropout_mask(shape, p, seed):
    """The mask F.dropout draws for `shape` after manual_seed(seed), scaled: what WeightDrop multiplies by."""
    torch.manual_seed(seed)
    return torch.nn.functional.dropout(torch.ones(shape, dtype=torch.float64), p, training=True)


@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_weight_drop_runs_every_step_with_one_masked_recurrent_matrix(backend):
    """Output and every gradient equal the reference run by hand with W_hh * mask (mask drawn with the same seed):
    a mask that changed between steps, or a gradient that skipped the mask, would differ."""
    lstm = fused_rnn.LSTM(3, 5, backend=backend).double()
    dropped = fused_rnn.WeightDrop(lstm, p=0.4)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(7)
    output, (h_n, c_n) = dropped(x)
    mask = dropout_mask(lstm.weight_hh_l0.shape, 0.4, seed=7)
    assert 0 < (mask == 0).sum() < mask.numel()

    effective = (lstm.weight_hh_l0 * mask).detach().requires_grad_()
    h0 = torch.zeros(2, 5, dtype=torch.float64)
    expected = reference.sequence("lstm", x, h0, h0, lstm.weight_ih_l0, effective, lstm.bias_ih_l0, lstm.bias_hh_l0)
    for name, e, o in zip(["output", "h_n", "c_n"], expected, (output, h_n[0], c_n[0])):
        assert_close(name, e, o, ATOL, RTOL)

    leaves = [x, lstm.weight_ih_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    ours = gradients([output, h_n[0], c_n[0]], [*leaves, lstm.weight_hh_l0])
    by_hand = gradients(expected, [*leaves, effective])
    by_hand[-1] = by_hand[-1] * mask  # d effective / d weight_hh is the mask, elementwise
    for name, e, o in zip(["x", "weight_ih", "bias_ih", "bias_hh", "weight_hh"], by_hand, ours):
        assert_close(f"grad {name}", e, o, ATOL, RTOL)


def test_weight_drop_masks_are_reproducible_fresh_per_call_and_absent_in_eval():
    layer = fused_rnn.GRU(2, 4, num_layers=2, bidirectional=True, backend="reference").double()
    dropped = fused_rnn.WeightDrop(layer, p=0.5)
    assert dropped.weights == ("weight_hh_l0", "weight_hh_l0_reverse", "weight_hh_l1", "weight_hh_l1_reverse")
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    torch.manual_seed(1)
    first = dropped(x)[0]
    torch.manual_seed(1)
    assert torch.equal(first, dropped(x)[0])
    assert not torch.equal(first, dropped(x)[0]), "a second call must draw new masks"
    dropped.eval()
    assert torch.equal(dropped(x)[0], layer(x)[0])
    assert set(dropped.state_dict()) == {f"module.{name}" for name in layer.state_dict()}


def test_weight_drop_on_indrnn_drops_the_recurrent_vector():
    layer = fused_rnn.IndRNN(2, 6, backend="torch").double()
    dropped = fused_rnn.WeightDrop(layer, p=0.5)
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    torch.manual_seed(3)
    output, _ = dropped(x)
    mask = dropout_mask(layer.weight_hh_l0.shape, 0.5, seed=3)
    expected, _ = fused_rnn.indrnn.reference.sequence(
        x, torch.zeros(2, 6, dtype=torch.float64), layer.weight_ih_l0, layer.weight_hh_l0 * mask, layer.bias_ih_l0
    )
    assert_close("output", expected, output, ATOL, RTOL)


def test_weight_drop_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p must be a number in \\[0, 1\\)"):
        fused_rnn.WeightDrop(fused_rnn.LSTM(2, 3), p=1.0)
    with pytest.raises(ValueError, match="not parameters of LSTM"):
        fused_rnn.WeightDrop(fused_rnn.LSTM(2, 3), p=0.5, weights=["weight_hh_l7"])
    with pytest.raises(ValueError, match="no parameter named weight_hh"):
        fused_rnn.WeightDrop(torch.nn.Linear(2, 3), p=0.5)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        fused_rnn.WeightDrop("lstm", p=0.5)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_locked_dropout_shares_one_mask_per_sequence_across_steps(batch_first):
    locked = fused_rnn.LockedDropout(p=0.5, batch_first=batch_first)
    x = torch.randn(3, 7, 10, dtype=torch.float64, requires_grad=True)  # (T, B, F) or (B, T, F)
    torch.manual_seed(4)
    y = locked(x)
    torch.manual_seed(4)
    mask = torch.empty(7 if not batch_first else 3, 10, dtype=torch.float64).bernoulli_(0.5) / 0.5
    expected_mask = mask.unsqueeze(0) if not batch_first else mask.unsqueeze(1)
    assert 0 < (mask == 0).sum() < mask.numel()
    assert_close("output", x * expected_mask, y, 0, 0)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert_close("grad", expected_mask.expand_as(x), grad, 0, 0)
    locked.eval()
    assert locked(x) is x


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_locked_dropout_keeps_a_feature_with_probability_one_minus_p_scaled_by_its_inverse(p):
    """Away from p = 0.5, where keeping with p or 1 - p looks alike: the kept fraction is within 5 sigma of 1 - p, and
    a kept feature is scaled by 1 / (1 - p)."""
    x = torch.rand(2, 400, 50, dtype=torch.float64) + 1
    y = fused_rnn.LockedDropout(p=p)(x)
    kept = y[0] != 0
    fraction = kept.double().mean().item()
    assert abs(fraction - (1 - p)) < 5 * (p * (1 - p) / kept.numel()) ** 0.5, fraction
    assert_close("kept features", x[:, kept] / (1 - p), y[:, kept], 0, 1e-15)


def test_locked_dropout_gives_packed_sequences_the_mask_of_the_padded_batch():
    """Per sequence, the same mask whether the batch arrives padded or packed (sorted by length)."""
    lengths = torch.tensor([2, 5, 3])
    padded = torch.randn(5, 3, 8, dtype=torch.float64)
    locked = fused_rnn.LockedDropout(p=0.3)
    torch.manual_seed(9)
    from_padded = locked(padded)
    torch.manual_seed(9)
    from_packed, _ = pad_packed_sequence(locked(pack_padded_sequence(padded, lengths, enforce_sorted=False)))
    for b, length in enumerate(lengths):
        assert_close(f"sequence {b}", from_padded[:length, b], from_packed[:length, b], 0, 0)


def test_locked_dropout_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p must be a number in \\[0, 1\\)"):
        fused_rnn.LockedDropout(p=-0.1)
    with pytest.raises(ValueError, match="input must be 3-D"):
        fused_rnn.LockedDropout(p=0.5)(torch.zeros(4, 3))
