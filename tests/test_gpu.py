"""On a CUDA GPU: the Triton backend against cuDNN (through torch.nn) and an exact float64 reference.

Every test here is marked `gpu`; tests/conftest.py skips them when CUDA is absent.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn

from checks import assert_within_twice_torch_error

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TORCH_CLASS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
# Our error against float64 may exceed twice cuDNN's by this much (near-zero outputs in low precision).
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def outputs_and_grads(module, x, lengths):
    """Outputs, final states, and the gradients of a random weighted sum of them; the weights are drawn on the CPU so
    that they are the same on every device."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    module_input = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths else x
    output, state = module(module_input)
    if lengths:
        output = pad_packed_sequence(output)[0]
    states = list(state) if isinstance(state, tuple) else [state]
    generator = torch.Generator().manual_seed(1)
    loss = sum(
        (t.double() * torch.randn(t.shape, generator=generator, dtype=torch.float64).to(x.device)).sum()
        for t in [output, *states]
    )
    loss.backward()
    return [output, *states, x.grad, *(p.grad for p in module.parameters())]


CASES = [  # cell, T, B, I, H, extra constructor arguments, packed lengths
    pytest.param("lstm", 1, 1, 8, 33, {}, None, id="lstm-T1-B1-H33"),
    pytest.param("lstm", 20, 7, 16, 100, {"num_layers": 2, "bidirectional": True}, None, id="lstm-2layer-bidir-H100"),
    pytest.param("lstm", 12, 5, 16, 64, {"proj_size": 24}, [4, 12, 1, 9, 9], id="lstm-proj-packed"),
    pytest.param("gru", 30, 16, 32, 257, {}, None, id="gru-H257"),
    pytest.param("gru", 10, 4, 8, 48, {"bidirectional": True}, [3, 10, 2, 7], id="gru-bidir-packed"),
    pytest.param("rnn_tanh", 16, 3, 8, 129, {"num_layers": 3}, None, id="rnn-3layer-H129"),
    pytest.param(
        "rnn_relu", 16, 3, 8, 65, {"nonlinearity": "relu", "bidirectional": True}, [9, 2, 16], id="relu-packed"
    ),
]  # packed lengths ragged and unsorted


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cell, steps, batch, input_size, hidden, extra, lengths", CASES)
def test_triton_matches_cudnn(cell, steps, batch, input_size, hidden, extra, lengths, dtype, monkeypatch):
    """Our error against torch.nn in float64 on the CPU (an oracle independent of fused_rnn's code) is at most twice
    cuDNN's in the same dtype."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cudnn = TORCH_CLASS[cell](input_size, hidden, **extra, device="cuda")
    exact = copy.deepcopy(cudnn).to("cpu", torch.float64)
    ours = fused_rnn.from_torch(cudnn, backend="triton").to(dtype)
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


@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU])
def test_repeated_runs_are_bit_identical_on_gpu(cls):
    module = cls(64, 96, num_layers=2, backend="triton", device="cuda", dtype=torch.bfloat16)
    x = torch.randn(50, 8, 64, device="cuda", dtype=torch.bfloat16)
    first = outputs_and_grads(module, x, None)
    for _ in range(3):
        for i, (a, b) in enumerate(zip(first, outputs_and_grads(module, x, None), strict=True)):
            assert torch.equal(a, b), f"tensor {i} differs between runs"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("torch_class", [nn.LSTM, nn.GRU])
def test_autocast_runs_in_the_autocast_dtype(torch_class, dtype):
    """torch.nn's cuDNN RNN runs in float16 under any CUDA autocast (even bfloat16); ours uses the autocast dtype."""
    cudnn = torch_class(16, 32, device="cuda")
    ours = fused_rnn.from_torch(cudnn)
    x = torch.randn(5, 3, 16, device="cuda")
    full_precision = cudnn(x)[0]
    with torch.autocast("cuda", dtype=dtype):
        cudnn_output, ours_output = cudnn(x)[0], ours(x)[0]
    assert ours_output.dtype == dtype
    if dtype == torch.float16:
        assert cudnn_output.dtype == dtype
    assert (ours_output.float() - full_precision).abs().max() < 5e-2


def test_cuda_move_and_auto_backend():
    module = fused_rnn.LSTM(8, 16).cuda()
    assert all(p.is_cuda for p in module.parameters())
    assert fused_rnn.available_backends()["triton"].startswith("available on CUDA")
    output, (h_n, c_n) = module(torch.randn(4, 2, 8, device="cuda"))
    assert output.is_cuda and h_n.shape == c_n.shape == (1, 2, 16)


@pytest.mark.parametrize("backend", ["auto", "triton"])  # auto: cuDNN's op traced into the graph
@pytest.mark.parametrize("layer", [fused_rnn.GRU, fused_rnn.LSTM], ids=["gru", "lstm"])
def test_torch_compile_fullgraph_on_gpu(layer, backend):
    torch._dynamo.reset()
    module = layer(16, 32, num_layers=2, device="cuda", backend=backend)
    x = torch.randn(10, 4, 16, device="cuda")
    eager = outputs_and_grads(module, x, None)
    compiled = outputs_and_grads(torch.compile(module, fullgraph=True), x, None)
    for i, (e, c) in enumerate(zip(eager, compiled, strict=True)):
        torch.testing.assert_close(c, e, atol=1e-4, rtol=1e-4, msg=f"tensor {i}")


