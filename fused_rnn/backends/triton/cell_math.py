"""Math shared by every Triton cell kernel.

tanh is built from exp and log because libdevice's tanh (and expm1) do not run under the Triton
interpreter, the CPU test path. It must stay accurate in relative terms near 0, where the gates of
small-signal networks live: the shorter 2 * sigmoid(2x) - 1 cancels there (tanh(1e-6) came out 7% off).
"""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def expm1(u):
    """exp(u) - 1 with a relative error of a few ulps near 0 (Kahan's trick).

    Dividing by log(e) of the rounded e = exp(u) cancels exp's own rounding error, so this holds with the GPU's
    approximate exp too (log lowers to libdevice's, which is accurate).
    """
    e = tl.exp(u)
    exact = e == 1.0
    return tl.where(exact, u, (e - 1.0) * (u / tl.where(exact, 1.0, tl.log(e))))


@triton.jit
def tanh(x):
    # |x| > 20 is clamped (tanh(20) rounds to 1 even in float64) so exp never underflows to 0, where the log
    # above would fail; NaN fails the comparison and propagates.
    magnitude = tl.abs(x)
    magnitude = tl.where(magnitude > 20.0, 20.0, magnitude)
    m = expm1(-2.0 * magnitude)  # (-1, 0]
    t = -m / (2.0 + m)
    return tl.where(x < 0, -t, t)


@triton.jit
def load_gate(p_gates, gate, rows, cols, mask, H, GATES: tl.constexpr, ACC: tl.constexpr):
    """Block [rows, cols] of gate block `gate` from a [rows, GATES * H] tensor, as ACC."""
    offsets = rows[:, None] * (GATES * H) + gate * H + cols[None, :]
    return tl.load(p_gates + offsets, mask=mask, other=0.0).to(ACC)


@triton.jit
def load_bias(p_bias, gate, cols, H, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """Gate block `gate` of a [GATES * H] bias as a [1, cols] row, or 0 without bias."""
    if HAS_BIAS:
        return tl.load(p_bias + gate * H + cols, mask=cols < H, other=0.0).to(ACC)[None, :]
    else:
        return 0.0


@triton.jit
def store_gate(p_gates, gate, value, rows, cols, mask, H, GATES: tl.constexpr):
    offsets = rows[:, None] * (GATES * H) + gate * H + cols[None, :]
    tl.store(p_gates + offsets, value.to(p_gates.dtype.element_ty), mask=mask)


@triton.jit
def preactivation(
    p_xg, p_hg, p_bias, gate, rows, cols, mask, H, GATES: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr
):
    """x W_ih^T + b_ih + h W_hh^T + b_hh for one gate block."""
    b_pre = load_gate(p_xg, gate, rows, cols, mask, H, GATES, ACC)
    b_pre += load_gate(p_hg, gate, rows, cols, mask, H, GATES, ACC)
    return b_pre + load_bias(p_bias, gate, cols, H, HAS_BIAS, ACC)


# The LSTM's and GRU's pointwise math, shared by the plain step kernels (lstm.py, gru.py) and the multi-head ones
# (multihead.py), which differ only in where they read and write.


@triton.jit
def lstm_cell(b_i_pre, b_f_pre, b_g_pre, b_o_pre, b_c):
    """(i, f, g, o, c', h') from the gate pre-activations and c."""
    b_i, b_f, b_g, b_o = sigmoid(b_i_pre), sigmoid(b_f_pre), tanh(b_g_pre), sigmoid(b_o_pre)
    b_c_new = b_f * b_c + b_i * b_g
    return b_i, b_f, b_g, b_o, b_c_new, b_o * tanh(b_c_new)


@triton.jit
def lstm_cell_backward(b_i, b_f, b_g, b_o, b_c, b_dh, b_dc):
    """(d i~, d f~, d g~, d o~, d c) from the saved i, f, g, o, c and the gradients reaching h' and c'."""
    b_tanh_c = tanh(b_f * b_c + b_i * b_g)
    b_dc += b_dh * b_o * (1.0 - b_tanh_c * b_tanh_c)
    b_di = b_dc * b_g * b_i * (1.0 - b_i)
    b_df = b_dc * b_c * b_f * (1.0 - b_f)
    b_dg = b_dc * b_i * (1.0 - b_g * b_g)
    b_do = b_dh * b_tanh_c * b_o * (1.0 - b_o)
    return b_di, b_df, b_dg, b_do, b_dc * b_f


@triton.jit
def gru_cell(b_r_pre, b_z_pre, b_xn, b_hn, b_h):
    """(r, z, n, h') from r~, z~, the input part of n (x W_in^T + b_in) and its recurrent part (h W_hn^T + b_hn)."""
    b_r, b_z = sigmoid(b_r_pre), sigmoid(b_z_pre)
    b_n = tanh(b_xn + b_r * b_hn)
    return b_r, b_z, b_n, (1.0 - b_z) * b_n + b_z * b_h


@triton.jit
def gru_cell_backward(b_r, b_z, b_n, b_hn, b_h, b_dh):
    """(d r~, d z~, d n~, d h through h' = z h + ...) from the saved r, z, n, recurrent n part, h and dh'."""
    b_dn = b_dh * (1.0 - b_z) * (1.0 - b_n * b_n)
    b_dz = b_dh * (b_h - b_n) * b_z * (1.0 - b_z)
    b_dr = b_dn * b_hn * b_r * (1.0 - b_r)
    return b_dr, b_dz, b_dn, b_dh * b_z
