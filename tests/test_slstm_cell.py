"""sLSTMCell: one sLSTM step as a torch.nn-style cell. Every backend (the Triton step kernel under the interpreter on
CPU, the torch step path, the reference) against a float64 step written out here per head; T steps against the sLSTM
layer; gradcheck, double backward, torch.compile, unbatched input, state_dict and init, weights_only loading,
errors."""

import io

import pytest
import torch

import fused_rnn
from fused_rnn.backends import native
from fused_rnn.backends.triton import multihead as triton_steps
from fused_rnn.multihead import torch_steps

from checks import DEVICE, TOLERANCE, assert_close, gradients

# With the compiled kernels (csrc/cpu/multihead.cpp): "cpu" too on CPU tensors.
BACKENDS = ["reference", "torch", "triton", *(["cpu"] if DEVICE.type == "cpu" and native.unavailable() is None else [])]
SHAPES = [  # T, B, I, num_heads, head_dim
    pytest.param(1, 1, 1, 1, 1, id="T1-B1-I1-NH1-DH1"),
    pytest.param(3, 3, 5, 2, 3, id="T3-B3-I5-NH2-DH3"),
    pytest.param(2, 2, 4, 3, 5, id="T2-B2-I4-NH3-DH5"),
]
STATE = ("h", "c", "n", "m")


def plain_step(x, state, weight_ih, weight_hh, bias, forget_gate):
    """One step of the xLSTM paper's stabilized sLSTM, the recurrent product head by head; gates i, f, z, o, each
    gate-major over the heads. An empty state (n = 0) takes m = i~, as FlashRNN's."""
    h, c, n, m = state
    heads, _, head_dim = weight_hh.shape
    batch = x.shape[0]
    per_head = [h[:, k * head_dim : (k + 1) * head_dim] @ weight_hh[k].T for k in range(heads)]
    recurrent = torch.cat([r.view(batch, 4, head_dim) for r in per_head], dim=2).reshape(batch, -1)
    pre = x @ weight_ih.T + recurrent + (bias if bias is not None else 0)
    i, f, z, o = pre.chunk(4, dim=1)
    log_f = torch.log(torch.sigmoid(f)) if forget_gate == "sigmoid" else f
    empty = n == 0
    m_new = torch.where(empty, i, torch.maximum(log_f + m, i))
    f_gate = torch.where(empty, torch.zeros_like(m), torch.exp(log_f + m - m_new))
    i_gate = torch.exp(i - m_new)
    c_new = f_gate * c + i_gate * torch.tanh(z)
    n_new = f_gate * n + i_gate
    return torch.sigmoid(o) * c_new / n_new, c_new, n_new, m_new


def make_cell(input_size, heads, head_dim, backend, *, forget_gate="sigmoid", bias=True):
    """A float64 cell with random weights (the bias too: its init leaves the i, z, o parts zero)."""
    cell = fused_rnn.sLSTMCell(
        input_size, heads * head_dim, bias, num_heads=heads, forget_gate=forget_gate, backend=backend
    )
    cell = cell.double().to(DEVICE)
    with torch.no_grad():
        for parameter in cell.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.7)
    return cell


def random_state(batch, hidden):
    """(h, c, n, m) leaves; n in [1, 2), as the cell's own states are once a step has run."""
    state = [torch.randn(batch, hidden, dtype=torch.float64) for _ in STATE]
    state[2] = torch.rand(batch, hidden, dtype=torch.float64) + 1
    return tuple(s.to(DEVICE).requires_grad_() for s in state)


def step_through(step, x, state):
    """Steps over x (T, B, I) from state; returns the T outputs stacked and the final state."""
    outputs = []
    for x_t in x:
        state = step(x_t, state)
        outputs.append(state[0])
    return torch.stack(outputs), state


@pytest.mark.parametrize("initial", ["zero", "given"])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("steps, batch, input_size, heads, head_dim", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_match_a_plain_float64_loop(backend, steps, batch, input_size, heads, head_dim, forget_gate, initial):
    cell = make_cell(input_size, heads, head_dim, backend, forget_gate=forget_gate)
    hidden = heads * head_dim
    x = torch.randn(steps, batch, input_size, dtype=torch.float64, device=DEVICE, requires_grad=True)
    state = random_state(batch, hidden) if initial == "given" else None
    zero = tuple(torch.zeros(batch, hidden, dtype=torch.float64, device=DEVICE) for _ in STATE)
    weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih)
    expected, expected_state = step_through(
        lambda x_t, s: plain_step(x_t, s, *weights, forget_gate), x, state if state is not None else zero
    )
    output, final = step_through(cell, x, state)
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", expected, output, atol, rtol)
    for name, e, o in zip(STATE, expected_state, final, strict=True):
        assert_close(f"{name}'", e, o, atol, rtol)
    leaves = [x, *(state or ()), *cell.parameters()]
    for index, (e, o) in enumerate(
        zip(gradients([expected, *expected_state], leaves), gradients([output, *final], leaves), strict=True)
    ):
        assert_close(f"grad {index}", e, o, atol, rtol)


