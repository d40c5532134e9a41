"""The drop-in layers and cells on backend="cpu" against torch.nn's own: outputs, states and every gradient."""

import platform
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn

from checks import TOLERANCE, assert_close

LAYERS = [
    pytest.param(fused_rnn.LSTM, nn.LSTM, {}, id="lstm"),
    pytest.param(fused_rnn.LSTM, nn.LSTM, {"proj_size": 3}, id="lstm-proj"),
    pytest.param(fused_rnn.GRU, nn.GRU, {}, id="gru"),
    pytest.param(fused_rnn.RNN, nn.RNN, {"nonlinearity": "tanh"}, id="rnn_tanh"),
    pytest.param(fused_rnn.RNN, nn.RNN, {"nonlinearity": "relu"}, id="rnn_relu"),
]


def twins(ours_class, torch_class, dtype, **arguments):
    ours = ours_class(backend="cpu", dtype=dtype, **arguments)
    theirs = torch_class(dtype=dtype, **arguments)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def assert_same_results(ours, theirs, input, dtype, data=lambda output: output):
    """Outputs, final states and the gradients of the input and of every parameter agree."""
    atol, rtol = TOLERANCE[dtype]
    results = []
    for module in (ours, theirs):
        output, state = module(input)
        states = state if isinstance(state, tuple) else (state,)
        tensors = [data(output), *states]
        weights = [torch.randn_like(t, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(tensors)]
        loss = sum((t * w).sum() for t, w in zip(tensors, weights))
        leaf = data(input)
        results.append((tensors, torch.autograd.grad(loss, [leaf, *module.parameters()])))
    (our_outputs, our_grads), (their_outputs, their_grads) = results
    for index, (t, o) in enumerate(zip(their_outputs, our_outputs)):
        assert_close(f"output {index}", t, o, atol, rtol)
    names = ["input", *(name for name, _ in ours.named_parameters())]
    for name, t, o in zip(names, their_grads, our_grads, strict=True):
        assert_close(f"grad {name}", t, o, atol, rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("ours_class, torch_class, extra", LAYERS)
def test_two_layer_bidirectional_matches_torch_nn(ours_class, torch_class, extra, dtype):
    ours, theirs = twins(
        ours_class, torch_class, dtype, input_size=5, hidden_size=9, num_layers=2, bidirectional=True, **extra
    )
    x = torch.randn(6, 4, 5, dtype=dtype, requires_grad=True)
    assert_same_results(ours, theirs, x, dtype)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("ours_class, torch_class, extra", LAYERS)
def test_the_expanded_gradient_of_a_sum_matches_torch_nn(ours_class, torch_class, extra, packed):
    """loss = output.sum() hands the last layer's kernels an expanded gradient (stride 0), which the CPU loop reads
    as one row for every row instead of a materialized copy."""
    dtype = torch.float64
    arguments = {"input_size": 5, "hidden_size": 9, "num_layers": 2, "bidirectional": True, **extra}
    ours, theirs = twins(ours_class, torch_class, dtype, **arguments)
    x = torch.randn(6, 4, 5, dtype=dtype, requires_grad=True)
    gradients = []
    for module in (theirs, ours):
        output, _ = module(pack_padded_sequence(x, [6, 5, 3, 1]) if packed else x)
        gradients.append(torch.autograd.grad((output.data if packed else output).sum(), [x, *module.parameters()]))
    names = ["input", *(name for name, _ in ours.named_parameters())]
    for name, expected, actual in zip(names, *gradients, strict=True):
        assert_close(f"grad {name}", expected, actual, *TOLERANCE[dtype])


@pytest.mark.parametrize("ours_class, torch_class, extra", LAYERS)
def test_packed_batch_first_matches_torch_nn(ours_class, torch_class, extra):
    ours, theirs = twins(
        ours_class,
        torch_class,
        torch.float64,
        input_size=3,
        hidden_size=7,
        batch_first=True,
        bidirectional=True,
        **extra,
    )
    padded = torch.randn(4, 5, 3, dtype=torch.float64)
    packed = pack_padded_sequence(padded, [2, 5, 1, 3], batch_first=True, enforce_sorted=False)
    packed.data.requires_grad_()
    assert_same_results(ours, theirs, packed, torch.float64, data=lambda sequence: sequence.data)


@pytest.mark.parametrize(
    "ours_class, torch_class",
    [(fused_rnn.LSTMCell, nn.LSTMCell), (fused_rnn.GRUCell, nn.GRUCell), (fused_rnn.RNNCell, nn.RNNCell)],
    ids=["lstm", "gru", "rnn"],
)
def test_cells_match_torch_nn(ours_class, torch_class):
    ours, theirs = twins(ours_class, torch_class, torch.float64, input_size=4, hidden_size=6)
    x = torch.randn(3, 4, dtype=torch.float64)
    atol, rtol = TOLERANCE[torch.float64]
    ours_state, their_state = ours(x), theirs(x)
    for t, o in zip(torch.utils._pytree.tree_leaves(their_state), torch.utils._pytree.tree_leaves(ours_state)):
        assert_close("cell state", t, o, atol, rtol)


def test_compiles_without_graph_breaks():
    model = fused_rnn.LSTM(4, 6, num_layers=2, backend="cpu")
    x = torch.randn(5, 3, 4, requires_grad=True)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    expected, got = model(x)[0], compiled(x)[0]
    assert_close("compiled output", expected, got, *TOLERANCE[torch.float32])
    grads = [torch.autograd.grad(o.sum(), x)[0] for o in (expected, got)]
    assert_close("compiled grad input", grads[0], grads[1], *TOLERANCE[torch.float32])


ONEDNN = platform.machine() in ("x86_64", "AMD64") and torch.backends.mkldnn.is_available()


@pytest.mark.skipif(not ONEDNN, reason="the float32 GEMMs go through oneDNN only on x86-64 with torch's oneDNN")
@pytest.mark.parametrize(
    "ours_class, extra",
    [
        pytest.param(fused_rnn.LSTM, {"hidden_size": 160, "proj_size": 128}, id="lstm-proj"),
        pytest.param(fused_rnn.GRU, {"hidden_size": 128}, id="gru"),
    ],
)
def test_float32_gemms_through_onednn_match_float64_torch_nn(ours_class, extra):
    """At sizes where csrc/sequence.cpp hands the input projection and the gradient GEMMs to oneDNN (>= 2M
    multiply-adds each), float32 results stay within float32's error of torch.nn in float64, and oneDNN ran."""
    ours = ours_class(128, backend="cpu", **extra)
    theirs = getattr(nn, ours_class.__name__)(128, dtype=torch.float64, **extra)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(16, 8, 128, dtype=torch.float64)
    with torch.profiler.profile() as profile:
        expected, got = (
            _output_and_gradients(module, input)
            for module, input in ((theirs, x.clone().requires_grad_()), (ours, x.float().requires_grad_()))
        )
    assert "mkldnn::_linear_pointwise" in {event.key for event in profile.key_averages()}
    names = ["output", "grad input", *(f"grad {name}" for name, _ in ours.named_parameters())]
    for name, e, g in zip(names, expected, got, strict=True):
        relative = ((g.double() - e).norm() / e.norm()).item()
        assert relative < 1e-5, f"{name}: relative error {relative:.1e}"


def _output_and_gradients(module, input):
    output, _ = module(input)
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return [output, *torch.autograd.grad((output * weights.to(output.dtype)).sum(), [input, *module.parameters()])]


# Holds the advisory lock on argv[1] (as torch 2.14's cpp_extension.FileLock, a filelock.FileLock, holds it while it
# builds) until its stdin closes.
HOLD_BUILD_LOCK = """
import sys
from filelock import FileLock

with FileLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("torch_lock", ["FileLock", "FileBaton"])
def test_a_held_build_lock_is_named_and_a_lock_file_left_behind_is_not(torch_lock, tmp_path, monkeypatch):
    """The loader names the lock that torch's first-use build waits for. Under torch 2.14's advisory FileLock the file
    stays after every build: only a lock another process holds is named, never the file left behind. Under older
    torch's FileBaton the file's existence is the lock (a killed build's stays held for ever): then the file is
    named."""
    from torch.utils import _filelock, cpp_extension, file_baton

    from fused_rnn.backends import native

    if torch_lock == "FileLock":
        monkeypatch.delattr(cpp_extension, "FileBaton", raising=False)
        monkeypatch.setattr(cpp_extension, "FileLock", _filelock.FileLock, raising=False)
    else:
        monkeypatch.setattr(cpp_extension, "FileBaton", file_baton.FileBaton, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert native.held_build_lock("fused_rnn_lock_test") is None
    lock = next(tmp_path.rglob("fused_rnn_lock_test")) / "lock"
    lock.touch()
    assert native.held_build_lock("fused_rnn_lock_test") == (None if torch_lock == "FileLock" else lock)
    if torch_lock == "FileLock":
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_BUILD_LOCK, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout.readline() == "held\n"
            assert native.held_build_lock("fused_rnn_lock_test") == lock
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        assert native.held_build_lock("fused_rnn_lock_test") is None
