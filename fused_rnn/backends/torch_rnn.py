"""torch.nn's own recurrent kernels (oneDNN on CPU, cuDNN on GPU) behind fused_rnn's per-direction call.

On CPU these beat fused_rnn's step-by-step reference by 2-18x (measured, benchmarks/results/cpu.md), so
backend="auto" runs them there until a compiled fused_rnn path is measured faster. They are ATen ops with
their own autograd, double backward included on CPU, and torch.compile traces them.

ATen runs a direction forward in time only; the reverse direction of a bidirectional layer runs on the
time-reversed rows (each sequence reversed within its own length, which keeps a packed layout's
batch_sizes) and reverses its output back.

Under torch.compile and torch.export torch traces its own decomposition of these ops (torch/_decomp), not the
kernels; see _traced_lstm_input for the one case where that decomposition must be steered.
"""

import torch

from fused_rnn.packing import reversed_rows

_OPS = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}
_CELL_OPS = {"gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell, "rnn_relu": torch.rnn_relu_cell}


def sequence(cell, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse):
    """One direction of one layer; arguments and results as fused_rnn.reference.sequence."""
    weights = [w for w in (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) if w is not None]
    state = (h0.unsqueeze(0), c0.unsqueeze(0)) if c0 is not None else h0.unsqueeze(0)
    if reverse:
        input = _time_reversed(input, batch_sizes)
    # cuDNN refuses a backward through a forward run with train=False; there is no dropout in one layer.
    common = (weights, bias_ih is not None, 1, 0.0, torch.is_grad_enabled(), False)
    if batch_sizes is None:
        input = _traced_lstm_input(cell, input, state, weights)
        output, *final = _OPS[cell](input, state, *common, False)
    else:
        _refuse_traced_packed()
        sizes = torch.tensor(batch_sizes, dtype=torch.int64)
        output, *final = _OPS[cell](input, sizes, state, *common)
    if reverse:
        output = _time_reversed(output, batch_sizes)
    h_n, c_n = (final[0][0], final[1][0]) if c0 is not None else (final[0][0], None)
    return output, h_n, c_n


def layers(
    cell, input, h0, c0, weights, has_biases, num_layers, batch_sizes, dropout, train, bidirectional, batch_first
):
    """All layers and directions in one call, as torch.nn's layers make it.

    Args:
        input: (T, B, I), (B, T, I) when batch_first, or packed rows (N, I) with batch_sizes (a list, or a
            PackedSequence's own int64 CPU tensor).
        h0, c0: (layers * directions, B, ·); c0 None but for the LSTM.
        weights: every layer's and direction's weights in torch.nn's `_flat_weights` order (no None entries).
        train: run in training mode (dropout; cuDNN's backward needs it).

    Returns:
        (output, h_n, c_n or None) shaped as torch.nn's.
    """
    state = (h0, c0) if c0 is not None else h0
    common = (weights, has_biases, num_layers, dropout, train, bidirectional)
    if batch_sizes is None:
        input = _traced_lstm_input(cell, input, state, weights)
        output, *final = _OPS[cell](input, state, *common, batch_first)
    else:
        _refuse_traced_packed()
        sizes = batch_sizes if isinstance(batch_sizes, torch.Tensor) else torch.tensor(batch_sizes, dtype=torch.int64)
        output, *final = _OPS[cell](input, sizes, state, *common)
    return output, final[0], final[1] if c0 is not None else None


def step(cell, input, h, c, weight_ih, weight_hh, bias_ih, bias_hh):
    """One step of a cell on torch.nn's cell op (what torch.nn.LSTMCell/GRUCell/RNNCell run): input (B, I), h and
    c (B, ·) or None for zeros; returns (h', c' or None)."""
    if h is None:
        h = input.new_zeros(input.shape[0], weight_hh.shape[1])
    if cell != "lstm":
        return _CELL_OPS[cell](input, h, weight_ih, weight_hh, bias_ih, bias_hh), None
    if c is None:
        c = input.new_zeros(input.shape[0], weight_hh.shape[1])
    return torch.lstm_cell(input, (h, c), weight_ih, weight_hh, bias_ih, bias_hh)


def _traced_lstm_input(cell, input, state, weights):
    """The padded input of torch.lstm, made to require grad where torch's decomposition would otherwise mistrace it.

    torch's decomposition of torch.lstm (torch/_decomp/decompositions.py, select_one_layer_lstm_function; torch 2.14)
    takes oneDNN's inference op (mkldnn_rnn_layer with train=False, no workspace) for every layer whenever a CPU
    input does not require grad, even when the weights or the initial state do: the traced training graph then
    fails (aot_eager: "expected all tensors_saved_with_vc_check to be Tensors"; inductor: "expected Tensor() for op
    mkldnn_rnn_layer"). Adding a zero that carries the autograd history of a tensor that does require grad (an empty
    slice's sum: exactly 0, whatever the weights hold) sends it down its general path, which traces; the values are
    unchanged, and the only gradient it adds is the empty slice's. Eager calls run the kernels and are left alone.
    """
    if not (
        cell == "lstm"
        and torch.compiler.is_compiling()
        and input.device.type == "cpu"
        and torch.is_grad_enabled()
        and not input.requires_grad
    ):
        return input
    states = state if isinstance(state, tuple) else (state,)
    with_grad = next((t for t in (*states, *weights) if t.requires_grad), None)
    if with_grad is None:  # inference: the oneDNN op is right
        return input
    return input + with_grad.flatten()[:0].sum()


def _refuse_traced_packed():
    """ValueError while tracing: torch's decomposition of the packed RNN ops (torch/_decomp) splits the rows by the
    batch sizes' values, which are data there (fused_rnn.packing.checked_layout)."""
    if torch.compiler.is_compiling():
        raise ValueError(
            "backend='torch' cannot run packed input under torch.compile or torch.export: torch's decomposition of its "
            "packed RNN op needs the batch sizes' values, which are data there; use 'auto' or a fused backend"
        )


def _time_reversed(tensor, batch_sizes):
    """Each sequence of padded (T, B, *) or packed (N, *) rows reversed in time (its own inverse)."""
    if batch_sizes is None:
        return tensor.flip(0)
    return tensor.index_select(0, reversed_rows(tuple(batch_sizes), tensor.device))
