"""The xLSTM paper's sLSTM, and torch.nn's LSTM and GRU cells, with FlashRNN's multi-head (block-diagonal) recurrent
weight, in fused_rnn's layers: reference -> Triton step kernels and driver -> custom op -> functional -> modules."""
