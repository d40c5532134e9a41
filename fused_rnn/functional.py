"""Functional recurrent layers: one direction of one layer, on the backend of your choice.

Each function takes the weights in torch.nn's layout (gate blocks stacked along dim 0 in torch.nn's
order) and returns what torch.nn's layer would for a single layer and direction.
"""

from collections.abc import Sequence

import torch

from fused_rnn import autograd, reference
from fused_rnn.backends import Workload, resolve, torch_rnn
from fused_rnn.cells import CELLS
from fused_rnn.packing import checked_layout

Tensor = torch.Tensor


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
    *,
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
    zoneout: float | tuple[float, float] = 0.0,
    training: bool = True,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """LSTM over a sequence (gates i, f, g, o).

    Args:
        input: (T, B, I), or packed rows (N, I) with batch_sizes (PackedSequence.data).
        hx: (h0, c0), shapes (B, H_out) and (B, H); zeros when None.
        weight_ih: (4H, I). weight_hh: (4H, H_out). bias_ih, bias_hh: (4H,) or None.
        weight_hr: (P, H) projection of h (proj_size = P = H_out), or None (H_out = H).
        batch_sizes: active batch per time step of packed input (PackedSequence.batch_sizes).
        reverse: run from the last time step to the first (the backward direction of a
            bidirectional layer).
        backend: "auto", "triton", "cuda", "persistent", "cpu", "torch" or "reference" (see
            fused_rnn.available_backends()).
        zoneout: probability that a unit keeps its previous value at a step (Krueger et al. 2016), for h and c
            alike, or (p_hidden, p_cell); in [0, 1). With weight_hr, h is zoned after the projection (P units). Runs on
            "triton", "reference" and "auto".
        training: zoneout draws Bernoulli masks (True) or uses their expectation (False), as F.dropout's.

    Returns:
        output (T, B, H_out) or (N, H_out), and (h_n, c_n) as in hx.
    """
    h0, c0 = (None, None) if hx is None else _pair(hx)
    output, h_n, c_n = sequence(
        "lstm",
        input,
        h0,
        c0,
        weight_ih,
        weight_hh,
        bias_ih,
        bias_hh,
        weight_hr,
        batch_sizes,
        reverse,
        backend,
        zoneout,
        training,
    )
    return output, (h_n, c_n)


def gru(
    input: Tensor,
    hx: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
    zoneout: float = 0.0,
    training: bool = True,
) -> tuple[Tensor, Tensor]:
    """GRU over a sequence (gates r, z, n); arguments as for lstm, with weights (3H, ·), hx = h0 (B, H) and one
    zoneout probability (for h)."""
    output, h_n, _ = sequence(
        "gru",
        input,
        hx,
        None,
        weight_ih,
        weight_hh,
        bias_ih,
        bias_hh,
        None,
        batch_sizes,
        reverse,
        backend,
        zoneout,
        training,
    )
    return output, h_n


def rnn(
    input: Tensor,
    hx: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Elman RNN over a sequence, h' = tanh|relu(x W_ih^T + b_ih + h W_hh^T + b_hh); arguments as for gru."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    output, h_n, _ = sequence(
        f"rnn_{nonlinearity}",
        input,
        hx,
        None,
        weight_ih,
        weight_hh,
        bias_ih,
        bias_hh,
        None,
        batch_sizes,
        reverse,
        backend,
    )
    return output, h_n


def lstm_cell(
    input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, backend="auto", zoneout=0.0, training=True
):
    """One LSTM step: input (B, I), hx = (h, c) each (B, H) or None; returns (h', c'), zoned as in lstm. On "torch"
    (what "auto" picks on CPU) torch's own torch.lstm_cell, as torch.nn.LSTMCell runs it."""
    h, c = (None, None) if hx is None else _pair(hx)
    weights = (weight_ih, weight_hh, bias_ih, bias_hh)
    stepped = _step_on_torch_nn("lstm", input, h, c, weights, backend, zoneout)
    if stepped is not None:
        return stepped
    _, (h, c) = lstm(input.unsqueeze(0), hx, *weights, backend=backend, zoneout=zoneout, training=training)
    return h, c


