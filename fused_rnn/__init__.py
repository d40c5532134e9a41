"""Fused LSTM, GRU and Elman RNN layers for PyTorch: drop-in replacements for torch.nn's.

Also IndRNN, the xLSTM paper's sLSTM and LSTM/GRU with multi-head (block-diagonal) recurrent weights, and the
recurrent regularizers WeightDrop (DropConnect on W_hh) and LockedDropout.
"""

from fused_rnn import functional, reference
from fused_rnn.backends import available_backends
from fused_rnn.indrnn.modules import IndRNN, IndRNNCell
from fused_rnn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, from_torch, to_torch
from fused_rnn.multihead.modules import MultiHeadGRU, MultiHeadLSTM, sLSTM
from fused_rnn.regularizers import LockedDropout, WeightDrop

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "IndRNN",
    "IndRNNCell",
    "LockedDropout",
    "LSTMCell",
    "MultiHeadGRU",
    "MultiHeadLSTM",
    "RNNCell",
    "available_backends",
    "from_torch",
    "functional",
    "reference",
    "sLSTM",
    "to_torch",
    "WeightDrop",
]
__version__ = "0.1.0"
