"""On a CUDA GPU: backend="persistent" against cuDNN (through torch.nn) and an exact float64 reference.

Every test here is marked `gpu`; tests/conftest.py skips them when CUDA is absent. They skip with the reason when
the compiled extension lacks the persistent kernels. None of them has run yet: no GPU was at hand when they were
written (README, "Backends").
"""

import copy

import pytest
import torch
from test_gpu import FLOOR, outputs_and_grads
from torch import nn

import fused_rnn
from fused_rnn import autograd
from fused_rnn.backends import persistent

from checks import assert_within_twice_torch_error

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TORCH_CLASS = {"lstm": nn.LSTM, "gru": nn.GRU}


@pytest.fixture(autouse=True)
def _needs_persistent_kernels():
    if not persistent.has_kernels():
        pytest.skip("the compiled extension has no persistent kernels (build it with CUDA: pip install -e .)")


CASES = [  # cell, T, B, I, H, extra constructor arguments, packed lengths (ragged, unsorted)
    pytest.param("lstm", 1, 1, 8, 33, {}, None, id="lstm-T1-B1-H33"),
    pytest.param("gru", 1, 1, 8, 33, {}, None, id="gru-T1-B1-H33"),
    pytest.param("lstm", 40, 1, 64, 512, {}, None, id="lstm-B1-H512"),
    pytest.param("gru", 25, 13, 32, 257, {}, None, id="gru-B13-H257"),  # a partial batch tile, odd H
    pytest.param("lstm", 20, 9, 16, 131, {"bidirectional": True}, None, id="lstm-bidir-B9-H131"),
    pytest.param("lstm", 12, 5, 16, 64, {}, [4, 12, 1, 9, 9], id="lstm-packed"),
    pytest.param("gru", 10, 11, 8, 48, {"bidirectional": True}, [3, 10, 2, 7, 10, 1, 4, 4, 9, 5, 6], id="gru-packed"),
    pytest.param("lstm", 8, 64, 128, 1024, {"num_layers": 2}, None, id="lstm-2layer-B64-H1024"),
    pytest.param("gru", 8, 64, 128, 1024, {}, None, id="gru-B64-H1024"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cell, steps, batch, input_size, hidden, extra, lengths", CASES)
def test_persistent_matches_cudnn(cell, steps, batch, input_size, hidden, extra, lengths, dtype, monkeypatch):
    """Our error against torch.nn in float64 on the CPU is at most twice cuDNN's in the same dtype (tests/test_gpu.py's
    rule), for the output, the final states and every gradient (the backward runs on what the persistent forward
    saved)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cudnn = TORCH_CLASS[cell](input_size, hidden, **extra, device="cuda")
    exact = copy.deepcopy(cudnn).to("cpu", torch.float64)
    ours = fused_rnn.from_torch(cudnn, backend="persistent").to(dtype)
    cudnn = cudnn.to(dtype)
    x = torch.randn(steps, batch, input_size, device="cuda")
    expected = [t.to("cuda") for t in outputs_and_grads(exact, x.to("cpu", torch.float64), lengths)]
    theirs = outputs_and_grads(cudnn, x.to(dtype), lengths)
    mine = outputs_and_grads(ours, x.to(dtype), lengths)
    names = ["output", "h_n", "c_n"][: len(expected) - 1 - len(list(cudnn.parameters()))]
    names += ["grad input", *(f"grad {n}" for n, _ in cudnn.named_parameters())]
    for name, e, t, m in zip(names, expected, theirs, mine, strict=True):
        assert m.dtype == t.dtype, name
        assert_within_twice_torch_error(name, e, m, t, FLOOR[dtype])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("batch_sizes", [None, [6, 6, 4, 1]], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_saved_activations_are_the_triton_drivers(cell, batch_sizes, reverse):
    """The backward reads the saved activations of cells.py's layout: the persistent forward writes the same ones."""
    gates, batch, hidden = {"lstm": 4, "gru": 3}[cell], 6, 40
    rows = sum(batch_sizes) if batch_sizes else 5 * batch
    x = torch.randn(rows, 16, device="cuda")
    weights = [torch.randn(gates * hidden, n, device="cuda") * 0.2 for n in (16, hidden)]
    biases = [torch.randn(gates * hidden, device="cuda") * 0.1 for _ in range(2)]
    h0 = torch.randn(batch, hidden, device="cuda")
    c0 = torch.randn(batch, hidden, device="cuda") if cell == "lstm" else None
    args = (cell, x, h0, c0, *weights, *biases, None, batch_sizes, reverse, True)
    ours = autograd.sequence_forward(*args, backend="persistent")
    reference = autograd.sequence_forward(*args, backend="triton")
    for name, o, r in zip(["output", "h_n", "c_n", "saved"], ours, reference):
        torch.testing.assert_close(o, r, atol=2e-5, rtol=1e-4, msg=name)


def test_repeated_runs_are_bit_identical():
    module = fused_rnn.LSTM(64, 96, backend="persistent", device="cuda", dtype=torch.bfloat16)
    x = torch.randn(50, 8, 64, device="cuda", dtype=torch.bfloat16)
    first = outputs_and_grads(module, x, None)
    for _ in range(3):
        for i, (a, b) in enumerate(zip(first, outputs_and_grads(module, x, None), strict=True)):
            assert torch.equal(a, b), f"tensor {i} differs between runs"


def test_configurations_that_do_not_fit_are_refused_and_auto_runs_them():
    """A hidden size whose W_hh slices exceed shared memory is refused before any launch (no grid barrier that could
    wait forever); "auto" runs it on another backend."""
    limits = persistent.device_limits(torch.device("cuda"))
    hidden = 4096
    assert not persistent.plan("lstm", hidden, 1, torch.float32, limits).fits
    module = fused_rnn.LSTM(8, hidden, backend="persistent", device="cuda")
    with pytest.raises(ValueError, match="backend='persistent' cannot run here: .*shared memory"):
        module(torch.randn(2, 1, 8, device="cuda"))
    module.backend = "auto"
    output, _ = module(torch.randn(2, 1, 8, device="cuda"))
    assert output.shape == (2, 1, hidden)


def test_device_limits_are_torchs_and_the_targets_fit():
    """The extension reads the limits the model takes; on the H100/H200 every target configuration fits."""
    limits = persistent.device_limits(torch.device("cuda"))
    props = torch.cuda.get_device_properties(0)
    assert limits.multiprocessors == props.multi_processor_count
    if limits.multiprocessors >= persistent.H100_SXM.multiprocessors:
        for cell in ("lstm", "gru"):
            for dtype in DTYPES:
                assert persistent.plan(cell, 1024, 64, dtype, limits).fits, (cell, dtype)


def test_backward_that_does_not_fit_on_chip_runs_the_step_loop():
    """LSTM fp32 H=1024 at B=1024: the forward fits (cell state in shared memory), the backward does not (its dh and
    dc double that); the backward then runs the "cuda" backend's step loop on the same saved activations."""
    limits = persistent.device_limits(torch.device("cuda"))
    cell, hidden, batch = "lstm", 1024, 1024
    if (
        not persistent.plan(cell, hidden, batch, torch.float32, limits).fits
        or persistent.plan_backward(cell, hidden, batch, torch.float32, limits).fits
    ):
        pytest.skip(f"on this GPU ({limits}) the case is not forward-only")
    modules = {b: fused_rnn.LSTM(32, hidden, backend=b, device="cuda") for b in ("persistent", "cuda")}
    modules["cuda"].load_state_dict(modules["persistent"].state_dict())
    x = torch.randn(3, batch, 32, device="cuda")
    ours, step_loop = (outputs_and_grads(modules[b], x, None) for b in ("persistent", "cuda"))
    for i, (o, s) in enumerate(zip(ours, step_loop, strict=True)):
        torch.testing.assert_close(o, s, atol=1e-4, rtol=1e-4, msg=f"tensor {i}")