CELL_CLASSES = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.RNNCell}


def _stepped(cell, x, state):
    """Three steps from `state` (the cell's remembered route from the second on): the states, then the gradients of a
    random weighted sum of them w.r.t. the input and every weight."""
    cell.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    states = []
    for _ in range(3):
        state = cell(x, state)
        states += list(state) if isinstance(state, tuple) else [state]
    generator = torch.Generator().manual_seed(1)
    loss = sum(
        (s.double() * torch.randn(s.shape, generator=generator, dtype=torch.float64).to(s.device)).sum() for s in states
    )
    loss.backward()
    return [*states, x.grad, *(p.grad for p in cell.parameters())]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cell", list(CELL_CLASSES))
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_cells_step_on_cuda_within_twice_torch_nn_error(cell, backend, dtype):
    """fused_rnn's cells stepped on CUDA (on "auto" the LSTMCell runs torch.nn's own cell op) against torch.nn's cell
    in float64 on the CPU, within twice the error of torch.nn's cell in the same dtype (matmuls without TF32, torch's
    default)."""
    reference = CELL_CLASSES[cell](24, 40, device="cuda")
    exact = copy.deepcopy(reference).to("cpu", torch.float64)
    ours = fused_rnn.from_torch(reference, backend=backend).to(dtype)
    reference = reference.to(dtype)
    x = torch.randn(5, 24, device="cuda")
    expected = [t.to("cuda") for t in _stepped(exact, x.to("cpu", torch.float64), None)]
    theirs = _stepped(reference, x.to(dtype), None)
    mine = _stepped(ours, x.to(dtype), None)
    for index, (e, t, m) in enumerate(zip(expected, theirs, mine, strict=True)):
        assert m.dtype == t.dtype, index
        assert_within_twice_torch_error(f"{cell} {backend} tensor {index}", e, m, t, FLOOR[dtype])


def _outputs_and_grads_with_graphs(module, x, replayed):
    """outputs_and_grads of `module` with its step loops replayed as CUDA graphs or run plainly."""
    from fused_rnn.backends import graphs

    enabled = graphs.ENABLED
    graphs.ENABLED = replayed
    try:
        return outputs_and_grads(module, x, None)
    finally:
        graphs.ENABLED = enabled


def _assert_identical(plain, replayed):
    for index, (p, r) in enumerate(zip(plain, replayed, strict=True)):
        assert torch.equal(p, r), f"tensor {index}: max diff {(p.double() - r.double()).abs().max().item():.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize(
    "layer, options",
    [(nn.LSTM, {}), (nn.GRU, {}), (nn.RNN, {}), (nn.LSTM, {"proj_size": 24}), (nn.LSTM, {"bidirectional": True})],
    ids=["lstm", "gru", "rnn", "lstm-proj", "lstm-bidir"],
)
def test_replayed_cuda_graphs_give_exactly_the_plain_loops_numbers(layer, options, dtype):
    """T=85: chunk graphs of 64, 16, 4 and 1 steps, captured on the first call, replayed on the second."""
    from fused_rnn.backends import graphs

    graphs.clear()
    module = fused_rnn.from_torch(layer(16, 48, **options), backend="triton").to("cuda", dtype)
    x = torch.randn(85, 3, 16, device="cuda", dtype=dtype)
    plain = _outputs_and_grads_with_graphs(module, x, replayed=False)
    for _ in range(2):
        _assert_identical(plain, _outputs_and_grads_with_graphs(module, x, replayed=True))
    assert graphs._entries and all(len(entry.graphs) == 4 for entry in graphs._entries.values())


def test_inside_a_users_cuda_graph_the_plain_loop_is_captured_with_it():
    from fused_rnn.backends import graphs

    graphs.clear()
    module = fused_rnn.GRU(8, 16, backend="triton").cuda()
    x = torch.randn(5, 2, 8, device="cuda")
    with torch.no_grad():
        expected = module(x)[0]
        graph = torch.cuda.CUDAGraph()
        static = torch.empty_like(expected)
        module(x)  # warm-up outside the capture
        graphs.clear()
        with torch.cuda.graph(graph):
            static.copy_(module(x)[0])
        graph.replay()
    torch.cuda.synchronize()
    assert not graphs._entries  # nothing captured inside the user's capture
    torch.testing.assert_close(static, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_the_cuda_drivers_replayed_calls_give_exactly_its_plain_numbers(layer, dtype):
    """The C++ step loop's calls captured whole (the second call of a signature) and replayed (the third)."""
    from fused_rnn.backends import graphs

    graphs.clear()
    module = fused_rnn.from_torch(layer(16, 48), backend="cuda").to("cuda", dtype)
    x = torch.randn(50, 3, 16, device="cuda", dtype=dtype)
    plain = _outputs_and_grads_with_graphs(module, x, replayed=False)
    for _ in range(3):
        _assert_identical(plain, _outputs_and_grads_with_graphs(module, x, replayed=True))
    calls = [call for call in graphs._calls.values() if call is not None]
    assert len(calls) == 2 and all(call.graph not in (None, graphs._NOT_CAPTURABLE) for call in calls)
