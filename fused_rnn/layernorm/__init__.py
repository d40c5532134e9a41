"""LayerNorm LSTM and GRU (Ba et al. 2016, as haste defines them), in fused_rnn's layers: reference -> Triton
kernels -> custom op -> functional -> modules."""
