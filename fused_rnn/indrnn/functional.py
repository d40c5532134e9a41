"""IndRNN as a function: one direction of one layer, and one step, on the backend of your choice."""

from collections.abc import Sequence

import torch

from fused_rnn.backends import resolve_variant
from fused_rnn.functional import checked_state
from fused_rnn.indrnn import autograd, reference
from fused_rnn.indrnn.reference import NONLINEARITIES
from fused_rnn.modules import _autocast, _autocast_dtype
from fused_rnn.packing import checked_layout

Tensor = torch.Tensor

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch", "reference")


def checked_backend(backend: str) -> str:
    """`backend` if it names one of IndRNN's backends (ValueError otherwise), whether or not it can run here."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))} for IndRNN, got {backend!r}")
    return backend


def checked_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'relu' or 'tanh', got {nonlinearity!r}")
    return nonlinearity


def chosen_backend(backend: str, device: torch.device, dtype: torch.dtype, state_elements: int = 0) -> str:
    """The backend that runs a call on `device`/`dtype`; ValueError when the one asked for cannot.

    state_elements: batch x hidden, which the Triton kernel indexes with 32-bit offsets within a step.
    """
    return resolve_variant(checked_backend(backend), device, dtype, state_elements < 2**31)


def indrnn(
    input: Tensor,
    hx: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    *,
    nonlinearity: str = "relu",
    batch_sizes: Sequence[int] | Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """IndRNN over a sequence: h' = act(x W_ih^T + b_ih + u * h), u = weight_hh applied elementwise.

    Args:
        input: (T, B, I), or packed rows (N, I) with batch_sizes (PackedSequence.data).
        hx: h0 (B, H); zeros when None.
        weight_ih: (H, I). weight_hh: (H,), the recurrent weight u. bias_ih: (H,) or None.
        nonlinearity: "relu" (the paper's choice) or "tanh".
        batch_sizes: active batch per time step of packed input (PackedSequence.batch_sizes).
        reverse: run from the last time step to the first (the backward direction of a bidirectional layer).
        backend: "auto", "triton" (the recurrence as one Triton kernel; CUDA's "auto"), "cuda" (as one compiled
            CUDA kernel, one thread per (row, unit), CUDA tensors), "cpu" (as one compiled C++ parallel region,
            float32/float64 CPU tensors; CPU's "auto"), "torch" (the same op with the recurrence as a loop of
            in-place torch ops; CPU's "auto" for float16/bfloat16) or "reference" (step by step, autograd's
            backward).

    Returns:
        output (T, B, H) or (N, H), and h_n (B, H).
    """
    checked_nonlinearity(nonlinearity)
    batch_sizes = checked_layout(input, batch_sizes)
    # Under autocast run in its lower precision, as torch.nn's recurrent layers do (float64 stays float64).
    cast = _autocast_dtype(input.device.type)
    input, hx, weight_ih, weight_hh, bias_ih = (_autocast(t, cast) for t in (input, hx, weight_ih, weight_hh, bias_ih))
    _check_weights(input, weight_ih, weight_hh, bias_ih)
    batch = batch_sizes[0] if batch_sizes is not None else input.shape[1]
    h0 = checked_state("hx", hx, input, (batch, weight_hh.shape[0]))
    chosen = chosen_backend(backend, input.device, input.dtype, batch * weight_hh.shape[0])
    tensors = (input, h0, weight_ih, weight_hh, bias_ih)
    if chosen == "reference":
        return reference.sequence(*tensors, batch_sizes, reverse, nonlinearity)
    rows = input.reshape(-1, input.shape[-1])
    contiguous = [t.contiguous() if t is not None else None for t in (rows, *tensors[1:])]
    output, h_n = autograd.forward(*contiguous, batch_sizes, reverse, nonlinearity, chosen)
    return output.reshape(*input.shape[:-1], output.shape[-1]), h_n


def indrnn_cell(
    input: Tensor,
    hx: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    *,
    nonlinearity: str = "relu",
    backend: str = "auto",
) -> Tensor:
    """One IndRNN step: input (B, I), hx (B, H) or None; returns h'."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 2:
        raise ValueError(f"input must be 2-D (B, I) for one step, got shape {tuple(input.shape)}")
    return indrnn(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, nonlinearity=nonlinearity, backend=backend)[1]


def _check_weights(input, weight_ih, weight_hh, bias_ih):
    for name, t in (("weight_ih", weight_ih), ("weight_hh", weight_hh), ("bias_ih", bias_ih)):
        if t is None and name != "bias_ih":
            raise TypeError(f"{name} must be a Tensor, got None")
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has {input.dtype}; cast one to match")
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
    if weight_hh.dim() != 1 or weight_hh.shape[0] == 0:
        raise ValueError(
            f"weight_hh must be a vector (hidden_size,): IndRNN's recurrent weight is elementwise, "
            f"got shape {tuple(weight_hh.shape)}"
        )
    hidden = weight_hh.shape[0]
    if weight_ih.dim() != 2 or weight_ih.shape != (hidden, input.shape[-1]):
        raise ValueError(
            f"weight_ih must be ({hidden}, input_size={input.shape[-1]}), got shape {tuple(weight_ih.shape)}"
        )
    if bias_ih is not None and bias_ih.shape != (hidden,):
        raise ValueError(f"bias_ih must be ({hidden},), got shape {tuple(bias_ih.shape)}")
