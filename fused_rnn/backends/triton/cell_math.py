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
