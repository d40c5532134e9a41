"""Working where a PyTorch user takes the layers: torch.compile, double backward, determinism,
DDP, pickling, dtype moves and autocast."""

import contextlib
import copy
import io
import os
import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fused_rnn
from fused_rnn import functional

from checks import DEVICE, TOLERANCE, assert_close
from layers import layer_weights, sequence_inputs

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


class ThreeLayers(nn.Module):
    """One of each recurrent layer, batch-first, with a linear head."""

    def __init__(self, backend):
        super().__init__()
        self.lstm = fused_rnn.LSTM(3, 6, batch_first=True, proj_size=4, backend=backend)
        self.gru = fused_rnn.GRU(4, 5, batch_first=True, bidirectional=True, backend=backend)
        self.rnn = fused_rnn.RNN(10, 4, batch_first=True, nonlinearity="relu", backend=backend)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x, (h, _) = self.lstm(x)
        x, _ = self.gru(x)
        x, _ = self.rnn(x)
        return self.head(x).sum() + h.square().sum()


def loss_and_gradients(model, x):
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    loss = model(x)
    loss.backward()
    return [loss.detach(), x.grad, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_matches_eager(compile_backend, backend):
    """fullgraph=True raises on any graph break, so passing proves the fused layers trace whole."""
    torch._dynamo.reset()
    device = DEVICE if backend == "triton" else "cpu"
    model = ThreeLayers(backend).to(device)
    x = torch.randn(2, 5, 3, device=device)
    eager = loss_and_gradients(model, x)
    # Compile for real: torch's on-disk caches do not key on a custom op's schema, so an entry left by
    # another version of fused_rnn would be replayed against today's ops.
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled = loss_and_gradients(torch.compile(model, fullgraph=True, backend=compile_backend), x)
    for i, (e, c) in enumerate(zip(eager, compiled, strict=True)):
        assert_close(f"tensor {i}", e, c, *TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_no_graph_breaks(backend):
    torch._dynamo.reset()
    device = DEVICE if backend == "triton" else "cpu"
    explanation = torch._dynamo.explain(ThreeLayers(backend).to(device))(torch.randn(2, 5, 3, device=device))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


class OpNames(TorchDispatchMode):
    """Records the name of every op dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# Each layer family on a fused backend that runs on CPU here, and the name of its registered ops.
FAMILIES = {
    "lstm": (lambda: fused_rnn.LSTM(3, 5, num_layers=2, backend="triton"), "sequence"),
    "indrnn": (lambda: fused_rnn.IndRNN(3, 5, num_layers=2, backend="triton"), "indrnn"),
    "layernorm": (lambda: fused_rnn.LayerNormLSTM(3, 5, num_layers=2, backend="triton"), "layernorm_rnn"),
    "slstm": (lambda: fused_rnn.sLSTM(3, 6, num_heads=2, backend="triton"), "multihead"),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("family", FAMILIES)
def test_dispatch_modes_see_the_registered_ops(family, requires_grad):
    """Eager calls skip the registered ops' dispatch for speed (fused_rnn.eager); a dispatch mode (a FLOP counter,
    fake tensors) must still see each family's ops, and get what eager mode gets."""
    build, op = FAMILIES[family]
    module = build().to(DEVICE)
    x = torch.randn(4, 2, 3, device=DEVICE, requires_grad=requires_grad)
    results = []
    for mode in (contextlib.nullcontext(), OpNames()):
        module.zero_grad(set_to_none=True)
        x.grad = None
        with mode:
            output, state = module(x)
            if requires_grad:
                (output.sum() + (state[0] if isinstance(state, tuple) else state).sum()).backward()
        grads = [x.grad, *(p.grad for p in module.parameters())] if requires_grad else []
        results.append([output, *grads])
    assert f"fused_rnn.{op}_forward" in mode.names
    assert (f"fused_rnn.{op}_backward" in mode.names) == requires_grad
    for i, (eager, seen) in enumerate(zip(*results, strict=True)):
        assert torch.equal(eager, seen), f"tensor {i} differs under the dispatch mode"


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward_through_fused_path(cell):
    """create_graph=True recomputes through the reference, so second derivatives are exact."""
    weights = layer_weights(cell, 2, 3, device=DEVICE)
    x, h0, c0, _ = sequence_inputs(cell, 3, 2, 2, 3, device=DEVICE)
    if cell == "rnn_relu":  # away from relu's kink, where finite differences are wrong
        with torch.no_grad():
            weights[2].add_(2.0)

    def run(*leaves):
        return tuple(o for o in functional.sequence(cell, *leaves, None, False, "triton") if o is not None)

    assert torch.autograd.gradgradcheck(run, [x, h0, c0, *weights], fast_mode=True)


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward_on_auto_in_float32(cell):
    """On CPU "auto" runs torch.nn's oneDNN kernels: their second derivatives in float32 agree with the float64
    reference's to float32 precision, across layers, directions and packing."""
    torch_class = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell, nn.RNN)
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    torch_module = torch_class(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    lengths = [5, 2, 4]
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    penalties = []
    for module in (fused_rnn.from_torch(torch_module, backend="reference"), fused_rnn.from_torch(torch_module).float()):
        inputs = x.to(next(module.parameters()).dtype).requires_grad_()
        packed = pack_padded_sequence(inputs, lengths, enforce_sorted=False)
        (grad_input,) = torch.autograd.grad(module(packed)[0].data.sin().sum(), inputs, create_graph=True)
        penalties.append(torch.autograd.grad(grad_input.square().sum(), list(module.parameters())))
    for (name, _), exact, ours in zip(torch_module.named_parameters(), *penalties, strict=True):
        relative = ((ours.double() - exact).norm() / exact.norm()).item()
        assert relative < 1e-5, f"{name}: second-derivative relative error {relative:.2e}"


def test_gradient_penalty_matches_torch_nn():
    """A WGAN-style gradient penalty (which cuDNN cannot differentiate) equals the one through torch.nn on CPU."""
    torch_module = nn.GRU(3, 4, num_layers=2, dtype=torch.float64)
    fused = fused_rnn.from_torch(torch_module, backend="triton").to(DEVICE)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    penalties = []
    for module in (torch_module, fused):
        module.zero_grad(set_to_none=True)
        inputs = x.to(next(module.parameters()).device).requires_grad_()
        (grad_input,) = torch.autograd.grad(module(inputs)[0].sum(), inputs, create_graph=True)
        penalty = grad_input.square().sum()
        penalty.backward()
        penalties.append([penalty.detach(), *(p.grad for p in module.parameters())])
    for i, (e, o) in enumerate(zip(*penalties, strict=True)):
        assert_close(f"penalty tensor {i}", e, o.cpu(), *TOLERANCE[torch.float64])


def test_repeated_runs_are_bit_identical():
    model = ThreeLayers("triton").to(DEVICE)
    x = torch.randn(3, 6, 3, device=DEVICE)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = loss_and_gradients(model, x)
        for _ in range(2):
            for i, (a, b) in enumerate(zip(first, loss_and_gradients(model, x), strict=True)):
                assert torch.equal(a, b), f"tensor {i} differs between runs"
    finally:
        torch.use_deterministic_algorithms(previous)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, state, inputs, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = ThreeLayers("triton").to(inputs.device)
        model.load_state_dict(state)
        ddp = nn.parallel.DistributedDataParallel(model)
        ddp(inputs[rank]).backward()
        if rank == 0:
            torch.save([p.grad for p in model.parameters()], result_path)
        dist.barrier()  # as in test_deploy's FSDP worker: no rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()
    # torch 2.14.1 + gloo sometimes aborts a rank in interpreter teardown after all of this is done (see the FSDP
    # worker in test_deploy.py, which measured it with torch.nn's own layers too); the results are written.
    os._exit(0)


def test_distributed_data_parallel_gradients_equal_single_process(tmp_path):
    world_size = 2
    model = ThreeLayers("triton").to(DEVICE)
    inputs = torch.randn(world_size, 2, 4, 3, device=DEVICE)
    single = loss_and_gradients(model, inputs.flatten(0, 1))[2:]
    # The loss sums over the batch and DDP averages the ranks' gradients: times world_size, the full-batch gradient.
    result_path = tmp_path / "gradients.pt"
    mp.start_processes(
        _ddp_worker,
        args=(world_size, _free_port(), model.state_dict(), inputs, result_path),
        nprocs=world_size,
        start_method="spawn",
    )
    distributed = torch.load(result_path)
    for (name, _), s, d in zip(model.named_parameters(), single, distributed, strict=True):
        assert_close(f"grad {name}", s, d * world_size, *TOLERANCE[torch.float32])


@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.RNN, fused_rnn.LSTMCell])
def test_pickle_save_load_and_deepcopy(cls):
    module = cls(3, 4, backend="reference")
    x = torch.randn(2, 3)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    copies = [torch.load(buffer, weights_only=False), copy.deepcopy(module), pickle.loads(pickle.dumps(module))]
    expected = module(x)
    for restored in copies:
        assert type(restored) is cls and restored.backend == "reference"
        for e, o in zip(
            torch.utils._pytree.tree_leaves(expected), torch.utils._pytree.tree_leaves(restored(x)), strict=True
        ):
            assert torch.equal(e, o)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("move", ["method", "to"])
