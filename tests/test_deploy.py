"""Converting, saving, loading and deploying models that contain fused_rnn layers."""

import pytest
import torch
from torch import nn

import fused_rnn


class SharedRecurrence(nn.Module):
    """One GRU reached through two attributes and twice through a ModuleList, one LSTMCell, and two
    distinct LSTMs whose recurrent weight is one tied Parameter, and a bias the model itself holds too."""

    def __init__(self, gru: type, lstm: type, lstm_cell: type):
        super().__init__()
        self.encoder = gru(4, 4)
        self.decoder = self.encoder
        self.stack = nn.ModuleList([self.encoder, self.encoder])
        self.cell = lstm_cell(4, 4)
        self.first = lstm(4, 5)
        self.second = lstm(5, 5)
        self.second.weight_hh_l0 = self.first.weight_hh_l0
        self.first_bias = self.first.bias_hh_l0
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        for gru in (self.encoder, self.decoder, *self.stack):
            x = gru(x)[0]
        h, _ = self.cell(x[-1])
        return self.head(self.second(self.first(x)[0])[0]).sum() + h.sum() + self.first_bias.sum()


def distinct_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_sharing_kept(model: SharedRecurrence, gru: type, lstm: type):
    assert type(model.encoder) is gru and type(model.first) is lstm and type(model.second) is lstm
    assert model.decoder is model.encoder and model.stack[0] is model.encoder and model.stack[1] is model.encoder
    assert model.second.weight_hh_l0 is model.first.weight_hh_l0
    assert model.second._flat_weights[1] is model.first.weight_hh_l0  # what forward reads
    assert model.first_bias is model.first.bias_hh_l0


@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
def test_conversion_keeps_shared_modules_and_tied_parameters(direction):
    torch_classes = (nn.GRU, nn.LSTM, nn.LSTMCell)
    fused_classes = (fused_rnn.GRU, fused_rnn.LSTM, fused_rnn.LSTMCell)
    source, target = (torch_classes, fused_classes) if direction == "from_torch" else (fused_classes, torch_classes)
    model = SharedRecurrence(*source)
    original = [p.detach().clone() for p in model.parameters()]
    original_count = distinct_parameter_count(model)
    x = torch.randn(6, 2, 4)
    expected = model(x)

    converted = getattr(fused_rnn, direction)(model)

    assert converted is model
    assert distinct_parameter_count(converted) == original_count
    assert_sharing_kept(converted, target[0], target[1])
    assert type(converted.cell) is target[2]
    for i, (before, after) in enumerate(zip(original, converted.parameters(), strict=True)):
        assert torch.equal(before, after), f"parameter {i} changed"
    torch.testing.assert_close(converted(x), expected)
