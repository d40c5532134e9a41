"""Fused GRU pointwise kernels: one launch per time step, forward and backward.

Gate blocks r, z, n as in torch.nn. The n gate needs h W_hn^T + b_hn apart from the input
projection (n = tanh(x_n + r * (h W_hn^T + b_hn))), so the recurrent bias is added here and
never folded into the input projection.

With ZONEOUT (Krueger et al. 2016) each step's new state is blended with the previous one by keep weights d
(Bernoulli masks in training, the zoneout probability in evaluation), read per row and unit:
h' = d * h + (1 - d) * ((1 - z) * n + z * h).
"""

import triton
import triton.language as tl

from fused_rnn.backends.triton.cell_math import (
    gru_cell,
    gru_cell_backward,
    load_bias,
    load_gate,
    preactivation,
    store_gate,
)


@triton.jit
def gru_fwd_kernel(
    p_xg,  # [bs, 3H] x W_ih^T + b_ih, this step
    p_hg,  # [bs, 3H] h W_hh^T
    p_bias,  # [3H] b_hh
    p_h,  # [B, H] hidden state: rows < bs read as h, overwritten with h'
    p_c,  # unused: the GRU has no cell state
    p_out,  # [bs, H] h'
    p_saved,  # [bs, 4H] (ACC) r, z, n, h W_hn^T + b_hn for the backward
    p_zoneout,  # [bs, H] (ACC) keep weights when ZONEOUT
    bs,
    H,
    HAS_BIAS: tl.constexpr,
    WRITE_H: tl.constexpr,
    SAVE: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    b_hn = load_gate(p_hg, 2, rows, cols, mask, H, 3, ACC) + load_bias(p_bias, 2, cols, H, HAS_BIAS, ACC)
    b_h = tl.load(p_h + state, mask=mask, other=0.0).to(ACC)
    b_r, b_z, b_n, b_h_new = gru_cell(
        preactivation(p_xg, p_hg, p_bias, 0, rows, cols, mask, H, 3, HAS_BIAS, ACC),
        preactivation(p_xg, p_hg, p_bias, 1, rows, cols, mask, H, 3, HAS_BIAS, ACC),
        load_gate(p_xg, 2, rows, cols, mask, H, 3, ACC),
        b_hn,
        b_h,
    )
    if ZONEOUT:
        b_keep = load_gate(p_zoneout, 0, rows, cols, mask, H, 1, ACC)
        b_h_new = b_keep * b_h + (1.0 - b_keep) * b_h_new
    b_h_new = b_h_new.to(p_out.dtype.element_ty)

    tl.store(p_out + state, b_h_new, mask=mask)
    if WRITE_H:
        tl.store(p_h + state, b_h_new, mask=mask)
    if SAVE:
        store_gate(p_saved, 0, b_r, rows, cols, mask, H, 4)
        store_gate(p_saved, 1, b_z, rows, cols, mask, H, 4)
        store_gate(p_saved, 2, b_n, rows, cols, mask, H, 4)
        store_gate(p_saved, 3, b_hn, rows, cols, mask, H, 4)


@triton.jit
def gru_bwd_kernel(
    p_dh,  # [B, H] gradient reaching h' through W_hh from the later step (rows < bs)
    p_dout,  # [bs, H] gradient of this step's output, added to p_dh when HAS_DOUT
    p_dc,  # [B, H] (ACC) gradient reaching h' directly (h' = z * h + ...): rows < bs read, overwritten with z * dh
    p_saved,  # [bs, 4H] (ACC) r, z, n, h W_hn^T + b_hn from the forward
    p_hprev,  # [bs, H] h this step started from
    p_out,  # unused
    p_dgx,  # [bs, 3H] gradient of x W_ih^T + b_ih
    p_dgh,  # [bs, 3H] gradient of h W_hh^T + b_hh
    p_zoneout,  # [bs, H] (ACC) keep weights when ZONEOUT
    bs,
    H,
    HAS_DOUT: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    b_r = load_gate(p_saved, 0, rows, cols, mask, H, 4, ACC)
    b_z = load_gate(p_saved, 1, rows, cols, mask, H, 4, ACC)
    b_n = load_gate(p_saved, 2, rows, cols, mask, H, 4, ACC)
    b_hn = load_gate(p_saved, 3, rows, cols, mask, H, 4, ACC)
    b_h = tl.load(p_hprev + state, mask=mask, other=0.0).to(ACC)

    b_dh = tl.load(p_dh + state, mask=mask, other=0.0).to(ACC) + tl.load(p_dc + state, mask=mask, other=0.0)
    if HAS_DOUT:
        b_dh += tl.load(p_dout + state, mask=mask, other=0.0).to(ACC)
    if ZONEOUT:
        # h' = d * h + (1 - d) * h~: d * dh goes straight to h, the rest through h~ = (1 - z) * n + z * h.
        b_keep = load_gate(p_zoneout, 0, rows, cols, mask, H, 1, ACC)
        b_dh_kept = b_keep * b_dh
        b_dh *= 1.0 - b_keep
    b_dr, b_dz, b_dn, b_dh_direct = gru_cell_backward(b_r, b_z, b_n, b_hn, b_h, b_dh)

    store_gate(p_dgx, 0, b_dr, rows, cols, mask, H, 3)
    store_gate(p_dgx, 1, b_dz, rows, cols, mask, H, 3)
    store_gate(p_dgx, 2, b_dn, rows, cols, mask, H, 3)
    store_gate(p_dgh, 0, b_dr, rows, cols, mask, H, 3)
    store_gate(p_dgh, 1, b_dz, rows, cols, mask, H, 3)
    store_gate(p_dgh, 2, b_dn * b_r, rows, cols, mask, H, 3)
    if ZONEOUT:
        tl.store(p_dc + state, b_dh_direct + b_dh_kept, mask=mask)
    else:
        tl.store(p_dc + state, b_dh_direct, mask=mask)
