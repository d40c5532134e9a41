"""Fused LSTM, GRU and Elman RNN layers for PyTorch: drop-in replacements for torch.nn's."""

from fused_rnn import functional, reference
from fused_rnn.backends import available_backends

__all__ = ["available_backends", "functional", "reference"]
__version__ = "0.1.0"
