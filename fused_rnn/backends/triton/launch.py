"""Host launchers for the per-step cell kernels: one grid over (active batch, hidden units)."""

import torch
import triton
import triton.language as tl

from fused_rnn.backends.triton.gru import gru_bwd_kernel, gru_fwd_kernel
from fused_rnn.backends.triton.lstm import lstm_bwd_kernel, lstm_fwd_kernel
from fused_rnn.backends.triton.rnn import rnn_bwd_kernel, rnn_fwd_kernel
from fused_rnn.cells import CELLS

# Cells whose kernels take zoneout's keep weights (p_zoneout, ZONEOUT).
ZONEOUT_CELLS = ("lstm", "gru")
# cell name -> (forward kernel, backward kernel, cell-specific constexprs)
KERNELS = {
    "lstm": (lstm_fwd_kernel, lstm_bwd_kernel, {}),
    "gru": (gru_fwd_kernel, gru_bwd_kernel, {}),
    "rnn_tanh": (rnn_fwd_kernel, rnn_bwd_kernel, {"RELU": False}),
    "rnn_relu": (rnn_fwd_kernel, rnn_bwd_kernel, {"RELU": True}),
}


# Register limits on a tile, found by compiling every tile for sm_80/sm_90 (tests/test_triton_compile.py):
# - accumulator bits: 2048 fp32 values, 16 per thread at Triton's default 4 warps. An fp64 value takes two
#   registers, so fp64 tiles hold half as many (at 2048 the fp64 LSTM kernels spilled 50-600 bytes).
# - rows: each row of a tile needs its own offsets, so tall narrow tiles (hidden < 16) ran out of registers:
#   the fp32 LSTM backward spilled at 2048 x 1, and 128-256 rows took 200-250 of the 255 registers.
TILE_ACCUMULATOR_BITS = 2048 * 32
MAX_BLOCK_B = 64


def _tiles(batch: int, hidden: int, dtype: torch.dtype) -> tuple[dict, tuple[int, int]]:
    block_h = min(triton.next_power_of_2(hidden), 128)
    max_elements = TILE_ACCUMULATOR_BITS // _acc(dtype).primitive_bitwidth
    block_b = min(triton.next_power_of_2(batch), max(1, max_elements // block_h), MAX_BLOCK_B)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(hidden, block_h))
    return {"BLOCK_B": block_b, "BLOCK_H": block_h}, grid


def _acc(dtype: torch.dtype):
    """fp32 math for fp32/fp16/bf16 storage; float64 stays float64 so gradcheck can test the kernels."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _zoneout_arguments(cell, zoneout, zoneout_h) -> dict:
    """The zoneout arguments of `cell`'s kernels: keep weights (or None) and the flags; none for other cells.

    zoneout_h: whether the LSTM kernel zones h too (False with a projection, whose h the driver zones).
    """
    if cell not in ZONEOUT_CELLS:
        if zoneout is not None:
            raise ValueError(f"the Triton {cell} kernels have no zoneout")
        return {}
    arguments = {"p_zoneout": zoneout, "ZONEOUT": zoneout is not None}
    if cell == "lstm":
        arguments["ZONEOUT_H"] = zoneout is not None and zoneout_h
    return arguments


def forward_step(cell, xg, hg, bias, h, c, out, saved, write_h, zoneout=None):
    """Gate activations, state update and output for one step's active rows (out.shape[0] of them).

    zoneout: the step's keep weights, (rows, 2H) for the LSTM (h's, then c's), (rows, H) for the GRU, or None. A
    projected LSTM (write_h False) takes c's only, (rows, H): the driver zones its projected h.
    """
    batch, hidden = out.shape
    kernel, _, cell_constants = KERNELS[cell]
    tiles, grid = _tiles(batch, hidden, out.dtype)
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
        **_zoneout_arguments(cell, zoneout, write_h),
        **tiles,
        **cell_constants,
    )


def backward_step(cell, dh, dout, dc, saved, hprev, out, dgx, dgh, zoneout=None, dh_kept=None):
    """Gate-gradient kernel for one step's active rows (dgx.shape[0] of them).

    zoneout: the step's keep weights as in forward_step, or None. dh_kept: the LSTM's (B, H) fp32 gradient reaching
    h' through zoneout's kept share, carried from step to step (the GRU carries it in dc); None without zoneout,
    and with a projection, whose h the driver zones: then the kernel zones c only, zoneout (rows, H) c's weights.
    """
    batch, hidden = dgx.shape[0], dgx.shape[1] // CELLS[cell].gates
    _, kernel, cell_constants = KERNELS[cell]
    zoneout_arguments = _zoneout_arguments(cell, zoneout, dh_kept is not None)
    if cell == "lstm":
        zoneout_arguments["p_dh_kept"] = dh_kept
    tiles, grid = _tiles(batch, hidden, dgx.dtype)
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
        **zoneout_arguments,
        **tiles,
        **cell_constants,
    )
