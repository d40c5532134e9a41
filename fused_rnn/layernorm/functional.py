"""LayerNorm LSTM and GRU as functions: one direction of one layer, and one step, on the backend of your choice.

The equations, and the parameters' roles, are in fused_rnn.layernorm.reference's docstring.
"""

from collections.abc import Sequence

import torch

from fused_rnn.backends import resolve_variant
from fused_rnn.functional import checked_state
from fused_rnn.layernorm import autograd, reference, torch_loop
from fused_rnn.layernorm.reference import GATES
from fused_rnn.packing import checked_layout

Tensor = torch.Tensor

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch", "reference")
# "auto" on CPU: the compiled kernels ("cpu": per step one GEMM and the rows' normalizations and cell math in one
# call, with no Python per step) for float32/float64, else the loop of torch ops with the input projection and its
# normalization hoisted out of the loop ("torch"). benchmarks/results/layernorm_cpu.md compares them with the
# reference and with a torch.nn-composed loop. On CUDA "auto" keeps "triton" until GPU measurements of "cuda" are
# committed. The Triton interpreter is never picked: it is for tests.


def checked_backend(backend: str) -> str:
    """`backend` if it names one of the LayerNorm layers' backends (ValueError otherwise), whether or not it can run
    here."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))} for LayerNormLSTM/GRU, got {backend!r}"
        )
    return backend


def chosen_backend(backend: str, device: torch.device, dtype: torch.dtype, step_elements: int = 0) -> str:
    """The backend that runs a call on `device`/`dtype`; ValueError when the one asked for cannot.

    step_elements: batch x gates x hidden, which the Triton kernels index with 32-bit offsets within a step.
    """
    return resolve_variant(checked_backend(backend), device, dtype, step_elements < 2**31)


def layernorm_lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    norm_ih_weight: Tensor,
    norm_hh_weight: Tensor,
    norm_c_weight: Tensor,
    norm_c_bias: Tensor,
    *,
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """LayerNorm LSTM over a sequence (fused_rnn.layernorm.reference gives the equations).

    Args:
        input: (T, B, I), or packed rows (N, I) with batch_sizes (PackedSequence.data).
        hx: (h0, c0), each (B, H); zeros when None.
        weight_ih: (4H, I). weight_hh: (4H, H). bias_ih: (4H,) or None, the one bias b, added after both gate
            normalizations.
        norm_ih_weight, norm_hh_weight: (4H,) gains of the input and recurrent normalizations.
        norm_c_weight, norm_c_bias: (H,) gain and shift of the cell-state normalization.
        batch_sizes: active batch per time step of packed input (PackedSequence.batch_sizes).
        reverse: run from the last time step to the first (the backward direction of a bidirectional layer).
        backend: "auto", "triton" (per step one GEMM and one fused Triton kernel), "cuda" and "cpu" (the same
            step loop compiled, csrc/cpu/layernorm.cpp: CUDA tensors, or CPU tensors in float32/float64, CPU's "auto"),
            "torch" (a loop of torch ops) or "reference" (the equations step by step).

    Returns:
        output (T, B, H) or (N, H), and (h_n, c_n), each (B, H).
    """
    if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
        raise TypeError(f"hx must be a tuple (h0, c0) for the LSTM, got {type(hx).__name__}")
    h0, c0 = hx if hx is not None else (None, None)
    tensors = {
        "weight_ih": weight_ih,
        "weight_hh": weight_hh,
        "bias_ih": bias_ih,
        "norm_ih_weight": norm_ih_weight,
        "norm_hh_weight": norm_hh_weight,
        "norm_c_weight": norm_c_weight,
        "norm_c_bias": norm_c_bias,
    }
    output, h_n, c_n = _run("lstm", input, h0, c0, tensors, batch_sizes, reverse, backend)
    return output, (h_n, c_n)


def layernorm_gru(
    input: Tensor,
    hx: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    norm_ih_weight: Tensor,
    norm_hh_weight: Tensor,
    *,
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """LayerNorm GRU over a sequence (fused_rnn.layernorm.reference gives the equations).

    Args:
        input: (T, B, I), or packed rows (N, I) with batch_sizes (PackedSequence.data).
        hx: h0 (B, H); zeros when None.
        weight_ih: (3H, I). weight_hh: (3H, H). bias_ih, bias_hh: (3H,) or both None, added after the input and the
            recurrent normalization respectively (the reset gate scales the recurrent n-part with its bias).
        norm_ih_weight, norm_hh_weight: (3H,) gains of the input and recurrent normalizations.
        batch_sizes, reverse, backend: as layernorm_lstm.

    Returns:
        output (T, B, H) or (N, H), and h_n (B, H).
    """
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih and bias_hh must both be given or both be None")
    tensors = {
        "weight_ih": weight_ih,
        "weight_hh": weight_hh,
        "bias_ih": bias_ih,
        "bias_hh": bias_hh,
        "norm_ih_weight": norm_ih_weight,
        "norm_hh_weight": norm_hh_weight,
    }
    output, h_n, _ = _run("gru", input, hx, None, tensors, batch_sizes, reverse, backend)
    return output, h_n


def layernorm_lstm_cell(
    input: Tensor, hx: tuple[Tensor, Tensor] | None, *weights: Tensor | None, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """One LayerNorm LSTM step: input (B, I), hx (h, c) each (B, H) or None, the weights of layernorm_lstm;
    returns (h', c')."""
    return layernorm_lstm(_step_input(input), hx, *weights, backend=backend)[1]


def layernorm_gru_cell(input: Tensor, hx: Tensor | None, *weights: Tensor | None, backend: str = "auto") -> Tensor:
    """One LayerNorm GRU step: input (B, I), hx (B, H) or None, the weights of layernorm_gru; returns h'."""
    return layernorm_gru(_step_input(input), hx, *weights, backend=backend)[1]


def _step_input(input):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 2:
        raise ValueError(f"input must be 2-D (B, I) for one step, got shape {tuple(input.shape)}")
    return input.unsqueeze(0)


def _run(cell, input, h0, c0, tensors, batch_sizes, reverse, backend):
    checked_backend(backend)
    batch_sizes = checked_layout(input, batch_sizes)
    hidden = _checked_weights(cell, input, tensors)
    batch = batch_sizes[0] if batch_sizes is not None else input.shape[1]
    h0 = checked_state("hx[0]" if cell == "lstm" else "hx", h0, input, (batch, hidden))
    if cell == "lstm":
        c0 = checked_state("hx[1]", c0, input, (batch, hidden))
    leaves = (
        input,
        h0,
        c0,
        tensors["weight_ih"],
        tensors["weight_hh"],
        tensors["bias_ih"],
        tensors.get("bias_hh"),
        tensors["norm_ih_weight"],
        tensors["norm_hh_weight"],
        tensors.get("norm_c_weight"),
        tensors.get("norm_c_bias"),
    )
    chosen = chosen_backend(backend, input.device, input.dtype, batch * GATES[cell] * hidden)
    if chosen == "reference":
        return reference.sequence(cell, *leaves, batch_sizes, reverse)
    if chosen == "torch":
        return torch_loop.sequence(cell, *leaves, batch_sizes, reverse)
    rows = input.reshape(-1, input.shape[-1])
    contiguous = [t.contiguous() if t is not None else None for t in (rows, *leaves[1:])]
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in leaves)
    kernel = "triton" if chosen == "triton" else "native"
    output, h_n, c_n, *_ = autograd.forward(cell, *contiguous, batch_sizes, reverse, save, kernel)
    return output.reshape(*input.shape[:-1], output.shape[-1]), h_n, c_n if cell == "lstm" else None


def _checked_weights(cell, input, tensors) -> int:
    """The hidden size, once every weight is a tensor of input's dtype and device with the shape the cell needs."""
    optional = ("bias_ih", "bias_hh")
    for name, t in tensors.items():
        if t is None and name in optional:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has {input.dtype}; cast one to match")
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
    gates, weight_hh = GATES[cell], tensors["weight_hh"]
    if weight_hh.dim() != 2 or weight_hh.shape[0] != gates * weight_hh.shape[1] or weight_hh.shape[1] == 0:
        raise ValueError(f"weight_hh must be ({gates} * hidden_size, hidden_size), got shape {tuple(weight_hh.shape)}")
    hidden = weight_hh.shape[1]
    expected = {"weight_ih": (gates * hidden, input.shape[-1]), "norm_c_weight": (hidden,), "norm_c_bias": (hidden,)}
    for name, t in tensors.items():
        shape = expected.get(name, (gates * hidden,))
        if t is not None and name != "weight_hh" and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return hidden
