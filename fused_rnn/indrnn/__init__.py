"""IndRNN (Li et al. 2018), in fused_rnn's layers: reference -> Triton kernel -> custom op -> functional -> modules."""
