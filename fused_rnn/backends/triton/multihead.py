"""Fused pointwise kernels of the multi-head cells (sLSTM, headed LSTM and GRU): one launch per time step, forward
and backward.

The driver (fused_rnn/multihead/sequence.py) runs the GEMMs; these kernels do all the elementwise work between them.
Rows are the step's active batch, columns the hidden units. Two gate layouts meet here (G gates, head_dim DH,
H = num_heads * DH):
- gate-major, torch.nn's: unit j of head k in gate g is column g * H + k * DH + j. The input projection x W_ih^T and
  its gradient use it, so that weight_ih, bias_ih and their gradients are torch.nn's.
- head-major: column k * G * DH + g * DH + j. Each head's recurrent product is one batch entry of a bmm over heads
  with (G * DH)-wide output rows; in this layout that bmm reads and writes plain row-major buffers.
Carried state (c, n, m) and saved values are ACC (float32 for float16/bfloat16 storage, float64 for float64).
"""

import torch
import triton
import triton.language as tl

from fused_rnn.backends.triton.cell_math import (
    gru_cell,
    gru_cell_backward,
    load_gate,
    lstm_cell,
    lstm_cell_backward,
    sigmoid,
    store_gate,
    tanh,
)


@triton.jit
def _head_major(rows, cols, gate, H, DH, GATES: tl.constexpr):
    """Offsets of block [rows, cols] of gate `gate` in a head-major [rows, GATES * H] tensor."""
    head = cols // DH
    return rows[:, None] * (GATES * H) + (head * (GATES * DH) + gate * DH + (cols - head * DH))[None, :]


@triton.jit
def _recurrent_part(
    p_hg, p_bias, gate, rows, cols, mask, H, DH, GATES: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr
):
    """The head's h W_hh^T (head-major) + b_hh (gate-major) for one gate block."""
    b_pre = tl.load(p_hg + _head_major(rows, cols, gate, H, DH, GATES), mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        b_pre += tl.load(p_bias + gate * H + cols, mask=cols < H, other=0.0).to(ACC)[None, :]
    return b_pre


@triton.jit
def _preactivation(
    p_xg, p_hg, p_bias, gate, rows, cols, mask, H, DH, GATES: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr
):
    """x W_ih^T + b_ih (gate-major) + h W_hh^T + b_hh for one gate block."""
    b_input = load_gate(p_xg, gate, rows, cols, mask, H, GATES, ACC)
    return b_input + _recurrent_part(p_hg, p_bias, gate, rows, cols, mask, H, DH, GATES, HAS_BIAS, ACC)


@triton.jit
def _store_gate_gradient(p_dgx, p_dgh, gate, value, rows, cols, mask, H, DH, GATES: tl.constexpr):
    """One gate's pre-activation gradient, gate-major into p_dgx and head-major into p_dgh."""
    store_gate(p_dgx, gate, value, rows, cols, mask, H, GATES)
    tl.store(p_dgh + _head_major(rows, cols, gate, H, DH, GATES), value.to(p_dgh.dtype.element_ty), mask=mask)


@triton.jit
def _log_forget_gate(b_f_pre, EXP_FORGET: tl.constexpr):
    """log f: f~ for the exponential forget gate, log sigmoid(f~) (without overflow) for the sigmoid one."""
    if EXP_FORGET:
        return b_f_pre
    else:
        return tl.minimum(b_f_pre, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(b_f_pre)))


@triton.jit
def _slstm_gates(b_i_pre, b_f_pre, b_n_prev, b_m_prev, EXP_FORGET: tl.constexpr):
    """(stabilizer m, i', f', whether m came from i~) of one sLSTM step."""
    b_kept = tl.where(b_n_prev == 0.0, float("-inf"), _log_forget_gate(b_f_pre, EXP_FORGET) + b_m_prev)
    b_from_input = b_i_pre >= b_kept
    b_m = tl.where(b_from_input, b_i_pre, b_kept)
    return b_m, tl.exp(b_i_pre - b_m), tl.exp(b_kept - b_m), b_from_input