def gru_cell(
    input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, backend="auto", zoneout=0.0, training=True
):
    """One GRU step: input (B, I), hx (B, H) or None; returns h', zoned as in gru. On "torch" (what "auto" picks on
    CPU) torch's own torch.gru_cell."""
    weights = (weight_ih, weight_hh, bias_ih, bias_hh)
    stepped = _step_on_torch_nn("gru", input, hx, None, weights, backend, zoneout)
    if stepped is not None:
        return stepped[0]
    return gru(input.unsqueeze(0), hx, *weights, backend=backend, zoneout=zoneout, training=training)[1]


def rnn_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, nonlinearity="tanh", backend="auto"):
    """One Elman RNN step: input (B, I), hx (B, H) or None; returns h'. On "torch" (what "auto" picks on CPU) torch's
    own torch.rnn_tanh_cell / rnn_relu_cell."""
    weights = (weight_ih, weight_hh, bias_ih, bias_hh)
    if nonlinearity in ("tanh", "relu"):
        stepped = _step_on_torch_nn(f"rnn_{nonlinearity}", input, hx, None, weights, backend, 0.0)
        if stepped is not None:
            return stepped[0]
    return rnn(input.unsqueeze(0), hx, *weights, nonlinearity=nonlinearity, backend=backend)[1]


def _step_on_torch_nn(cell, input, h, c, weights, backend, zoneout):
    """step_on_torch_nn for a functional cell whose input and states need no named error (checked here; the weights
    are checked there); None otherwise, and the caller's sequence of one step names what is wrong."""
    weight_hh = weights[1]
    if not (
        isinstance(input, Tensor)
        and input.dim() == 2
        and input.is_floating_point()
        and isinstance(weight_hh, Tensor)
        and weight_hh.dim() == 2
    ):
        return None
    if not states_fit([s for s in (h, c) if s is not None], input, weight_hh.shape[1]):
        return None
    return step_on_torch_nn(cell, input, h, c, weights, backend, zoneout)


def states_fit(states, input, hidden) -> bool:
    """Whether every state is a plain (B, hidden) tensor of the (B, ·) input's dtype and device: what checked_state
    accepts, asked without raising, for the routes that skip the general path (which names what does not fit)."""
    shape = (input.shape[0], hidden)
    dtype, device = input.dtype, input.device
    for state in states:
        if type(state) is not Tensor or state.shape != shape or state.dtype != dtype or state.device != device:
            return False
    return True


def _pair(hx):
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx must be a tuple (h0, c0) for an LSTM, got {type(hx).__name__}")
    return hx