@pytest.mark.parametrize("backend, kernel", [("torch", torch_steps), ("triton", triton_steps)], ids=["torch", "triton"])
def test_the_step_runs_on_the_backend_asked_for(backend, kernel, monkeypatch):
    """ "torch" runs the torch step path, "triton" the Triton step kernel."""
    calls = []
    forward_step = kernel.forward_step
    monkeypatch.setattr(kernel, "forward_step", lambda cell, *args: calls.append(cell) or forward_step(cell, *args))
    cell = make_cell(3, 2, 2, backend)
    cell(torch.randn(2, 3, dtype=torch.float64, device=DEVICE))
    assert calls == ["slstm"]


@pytest.mark.skipif(DEVICE.type != "cpu" or native.unavailable() is not None, reason="needs the compiled CPU kernels")
def test_auto_on_cpu_runs_the_compiled_kernel(monkeypatch):
    calls = []
    ops = native.ops()

    class Recording:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ops, name)

    monkeypatch.setattr(native, "ops", Recording)
    make_cell(3, 2, 2, "auto")(torch.randn(2, 3, dtype=torch.float64))
    assert calls == ["product", "multihead_recurrence_forward"]  # the input projection, then the step loop


def cell_function(cell):
    """The cell as a function of (x, h, c, n, m, weight_ih, weight_hh, bias_ih) returning the new state."""
    names = [name for name, _ in cell.named_parameters()]

    def run(x, h, c, n, m, *parameters):
        return torch.func.functional_call(cell, dict(zip(names, parameters)), (x, (h, c, n, m)))

    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    cell = make_cell(3, 2, 2, backend)
    inputs = (torch.randn(2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True), *random_state(2, 4))
    parameters = tuple(p.detach().clone().requires_grad_() for p in cell.parameters())
    assert torch.autograd.gradcheck(cell_function(cell), (*inputs, *parameters), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_double_backward(backend):
    cell = make_cell(2, 2, 1, backend)
    inputs = (torch.randn(2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True), *random_state(2, 2))
    parameters = tuple(p.detach().clone().requires_grad_() for p in cell.parameters())
    assert torch.autograd.gradgradcheck(cell_function(cell), (*inputs, *parameters), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_compile_fullgraph_matches_eager_without_graph_breaks(backend):
    torch._dynamo.reset()
    cell = make_cell(3, 2, 3, backend)
    x = torch.randn(3, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def loss(x):
        output, (h, c, n, m) = step_through(cell, x, None)
        return output.square().sum() + h.sum() + c.sum() + n.sum() + m.sum()

    explanation = torch._dynamo.explain(loss)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_loss, compiled_loss = loss(x), compiled(x)
    eager_grads = torch.autograd.grad(eager_loss, [x, *cell.parameters()])
    compiled_grads = torch.autograd.grad(compiled_loss, [x, *cell.parameters()])
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("loss", eager_loss, compiled_loss, atol, rtol)
    for index, (e, c) in enumerate(zip(eager_grads, compiled_grads, strict=True)):
        assert_close(f"grad {index}", e, c, atol, rtol)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_t_steps_equal_the_slstm_layer_loaded_from_the_same_state_dict(backend, forget_gate):
    layer = fused_rnn.sLSTM(4, 6, num_heads=2, forget_gate=forget_gate, backend=backend).double().to(DEVICE)
    with torch.no_grad():
        layer.bias_ih_l0.add_(torch.randn_like(layer.bias_ih_l0))
    cell = fused_rnn.sLSTMCell(4, 6, num_heads=2, forget_gate=forget_gate, backend=backend).double().to(DEVICE)
    cell.load_state_dict({name.removesuffix("_l0"): value for name, value in layer.state_dict().items()})
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    state = random_state(3, 6)
    expected, expected_state = layer(x, tuple(s.unsqueeze(0) for s in state))
    output, final = step_through(cell, x, state)
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", expected, output, atol, rtol)
    for name, e, o in zip(STATE, expected_state, final, strict=True):
        assert_close(f"{name}_n", e.squeeze(0), o, atol, rtol)
    wrt = [x, *state]
    expected_grads = gradients([expected, *expected_state], [*wrt, *layer.parameters()])
    our_grads = gradients([output, *(f.unsqueeze(0) for f in final)], [*wrt, *cell.parameters()])
    for index, (e, o) in enumerate(zip(expected_grads, our_grads, strict=True)):
        assert_close(f"grad {index}", e, o, atol, rtol)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_unbatched_input_and_state_are_one_batch_row(backend):
    cell = make_cell(3, 2, 2, backend)
    x = torch.randn(3, dtype=torch.float64, device=DEVICE)
    state = tuple(s.detach()[0] for s in random_state(1, 4))
    for hx in (None, state):
        unbatched = cell(x, hx)
        batched = cell(x.unsqueeze(0), None if hx is None else tuple(s.unsqueeze(0) for s in hx))
        for name, u, b in zip(STATE, unbatched, batched, strict=True):
            assert u.shape == (4,), f"{name}: shape {tuple(u.shape)}"
            assert torch.equal(u, b.squeeze(0)), name


def test_parameters_init_and_repr():
    cell = fused_rnn.sLSTMCell(10, 400, num_heads=4)
    assert [(name, tuple(p.shape)) for name, p in cell.named_parameters()] == [
        ("weight_ih", (1600, 10)),
        ("weight_hh", (4, 400, 100)),
        ("bias_ih", (1600,)),
    ]
    bound = 400**-0.5
    for name in ("weight_ih", "weight_hh"):
        parameter = getattr(cell, name)
        assert -bound <= parameter.min() and parameter.max() <= bound, name
        assert parameter.max() - parameter.min() > 1.9 * bound, f"{name} does not span its range"
    by_gate = cell.bias_ih.detach().view(4, 4, 100)
    assert torch.equal(by_gate[[0, 2, 3]], torch.zeros_like(by_gate[[0, 2, 3]]))
    assert torch.allclose(by_gate[1], torch.linspace(3, 6, 100).expand(4, 100))
    assert [name for name, _ in fused_rnn.sLSTMCell(3, 4, bias=False).named_parameters()] == ["weight_ih", "weight_hh"]
    assert repr(fused_rnn.sLSTMCell(3, 4, False, num_heads=2, forget_gate="exp")) == (
        "sLSTMCell(3, 4, bias=False, num_heads=2, forget_gate='exp')"
    )


def test_loads_with_weights_only():
    """fused_rnn registers the cell as a safe global, as the other modules it exports."""
    assert "sLSTMCell" in fused_rnn.__all__
    cell = fused_rnn.sLSTMCell(3, 4, num_heads=2)
    buffer = io.BytesIO()
    torch.save(cell, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert type(loaded) is fused_rnn.sLSTMCell and loaded.num_heads == 2
    for name, parameter in cell.named_parameters():
        assert torch.equal(parameter, getattr(loaded, name)), name


def test_bad_input_is_rejected_with_named_errors():
    cell = fused_rnn.sLSTMCell(3, 4, num_heads=2).double()
    x = torch.zeros(2, 3, dtype=torch.float64)
    state = tuple(torch.zeros(2, 4, dtype=torch.float64) for _ in STATE)
    cases = [
        (ValueError, "input.size\\(-1\\) must be equal to input_size. Expected 3, got 5", (torch.zeros(2, 5),)),
        (ValueError, "sLSTMCell: Expected input to be 1D or 2D, got 3D", (torch.zeros(1, 2, 3),)),
        (TypeError, "input must be a Tensor", ([1.0, 2.0, 3.0],)),
        (TypeError, "hx must be a tuple \\(h, c, n, m\\) for sLSTMCell, got Tensor", (x, state[0])),
        (ValueError, "hx must be a tuple \\(h, c, n, m\\) for sLSTMCell, got 2", (x, state[:2])),
        (TypeError, "hx's n must be a Tensor, got NoneType", (x, (*state[:2], None, state[3]))),
        (
            ValueError,
            "hx's c must have shape \\(2, 4\\), got \\(2, 5\\)",
            (x, (state[0], torch.zeros(2, 5), *state[2:])),
        ),
        (ValueError, "hx's h must have shape \\(4,\\), got \\(2, 4\\)", (x[0], state)),
        (ValueError, "hx's m must have shape \\(2, 4\\), got \\(4,\\)", (x, (*state[:3], state[3][0]))),
        (TypeError, "m0 has dtype torch.float32", (x, (*state[:3], state[3].float()))),
    ]
    for error, message, arguments in cases:
        with pytest.raises(error, match=message):
            cell(*arguments)
    constructors = [
        ("hidden_size must be divisible by num_heads, got hidden_size=10, num_heads=3", {"num_heads": 3}),
        ("num_heads must be a positive integer", {"num_heads": 0}),
        ("forget_gate must be 'sigmoid' or 'exp'", {"forget_gate": "tanh"}),
        ("backend must be one of", {"backend": "persistent"}),
    ]
    for message, options in constructors:
        with pytest.raises(ValueError, match=message):
            fused_rnn.sLSTMCell(3, 10, **options)
    with pytest.raises(ValueError, match="input_size must be a positive integer"):
        fused_rnn.sLSTMCell(0, 4)
