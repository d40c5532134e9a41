"""LayerNorm LSTM and GRU (fused_rnn/layernorm/reference.py has the equations): per step one GEMM and ONE Triton kernel.

The step loop of fused_rnn/layernorm/sequence.py's driver (which runs the input projection and its normalization
before, and the weight, bias, gain and input gradients after): forward, each step is `h W_hh^T` (torch.mm) and one
kernel that normalizes that row, adds the input part, applies the cell, normalizes c' (LSTM) and writes h', the state
and what the backward needs (gate activations, the normalized recurrent row, the per-row inverse standard
deviations). Backward walks the steps in reverse with one kernel per step (the cell's gate gradients and both
LayerNorm backwards inside it) and one `W_hh` GEMM. csrc/cpu/layernorm.cpp is the same loop compiled.

A normalization needs a whole row (4H or 3H wide): each program owns BLOCK_B rows and walks their columns in chunks of
BLOCK_H hidden units, each chunk covering the same units of every gate block, so the reductions never leave the
program (no atomics, deterministic). Between a pass that stores into a buffer and one that reads it back, the program
synchronizes its threads. Math and carried state (the LSTM's c, the GRU's h, the carried gradients) are in fp32 for
fp16/bf16 storage; float64 stays float64.
"""

import torch
import triton
import triton.language as tl

from fused_rnn.backends.triton.cell_math import sigmoid, tanh
from fused_rnn.layernorm.reference import EPS
from fused_rnn.layernorm.sequence import saved_step_outputs
from fused_rnn.packing import time_steps

# Elements of one [BLOCK_B, BLOCK_H] tile: the kernels hold about a dozen tiles at once (four gate blocks of two or
# three quantities), so tiles are a quarter of the plain cell kernels' (fused_rnn/backends/triton/launch.py), and a
# quarter of that for float64 (the gradcheck dtype), whose values take two registers each. At 1024 elements the fp32
# LSTM forward (16x64, sm_90) and the fp64 GRU forward (4x128, sm_80) spilled a few bytes, and at 256 the fp64 LSTM
# backward (2x128, sm_80); checked unspilled for sm_80/sm_90 by tests/test_triton_compile.py.
TILE_ELEMENTS = 512
MAX_BLOCK_H = 128
MAX_BLOCK_B = 16
# The reference's epsilon, as a constant the compiled kernels can read (the interpreter reads any global).
KERNEL_EPS = tl.constexpr(EPS)