def sequence(
    cell,
    input,
    h0,
    c0,
    weight_ih,
    weight_hh,
    bias_ih,
    bias_hh,
    weight_hr,
    batch_sizes,
    reverse,
    backend,
    zoneout=0.0,
    training=True,
):
    """Any cell ("lstm", "gru", "rnn_tanh", "rnn_relu") over a sequence: (output, h_n, c_n or None).

    The entry point the modules use; arguments as for lstm, with h0/c0 given apart (None for zeros). With zoneout
    (LSTM and GRU only) the masks are drawn here, by zoneout_keep, once for all steps.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    spec = CELLS[cell]
    probabilities = checked_zoneout(zoneout, cell)
    batch_sizes = checked_layout(input, batch_sizes)
    _check_weights(spec, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    hidden = weight_hh.shape[0] // spec.gates
    hidden_out = weight_hr.shape[0] if weight_hr is not None else hidden
    batch = batch_sizes[0] if batch_sizes is not None else input.shape[1]
    h0 = checked_state("h0" if spec.has_cell_state else "hx", h0, input, (batch, hidden_out))
    c0 = checked_state("c0", c0, input, (batch, hidden)) if spec.has_cell_state else None
    tensors = (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    num_rows = input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]
    widths = (hidden_out, hidden) if spec.has_cell_state else (hidden,)
    keep = zoneout_keep(probabilities, widths, num_rows, training, input)
    needs_backward = _needs_backward(tensors)
    chosen = _chosen(backend, cell, input, batch, batch_sizes, hidden, weight_hr, needs_backward, keep is not None)
    if chosen == "reference":
        return reference.sequence(cell, *tensors, batch_sizes, reverse, keep)
    if chosen == "torch":
        return torch_rnn.sequence(cell, *tensors, batch_sizes, reverse)

    rows = input.reshape(-1, input.shape[-1])
    tensors = [t.contiguous() if t is not None else None for t in (rows, *tensors[1:])]
    output, h_n, c_n, _, _ = autograd.forward(cell, *tensors, batch_sizes, reverse, needs_backward, chosen, keep)
    return output.reshape(*input.shape[:-1], hidden_out), h_n, c_n if spec.has_cell_state else None


def layers_on_torch_nn(
    cell, input, h0, c0, weights, batch_sizes, backend, zoneout, training, dropout, bidirectional, verdicts=None
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """Every layer and direction in ONE call of torch.nn's own op, as torch.nn's layers make it, when `backend`
    resolves to "torch" for this workload (what "auto" does on CPU where torch.nn's kernels are the faster); None
    when it does not, and the caller runs each layer and direction through `sequence`.

    One call instead of one per layer and direction saves fused_rnn's per-call overhead and lets oneDNN run a
    bidirectional multi-layer stack as one primitive; dropout between layers is then torch.nn's own, mask for mask.

    Args:
        input: (T, B, I) or packed rows (N, I) with batch_sizes. h0, c0: (layers * directions, B, ·).
        weights: per layer and direction (layer-major) the tuple (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr),
            entries None where absent.
        training: the module's mode (dropout between layers).
        verdicts: a dict the caller keeps between calls (a module's own), in which the backend choice and the weight
            checks are remembered per device, dtype, shape, backward and the weights' storage: a module's weights
            keep their storage between calls, and new storage (`.to()`, `.data =`) is checked again. Saves about
            3 us of a 90 us call.

    Returns:
        (output, h_n, c_n or None) shaped as torch.nn's, or None.
    """
    spec = CELLS[cell]
    # zoneout=0 (the default) skips the check: nothing else is falsy and valid.
    if backend not in ("auto", "torch") or (zoneout and any(checked_zoneout(zoneout, cell))):
        return None
    batch_sizes = checked_layout(input, batch_sizes)
    batch = batch_sizes[0] if batch_sizes is not None else input.shape[1]
    # Without grad mode (inference) nothing needs a backward: the weights need not be gathered to say so.
    flat = [w for layer in weights for w in layer if w is not None]
    grads = torch.is_grad_enabled() and _needs_backward((input, h0, c0, *flat))
    key = _verdict_key(backend, input, batch, batch_sizes is None, grads, flat) if verdicts is not None else None
    decide = lambda: _on_torch_nn(spec, backend, input, batch, batch_sizes, grads, weights, bidirectional)
    if not _verdict(verdicts, key, decide):
        return None
    num_layers = len(weights) // (2 if bidirectional else 1)
    has_biases = weights[0][2] is not None
    return torch_rnn.layers(
        cell,
        input,
        h0,
        c0,
        flat,
        has_biases,
        num_layers,
        batch_sizes,
        dropout if training else 0.0,
        training or grads,
        bidirectional,
        batch_first=False,
    )


def remembered_on_torch_nn(verdicts, backend, input, batch, padded, grads, weights) -> bool:
    """Whether `verdicts` (a module's, as given to layers_on_torch_nn or step_on_torch_nn) say that a call with this
    input (padded, or packed rows) and these weights (in torch.nn's `_flat_weights` order, or a cell's weight_ih,
    weight_hh and biases) runs on torch.nn's op, its weights checked: False when they do not know. Not for traced
    calls. `input` may be batch-first: only its device, dtype and feature size count."""
    key = _verdict_key(backend, input, batch, padded, grads, weights)
    return key is not None and verdicts.get(key) is True


_MAX_VERDICTS = 16


def _verdict(verdicts, key, decide) -> bool:
    """verdicts[key], or decide()'s answer, remembered under key unless key is None (then nothing is remembered)."""
    verdict = verdicts.get(key) if key is not None else None
    if verdict is None:
        verdict = decide()
        if key is not None:
            if len(verdicts) >= _MAX_VERDICTS:  # a batch size per entry: bounded for ragged inference
                verdicts.clear()
            verdicts[key] = verdict
    return verdict


def _verdict_key(backend, input, batch, padded, grads, weights) -> tuple | None:
    """What a torch.nn-route verdict depends on, or None where it cannot be remembered: while tracing, or where the
    weights' storage cannot be read."""
    if torch.compiler.is_compiling():
        return None
    try:
        storage = tuple([w.data_ptr() for w in weights])
    except RuntimeError:  # fake or other storage-less tensors
        return None
    return (
        backend,
        input.device,
        input.dtype,
        input.shape[-1],
        batch,
        padded,
        grads,
        torch.are_deterministic_algorithms_enabled(),
        storage,
    )


def _on_torch_nn(spec, backend, input, batch, batch_sizes, grads, weights, bidirectional) -> bool:
    """Whether `backend` runs this call on torch.nn's op; the weights checked against the input where it does."""
    weight_hh, weight_hr = weights[0][1], weights[0][4]
    hidden = weight_hh.shape[0] // spec.gates if weight_hh is not None else 0
    if _chosen(backend, spec.name, input, batch, batch_sizes, hidden, weight_hr, grads, False) != "torch":
        return False
    features = input.shape[-1]  # what the next layer's weights must fit
    for index, layer_weights in enumerate(weights):
        _check_weights(spec, input, *layer_weights, input_size=features)
        if index % (2 if bidirectional else 1) == (1 if bidirectional else 0):
            features = (2 if bidirectional else 1) * layer_weights[1].shape[1]
    return True


def _needs_backward(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _chosen(
    backend, cell, input, batch, batch_sizes, hidden, weight_hr, needs_backward, zoned, single_step=False
) -> str:
    """The backend `resolve` picks for one direction of a layer of this shape (the same for every layer)."""
    spec = CELLS[cell]
    traced_packed = batch_sizes is not None and torch.compiler.is_compiling()
    if traced_packed:  # the batch is data there (fused_rnn.packing.checked_layout): judged by the rows, its bound
        batch = input.shape[0]
    # The kernels index one step's [batch, saved_width * hidden] blocks with 32-bit offsets.
    offsets_fit = batch * max(spec.gates, spec.saved_width) * hidden < 2**31
    workload = Workload(
        cell,
        batch,
        batch_sizes is not None,
        needs_backward,
        hidden,
        weight_hr is not None,
        zoned,
        single_step,
        traced_packed,
        0 if traced_packed else (input.shape[0] if batch_sizes is None else len(batch_sizes)),
    )
    return resolve(backend, input.device, input.dtype, offsets_fit, workload)


def step_on_torch_nn(
    cell, input, h, c, weights, backend, zoneout, verdicts=None
) -> tuple[Tensor, Tensor | None] | None:
    """A cell module's step on torch.nn's own cell op (torch.lstm_cell, torch.gru_cell, ...: what torch.nn's cells
    run) when `backend` resolves to "torch" for it: (h', c' or None); None when it does not (the caller runs the
    step as a sequence of one).

    Args:
        input: (B, I). h, c: (B, ·), checked, or None for zeros (c None but for the LSTM).
        weights: (weight_ih, weight_hh, bias_ih, bias_hh), biases None when absent.
        verdicts: as layers_on_torch_nn's (a cell module's own dict).
    """
    if (
        backend not in ("auto", "torch")
        or (zoneout and any(checked_zoneout(zoneout, cell)))
        or input.shape[0] == 0  # refused by name on the sequence path, as the layers refuse it
    ):
        return None
    spec = CELLS[cell]
    flat = [w for w in weights if w is not None]
    grads = torch.is_grad_enabled() and _needs_backward((input, h, c, *flat))
    batch = input.shape[0]
    key = _verdict_key(backend, input, batch, True, grads, flat) if verdicts is not None else None

    def decide():
        _check_weights(spec, input, *weights, None)
        hidden = weights[1].shape[0] // spec.gates
        return _chosen(backend, cell, input, batch, None, hidden, None, grads, False, single_step=True) == "torch"

    if not _verdict(verdicts, key, decide):
        return None
    return torch_rnn.step(cell, input, h, c, *weights)


def checked_zoneout(zoneout, cell: str) -> tuple[float, ...]:
    """The zoneout probabilities of `cell`'s states ((hidden, cell) for the LSTM, (hidden,) for the GRU) from a
    number (every state) or, for the LSTM, a pair; TypeError/ValueError naming `zoneout` otherwise."""
    states = 2 if CELLS[cell].has_cell_state else 1
    if isinstance(zoneout, (tuple, list)):
        if states == 1 or len(zoneout) != 2:
            expected = "a pair (p_hidden, p_cell) or a number" if states == 2 else "a number (the GRU has one state)"
            raise TypeError(f"zoneout must be {expected}, got {zoneout!r}")
        probabilities = tuple(zoneout)
    else:
        probabilities = (zoneout,) * states
    for p in probabilities:
        if not isinstance(p, (int, float)) or isinstance(p, bool):
            raise TypeError(f"zoneout must be a number in [0, 1) or, for the LSTM, a pair of them; got {zoneout!r}")
        if not 0 <= p < 1:
            raise ValueError(f"zoneout probabilities must be in [0, 1), got {zoneout!r}")
    if any(probabilities) and cell not in ("lstm", "gru"):
        raise ValueError(f"zoneout is supported for the LSTM and GRU, not {cell}")
    return tuple(float(p) for p in probabilities)


def zoneout_keep(
    probabilities: tuple[float, ...], widths: tuple[int, ...], num_rows: int, training: bool, like: Tensor
) -> Tensor | None:
    """Zoneout's keep weights d for every row of a sequence: None when every probability is 0.

    Columns are the states' units side by side (the LSTM's h, then c), `widths[k]` of them with probability
    `probabilities[k]`. In training d ~ Bernoulli(p) per row and unit, ONE torch.bernoulli call on like's device
    from torch's default generator (so torch.manual_seed reproduces it); in evaluation d = p, the expectation.
    float32 for fp16/bf16 states (p is not rounded), else like's dtype.

    Returns:
        (num_rows, sum(widths)), rows in the input's (padded or packed) row order; or None.
    """
    if not any(probabilities):
        return None
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    columns = [torch.full((width,), p, dtype=dtype, device=like.device) for p, width in zip(probabilities, widths)]
    keep = torch.cat(columns).expand(num_rows, -1)
    return torch.bernoulli(keep) if training else keep.contiguous()


def _check_weights(spec, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, input_size=None):
    """TypeError/ValueError naming the weight that does not fit `input` (its dtype, device and, unless input_size is
    given, its last dimension) and the cell. Runs on every call: written for speed (each tensor attribute read once)."""
    dtype, device = input.dtype, input.device
    if input_size is None:
        input_size = input.shape[-1]
    named = (("weight_ih", weight_ih), ("weight_hh", weight_hh), ("bias_ih", bias_ih), ("bias_hh", bias_hh))
    for name, t in (*named, ("weight_hr", weight_hr)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has {dtype}; cast one to match")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but input is on {device}")
    shape_hh = weight_hh.shape
    if len(shape_hh) != 2 or shape_hh[0] % spec.gates or shape_hh[0] == 0:
        raise ValueError(f"weight_hh must be ({spec.gates} * hidden_size, hidden_size), got shape {tuple(shape_hh)}")
    gate_rows = shape_hh[0]
    hidden = gate_rows // spec.gates
    if weight_hr is not None:
        if not spec.has_cell_state:
            raise ValueError(f"weight_hr (a projection) is only supported for the LSTM, not {spec.name}")
        if weight_hr.dim() != 2 or weight_hr.shape[1] != hidden or weight_hr.shape[0] >= hidden:
            raise ValueError(
                f"weight_hr must be (proj_size, {hidden}) with proj_size < {hidden}, got shape {tuple(weight_hr.shape)}"
            )
    hidden_out = weight_hr.shape[0] if weight_hr is not None else hidden
    if shape_hh[1] != hidden_out:
        raise ValueError(f"weight_hh must be ({gate_rows}, {hidden_out}), got shape {tuple(shape_hh)}")
    if weight_ih.shape != (gate_rows, input_size):
        raise ValueError(
            f"weight_ih must be ({gate_rows}, input_size={input_size}), got shape {tuple(weight_ih.shape)}"
        )
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih and bias_hh must be given together or not at all")
    for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if bias is not None and bias.shape != (gate_rows,):
            raise ValueError(f"{name} must be ({gate_rows},), got shape {tuple(bias.shape)}")


def checked_state(name, state, input, shape):
    """`state` (zeros when None) once it is a tensor of `shape` with input's dtype and device; else a named error."""
    if state is None:
        return input.new_zeros(shape)
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(state).__name__}")
    if state.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(state.shape)}")
    if state.dtype != input.dtype:
        raise TypeError(f"{name} has dtype {state.dtype} but input has {input.dtype}")
    if state.device != input.device:
        raise ValueError(f"{name} is on {state.device} but input is on {input.device}")
    return state
