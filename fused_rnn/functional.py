"""Functional recurrent layers: one direction of one layer, on the backend of your choice.

Each function takes the weights in torch.nn's layout (gate blocks stacked along dim 0 in torch.nn's
order) and returns what torch.nn's layer would for a single layer and direction.
"""

from collections.abc import Sequence

import torch

from fused_rnn import autograd, reference
from fused_rnn.backends import Workload, resolve, torch_rnn
from fused_rnn.cells import CELLS

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

    Returns:
        output (T, B, H_out) or (N, H_out), and (h_n, c_n) as in hx.
    """
    h0, c0 = (None, None) if hx is None else _pair(hx)
    output, h_n, c_n = sequence(
        "lstm", input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse, backend
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
) -> tuple[Tensor, Tensor]:
    """GRU over a sequence (gates r, z, n); arguments as for lstm, with weights (3H, ·) and hx = h0 (B, H)."""
    output, h_n, _ = sequence(
        "gru", input, hx, None, weight_ih, weight_hh, bias_ih, bias_hh, None, batch_sizes, reverse, backend
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


def lstm_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, backend="auto"):
    """One LSTM step: input (B, I), hx = (h, c) each (B, H) or None; returns (h', c')."""
    _, (h, c) = lstm(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh, backend=backend)
    return h, c


def gru_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, backend="auto"):
    """One GRU step: input (B, I), hx (B, H) or None; returns h'."""
    return gru(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh, backend=backend)[1]


def rnn_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, nonlinearity="tanh", backend="auto"):
    """One Elman RNN step: input (B, I), hx (B, H) or None; returns h'."""
    return rnn(
        input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity=nonlinearity, backend=backend
    )[1]


def _pair(hx):
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx must be a tuple (h0, c0) for an LSTM, got {type(hx).__name__}")
    return hx


def sequence(cell, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse, backend):
    """Any cell ("lstm", "gru", "rnn_tanh", "rnn_relu") over a sequence: (output, h_n, c_n or None).

    The entry point the modules use; arguments as for lstm, with h0/c0 given apart (None for zeros).
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    spec = CELLS[cell]
    batch_sizes = _batch_sizes(batch_sizes, input)
    _check_weights(spec, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    hidden = weight_hh.shape[0] // spec.gates
    hidden_out = weight_hr.shape[0] if weight_hr is not None else hidden
    batch = batch_sizes[0] if batch_sizes is not None else input.shape[1]
    h0 = checked_state("h0" if spec.has_cell_state else "hx", h0, input, (batch, hidden_out))
    c0 = checked_state("c0", c0, input, (batch, hidden)) if spec.has_cell_state else None
    tensors = (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    # The kernels index one step's [batch, saved_width * hidden] blocks with 32-bit offsets.
    offsets_fit = batch * max(spec.gates, spec.saved_width) * hidden < 2**31
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    workload = Workload(cell, batch, batch_sizes is not None, training, hidden, weight_hr is not None)
    chosen = resolve(backend, input.device, input.dtype, offsets_fit, workload)
    if chosen == "reference":
        return reference.sequence(cell, *tensors, batch_sizes, reverse)
    if chosen == "torch":
        return torch_rnn.sequence(cell, *tensors, batch_sizes, reverse)

    rows = input.reshape(-1, input.shape[-1])
    tensors = [t.contiguous() if t is not None else None for t in (rows, *tensors[1:])]
    output, h_n, c_n, _, _ = autograd.sequence_forward(cell, *tensors, batch_sizes, reverse, training, chosen)
    return output.reshape(*input.shape[:-1], hidden_out), h_n, c_n if spec.has_cell_state else None


def _batch_sizes(batch_sizes, input):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if batch_sizes is None:
        if input.dim() != 3:
            raise ValueError(f"input must be 3-D (T, B, I), got shape {tuple(input.shape)}")
        if input.shape[0] == 0 or input.shape[1] == 0:
            raise ValueError(
                f"input must have at least one time step and one batch entry, got shape {tuple(input.shape)}"
            )
        return None
    if isinstance(batch_sizes, torch.Tensor):
        batch_sizes = batch_sizes.tolist()
    batch_sizes = [int(b) for b in batch_sizes]
    if input.dim() != 2:
        raise ValueError(f"packed input must be 2-D (N, I) when batch_sizes is given, got shape {tuple(input.shape)}")
    if not batch_sizes or batch_sizes[-1] < 1 or any(a < b for a, b in zip(batch_sizes, batch_sizes[1:])):
        raise ValueError(f"batch_sizes must be positive and non-increasing, got {batch_sizes}")
    if sum(batch_sizes) != input.shape[0]:
        raise ValueError(f"batch_sizes sum to {sum(batch_sizes)} but input has {input.shape[0]} rows")
    return batch_sizes


def _check_weights(spec, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr):
    named = {
        "weight_ih": weight_ih,
        "weight_hh": weight_hh,
        "bias_ih": bias_ih,
        "bias_hh": bias_hh,
        "weight_hr": weight_hr,
    }
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has {input.dtype}; cast one to match")
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
    if weight_hh.dim() != 2 or weight_hh.shape[0] % spec.gates or weight_hh.shape[0] == 0:
        raise ValueError(
            f"weight_hh must be ({spec.gates} * hidden_size, hidden_size), got shape {tuple(weight_hh.shape)}"
        )
    gate_rows = weight_hh.shape[0]
    hidden = gate_rows // spec.gates
    if weight_hr is not None:
        if not spec.has_cell_state:
            raise ValueError(f"weight_hr (a projection) is only supported for the LSTM, not {spec.name}")
        if weight_hr.dim() != 2 or weight_hr.shape[1] != hidden or weight_hr.shape[0] >= hidden:
            raise ValueError(
                f"weight_hr must be (proj_size, {hidden}) with proj_size < {hidden}, got shape {tuple(weight_hr.shape)}"
            )
    hidden_out = weight_hr.shape[0] if weight_hr is not None else hidden
    if weight_hh.shape[1] != hidden_out:
        raise ValueError(f"weight_hh must be ({gate_rows}, {hidden_out}), got shape {tuple(weight_hh.shape)}")
    if weight_ih.dim() != 2 or weight_ih.shape != (gate_rows, input.shape[-1]):
        raise ValueError(
            f"weight_ih must be ({gate_rows}, input_size={input.shape[-1]}), got shape {tuple(weight_ih.shape)}"
        )
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih and bias_hh must be given together or not at all")
    for name in ("bias_ih", "bias_hh"):
        if named[name] is not None and named[name].shape != (gate_rows,):
            raise ValueError(f"{name} must be ({gate_rows},), got shape {tuple(named[name].shape)}")


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
