"""Fused LSTM, GRU and Elman RNN layers for PyTorch: drop-in replacements for torch.nn's.

Also LayerNorm LSTM/GRU, IndRNN, the xLSTM paper's sLSTM and LSTM/GRU with multi-head (block-diagonal) recurrent
weights, and the recurrent regularizers WeightDrop (DropConnect on W_hh) and LockedDropout.
"""

import torch

from fused_rnn import functional, reference
from fused_rnn.backends import available_backends
from fused_rnn.indrnn.modules import IndRNN, IndRNNCell
from fused_rnn.layernorm.modules import LayerNormGRU, LayerNormGRUCell, LayerNormLSTM, LayerNormLSTMCell
from fused_rnn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, from_torch, to_torch
from fused_rnn.multihead.modules import MultiHeadGRU, MultiHeadLSTM, sLSTM, sLSTMCell
from fused_rnn.regularizers import LockedDropout, WeightDrop

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "IndRNN",
    "IndRNNCell",
    "LayerNormGRU",
    "LayerNormGRUCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
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
    "sLSTMCell",
    "to_torch",
    "WeightDrop",
]
__version__ = "0.1.0"

# torch.load(weights_only=True) may rebuild every layer fused_rnn exports from a pickled model, as torch.nn's own.
torch.serialization.add_safe_globals(
    [obj for obj in map(globals().get, __all__) if isinstance(obj, type) and issubclass(obj, torch.nn.Module)]
)