@triton.jit
def slstm_fwd_kernel(
    p_xg,  # [bs, 4H] x W^T + b, gate-major i, f, z, o
    p_hg,  # [bs, 4H] head-major h R^T
    p_h,  # [B, H] hidden state: rows < bs overwritten with h'
    p_c,  # [B, H] (ACC) rows < bs read as c, overwritten with c'
    p_n,  # [B, H] (ACC) normalizer, likewise
    p_m,  # [B, H] (ACC) stabilizer, likewise
    p_out,  # [bs, H] h'
    p_saved,  # [bs, 7H] (ACC) i~, f~, z~, o~, c, n, m this step started from, for the backward
    bs,
    H,
    DH,
    EXP_FORGET: tl.constexpr,
    SAVE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    b_i_pre = _preactivation(p_xg, p_hg, p_xg, 0, rows, cols, mask, H, DH, 4, False, ACC)
    b_f_pre = _preactivation(p_xg, p_hg, p_xg, 1, rows, cols, mask, H, DH, 4, False, ACC)
    b_z_pre = _preactivation(p_xg, p_hg, p_xg, 2, rows, cols, mask, H, DH, 4, False, ACC)
    b_o_pre = _preactivation(p_xg, p_hg, p_xg, 3, rows, cols, mask, H, DH, 4, False, ACC)
    b_c = tl.load(p_c + state, mask=mask, other=0.0)
    b_n = tl.load(p_n + state, mask=mask, other=0.0)
    b_m = tl.load(p_m + state, mask=mask, other=0.0)
    b_m_new, b_i, b_f, _ = _slstm_gates(b_i_pre, b_f_pre, b_n, b_m, EXP_FORGET)
    b_c_new = b_f * b_c + b_i * tanh(b_z_pre)
    b_n_new = b_f * b_n + b_i
    b_h = (sigmoid(b_o_pre) * b_c_new / b_n_new).to(p_out.dtype.element_ty)

    tl.store(p_out + state, b_h, mask=mask)
    tl.store(p_h + state, b_h, mask=mask)
    tl.store(p_c + state, b_c_new, mask=mask)
    tl.store(p_n + state, b_n_new, mask=mask)
    tl.store(p_m + state, b_m_new, mask=mask)
    if SAVE:
        store_gate(p_saved, 0, b_i_pre, rows, cols, mask, H, 7)
        store_gate(p_saved, 1, b_f_pre, rows, cols, mask, H, 7)
        store_gate(p_saved, 2, b_z_pre, rows, cols, mask, H, 7)
        store_gate(p_saved, 3, b_o_pre, rows, cols, mask, H, 7)
        store_gate(p_saved, 4, b_c, rows, cols, mask, H, 7)
        store_gate(p_saved, 5, b_n, rows, cols, mask, H, 7)
        store_gate(p_saved, 6, b_m, rows, cols, mask, H, 7)


@triton.jit
def slstm_bwd_kernel(
    p_dh,  # [B, H] gradient reaching h' through R from the later step (rows < bs)
    p_dout,  # [bs, H] gradient of this step's output
    p_dc,  # [B, H] (ACC) gradient reaching c': rows < bs overwritten with the gradient of c
    p_dn,  # [B, H] (ACC) likewise for n
    p_dm,  # [B, H] (ACC) likewise for m
    p_saved,  # [bs, 7H] (ACC) from the forward
    p_dgx,  # [bs, 4H] gradient of the pre-activations, gate-major
    p_dgh,  # [bs, 4H] the same, head-major
    bs,
    H,
    DH,
    EXP_FORGET: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    b_i_pre = load_gate(p_saved, 0, rows, cols, mask, H, 7, ACC)
    b_f_pre = load_gate(p_saved, 1, rows, cols, mask, H, 7, ACC)
    b_z = tanh(load_gate(p_saved, 2, rows, cols, mask, H, 7, ACC))
    b_o = sigmoid(load_gate(p_saved, 3, rows, cols, mask, H, 7, ACC))
    b_c_prev = load_gate(p_saved, 4, rows, cols, mask, H, 7, ACC)
    b_n_prev = load_gate(p_saved, 5, rows, cols, mask, H, 7, ACC)
    b_m_prev = load_gate(p_saved, 6, rows, cols, mask, H, 7, ACC)
    _, b_i, b_f, b_from_input = _slstm_gates(b_i_pre, b_f_pre, b_n_prev, b_m_prev, EXP_FORGET)
    b_c = b_f * b_c_prev + b_i * b_z
    b_n = b_f * b_n_prev + b_i

    b_dh = tl.load(p_dh + state, mask=mask, other=0.0).to(ACC) + tl.load(p_dout + state, mask=mask, other=0.0).to(ACC)
    b_dc = tl.load(p_dc + state, mask=mask, other=0.0) + b_dh * b_o / b_n
    b_dn = tl.load(p_dn + state, mask=mask, other=0.0) - b_dh * b_o * b_c / (b_n * b_n)
    b_di = b_dc * b_z + b_dn  # of i'
    b_df = b_dc * b_c_prev + b_dn * b_n_prev  # of f'
    # m enters through i' = exp(i~ - m) and f' = exp(kept - m); m itself is i~ or kept.
    b_dm = tl.load(p_dm + state, mask=mask, other=0.0) - b_di * b_i - b_df * b_f
    # An empty state's kept is the constant -inf; it needs no mask: there f' = 0 and m' = i~, so b_dkept is 0.
    b_dkept = b_df * b_f + tl.where(b_from_input, 0.0, b_dm)
    if EXP_FORGET:
        b_df_pre = b_dkept
    else:
        b_df_pre = b_dkept * sigmoid(-b_f_pre)  # d log sigmoid(x) / dx = sigmoid(-x)

    _store_gate_gradient(p_dgx, p_dgh, 0, b_di * b_i + tl.where(b_from_input, b_dm, 0.0), rows, cols, mask, H, DH, 4)
    _store_gate_gradient(p_dgx, p_dgh, 1, b_df_pre, rows, cols, mask, H, DH, 4)
    _store_gate_gradient(p_dgx, p_dgh, 2, b_dc * b_i * (1.0 - b_z * b_z), rows, cols, mask, H, DH, 4)
    _store_gate_gradient(p_dgx, p_dgh, 3, b_dh * b_c / b_n * b_o * (1.0 - b_o), rows, cols, mask, H, DH, 4)
    tl.store(p_dc + state, b_dc * b_f, mask=mask)
    tl.store(p_dn + state, b_dn * b_f, mask=mask)
    tl.store(p_dm + state, b_dkept, mask=mask)


@triton.jit
def lstm_fwd_kernel(
    p_xg,  # [bs, 4H] x W_ih^T + b_ih, gate-major i, f, g, o
    p_hg,  # [bs, 4H] head-major h W_hh^T
    p_bias,  # [4H] b_hh, gate-major
    p_h,  # [B, H] hidden state: rows < bs overwritten with h'
    p_c,  # [B, H] (ACC) cell state: rows < bs read as c, overwritten with c'
    p_out,  # [bs, H] h'
    p_saved,  # [bs, 5H] (ACC) i, f, g, o, c for the backward
    bs,
    H,
    DH,
    HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    b_c = tl.load(p_c + state, mask=mask, other=0.0).to(ACC)
    b_i, b_f, b_g, b_o, b_c_new, b_h = lstm_cell(
        _preactivation(p_xg, p_hg, p_bias, 0, rows, cols, mask, H, DH, 4, HAS_BIAS, ACC),
        _preactivation(p_xg, p_hg, p_bias, 1, rows, cols, mask, H, DH, 4, HAS_BIAS, ACC),
        _preactivation(p_xg, p_hg, p_bias, 2, rows, cols, mask, H, DH, 4, HAS_BIAS, ACC),
        _preactivation(p_xg, p_hg, p_bias, 3, rows, cols, mask, H, DH, 4, HAS_BIAS, ACC),
        b_c,
    )
    b_h = b_h.to(p_out.dtype.element_ty)

    tl.store(p_c + state, b_c_new, mask=mask)
    tl.store(p_out + state, b_h, mask=mask)
    tl.store(p_h + state, b_h, mask=mask)
    if SAVE:
        store_gate(p_saved, 0, b_i, rows, cols, mask, H, 5)
        store_gate(p_saved, 1, b_f, rows, cols, mask, H, 5)
        store_gate(p_saved, 2, b_g, rows, cols, mask, H, 5)
        store_gate(p_saved, 3, b_o, rows, cols, mask, H, 5)
        store_gate(p_saved, 4, b_c, rows, cols, mask, H, 5)


@triton.jit
def lstm_bwd_kernel(
    p_dh,  # [B, H] gradient reaching h' through W_hh from the later step (rows < bs)
    p_dout,  # [bs, H] gradient of this step's output
    p_dc,  # [B, H] (ACC) gradient reaching c': rows < bs overwritten with the gradient of c
    p_saved,  # [bs, 5H] (ACC) i, f, g, o, c from the forward
    p_dgx,  # [bs, 4H] gradient of the gate pre-activations, gate-major
    p_dgh,  # [bs, 4H] the same, head-major
    bs,
    H,
    DH,
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

    b_dh = tl.load(p_dh + state, mask=mask, other=0.0).to(ACC) + tl.load(p_dout + state, mask=mask, other=0.0).to(ACC)
    b_dc = tl.load(p_dc + state, mask=mask, other=0.0)
    b_di, b_df, b_dg, b_do, b_dc_prev = lstm_cell_backward(b_i, b_f, b_g, b_o, b_c, b_dh, b_dc)

    _store_gate_gradient(p_dgx, p_dgh, 0, b_di, rows, cols, mask, H, DH, 4)
    _store_gate_gradient(p_dgx, p_dgh, 1, b_df, rows, cols, mask, H, DH, 4)
    _store_gate_gradient(p_dgx, p_dgh, 2, b_dg, rows, cols, mask, H, DH, 4)
    _store_gate_gradient(p_dgx, p_dgh, 3, b_do, rows, cols, mask, H, DH, 4)
    tl.store(p_dc + state, b_dc_prev, mask=mask)


@triton.jit
def gru_fwd_kernel(
    p_xg,  # [bs, 3H] x W_ih^T + b_ih, gate-major r, z, n
    p_hg,  # [bs, 3H] head-major h W_hh^T
    p_bias,  # [3H] b_hh, gate-major
    p_h,  # [B, H] hidden state: rows < bs read as h, overwritten with h'
    p_out,  # [bs, H] h'
    p_saved,  # [bs, 4H] (ACC) r, z, n, h W_hn^T + b_hn for the backward
    bs,
    H,
    DH,
    HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < bs) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]

    # n = tanh(x_n + b_in + r * (h W_hn^T + b_hn)): its recurrent part without the input projection.
    b_hn = _recurrent_part(p_hg, p_bias, 2, rows, cols, mask, H, DH, 3, HAS_BIAS, ACC)
    b_h = tl.load(p_h + state, mask=mask, other=0.0).to(ACC)
    b_r, b_z, b_n, b_h_new = gru_cell(
        _preactivation(p_xg, p_hg, p_bias, 0, rows, cols, mask, H, DH, 3, HAS_BIAS, ACC),
        _preactivation(p_xg, p_hg, p_bias, 1, rows, cols, mask, H, DH, 3, HAS_BIAS, ACC),
        load_gate(p_xg, 2, rows, cols, mask, H, 3, ACC),
        b_hn,
        b_h,
    )
    b_h_new = b_h_new.to(p_out.dtype.element_ty)

    tl.store(p_out + state, b_h_new, mask=mask)
    tl.store(p_h + state, b_h_new, mask=mask)
    if SAVE:
        store_gate(p_saved, 0, b_r, rows, cols, mask, H, 4)
        store_gate(p_saved, 1, b_z, rows, cols, mask, H, 4)
        store_gate(p_saved, 2, b_n, rows, cols, mask, H, 4)
        store_gate(p_saved, 3, b_hn, rows, cols, mask, H, 4)


@triton.jit
def gru_bwd_kernel(
    p_dh,  # [B, H] gradient reaching h' through W_hh from the later step (rows < bs)
    p_dout,  # [bs, H] gradient of this step's output
    p_dc,  # [B, H] (ACC) gradient reaching h' directly (h' = z * h + ...): rows < bs read, overwritten with z * dh
    p_saved,  # [bs, 4H] (ACC) r, z, n, h W_hn^T + b_hn from the forward
    p_hprev,  # [bs, H] h this step started from
    p_dgx,  # [bs, 3H] gradient of x W_ih^T + b_ih, gate-major
    p_dgh,  # [bs, 3H] gradient of h W_hh^T + b_hh, head-major
    bs,
    H,
    DH,
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
    b_dh += tl.load(p_dout + state, mask=mask, other=0.0).to(ACC)
    b_dr, b_dz, b_dn, b_dh_direct = gru_cell_backward(b_r, b_z, b_n, b_hn, b_h, b_dh)

    store_gate(p_dgx, 0, b_dr, rows, cols, mask, H, 3)
    store_gate(p_dgx, 1, b_dz, rows, cols, mask, H, 3)
    store_gate(p_dgx, 2, b_dn, rows, cols, mask, H, 3)
    tl.store(p_dgh + _head_major(rows, cols, 0, H, DH, 3), b_dr.to(p_dgh.dtype.element_ty), mask=mask)
    tl.store(p_dgh + _head_major(rows, cols, 1, H, DH, 3), b_dz.to(p_dgh.dtype.element_ty), mask=mask)
    tl.store(p_dgh + _head_major(rows, cols, 2, H, DH, 3), (b_dn * b_r).to(p_dgh.dtype.element_ty), mask=mask)
    tl.store(p_dc + state, b_dh_direct, mask=mask)


# Accumulator values per tile at 32 bits, per cell, and 64 rows at most, up to 128 hidden units wide: the plain
# cells' tiles (fused_rnn.backends.triton.launch) for the headed LSTM and GRU; half for the sLSTM, whose backward
# keeps about twice as many values live (at 2048 its fp32 backward spilled 12-88 bytes on sm_80/sm_90). A float64
# value takes two registers, and the float64 kernels spilled at a half (the sLSTM up to 276 bytes) and at a quarter
# (the headed LSTM's backward with unaligned heads, 4 bytes), so float64 tiles hold an eighth: float64 is the
# gradcheck dtype, not a fast path. Checked unspilled by tests/test_triton_compile.py.
TILE_VALUES = {"lstm": 2048, "gru": 2048, "slstm": 1024}
MAX_BLOCK_B = 64
MAX_BLOCK_H = 128


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 math for fp32/fp16/bf16 storage; float64 stays float64 so gradcheck can test the kernels."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch_config(cell: str, batch: int, hidden: int, dtype: torch.dtype) -> tuple[dict, tuple[int, int]]:
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    block_h = min(triton.next_power_of_2(hidden), MAX_BLOCK_H)
    max_values = TILE_VALUES[cell] // (8 if dtype == torch.float64 else 1)
    block_b = min(triton.next_power_of_2(batch), max(1, max_values // block_h), MAX_BLOCK_B)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(hidden, block_h))
    return {"ACC": acc, "BLOCK_B": block_b, "BLOCK_H": block_h}, grid


def forward_step(cell, xg, hg, bias_hh, h, carried, out, saved, head_dim, exp_forget):
    """Gate activations, state update and output of one step's active rows (out.shape[0] of them).

    xg (bs, G * H) gate-major, hg (bs, G * H) head-major, bias_hh (G * H) or None; h (B, H) and the ACC states in
    `carried` ((c,) for the LSTM, (c, n, m) for the sLSTM, () for the GRU) are updated in their first bs rows.
    """
    batch, hidden = out.shape
    constants, grid = _launch_config(cell, batch, hidden, out.dtype)
    common = {"p_xg": xg, "p_hg": hg, "p_h": h, "p_out": out, "p_saved": saved, "bs": batch, "H": hidden}
    common.update(DH=head_dim, SAVE=saved is not None, **constants)
    if cell == "slstm":
        c, n, m = carried
        slstm_fwd_kernel[grid](p_c=c, p_n=n, p_m=m, EXP_FORGET=exp_forget, **common)
    elif cell == "lstm":
        lstm_fwd_kernel[grid](p_bias=bias_hh, p_c=carried[0], HAS_BIAS=bias_hh is not None, **common)
    else:
        gru_fwd_kernel[grid](p_bias=bias_hh, HAS_BIAS=bias_hh is not None, **common)


def backward_step(cell, dh, dout, carried, saved, hprev, dgx, dgh, head_dim, exp_forget):
    """Gate gradients of one step's active rows (dout.shape[0] of them), gate-major into dgx, head-major into dgh.

    dh (B, H): what reaches h' through the recurrent weight. `carried` holds the ACC gradients reaching the other
    state ((dc,) for the LSTM, (dc, dn, dm) for the sLSTM, (dh through z,) for the GRU); their first bs rows are
    overwritten with the gradients of the state this step started from. hprev (bs, H) is read by the GRU only.
    """
    batch, hidden = dout.shape
    constants, grid = _launch_config(cell, batch, hidden, dout.dtype)
    common = {"p_dh": dh, "p_dout": dout, "p_saved": saved, "p_dgx": dgx, "p_dgh": dgh, "bs": batch, "H": hidden}
    common.update(DH=head_dim, **constants)
    if cell == "slstm":
        dc, dn, dm = carried
        slstm_bwd_kernel[grid](p_dc=dc, p_dn=dn, p_dm=dm, EXP_FORGET=exp_forget, **common)
    elif cell == "lstm":
        lstm_bwd_kernel[grid](p_dc=carried[0], **common)
    else:
        gru_bwd_kernel[grid](p_dc=carried[0], p_hprev=hprev, **common)
