"""Fused LSTM pointwise kernels: one launch per time step, forward and backward.

The driver (fused_rnn/backends/triton/sequence.py) runs the GEMMs; these kernels do all the elementwise work
between them. Rows are the step's active batch (a prefix of the state buffers), columns the hidden
units; gate blocks are laid out i, f, g, o as in torch.nn.

With ZONEOUT (Krueger et al. 2016) each step's states are blended with the previous ones by keep weights d
(Bernoulli masks in training, the zoneout probabilities in evaluation), read per row and unit:
c' = d_c * c + (1 - d_c) * (f * c + i * g) and h' = d_h * h + (1 - d_h) * o * tanh(f * c + i * g). With a
projection h' = d_h * h + (1 - d_h) * (o * tanh(c')) W_hr^T is zoned after the W_hr GEMM, which runs outside these
kernels, so the driver zones h there and the kernels (ZONEOUT_H off) zone c only.
"""

import triton
import triton.language as tl

from fused_rnn.backends.triton.cell_math import (
    load_gate,
    lstm_cell_backward,
    preactivation,
    sigmoid,
    store_gate,
    tanh,
)


@triton.jit
def lstm_fwd_kernel(
    p_xg,  # [bs, 4H] x W_ih^T + b_ih, this step
    p_hg,  # [bs, 4H] h W_hh^T
    p_bias,  # [4H] b_hh
    p_h,  # [B, H] hidden state: rows < bs overwritten with h' when WRITE_H
    p_c,  # [B, H] (ACC) cell state: rows < bs read as c, overwritten with c'
    p_out,  # [bs, H] h' (before the projection when the layer has one)
    p_saved,  # [bs, 5H] (ACC) i, f, g, o, c for the backward
    p_zoneout,  # [bs, 2H] (ACC) keep weights of h, then of c, when ZONEOUT_H; [bs, H] of c when ZONEOUT only
    bs,
    H,
    HAS_BIAS: tl.constexpr,
    WRITE_H: tl.constexpr,
    SAVE: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ZONEOUT_H: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    # The cell math of cell_math.lstm_cell, written out: through the function the bf16 ZONEOUT variants spill 4-8
    # bytes (ptxas, sm_80/sm_90), inline they do not.
    b_i = sigmoid(preactivation(p_xg, p_hg, p_bias, 0, rows, cols, mask, H, 4, HAS_BIAS, ACC))
    b_f = sigmoid(preactivation(p_xg, p_hg, p_bias, 1, rows, cols, mask, H, 4, HAS_BIAS, ACC))
    b_g = tanh(preactivation(p_xg, p_hg, p_bias, 2, rows, cols, mask, H, 4, HAS_BIAS, ACC))
    b_o = sigmoid(preactivation(p_xg, p_hg, p_bias, 3, rows, cols, mask, H, 4, HAS_BIAS, ACC))
    b_c = tl.load(p_c + state, mask=mask, other=0.0).to(ACC)
    b_c_new = b_f * b_c + b_i * b_g
    b_h = b_o * tanh(b_c_new)
    if ZONEOUT:
        if ZONEOUT_H:  # without a projection: p_h is h itself
            b_keep_h = load_gate(p_zoneout, 0, rows, cols, mask, H, 2, ACC)
            b_keep_c = load_gate(p_zoneout, 1, rows, cols, mask, H, 2, ACC)
            b_h = b_keep_h * tl.load(p_h + state, mask=mask, other=0.0).to(ACC) + (1.0 - b_keep_h) * b_h
        else:
            b_keep_c = load_gate(p_zoneout, 0, rows, cols, mask, H, 1, ACC)
        b_c_new = b_keep_c * b_c + (1.0 - b_keep_c) * b_c_new
    b_h = b_h.to(p_out.dtype.element_ty)

    tl.store(p_c + state, b_c_new, mask=mask)
    tl.store(p_out + state, b_h, mask=mask)
    if WRITE_H:
        tl.store(p_h + state, b_h, mask=mask)
    if SAVE:
        store_gate(p_saved, 0, b_i, rows, cols, mask, H, 5)
        store_gate(p_saved, 1, b_f, rows, cols, mask, H, 5)
        store_gate(p_saved, 2, b_g, rows, cols, mask, H, 5)
        store_gate(p_saved, 3, b_o, rows, cols, mask, H, 5)
        store_gate(p_saved, 4, b_c, rows, cols, mask, H, 5)


@triton.jit
def lstm_bwd_kernel(
    p_dh,  # [B, H] gradient reaching h' from later steps (rows < bs)
    p_dout,  # [bs, H] gradient of this step's output, added to p_dh when HAS_DOUT
    p_dc,  # [B, H] (ACC) gradient reaching c': rows < bs overwritten with the gradient of c
    p_saved,  # [bs, 5H] (ACC) i, f, g, o, c from the forward
    p_hprev,  # unused: no LSTM gate reads h outside the GEMM
    p_out,  # unused
    p_dgx,  # [bs, 4H] gradient of the gate pre-activations
    p_dgh,  # unused: equal to p_dgx for the LSTM
    p_zoneout,  # [bs, 2H] (ACC) keep weights of h, then of c, when ZONEOUT_H; [bs, H] of c when ZONEOUT only
    p_dh_kept,  # [B, H] (ACC) when ZONEOUT_H, gradient reaching h' directly (h' = d_h * h + ...): rows < bs read,
    #                overwritten with d_h times the gradient of h'
    bs,
    H,
    HAS_DOUT: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ZONEOUT_H: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    b_i = load_gate(p_saved, 0, rows, cols, mask, H, 5, ACC)
    b_f = load_gate(p_saved, 1, rows, cols, mask, H, 5, ACC)
    b_g = load_gate(p_saved, 2, rows, cols, mask, H, 5, ACC)
    b_o = load_gate(p_saved, 3, rows, cols, mask, H, 5, ACC)
    b_c = load_gate(p_saved, 4, rows, cols, mask, H, 5, ACC)

    b_dh = tl.load(p_dh + state, mask=mask, other=0.0).to(ACC)
    if HAS_DOUT:
        b_dh += tl.load(p_dout + state, mask=mask, other=0.0).to(ACC)
    b_dc = tl.load(p_dc + state, mask=mask, other=0.0).to(ACC)
    if ZONEOUT:
        # b_dh and b_dc become the gradients of the unzoned h' and c'; the kept shares go straight to h and c.
        if ZONEOUT_H:
            b_dh += tl.load(p_dh_kept + state, mask=mask, other=0.0)
            b_keep_h = load_gate(p_zoneout, 0, rows, cols, mask, H, 2, ACC)
            b_keep_c = load_gate(p_zoneout, 1, rows, cols, mask, H, 2, ACC)
            tl.store(p_dh_kept + state, b_keep_h * b_dh, mask=mask)
            b_dh *= 1.0 - b_keep_h
        else:
            b_keep_c = load_gate(p_zoneout, 0, rows, cols, mask, H, 1, ACC)
        b_dc_kept = b_keep_c * b_dc
        b_dc *= 1.0 - b_keep_c
    b_di, b_df, b_dg, b_do, b_dc_prev = lstm_cell_backward(b_i, b_f, b_g, b_o, b_c, b_dh, b_dc)

    store_gate(p_dgx, 0, b_di, rows, cols, mask, H, 4)
    store_gate(p_dgx, 1, b_df, rows, cols, mask, H, 4)
    store_gate(p_dgx, 2, b_dg, rows, cols, mask, H, 4)
    store_gate(p_dgx, 3, b_do, rows, cols, mask, H, 4)
    if ZONEOUT:
        tl.store(p_dc + state, b_dc_prev + b_dc_kept, mask=mask)
    else:
        tl.store(p_dc + state, b_dc_prev, mask=mask)
