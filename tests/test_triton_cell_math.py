"""The Triton kernels' shared math (fused_rnn/backends/triton/cell_math.py) and its relative precision.

Small-signal networks (small weights, inputs near 0) live where tanh's value is tiny: an absolute error at
the dtype's epsilon is then a 100% relative error. These tests measure relative error against float64.
"""

import pytest
import torch
import triton
import triton.language as tl

from fused_rnn import functional
from fused_rnn.backends.triton.cell_math import tanh

from checks import DEVICE, gradients
from layers import layer_weights, sequence_inputs

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@triton.jit
def tanh_kernel(p_x, p_y, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(p_y + offsets, tanh(tl.load(p_x + offsets, mask=mask, other=0.0)), mask=mask)


def triton_tanh(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    tanh_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    return y


# Relative error allowed per dtype: a few units in the last place.
RELATIVE = {torch.float32: 1e-6, torch.float64: 1e-14}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_tanh_relative_error_from_1e_30_to_20(dtype):
    magnitudes = torch.logspace(-30, torch.log10(torch.tensor(20.0)).item(), 4001, dtype=torch.float64)
    x = torch.cat([magnitudes, -magnitudes]).to(dtype)
    exact = torch.tanh(x.double())
    ours = triton_tanh(x.to(DEVICE)).cpu().double()
    relative = ((ours - exact).abs() / exact.abs()).max().item()
    assert relative <= RELATIVE[dtype], f"max relative error {relative:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_tanh_special_values(dtype):
    x = torch.tensor([0.0, -0.0, 25.0, -25.0, 1e4, float("inf"), float("-inf"), float("nan")], dtype=dtype)
    ours = triton_tanh(x.to(DEVICE)).cpu()
    torch.testing.assert_close(ours, torch.tanh(x), rtol=0, atol=0, equal_nan=True)


def normwise_relative_error(exact, ours):
    return ((ours.cpu().double() - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("scale", [1e-4, 1e-6])
@pytest.mark.parametrize("cell", CELLS)
def test_small_signal_cells_keep_relative_precision(cell, scale):
    """Weights, inputs and states scaled to `scale`: the fp32 kernels stay within fp32's relative precision of the
    float64 reference, forward and backward (a tanh through sigmoid was 5.8e-2 off at 1e-4, 100% at 1e-6).

    Normwise, as elementwise relative error is dominated by cancellation that torch's own fp32 shares."""
    leaf = lambda t: (t.detach() * scale).requires_grad_() if t is not None else None
    exact_leaves = [leaf(t) for t in (*sequence_inputs(cell, 5, 3, 6, 37)[:3], *layer_weights(cell, 6, 37)[:4])]
    our_leaves = [
        t.detach().to(DEVICE, torch.float32).requires_grad_() if t is not None else None for t in exact_leaves
    ]
    exact = functional.sequence(cell, *exact_leaves, None, None, False, "reference")
    ours = functional.sequence(cell, *our_leaves, None, None, False, "triton")
    names = ["output", "h_n", "c_n", *(f"grad {n}" for n in ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"))]
    exact_all = [*exact, *gradients(exact, exact_leaves)]
    ours_all = [*ours, *gradients(ours, our_leaves)]
    for name, e, o in zip(names, exact_all, ours_all, strict=True):
        if e is not None:
            relative = normwise_relative_error(e, o)
            assert relative < 1e-6, f"{cell} {name}: normwise relative error {relative:.3e}"
