"""Math shared by every Triton cell kernel.

tanh is written through sigmoid because libdevice's tanh does not run under the Triton
interpreter (the CPU test path); its absolute error stays at the compute dtype's epsilon.
"""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0


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
