"""Fused Elman RNN pointwise kernels (tanh or relu): one launch per time step, forward and backward."""

import triton
import triton.language as tl

from fused_rnn.backends.triton.cell_math import preactivation, store_gate, tanh


@triton.jit
def rnn_fwd_kernel(
    p_xg,  # [bs, H] x W_ih^T + b_ih, this step
    p_hg,  # [bs, H] h W_hh^T
    p_bias,  # [H] b_hh
    p_h,  # [B, H] hidden state: rows < bs overwritten with h'
    p_c,  # unused: no cell state
    p_out,  # [bs, H] h'
    p_saved,  # unused: the backward reads h' from the output
    bs,
    H,
    HAS_BIAS: tl.constexpr,
    WRITE_H: tl.constexpr,
    SAVE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    RELU: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    b_pre = preactivation(p_xg, p_hg, p_bias, 0, rows, cols, mask, H, 1, HAS_BIAS, ACC)
    if RELU:
        b_h = tl.where(b_pre < 0.0, 0.0, b_pre)  # NaN stays NaN, as in torch.relu (tl.maximum drops it)
    else:
        b_h = tanh(b_pre)
    b_h = b_h.to(p_out.dtype.element_ty)
    tl.store(p_out + state, b_h, mask=mask)
    if WRITE_H:
        tl.store(p_h + state, b_h, mask=mask)


@triton.jit
def rnn_bwd_kernel(
    p_dh,  # [B, H] gradient reaching h' from later steps (rows < bs)
    p_dout,  # [bs, H] gradient of this step's output, added to p_dh when HAS_DOUT
    p_dc,  # unused: no cell state
    p_saved,  # unused
    p_hprev,  # unused: the activation's derivative needs only h'
    p_out,  # [bs, H] h' from the forward
    p_dgx,  # [bs, H] gradient of the pre-activation
    p_dgh,  # unused: equal to p_dgx
    bs,
    H,
    HAS_DOUT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    RELU: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    b_dh = tl.load(p_dh + state, mask=mask, other=0.0).to(ACC)
    if HAS_DOUT:
        b_dh += tl.load(p_dout + state, mask=mask, other=0.0).to(ACC)
    b_h = tl.load(p_out + state, mask=mask, other=0.0).to(ACC)
    if RELU:
        b_dpre = tl.where(b_h > 0.0, b_dh, 0.0)
    else:
        b_dpre = b_dh * (1.0 - b_h * b_h)
    store_gate(p_dgx, 0, b_dpre, rows, cols, mask, H, 1)
