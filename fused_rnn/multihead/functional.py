"""The multi-head cells as functions: one direction of one layer, on the backend of your choice.

slstm (the xLSTM paper's sLSTM), multihead_lstm and multihead_gru (torch.nn's LSTM and GRU cells with a block-diagonal
recurrent weight of num_heads heads; num_heads=1 is torch.nn's layer). See fused_rnn.multihead.reference for the
equations and the weight layout.
"""

from collections.abc import Sequence

import torch

from fused_rnn.backends import resolve_variant
from fused_rnn.functional import checked_state
from fused_rnn.multihead import autograd, reference, sequence
from fused_rnn.multihead.reference import FORGET_GATES, GATES, STATES
from fused_rnn.packing import checked_layout

Tensor = torch.Tensor

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch", "reference")
# "auto" on CPU: the compiled kernel ("cpu") where it runs (float32/float64, extension built), else the fused op with
# its pointwise step as torch ops ("torch"). Measured (benchmarks/results/slstm_cpu.md): "cpu" beat "torch", and
# "torch" the reference, at every shape, forward and forward+backward. The Triton interpreter is never picked: it is
# for tests.


def checked_backend(backend: str) -> str:
    """`backend` if it names one of the multi-head cells' backends (ValueError otherwise), whether or not it can run
    here."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


def checked_forget_gate(forget_gate: str) -> str:
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")
    return forget_gate


def chosen_backend(backend: str, device: torch.device, dtype: torch.dtype, block_elements: int = 0) -> str:
    """The backend that runs a call on `device`/`dtype`; ValueError when the one asked for cannot.

    block_elements: the largest [batch, width] block of one step, which the Triton kernels index with 32-bit offsets.
    """
    return resolve_variant(checked_backend(backend), device, dtype, block_elements < 2**31)


def run(
    cell: str,
    input: Tensor,
    state: Sequence[Tensor | None] | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    forget_gate: str = "sigmoid",
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One direction of one layer of `cell` ("lstm", "gru" or "slstm"); state is a tuple as STATES[cell] names it,
    each (B, H) or None for zeros, or None for all zeros. Returns output and the final state tuple."""
    checked_forget_gate(forget_gate)
    batch_sizes = checked_layout(input, batch_sizes)
    hidden = _check_weights(cell, input, weight_ih, weight_hh, bias_ih, bias_hh)
    batch = batch_sizes[0] if batch_sizes is not None else input.shape[1]
    names = STATES[cell]
    if state is None:
        state = (None,) * len(names)
    if len(state) != len(names):
        raise ValueError(f"the {cell} state must be a tuple ({', '.join(names)}), got {len(state)} tensors")
    state = tuple(checked_state(f"{name}0", s, input, (batch, hidden)) for name, s in zip(names, state))
    width = max(GATES[cell], sequence.SAVED_WIDTH[cell]) * hidden  # the widest per-row block the kernels index
    chosen = chosen_backend(backend, input.device, input.dtype, batch * width)
    if chosen == "reference":
        return reference.sequence(
            cell, input, state, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse, forget_gate
        )
    rows = input.reshape(-1, input.shape[-1])
    tensors = [rows, *state, *(None,) * (4 - len(state)), weight_ih, weight_hh, bias_ih, bias_hh]
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    contiguous = [t.contiguous() if t is not None else None for t in tensors]
    output, *final, _ = autograd.forward(*contiguous, batch_sizes, reverse, cell, forget_gate, save, chosen)
    return output.reshape(*input.shape[:-1], hidden), tuple(final[: len(names)])


