"""Fused LSTM, GRU and Elman RNN layers for PyTorch: drop-in replacements for torch.nn's."""

from fused_rnn import functional, reference
from fused_rnn.backends import available_backends
from fused_rnn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, from_torch, to_torch

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "available_backends",
    "from_torch",
    "functional",
    "reference",
    "to_torch",
]
__version__ = "0.1.0"