@triton.jit
def _load(p, rows, cols, width, mask, ACC: tl.constexpr):
    """[rows, cols] of a row-major tensor `width` wide, as ACC."""
    return tl.load(p + rows[:, None] * width + cols[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def _store(p, value, rows, cols, width, mask):
    tl.store(p + rows[:, None] * width + cols[None, :], value.to(p.dtype.element_ty), mask=mask)


@triton.jit
def _gain(p, cols, mask_cols, ACC: tl.constexpr):
    """A [1, cols] row of a per-column vector (gain or bias), as ACC."""
    return tl.load(p + cols, mask=mask_cols, other=0.0).to(ACC)[None, :]


@triton.jit
def _row_mean_rstd(
    p_x, rows, row_mask, H, GATES: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr
):
    """Mean and 1 / sqrt(variance + eps) of each row of a [rows, GATES * H] tensor, two passes over its columns (the
    second on centred values: no cancellation when the mean is large)."""
    width = GATES * H
    total = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for start in range(0, width, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        total += _load(p_x, rows, cols, width, row_mask[:, None] & (cols < width)[None, :], ACC)
    mean = tl.sum(total, axis=1) / width  # [BLOCK_B]
    squares = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for start in range(0, width, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        mask = row_mask[:, None] & (cols < width)[None, :]
        centred = tl.where(mask, _load(p_x, rows, cols, width, mask, ACC) - mean[:, None], 0.0)
        squares += centred * centred
    return mean, 1.0 / tl.sqrt(tl.sum(squares, axis=1) / width + KERNEL_EPS)


@triton.jit
def _normalized(p_x, gate, rows, cols, mask, H, mean, rstd, GATES: tl.constexpr, ACC: tl.constexpr):
    """Gate block `gate` of a [rows, GATES * H] row normalized with its mean and rstd (before the gain)."""
    return (_load(p_x, rows, gate * H + cols, GATES * H, mask, ACC) - mean[:, None]) * rstd[:, None]


@triton.jit
def lstm_fwd_kernel(
    p_xn,  # [bs, 4H] ACC: LN(x W_ih^T) * gain_ih + b, this step
    p_hg,  # [bs, 4H] h W_hh^T
    p_gain_hh,  # [4H]
    p_gain_c,  # [H]
    p_bias_c,  # [H]
    p_h,  # [B, H] hidden state: rows < bs overwritten with h'
    p_c,  # [B, H] ACC cell state: rows < bs read as c, overwritten with c'
    p_out,  # [bs, H] h'
    p_act,  # [bs, 4H] ACC sigmoid(i), sigmoid(f), tanh(g), sigmoid(o) for the backward (SAVE)
    p_hnorm,  # [bs, 4H] ACC the normalized h W_hh^T before its gain (SAVE)
    p_cell,  # [bs, 2H] ACC c and the normalized c' before its gain (SAVE)
    p_rstd,  # [bs, 2] ACC 1 / std of h W_hh^T and of c' (SAVE)
    bs,
    H,
    SAVE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < bs
    mean_h, rstd_h = _row_mean_rstd(p_hg, rows, row_mask, H, 4, ACC, BLOCK_B, BLOCK_H)

    # Gates and c', chunk by chunk of hidden units; c' goes to the state buffer and is summed for its mean.
    c_total = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        mask = row_mask[:, None] & col_mask[None, :]
        hn_i = _normalized(p_hg, 0, rows, cols, mask, H, mean_h, rstd_h, 4, ACC)
        hn_f = _normalized(p_hg, 1, rows, cols, mask, H, mean_h, rstd_h, 4, ACC)
        hn_g = _normalized(p_hg, 2, rows, cols, mask, H, mean_h, rstd_h, 4, ACC)
        b_i = sigmoid(_load(p_xn, rows, cols, 4 * H, mask, ACC) + hn_i * _gain(p_gain_hh, cols, col_mask, ACC))
        b_f = sigmoid(_load(p_xn, rows, H + cols, 4 * H, mask, ACC) + hn_f * _gain(p_gain_hh, H + cols, col_mask, ACC))
        b_g = tanh(
            _load(p_xn, rows, 2 * H + cols, 4 * H, mask, ACC) + hn_g * _gain(p_gain_hh, 2 * H + cols, col_mask, ACC)
        )
        b_c = _load(p_c, rows, cols, H, mask, ACC)
        b_c_new = b_f * b_c + b_i * b_g
        _store(p_c, b_c_new, rows, cols, H, mask)
        c_total += tl.where(mask, b_c_new, 0.0)
        if SAVE:
            _store(p_act, b_i, rows, cols, 4 * H, mask)
            _store(p_act, b_f, rows, H + cols, 4 * H, mask)
            _store(p_act, b_g, rows, 2 * H + cols, 4 * H, mask)
            _store(p_hnorm, hn_i, rows, cols, 4 * H, mask)
            _store(p_hnorm, hn_f, rows, H + cols, 4 * H, mask)
            _store(p_hnorm, hn_g, rows, 2 * H + cols, 4 * H, mask)
            _store(p_cell, b_c, rows, cols, 2 * H, mask)
    tl.debug_barrier()  # c' was stored by other threads of this program

    mean_c = tl.sum(c_total, axis=1) / H
    c_squares = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        mask = row_mask[:, None] & (cols < H)[None, :]
        centred = tl.where(mask, _load(p_c, rows, cols, H, mask, ACC) - mean_c[:, None], 0.0)
        c_squares += centred * centred
    rstd_c = 1.0 / tl.sqrt(tl.sum(c_squares, axis=1) / H + KERNEL_EPS)

    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        mask = row_mask[:, None] & col_mask[None, :]
        hn_o = _normalized(p_hg, 3, rows, cols, mask, H, mean_h, rstd_h, 4, ACC)
        b_o = sigmoid(
            _load(p_xn, rows, 3 * H + cols, 4 * H, mask, ACC) + hn_o * _gain(p_gain_hh, 3 * H + cols, col_mask, ACC)
        )
        b_cn = (_load(p_c, rows, cols, H, mask, ACC) - mean_c[:, None]) * rstd_c[:, None]
        b_y = b_cn * _gain(p_gain_c, cols, col_mask, ACC) + _gain(p_bias_c, cols, col_mask, ACC)
        b_h = b_o * tanh(b_y)
        _store(p_out, b_h, rows, cols, H, mask)
        _store(p_h, b_h, rows, cols, H, mask)
        if SAVE:
            _store(p_act, b_o, rows, 3 * H + cols, 4 * H, mask)
            _store(p_hnorm, hn_o, rows, 3 * H + cols, 4 * H, mask)
            _store(p_cell, b_cn, rows, H + cols, 2 * H, mask)
    if SAVE:
        tl.store(p_rstd + rows * 2, rstd_h.to(p_rstd.dtype.element_ty), mask=row_mask)
        tl.store(p_rstd + rows * 2 + 1, rstd_c.to(p_rstd.dtype.element_ty), mask=row_mask)


@triton.jit
def lstm_bwd_kernel(
    p_dh,  # [B, H] gradient reaching h' through W_hh from the later step (rows < bs)
    p_dout,  # [bs, H] gradient of this step's output
    p_dc,  # [B, H] ACC gradient of c': rows < bs read, overwritten with that of c
    p_act,  # [bs, 4H] ACC from the forward
    p_hnorm,  # [bs, 4H] ACC from the forward
    p_cell,  # [bs, 2H] ACC from the forward
    p_rstd,  # [bs, 2] ACC from the forward
    p_gain_hh,  # [4H]
    p_gain_c,  # [H]
    p_bias_c,  # [H]
    p_dgates,  # [bs, 4H] ACC gradient of the gates' pre-activation (= of LN(x W_ih^T) * gain_ih + b)
    p_dhg,  # [bs, 4H] gradient of h W_hh^T
    p_dy,  # [bs, H] ACC gradient of LN(c') * gain_c + bias_c
    bs,
    H,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < bs
    rstd_h = tl.load(p_rstd + rows * 2, mask=row_mask, other=0.0).to(ACC)
    rstd_c = tl.load(p_rstd + rows * 2 + 1, mask=row_mask, other=0.0).to(ACC)

    # The c' normalization's backward needs the row means of d(normalized c') and of it times normalized c'.
    sum_dcn = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    sum_dcn_cn = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        mask = row_mask[:, None] & col_mask[None, :]
        b_dh = _load(p_dh, rows, cols, H, mask, ACC) + _load(p_dout, rows, cols, H, mask, ACC)
        b_o = _load(p_act, rows, 3 * H + cols, 4 * H, mask, ACC)
        b_cn = _load(p_cell, rows, H + cols, 2 * H, mask, ACC)
        b_t = tanh(b_cn * _gain(p_gain_c, cols, col_mask, ACC) + _gain(p_bias_c, cols, col_mask, ACC))
        b_dcn = b_dh * b_o * (1.0 - b_t * b_t) * _gain(p_gain_c, cols, col_mask, ACC)
        sum_dcn += b_dcn
        sum_dcn_cn += b_dcn * b_cn
    mean_dcn = tl.sum(sum_dcn, axis=1)[:, None] / H
    mean_dcn_cn = tl.sum(sum_dcn_cn, axis=1)[:, None] / H

    # Gate gradients, the carried dc, and the sums the recurrent normalization's backward needs.
    sum_dhn = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    sum_dhn_hn = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        mask = row_mask[:, None] & col_mask[None, :]
        b_dh = _load(p_dh, rows, cols, H, mask, ACC) + _load(p_dout, rows, cols, H, mask, ACC)
        b_i = _load(p_act, rows, cols, 4 * H, mask, ACC)
        b_f = _load(p_act, rows, H + cols, 4 * H, mask, ACC)
        b_g = _load(p_act, rows, 2 * H + cols, 4 * H, mask, ACC)
        b_o = _load(p_act, rows, 3 * H + cols, 4 * H, mask, ACC)
        b_c = _load(p_cell, rows, cols, 2 * H, mask, ACC)
        b_cn = _load(p_cell, rows, H + cols, 2 * H, mask, ACC)
        b_t = tanh(b_cn * _gain(p_gain_c, cols, col_mask, ACC) + _gain(p_bias_c, cols, col_mask, ACC))
        b_dy = b_dh * b_o * (1.0 - b_t * b_t)
        _store(p_dy, b_dy, rows, cols, H, mask)
        b_dcn = b_dy * _gain(p_gain_c, cols, col_mask, ACC)
        b_dc = _load(p_dc, rows, cols, H, mask, ACC) + rstd_c[:, None] * (b_dcn - mean_dcn - b_cn * mean_dcn_cn)
        b_di = b_dc * b_g * b_i * (1.0 - b_i)
        b_df = b_dc * b_c * b_f * (1.0 - b_f)
        b_dg = b_dc * b_i * (1.0 - b_g * b_g)
        b_do = b_dh * b_t * b_o * (1.0 - b_o)
        _store(p_dc, b_dc * b_f, rows, cols, H, mask)
        _store(p_dgates, b_di, rows, cols, 4 * H, mask)
        _store(p_dgates, b_df, rows, H + cols, 4 * H, mask)
        _store(p_dgates, b_dg, rows, 2 * H + cols, 4 * H, mask)
        _store(p_dgates, b_do, rows, 3 * H + cols, 4 * H, mask)
        sums = (sum_dhn, sum_dhn_hn)
        sums = _add_normed_sums(sums, b_di, 0, p_gain_hh, p_hnorm, rows, cols, col_mask, mask, H, 4, ACC)
        sums = _add_normed_sums(sums, b_df, 1, p_gain_hh, p_hnorm, rows, cols, col_mask, mask, H, 4, ACC)
        sums = _add_normed_sums(sums, b_dg, 2, p_gain_hh, p_hnorm, rows, cols, col_mask, mask, H, 4, ACC)
        sum_dhn, sum_dhn_hn = _add_normed_sums(sums, b_do, 3, p_gain_hh, p_hnorm, rows, cols, col_mask, mask, H, 4, ACC)
    tl.debug_barrier()  # the gate gradients were stored by other threads of this program
    _recurrent_norm_backward(
        p_dgates, p_hnorm, p_gain_hh, p_dhg, rows, row_mask, H, rstd_h, sum_dhn, sum_dhn_hn, 4, ACC, BLOCK_H
    )


@triton.jit
def _add_normed_sums(
    sums, b_dgate, gate, p_gain_hh, p_hnorm, rows, cols, col_mask, mask, H, GATES: tl.constexpr, ACC: tl.constexpr
):
    """sums + (d normalized, d normalized * normalized) of gate block `gate` of the recurrent normalization, from the
    gradient of its output (normalized * gain)."""
    b_dhn = b_dgate * _gain(p_gain_hh, gate * H + cols, col_mask, ACC)
    b_hn = _load(p_hnorm, rows, gate * H + cols, GATES * H, mask, ACC)
    return sums[0] + b_dhn, sums[1] + b_dhn * b_hn


@triton.jit
def _recurrent_norm_backward(
    p_dnormed,
    p_hnorm,
    p_gain_hh,
    p_dhg,
    rows,
    row_mask,
    H,
    rstd,
    sum_dhn,
    sum_dhn_hn,
    GATES: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """d(h W_hh^T) from d(LN(h W_hh^T) * gain) stored in p_dnormed and the row sums of d(normalized) (and times the
    normalized row): rstd * (dn - mean(dn) - normalized * mean(dn * normalized))."""
    width = GATES * H
    mean_dhn = tl.sum(sum_dhn, axis=1)[:, None] / width
    mean_dhn_hn = tl.sum(sum_dhn_hn, axis=1)[:, None] / width
    for start in range(0, width, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        col_mask = cols < width
        mask = row_mask[:, None] & col_mask[None, :]
        b_dhn = _load(p_dnormed, rows, cols, width, mask, ACC) * _gain(p_gain_hh, cols, col_mask, ACC)
        b_hn = _load(p_hnorm, rows, cols, width, mask, ACC)
        _store(p_dhg, rstd[:, None] * (b_dhn - mean_dhn - b_hn * mean_dhn_hn), rows, cols, width, mask)


@triton.jit
def gru_fwd_kernel(
    p_xn,  # [bs, 3H] ACC: LN(x W_ih^T) * gain_ih + b_ih, this step
    p_hg,  # [bs, 3H] h W_hh^T
    p_gain_hh,  # [3H]
    p_bias_hh,  # [3H] or None
    p_h,  # [B, H] hidden state for the next GEMM: rows < bs overwritten with h'
    p_state,  # [B, H] ACC hidden state carried in ACC: rows < bs read as h, overwritten with h'
    p_out,  # [bs, H] h'
    p_act,  # [bs, 4H] ACC r, z, n and the normalized recurrent n-part with its bias (SAVE)
    p_hnorm,  # [bs, 3H] ACC the normalized h W_hh^T before its gain (SAVE)
    p_hprev,  # [bs, H] ACC h (SAVE)
    p_rstd,  # [bs] ACC 1 / std of h W_hh^T (SAVE)
    bs,
    H,
    HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < bs
    mean_h, rstd_h = _row_mean_rstd(p_hg, rows, row_mask, H, 3, ACC, BLOCK_B, BLOCK_H)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        mask = row_mask[:, None] & col_mask[None, :]
        hn_r = _normalized(p_hg, 0, rows, cols, mask, H, mean_h, rstd_h, 3, ACC)
        hn_z = _normalized(p_hg, 1, rows, cols, mask, H, mean_h, rstd_h, 3, ACC)
        hn_n = _normalized(p_hg, 2, rows, cols, mask, H, mean_h, rstd_h, 3, ACC)
        u_r = hn_r * _gain(p_gain_hh, cols, col_mask, ACC)
        u_z = hn_z * _gain(p_gain_hh, H + cols, col_mask, ACC)
        u_n = hn_n * _gain(p_gain_hh, 2 * H + cols, col_mask, ACC)
        if HAS_BIAS:
            u_r += _gain(p_bias_hh, cols, col_mask, ACC)
            u_z += _gain(p_bias_hh, H + cols, col_mask, ACC)
            u_n += _gain(p_bias_hh, 2 * H + cols, col_mask, ACC)
        b_r = sigmoid(_load(p_xn, rows, cols, 3 * H, mask, ACC) + u_r)
        b_z = sigmoid(_load(p_xn, rows, H + cols, 3 * H, mask, ACC) + u_z)
        b_n = tanh(_load(p_xn, rows, 2 * H + cols, 3 * H, mask, ACC) + b_r * u_n)
        b_h = _load(p_state, rows, cols, H, mask, ACC)
        b_h_new = (1.0 - b_z) * b_n + b_z * b_h
        _store(p_state, b_h_new, rows, cols, H, mask)
        _store(p_h, b_h_new, rows, cols, H, mask)
        _store(p_out, b_h_new, rows, cols, H, mask)
        if SAVE:
            _store(p_act, b_r, rows, cols, 4 * H, mask)
            _store(p_act, b_z, rows, H + cols, 4 * H, mask)
            _store(p_act, b_n, rows, 2 * H + cols, 4 * H, mask)
            _store(p_act, u_n, rows, 3 * H + cols, 4 * H, mask)
            _store(p_hnorm, hn_r, rows, cols, 3 * H, mask)
            _store(p_hnorm, hn_z, rows, H + cols, 3 * H, mask)
            _store(p_hnorm, hn_n, rows, 2 * H + cols, 3 * H, mask)
            _store(p_hprev, b_h, rows, cols, H, mask)
    if SAVE:
        tl.store(p_rstd + rows, rstd_h.to(p_rstd.dtype.element_ty), mask=row_mask)


@triton.jit
def gru_bwd_kernel(
    p_dh,  # [B, H] gradient reaching h' through W_hh from the later step (rows < bs)
    p_dout,  # [bs, H] gradient of this step's output
    p_dcarry,  # [B, H] ACC gradient reaching h' directly (h' = z * h + ...): rows < bs read, overwritten with z * dh'
    p_act,  # [bs, 4H] ACC from the forward
    p_hnorm,  # [bs, 3H] ACC from the forward
    p_hprev,  # [bs, H] ACC from the forward
    p_rstd,  # [bs] ACC from the forward
    p_gain_hh,  # [3H]
    p_dgates,  # [bs, 3H] ACC gradient of LN(x W_ih^T) * gain_ih + b_ih
    p_du,  # [bs, 3H] ACC gradient of LN(h W_hh^T) * gain_hh + b_hh
    p_dhg,  # [bs, 3H] gradient of h W_hh^T
    bs,
    H,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < bs
    rstd_h = tl.load(p_rstd + rows, mask=row_mask, other=0.0).to(ACC)
    sum_dhn = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    sum_dhn_hn = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        mask = row_mask[:, None] & col_mask[None, :]
        b_dh = (
            _load(p_dh, rows, cols, H, mask, ACC)
            + _load(p_dout, rows, cols, H, mask, ACC)
            + _load(p_dcarry, rows, cols, H, mask, ACC)
        )
        b_r = _load(p_act, rows, cols, 4 * H, mask, ACC)
        b_z = _load(p_act, rows, H + cols, 4 * H, mask, ACC)
        b_n = _load(p_act, rows, 2 * H + cols, 4 * H, mask, ACC)
        b_un = _load(p_act, rows, 3 * H + cols, 4 * H, mask, ACC)
        b_h = _load(p_hprev, rows, cols, H, mask, ACC)
        b_dn = b_dh * (1.0 - b_z) * (1.0 - b_n * b_n)
        b_dz = b_dh * (b_h - b_n) * b_z * (1.0 - b_z)
        b_dr = b_dn * b_un * b_r * (1.0 - b_r)
        _store(p_dcarry, b_dh * b_z, rows, cols, H, mask)
        _store(p_dgates, b_dr, rows, cols, 3 * H, mask)
        _store(p_dgates, b_dz, rows, H + cols, 3 * H, mask)
        _store(p_dgates, b_dn, rows, 2 * H + cols, 3 * H, mask)
        _store(p_du, b_dr, rows, cols, 3 * H, mask)
        _store(p_du, b_dz, rows, H + cols, 3 * H, mask)
        _store(p_du, b_dn * b_r, rows, 2 * H + cols, 3 * H, mask)
        sums = (sum_dhn, sum_dhn_hn)
        sums = _add_normed_sums(sums, b_dr, 0, p_gain_hh, p_hnorm, rows, cols, col_mask, mask, H, 3, ACC)
        sums = _add_normed_sums(sums, b_dz, 1, p_gain_hh, p_hnorm, rows, cols, col_mask, mask, H, 3, ACC)
        sum_dhn, sum_dhn_hn = _add_normed_sums(
            sums, b_dn * b_r, 2, p_gain_hh, p_hnorm, rows, cols, col_mask, mask, H, 3, ACC
        )
    tl.debug_barrier()  # du was stored by other threads of this program
    _recurrent_norm_backward(
        p_du, p_hnorm, p_gain_hh, p_dhg, rows, row_mask, H, rstd_h, sum_dhn, sum_dhn_hn, 3, ACC, BLOCK_H
    )


def _launch_config(batch: int, hidden: int, dtype: torch.dtype) -> tuple[dict, tuple[int]]:
    block_h = min(triton.next_power_of_2(hidden), MAX_BLOCK_H)
    elements = TILE_ELEMENTS // (4 if dtype == torch.float64 else 1)
    block_b = min(triton.next_power_of_2(batch), max(1, elements // block_h), MAX_BLOCK_B)
    constants = {"ACC": tl.float64 if dtype == torch.float64 else tl.float32, "BLOCK_B": block_b, "BLOCK_H": block_h}
    return constants, (triton.cdiv(batch, block_b),)


def recurrence_forward(
    cell,
    input_normalized,
    weight_hh,
    norm_hh_weight,
    bias_hh,
    norm_c_weight,
    norm_c_bias,
    h0,
    c0,
    batch_sizes,
    reverse,
    save,
):
    """The step loop of one direction of one layer: per step `h W_hh^T` (torch.mm) and one kernel.

    The contract of the compiled op fused_rnn_native::layernorm_recurrence_forward (csrc/cpu/layernorm.cpp):
    input_normalized is LN(x W_ih^T) * gain_ih + bias_ih of every row (N, G * H) in ACC. Returns output (N, H), h_n,
    c_n (empty for the GRU) and the saved activations (N, 4H), normalized h W_hh^T (N, G * H), cell (N, 2H or H) and
    rstd (N, 2 or 1) in ACC, with no rows unless save.
    """
    batch, hidden = h0.shape
    rows_total = input_normalized.shape[0]
    output = h0.new_empty(rows_total, hidden)
    h = h0.clone()
    state = (c0 if cell == "lstm" else h0).to(input_normalized.dtype, copy=True)
    saved = saved_step_outputs(cell, input_normalized, hidden, save)
    activations, hidden_normed, cell_saved, rstd = saved
    hidden_gates = h0.new_empty(batch, weight_hh.shape[0])

    for offset, active in time_steps(batch_sizes, rows_total, batch, reverse):
        rows = slice(offset, offset + active)
        torch.mm(h[:active], weight_hh.t(), out=hidden_gates[:active])
        constants, grid = _launch_config(active, hidden, h0.dtype)
        step_saved = {
            "p_act": activations[rows] if save else None,
            "p_hnorm": hidden_normed[rows] if save else None,
            "p_rstd": rstd[rows] if save else None,
        }
        if cell == "lstm":
            lstm_fwd_kernel[grid](
                p_xn=input_normalized[rows],
                p_hg=hidden_gates[:active],
                p_gain_hh=norm_hh_weight,
                p_gain_c=norm_c_weight,
                p_bias_c=norm_c_bias,
                p_h=h,
                p_c=state,
                p_out=output[rows],
                p_cell=cell_saved[rows] if save else None,
                bs=active,
                H=hidden,
                SAVE=save,
                **step_saved,
                **constants,
            )
        else:
            gru_fwd_kernel[grid](
                p_xn=input_normalized[rows],
                p_hg=hidden_gates[:active],
                p_gain_hh=norm_hh_weight,
                p_bias_hh=bias_hh,
                p_h=h,
                p_state=state,
                p_out=output[rows],
                p_hprev=cell_saved[rows] if save else None,
                bs=active,
                H=hidden,
                HAS_BIAS=bias_hh is not None,
                SAVE=save,
                **step_saved,
                **constants,
            )
    c_n = state.to(h0.dtype) if cell == "lstm" else h0.new_empty(0)
    return (output, h, c_n, *saved)


def recurrence_backward(
    cell,
    grad_output,
    grad_h_n,
    grad_c_n,
    weight_hh,
    norm_hh_weight,
    norm_c_weight,
    norm_c_bias,
    activations,
    hidden_normed,
    cell_saved,
    rstd,
    batch_sizes,
    reverse,
):
    """Backpropagation through the steps: per step one kernel and one `W_hh` GEMM, in reverse.

    The contract of fused_rnn_native::layernorm_recurrence_backward: returns the gradients of LN(x W_ih^T) * gain_ih
    + bias_ih (N, G * H) in ACC, of h W_hh^T (N, G * H), the LSTM's of LN(c') * gain_c + bias_c (N, H) or the GRU's of
    LN(h W_hh^T) * gain_hh + bias_hh (N, G * H) in ACC, then those of h0 and c0 (empty for the GRU).
    """
    rows_total, (batch, hidden) = grad_output.shape[0], grad_h_n.shape
    acc = activations.dtype
    width = weight_hh.shape[0]
    grad_gates = grad_output.new_empty(rows_total, width, dtype=acc)
    grad_hidden_gates = grad_output.new_empty(rows_total, width)
    dh = grad_h_n.clone()
    if cell == "lstm":
        carried = grad_c_n.to(acc, copy=True)
        grad_cell_side = grad_output.new_empty(rows_total, hidden, dtype=acc)
    else:  # the GRU's gradient through h' = z * h + ..., carried in ACC; all of grad_h_n starts there
        carried, dh = grad_h_n.to(acc, copy=True), torch.zeros_like(grad_h_n)
        grad_cell_side = grad_output.new_empty(rows_total, width, dtype=acc)

    for offset, active in reversed(time_steps(batch_sizes, rows_total, batch, reverse)):
        rows = slice(offset, offset + active)
        constants, grid = _launch_config(active, hidden, grad_output.dtype)
        common = {
            "p_dh": dh,
            "p_dout": grad_output[rows],
            "p_act": activations[rows],
            "p_hnorm": hidden_normed[rows],
            "p_rstd": rstd[rows],
            "p_gain_hh": norm_hh_weight,
            "p_dgates": grad_gates[rows],
            "p_dhg": grad_hidden_gates[rows],
            "bs": active,
            "H": hidden,
        }
        if cell == "lstm":
            lstm_bwd_kernel[grid](
                p_dc=carried,
                p_cell=cell_saved[rows],
                p_gain_c=norm_c_weight,
                p_bias_c=norm_c_bias,
                p_dy=grad_cell_side[rows],
                **common,
                **constants,
            )
        else:
            gru_bwd_kernel[grid](
                p_dcarry=carried, p_hprev=cell_saved[rows], p_du=grad_cell_side[rows], **common, **constants
            )
        torch.mm(grad_hidden_gates[rows], weight_hh, out=dh[:active])
    if cell == "lstm":
        return grad_gates, grad_hidden_gates, grad_cell_side, dh, carried.to(grad_output.dtype)
    return grad_gates, grad_hidden_gates, grad_cell_side, (dh + carried).to(grad_output.dtype), dh.new_empty(0)