def slstm(
    input: Tensor,
    state: Sequence[Tensor | None] | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None = None,
    *,
    forget_gate: str = "sigmoid",
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """sLSTM over a sequence (Beck et al. 2024), gates i, f, z, o; see fused_rnn.multihead.reference for the equations.

    Args:
        input: (T, B, I), or packed rows (N, I) with batch_sizes (PackedSequence.data).
        state: (h0, c0, n0, m0), each (B, H) or None for zeros; or None for the zero state.
        weight_ih: (4H, I). weight_hh: (num_heads, 4 * head_dim, head_dim), the block-diagonal recurrent weight R.
        bias: (4H,) or None.
        forget_gate: "sigmoid" (the paper's default) or "exp".
        batch_sizes: active batch per time step of packed input (PackedSequence.batch_sizes).
        reverse: run from the last time step to the first.
        backend: "auto", "triton" (fused Triton step kernels), "cuda" (the compiled CUDA step kernels, the step
            loop in C++; "auto" on CUDA stays "triton" until GPU measurements of it are committed), "cpu" (the
            compiled CPU kernel: the whole step loop in one call; CPU's "auto"), "torch" (the same fused op with
            its pointwise step as torch ops) or "reference" (step by step, autograd's backward).

    Returns:
        output (T, B, H) or (N, H), and the final state (h_n, c_n, n_n, m_n), each (B, H).
    """
    return run(
        "slstm",
        input,
        state,
        weight_ih,
        weight_hh,
        bias,
        None,
        forget_gate=forget_gate,
        batch_sizes=batch_sizes,
        reverse=reverse,
        backend=backend,
    )


def slstm_cell(
    input: Tensor,
    state: Sequence[Tensor | None] | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None = None,
    *,
    forget_gate: str = "sigmoid",
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sLSTM step: input (B, I), state (h, c, n, m) each (B, H) or None for zeros, or None for the zero state;
    weights and backends as slstm's. Returns the new state (h', c', n', m'), each (B, H); h' is the step's output."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 2:
        raise ValueError(f"input must be 2-D (B, I) for one step, got shape {tuple(input.shape)}")
    _, new_state = slstm(
        input.unsqueeze(0), state, weight_ih, weight_hh, bias, forget_gate=forget_gate, backend=backend
    )
    return new_state


def multihead_lstm(
    input: Tensor,
    hx: Sequence[Tensor | None] | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """torch.nn.LSTM's cell (gates i, f, g, o) with a block-diagonal recurrent weight, over a sequence.

    Args as slstm, but hx = (h0, c0) and weight_hh (num_heads, 4 * head_dim, head_dim); with num_heads=1, weight_hh[0]
    is torch.nn.LSTM's weight_hh. Returns output and (h_n, c_n).
    """
    return run(
        "lstm",
        input,
        hx,
        weight_ih,
        weight_hh,
        bias_ih,
        bias_hh,
        batch_sizes=batch_sizes,
        reverse=reverse,
        backend=backend,
    )


def multihead_gru(
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
    """torch.nn.GRU's cell (gates r, z, n) with a block-diagonal recurrent weight (num_heads, 3 * head_dim, head_dim),
    over a sequence. hx: h0 (B, H) or None. Returns output and h_n."""
    output, (h_n,) = run(
        "gru",
        input,
        (hx,),
        weight_ih,
        weight_hh,
        bias_ih,
        bias_hh,
        batch_sizes=batch_sizes,
        reverse=reverse,
        backend=backend,
    )
    return output, h_n


def _check_weights(cell, input, weight_ih, weight_hh, bias_ih, bias_hh) -> int:
    """hidden_size, once the weights have the cell's shapes and input's dtype and device."""
    named = (("weight_ih", weight_ih), ("weight_hh", weight_hh), ("bias_ih", bias_ih), ("bias_hh", bias_hh))
    for name, t in named:
        if t is None and name.startswith("weight"):
            raise TypeError(f"{name} must be a Tensor, got None")
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has {input.dtype}; cast one to match")
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
    gates = GATES[cell]
    if weight_hh.dim() != 3 or weight_hh.shape[1] != gates * weight_hh.shape[2] or weight_hh.numel() == 0:
        raise ValueError(
            f"weight_hh must be (num_heads, {gates} * head_dim, head_dim): one recurrent block per head, "
            f"got shape {tuple(weight_hh.shape)}"
        )
    hidden = weight_hh.shape[0] * weight_hh.shape[2]
    if weight_ih.dim() != 2 or weight_ih.shape != (gates * hidden, input.shape[-1]):
        raise ValueError(
            f"weight_ih must be ({gates} * hidden_size = {gates * hidden}, input_size = {input.shape[-1]}), "
            f"got shape {tuple(weight_ih.shape)}"
        )
    for name, t in named[2:]:
        if t is not None and t.shape != (gates * hidden,):
            raise ValueError(f"{name} must be ({gates * hidden},), got shape {tuple(t.shape)}")
    if cell == "slstm" and bias_hh is not None:
        raise ValueError("the sLSTM has one bias (bias_ih): a second one would only add to it")
    return hidden