def test_dtype_moves_like_torch_nn(move, dtype):
    torch_module = nn.LSTM(3, 8, num_layers=2, device=DEVICE)
    fused = fused_rnn.from_torch(torch_module, backend="triton")
    method = {torch.float16: "half", torch.bfloat16: "bfloat16"}[dtype]
    for module in (torch_module, fused):
        getattr(module, method)() if move == "method" else module.to(dtype)
    assert all(p.dtype == dtype for p in fused.parameters())
    assert [p.data_ptr() for p in fused._flat_weights] == [p.data_ptr() for p in fused.parameters()]
    x = torch.randn(4, 2, 3, device=DEVICE)
    output, (h_n, c_n) = fused(x.to(dtype))
    assert output.dtype == h_n.dtype == c_n.dtype == dtype
    exact = fused_rnn.from_torch(torch_module.double(), backend="reference")(x.double())[0]
    assert (output.double() - exact).abs().max() < 2e-2


@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.RNN, fused_rnn.GRUCell])
def test_cpu_autocast_runs_in_bfloat16(cls):
    """Under autocast the layers compute in the autocast dtype, from float32 parameters and input."""
    module = cls(3, 8)  # autocast casting happens before any backend runs
    x = torch.randn(4, 2, 3) if cls is not fused_rnn.GRUCell else torch.randn(2, 3)
    expected = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = module(x)
    expected, ours = (torch.utils._pytree.tree_leaves(r)[0] for r in (expected, ours))
    assert ours.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert (ours.float() - expected).abs().max() < 3e-2
    ours.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in module.parameters())


