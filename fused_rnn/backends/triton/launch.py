"""Host launchers for the per-step cell kernels: one grid over (active batch, hidden units)."""

import torch
import triton
import triton.language as tl

from fused_rnn.backends.triton.gru import gru_bwd_kernel, gru_fwd_kernel
from fused_rnn.backends.triton.lstm import lstm_bwd_kernel, lstm_fwd_kernel
from fused_rnn.backends.triton.rnn import rnn_bwd_kernel, rnn_fwd_kernel
from fused_rnn.cells import CELLS

# cell name -> (forward kernel, backward kernel, cell-specific constexprs)
KERNELS = {
    "lstm": (lstm_fwd_kernel, lstm_bwd_kernel, {}),
    "gru": (gru_fwd_kernel, gru_bwd_kernel, {}),
    "rnn_tanh": (rnn_fwd_kernel, rnn_bwd_kernel, {"RELU": False}),
    "rnn_relu": (rnn_fwd_kernel, rnn_bwd_kernel, {"RELU": True}),
}


def _tiles(batch: int, hidden: int) -> tuple[dict, tuple[int, int]]:
    block_h = min(triton.next_power_of_2(hidden), 128)
    block_b = min(triton.next_power_of_2(batch), max(1, 2048 // block_h))
    grid = (triton.cdiv(batch, block_b), triton.cdiv(hidden, block_h))
    return {"BLOCK_B": block_b, "BLOCK_H": block_h}, grid


def _acc(dtype: torch.dtype):
    """fp32 math for fp32/fp16/bf16 storage; float64 stays float64 so gradcheck can test the kernels."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward_step(cell, xg, hg, bias, h, c, out, saved, write_h):
    """Gate activations, state update and output for one step's active rows (out.shape[0] of them)."""
    batch, hidden = out.shape
    kernel, _, cell_constants = KERNELS[cell]
    tiles, grid = _tiles(batch, hidden)
    kernel[grid](
        p_xg=xg,
        p_hg=hg,
        p_bias=bias,
        p_h=h,
        p_c=c,
        p_out=out,
        p_saved=saved,
        bs=batch,
        H=hidden,
        HAS_BIAS=bias is not None,
        WRITE_H=write_h,
        SAVE=saved is not None,
        ACC=_acc(out.dtype),
        **tiles,
        **cell_constants,
    )


def backward_step(cell, dh, dout, dc, saved, hprev, out, dgx, dgh):
    """Gate-gradient kernel for one step's active rows (dgx.shape[0] of them)."""
    batch, hidden = dgx.shape[0], dgx.shape[1] // CELLS[cell].gates
    _, kernel, cell_constants = KERNELS[cell]
    tiles, grid = _tiles(batch, hidden)
    kernel[grid](
        p_dh=dh,
        p_dout=dout,
        p_dc=dc,
        p_saved=saved,
        p_hprev=hprev,
        p_out=out,
        p_dgx=dgx,
        p_dgh=dgh,
        bs=batch,
        H=hidden,
        HAS_DOUT=dout is not None,
        ACC=_acc(dgx.dtype),
        **tiles,
        **cell_constants,
    )