AUTOCAST_CASES = [
    pytest.param(fused_rnn.LSTM, nn.LSTM, lambda h: (h, h.clone()), id="LSTM"),
    pytest.param(fused_rnn.GRU, nn.GRU, lambda h: h, id="GRU"),
    pytest.param(fused_rnn.RNN, nn.RNN, lambda h: h, id="RNN"),
    pytest.param(fused_rnn.LSTMCell, nn.LSTMCell, lambda h: (h[0], h[0].clone()), id="LSTMCell"),
    pytest.param(fused_rnn.GRUCell, nn.GRUCell, lambda h: h[0], id="GRUCell"),
    pytest.param(fused_rnn.RNNCell, nn.RNNCell, lambda h: h[0], id="RNNCell"),
]


@pytest.mark.parametrize("fused_class, torch_class, make_hx", AUTOCAST_CASES)
def test_autocast_accepts_a_float32_hx_beside_a_lower_precision_input(fused_class, torch_class, make_hx):
    """Inside autocast an fp32 hx meets a bf16 input (from an earlier autocast op): torch.nn casts both, so must we.

    The result is checked against torch.nn in float64 on the same bf16-rounded values."""
    module = fused_class(3, 8)
    is_cell = issubclass(torch_class, nn.RNNCellBase)
    x = torch.randn(2, 3) if is_cell else torch.randn(4, 2, 3)
    hx = make_hx(torch.randn(1, 2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = module(x.bfloat16(), hx)
    exact_module = torch_class(3, 8, dtype=torch.float64)
    exact_module.load_state_dict({k: v.bfloat16().double() for k, v in module.state_dict().items()})
    rounded = lambda t: t.bfloat16().double()
    exact = exact_module(rounded(x), torch.utils._pytree.tree_map(rounded, hx))
    for e, o in zip(torch.utils._pytree.tree_leaves(exact), torch.utils._pytree.tree_leaves(ours), strict=True):
        assert o.dtype == torch.bfloat16
        assert ((o.double() - e).norm() / e.norm()).item() < 2e-2
    # Outside autocast the mismatch is the user's mistake, and says so.
    with pytest.raises(TypeError, match=r"(h_0|hx|hx\[0\]) has dtype torch.float32 but input has torch.bfloat16"):
        module(x.bfloat16(), hx)
