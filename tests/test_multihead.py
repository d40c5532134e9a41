"""The multi-head cells (sLSTM, MultiHeadLSTM, MultiHeadGRU): the Triton kernels (interpreter on CPU), the compiled
CPU kernel and the torch step path against the reference; the reference against plain loops written here and against
torch.nn with the block-diagonal weight spelled out; the stabilizer; gradcheck, double backward, torch.compile, low
precision, state carried across calls, errors."""

from types import SimpleNamespace

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn.backends import native
from fused_rnn.multihead import functional

from checks import DEVICE, TOLERANCE, assert_close, gradients
from layers import packed_batch_sizes

CELLS = ["slstm", "lstm", "gru"]
GATES = {"lstm": 4, "gru": 3, "slstm": 4}
STATE_NAMES = {"lstm": ["h", "c"], "gru": ["h"], "slstm": ["h", "c", "n", "m"]}
FUSED = ["triton", "torch"]
# With the compiled kernels (csrc/cpu/multihead.cpp): "cpu" too, in float32 and float64 on CPU tensors.
# The compiled step loop of backend "cuda" on CUDA tensors; on CPU tensors "cuda-steps-on-host" runs that path's
# driver with its kernel's bodies on the host (the ops multihead_recurrence_*_step_loop; see runnable).
COMPILED_HERE = native.unavailable() is None and (DEVICE.type == "cpu" or native.built_with_cuda())
COMPILED = (["cpu", "cuda-steps-on-host"] if DEVICE.type == "cpu" else ["cuda"]) if COMPILED_HERE else []
FUSED_FP32_FP64 = [*FUSED, *COMPILED]
FUSED_LOW_PRECISION = [*FUSED, *(backend for backend in COMPILED if backend != "cpu")]


def runnable(backend, monkeypatch):
    """`backend` itself, or for "cuda-steps-on-host" "auto", which then runs the CUDA backend's path with the step
    loop ops in place of the kernel launches (every other backend asked for runs as usual)."""
    if backend != "cuda-steps-on-host":
        return backend
    ops = native.ops()
    loops = SimpleNamespace(
        multihead_recurrence_forward=ops.multihead_recurrence_forward_step_loop,
        multihead_recurrence_backward=ops.multihead_recurrence_backward_step_loop,
    )
    monkeypatch.setattr(native, "ops", lambda: loops)
    chosen = functional.chosen_backend
    monkeypatch.setattr(functional, "chosen_backend", lambda b, *rest: "cuda" if b == "auto" else chosen(b, *rest))
    return "auto"


SHAPES = [  # T, B, I, num_heads, head_dim
    pytest.param(1, 1, 1, 1, 1, id="T1-B1-I1-NH1-DH1"),
    pytest.param(1, 3, 5, 2, 3, id="T1-B3-I5-NH2-DH3"),
    pytest.param(5, 1, 3, 3, 5, id="T5-B1-I3-NH3-DH5"),
    pytest.param(4, 3, 4, 1, 13, id="T4-B3-I4-NH1-DH13"),
    # Enough work per head for the compiled kernel to give heads to both threads; head_dim past a SIMD vector.
    pytest.param(3, 4, 6, 4, 37, id="T3-B4-I6-NH4-DH37"),
    # One tile of 4 rows and 2 rows outside it in the compiled kernel's recurrent product; 12 gate rows per head.
    pytest.param(2, 6, 3, 2, 3, id="T2-B6-I3-NH2-DH3"),
]


def block_diagonal(weight_hh, gates):
    """The full (G * H, H) recurrent matrix that the per-head blocks (num_heads, G * head_dim, head_dim) stand for."""
    heads, _, head_dim = weight_hh.shape
    per_gate = [
        torch.block_diag(*(weight_hh[k, g * head_dim : (g + 1) * head_dim] for k in range(heads))) for g in range(gates)
    ]
    return torch.cat(per_gate)


def plain_slstm(x, state, weight_ih, weight_hh, bias, forget_gate="sigmoid"):
    """The xLSTM paper's stabilized sLSTM over padded (T, B, I) input, written out independently of fused_rnn; an
    empty state (n = 0) takes m = i~, as FlashRNN's."""
    h, c, n, m = state
    recurrent = block_diagonal(weight_hh, 4)
    outputs = []
    for x_t in x:
        pre = x_t @ weight_ih.T + h @ recurrent.T + (bias if bias is not None else 0)
        i, f, z, o = pre.split(pre.shape[1] // 4, dim=1)
        log_f = torch.log(torch.sigmoid(f)) if forget_gate == "sigmoid" else f
        empty = n == 0
        m_new = torch.where(empty, i, torch.maximum(log_f + m, i))
        f_gate = torch.where(empty, torch.zeros_like(m), torch.exp(log_f + m - m_new))
        i_gate = torch.exp(i - m_new)
        c = f_gate * c + i_gate * torch.tanh(z)
        n = f_gate * n + i_gate
        m = m_new
        h = torch.sigmoid(o) * c / n
        outputs.append(h)
    return torch.stack(outputs), (h, c, n, m)


def unstabilized_slstm_output(x, state, weight_ih, weight_hh, bias):
    """h of the paper's sLSTM without the stabilizer: i = exp(i~), C = f C + i z, N = f N + i, h = o C / N, from the
    unstabilized state C = c exp(m), N = n exp(m)."""
    h, c, n, m = state
    big_c, big_n = c * torch.exp(m), n * torch.exp(m)
    recurrent = block_diagonal(weight_hh, 4)
    outputs = []
    for x_t in x:
        pre = x_t @ weight_ih.T + h @ recurrent.T + bias
        i, f, z, o = pre.split(pre.shape[1] // 4, dim=1)
        big_c = torch.sigmoid(f) * big_c + torch.exp(i) * torch.tanh(z)
        big_n = torch.sigmoid(f) * big_n + torch.exp(i)
        h = torch.sigmoid(o) * big_c / big_n
        outputs.append(h)
    return torch.stack(outputs)


def plain_oracle(cell, x, state, weight_ih, weight_hh, bias_ih, bias_hh):
    """sLSTM: plain_slstm; LSTM/GRU: torch.nn's layer holding these weights, the recurrent one as its full
    block-diagonal matrix."""
    if cell == "slstm":
        return plain_slstm(x, state, weight_ih, weight_hh, bias_ih)
    hidden = weight_hh.shape[0] * weight_hh.shape[2]
    layer_type = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    layer = layer_type(weight_ih.shape[1], hidden, bias=bias_ih is not None, dtype=weight_ih.dtype)
    weights = {"weight_ih_l0": weight_ih, "weight_hh_l0": block_diagonal(weight_hh, GATES[cell])}
    if bias_ih is not None:
        weights.update(bias_ih_l0=bias_ih, bias_hh_l0=bias_hh)
    hx = tuple(s.unsqueeze(0) for s in state) if cell == "lstm" else state[0].unsqueeze(0)
    output, final = torch.func.functional_call(layer, weights, (x, hx))
    return output, tuple(f.squeeze(0) for f in (final if cell == "lstm" else (final,)))


def leaves(cell, steps, batch, input_size, heads, head_dim, *, rows=None, bias=True, dtype=torch.float64):
    """(x, state tuple, weight_ih, weight_hh, bias_ih, bias_hh) requiring grad; n0 in [1, 2) as the layer's own
    states are (n >= 1 once a step has run)."""
    hidden, gates = heads * head_dim, GATES[cell]
    make = lambda *shape: torch.randn(shape, dtype=torch.float64)
    x = make(rows, input_size) if rows is not None else make(steps, batch, input_size)
    state = [make(batch, hidden) for _ in STATE_NAMES[cell]]
    if cell == "slstm":
        state[2] = torch.rand(batch, hidden, dtype=torch.float64) + 1
    weights = [make(gates * hidden, input_size) * hidden**-0.5, make(heads, gates * head_dim, head_dim) * 0.7]
    biases = [make(gates * hidden) if bias else None, make(gates * hidden) if bias and cell != "slstm" else None]
    to = lambda t: t.to(dtype=dtype, device=DEVICE).requires_grad_() if t is not None else None
    return to(x), tuple(map(to, state)), *map(to, weights), *map(to, biases)


def detached(tensors):
    x, state, *weights = tensors
    return x.detach(), tuple(s.detach() for s in state), *(w.detach() if w is not None else None for w in weights)


def flat(tensors):
    x, state, *weights = tensors
    return [x, *state, *weights]


def outputs_and_gradients(cell, backend, tensors, batch_sizes=None, reverse=False, forget_gate="sigmoid"):
    x, state, *weights = tensors
    output, final = functional.run(
        cell, x, state, *weights, forget_gate=forget_gate, batch_sizes=batch_sizes, reverse=reverse, backend=backend
    )
    outputs = [output, *final]
    return outputs, gradients(outputs, flat(tensors))


def assert_match(expected, actual, dtype, cell):
    atol, rtol = TOLERANCE[dtype]
    (ref, ref_grads), (ours, our_grads) = expected, actual
    for name, r, o in zip(["output", *(f"{s}_n" for s in STATE_NAMES[cell])], ref, ours, strict=True):
        assert_close(name, r, o, atol, rtol)
    names = ["input", *(f"{s}0" for s in STATE_NAMES[cell]), "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    for name, r, o in zip(names, ref_grads, our_grads, strict=True):
        assert_close(f"grad {name}", r, o, atol, rtol)


@pytest.mark.parametrize("steps, batch, input_size, heads, head_dim", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_reference_matches_the_plain_loop_and_torch_nn(cell, steps, batch, input_size, heads, head_dim):
    """sLSTM: the paper's equations typed out here; LSTM/GRU: torch.nn's layer with the block-diagonal matrix."""
    tensors = leaves(cell, steps, batch, input_size, heads, head_dim)
    x, state, *weights = tensors
    output, final = plain_oracle(cell, x, state, *weights)
    expected = [output, *final]
    assert_match(
        (expected, gradients(expected, flat(tensors))),
        outputs_and_gradients(cell, "reference", tensors),
        torch.float64,
        cell,
    )


@pytest.mark.parametrize(
    "reverse, dtype", [(False, torch.float32), (True, torch.float64)], ids=["forward-fp32", "reverse-fp64"]
)
@pytest.mark.parametrize("steps, batch, input_size, heads, head_dim", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_FP32_FP64)
def test_fused_matches_reference(backend, cell, steps, batch, input_size, heads, head_dim, reverse, dtype, monkeypatch):
    backend = runnable(backend, monkeypatch)
    tensors = leaves(cell, steps, batch, input_size, heads, head_dim, dtype=dtype)
    assert_match(
        outputs_and_gradients(cell, "reference", tensors, reverse=reverse),
        outputs_and_gradients(cell, backend, tensors, reverse=reverse),
        dtype,
        cell,
    )


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("backend", ["reference", *FUSED_FP32_FP64])
def test_slstm_from_the_zero_state_with_either_forget_gate(backend, forget_gate, monkeypatch):
    """The zero state (what FlashRNN and the layer start from) takes m = i~ at the first step, so n >= 1 after it."""
    backend = runnable(backend, monkeypatch)
    x, _, weight_ih, weight_hh, bias, _ = leaves("slstm", 4, 3, 5, 2, 3)
    zero = tuple(torch.zeros(3, 6, dtype=torch.float64, device=DEVICE) for _ in range(4))
    expected_output, expected_state = plain_slstm(x, zero, weight_ih, weight_hh, bias, forget_gate)
    output, state = functional.slstm(x, None, weight_ih, weight_hh, bias, forget_gate=forget_gate, backend=backend)
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", expected_output, output, atol, rtol)
    for name, e, o in zip(STATE_NAMES["slstm"], expected_state, state, strict=True):
        assert_close(f"{name}_n", e, o, atol, rtol)
    assert bool((state[2] >= 1).all())
    wrt = [x, weight_ih, weight_hh, bias]
    for index, (e, o) in enumerate(
        zip(gradients([expected_output, *expected_state], wrt), gradients([output, *state], wrt), strict=True)
    ):
        assert_close(f"grad {index}", e, o, atol, rtol)


def test_stabilizer_leaves_h_unchanged_where_the_unstabilized_form_is_finite():
    x, state, weight_ih, weight_hh, bias, _ = detached(leaves("slstm", 6, 3, 4, 2, 4))
    state = (state[0], state[1], state[2], torch.randn(3, 8, dtype=torch.float64, device=DEVICE) * 3)
    expected = unstabilized_slstm_output(x, state, weight_ih, weight_hh, bias)
    assert expected.isfinite().all()
    output, _ = functional.slstm(x, state, weight_ih, weight_hh, bias, backend="reference")
    assert_close("output", expected, output, *TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", ["reference", *FUSED_FP32_FP64])
def test_stabilizer_stays_finite_where_the_unstabilized_form_overflows(backend, monkeypatch):
    """Input-gate pre-activations of ~800 overflow exp in float64 (and ~90 in float32): the stabilized cell stays
    finite and equal to the stabilized equations."""
    backend = runnable(backend, monkeypatch)
    x, _, weight_ih, weight_hh, bias, _ = detached(leaves("slstm", 5, 2, 3, 2, 3))
    bias = bias.clone()
    bias[:6] += 800
    zero = tuple(torch.zeros(2, 6, dtype=torch.float64, device=DEVICE) for _ in range(4))
    unstabilized = unstabilized_slstm_output(x, zero, weight_ih, weight_hh, bias)
    assert not unstabilized.isfinite().all()
    output, state = functional.slstm(x, None, weight_ih, weight_hh, bias, backend=backend)
    expected, expected_state = plain_slstm(x, zero, weight_ih, weight_hh, bias)
    for o in (output, *state):
        assert o.isfinite().all()
    assert_close("output", expected, output, *TOLERANCE[torch.float64])
    assert_close("m_n", expected_state[3], state[3], *TOLERANCE[torch.float64])
    float_output, _ = functional.slstm(
        *(t.float() for t in (x,)), None, weight_ih.float(), weight_hh.float(), bias.float(), backend=backend
    )
    assert float_output.isfinite().all()


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_FP32_FP64)
def test_packed(backend, cell, reverse, monkeypatch):
    backend = runnable(backend, monkeypatch)
    lengths = [5, 3, 3, 1]
    batch_sizes = packed_batch_sizes(lengths)
    tensors = leaves(cell, None, len(lengths), 4, 2, 3, rows=sum(lengths))
    assert_match(
        outputs_and_gradients(cell, "reference", tensors, batch_sizes, reverse),
        outputs_and_gradients(cell, backend, tensors, batch_sizes, reverse),
        torch.float64,
        cell,
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_FP32_FP64)
def test_without_bias_and_without_state(backend, cell, monkeypatch):
    backend = runnable(backend, monkeypatch)
    x, _, weight_ih, weight_hh, _, _ = leaves(cell, 3, 2, 4, 2, 3, bias=False)
    tensors = (x, (None,) * len(STATE_NAMES[cell]), weight_ih, weight_hh, None, None)
    x, state, *weights = tensors
    results = []
    for chosen in ("reference", backend):
        output, final = functional.run(cell, x, state, *weights, backend=chosen)
        results.append(([output, *final], gradients([output, *final], [x, weight_ih, weight_hh])))
    atol, rtol = TOLERANCE[torch.float64]
    for (expected, expected_grads), (ours, our_grads) in [results]:
        for e, o in zip(expected + expected_grads, ours + our_grads, strict=True):
            assert_close("without bias", e, o, atol, rtol)


@pytest.mark.parametrize("packed", [False, True], ids=["padded-forward", "packed-reverse"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_FP32_FP64)
def test_gradcheck(backend, cell, packed, monkeypatch):
    """Full Jacobians through the torch steps; through the Triton kernels, whose interpreter takes seconds per
    Jacobian column, gradcheck's fast mode (random projections of the Jacobian), next to the exact float64
    comparisons with the reference's gradients above."""
    backend = runnable(backend, monkeypatch)
    lengths = [3, 1]
    batch_sizes = packed_batch_sizes(lengths) if packed else None
    x, state, *weights = leaves(cell, 2, 2, 1, 2, 1, rows=sum(lengths) if packed else None)
    present = [t for t in (x, *state, *weights) if t is not None]
    states = len(state)

    def run(x, *rest):
        state, weights = rest[:states], list(rest[states:])
        if cell == "slstm":
            weights.append(None)
        output, final = functional.run(
            cell, x, state, *weights, batch_sizes=batch_sizes, reverse=packed, backend=backend
        )
        return output, *final

    assert torch.autograd.gradcheck(run, present, fast_mode=backend == "triton")


@pytest.mark.parametrize(
    "backend, cell",
    [("torch", "slstm"), ("torch", "lstm"), ("torch", "gru"), ("triton", "slstm")]
    + [("cpu", cell) for cell in CELLS if "cpu" in FUSED_FP32_FP64],
)
def test_double_backward_recomputes_through_the_reference(backend, cell):
    """The recomputation is the same for every kernel; the Triton interpreter is slow, so it runs one cell there."""
    x, state, *weights = leaves(cell, 2, 2, 1, 2, 1)
    present = [t for t in (x, *state, *weights) if t is not None]
    states = len(state)

    def run(x, *rest):
        state, weights = rest[:states], list(rest[states:])
        if cell == "slstm":
            weights.append(None)
        output, final = functional.run(cell, x, state, *weights, backend=backend)
        return output, *final

    assert torch.autograd.gradgradcheck(run, present, fast_mode=backend == "triton")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_LOW_PRECISION)
def test_low_precision_within_twice_torch_error(backend, cell, dtype, monkeypatch):
    """Against the float64 reference, our error is at most twice that of the reference run in the same dtype."""
    backend = runnable(backend, monkeypatch)
    exact_leaves = leaves(cell, 8, 3, 6, 2, 8)
    low = (
        exact_leaves[0].detach().to(dtype).requires_grad_(),
        tuple(s.detach().to(dtype).requires_grad_() for s in exact_leaves[1]),
        *(t.detach().to(dtype).requires_grad_() if t is not None else None for t in exact_leaves[2:]),
    )
    exact = outputs_and_gradients(cell, "reference", exact_leaves)
    theirs = outputs_and_gradients(cell, "reference", low)
    ours = outputs_and_gradients(cell, backend, low)
    for index, name in enumerate(["output", *STATE_NAMES[cell]]):
        assert ours[0][index].dtype == dtype
        assert_normwise_within_twice_torch_error(name, exact[0][index], ours[0][index], theirs[0][index], dtype)
    for index, (e, t, o) in enumerate(zip(exact[1], theirs[1], ours[1])):
        if e is not None:
            assert_normwise_within_twice_torch_error(f"grad {index}", e, o, t, dtype)


def assert_normwise_within_twice_torch_error(name, exact, ours, theirs, dtype):
    """flash-attention's rule with normwise errors (DESIGN.md: errors relative to the reference's scale): the max
    error of a few dozen bfloat16 values swings 3x from seed to seed, the norm of all of them does not. The floor is
    one rounding of the dtype at the result's scale."""
    exact = exact.double()
    ours_error, torch_error = (ours.double() - exact).norm().item(), (theirs.double() - exact).norm().item()
    floor = torch.finfo(dtype).eps * exact.norm().item()
    assert ours_error <= 2 * torch_error + floor, f"{name}: our error {ours_error:.3e} vs torch's {torch_error:.3e}"


@pytest.mark.parametrize("backend", FUSED_LOW_PRECISION)
def test_low_precision_carries_the_state_in_float32(backend, monkeypatch):
    """c grows by 1e-3 per step from 1 (forget gate 1, input gate 1e-3 of z = 1): in bfloat16 (spacing 2**-7 at 1)
    it would never move. An LSTM with saturated gates: f = 1, i * g = 1e-3."""
    backend = runnable(backend, monkeypatch)
    steps, hidden = 64, 2
    weight_ih = torch.zeros(4 * hidden, 1)
    weight_ih[:hidden] = -6.9  # i = sigmoid(-6.9) ~ 1e-3
    weight_ih[hidden : 2 * hidden] = 30.0  # f = 1
    weight_ih[2 * hidden : 3 * hidden] = 30.0  # g = 1
    x = torch.ones(steps, 1, 1, dtype=torch.bfloat16, device=DEVICE)
    weight_ih = weight_ih.to(torch.bfloat16).to(DEVICE)
    weight_hh = torch.zeros(2, 4, 1, dtype=torch.bfloat16, device=DEVICE)
    c0 = torch.ones(1, hidden, dtype=torch.bfloat16, device=DEVICE)
    _, (_, c_n) = functional.multihead_lstm(x, (None, c0), weight_ih, weight_hh, backend=backend)
    increment = torch.sigmoid(weight_ih[0, 0].double())
    exact = 1 + steps * increment.item()
    assert_close("c_n", torch.full_like(c_n, exact, dtype=torch.float64), c_n, atol=0, rtol=2**-8)


@pytest.mark.parametrize("backend", ["triton", *(backend for backend in COMPILED if backend != "cuda-steps-on-host")])
def test_fused_is_deterministic(backend):
    tensors = leaves("slstm", 5, 6, 4, 3, 3)
    first, second = (outputs_and_gradients("slstm", backend, tensors) for _ in range(2))
    for a, b in zip([*first[0], *first[1]], [*second[0], *second[1]]):
        assert a is None and b is None or torch.equal(a, b)


@pytest.mark.parametrize("backend", [*FUSED_FP32_FP64, "reference"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_head_equals_torch_nn_bidirectional_two_layers_on_unsorted_packed_input(cell, backend, monkeypatch):
    backend = runnable(backend, monkeypatch)
    layer_type = {"lstm": (fused_rnn.MultiHeadLSTM, torch.nn.LSTM), "gru": (fused_rnn.MultiHeadGRU, torch.nn.GRU)}
    ours_type, theirs_type = layer_type[cell]
    theirs = theirs_type(3, 5, num_layers=2, bidirectional=True).double().to(DEVICE)
    ours = ours_type(3, 5, num_layers=2, bidirectional=True, backend=backend).double().to(DEVICE)
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            getattr(ours, name).copy_(parameter.view_as(getattr(ours, name)))
    lengths = [3, 5, 1, 4]
    padded = torch.randn(5, 4, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    state = tuple(torch.randn(4, 4, 5, dtype=torch.float64, device=DEVICE) for _ in STATE_NAMES[cell])
    hx = state if cell == "lstm" else state[0]
    results = []
    for layer in (theirs, ours):
        output, final = layer(pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False), hx)
        output, _ = pad_packed_sequence(output)
        finals = list(final) if cell == "lstm" else [final]
        results.append([output, *finals])
    atol, rtol = TOLERANCE[torch.float64]
    for name, e, o in zip(["output", *STATE_NAMES[cell]], *results, strict=True):
        assert_close(name, e, o, atol, rtol)
    expected_grads = gradients(results[0], [padded, *theirs.parameters()])
    our_grads = gradients(results[1], [padded, *ours.parameters()])
    for index, (e, o) in enumerate(zip(expected_grads, our_grads, strict=True)):
        assert_close(f"grad {index}", e.view_as(o), o, atol, rtol)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_state_carried_across_two_calls_equals_one_call(cell, backend):
    layer_type = {"slstm": fused_rnn.sLSTM, "lstm": fused_rnn.MultiHeadLSTM, "gru": fused_rnn.MultiHeadGRU}[cell]
    layer = layer_type(3, 6, num_layers=2, num_heads=2, batch_first=True, backend=backend).double().to(DEVICE)
    x = torch.randn(2, 7, 3, dtype=torch.float64, device=DEVICE)
    whole, whole_state = layer(x)
    first, state = layer(x[:, :4])
    second, second_state = layer(x[:, 4:], state)
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", whole, torch.cat([first, second], 1), atol, rtol)
    for e, o in zip(whole_state if cell != "gru" else [whole_state], second_state if cell != "gru" else [second_state]):
        assert_close("state", e, o, atol, rtol)


def test_module_batch_first_unbatched_and_heads_agree_with_the_plain_loop():
    layer = fused_rnn.sLSTM(3, 6, num_heads=3, batch_first=True, backend="torch").double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    zero = tuple(torch.zeros(2, 6, dtype=torch.float64) for _ in range(4))
    weights = (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0)
    expected, expected_state = plain_slstm(x.transpose(0, 1), zero, *weights)
    output, state = layer(x)
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("batch_first output", expected.transpose(0, 1), output, atol, rtol)
    for e, o in zip(expected_state, state, strict=True):
        assert_close("state", e.unsqueeze(0), o, atol, rtol)
    unbatched, unbatched_state = layer(x[0])
    assert_close("unbatched output", expected[:, 0], unbatched, atol, rtol)
    assert_close("unbatched h_n", expected_state[0][:1], unbatched_state[0], atol, rtol)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers_in_training_only(cell):
    """Three layers with dropout: in training each layer's output but the last's is dropped as F.dropout drops it
    (the same masks from the same seed); in eval nothing is. Against the plain oracle run layer by layer."""
    layer_type = {"slstm": fused_rnn.sLSTM, "lstm": fused_rnn.MultiHeadLSTM, "gru": fused_rnn.MultiHeadGRU}[cell]
    layer = layer_type(3, 4, num_layers=3, num_heads=2, dropout=0.4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    zeros = tuple(torch.zeros(2, 4, dtype=torch.float64) for _ in STATE_NAMES[cell])

    def expected(training):
        # The masks the layer draws after manual_seed(7), drawn here first: the oracle may use the generator too.
        torch.manual_seed(7)
        masks = [
            torch.nn.functional.dropout(torch.ones(5, 2, 4, dtype=torch.float64), 0.4, training=training)
            for _ in range(2)
        ]
        y = x
        for k in range(3):
            weights = [
                getattr(layer, f"{name}_l{k}", None) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            y, _ = plain_oracle(cell, y, zeros, *weights)
            if k < 2:
                y = y * masks[k]
        return y

    atol, rtol = TOLERANCE[torch.float64]
    for training in (True, False):
        layer.train(training)
        torch.manual_seed(7)
        output, _ = layer(x)
        assert_close(f"output, training={training}", expected(training), output, atol, rtol)


def test_parameters_and_init():
    torch.manual_seed(0)
    layer = fused_rnn.sLSTM(10, 400, num_layers=2, num_heads=4, bidirectional=True)
    names = [name for name, _ in layer.named_parameters()]
    assert names == [
        f"{kind}_l{k}{suffix}"
        for k in range(2)
        for suffix in ("", "_reverse")
        for kind in ("weight_ih", "weight_hh", "bias_ih")
    ]
    assert layer.weight_ih_l1.shape == (1600, 800) and layer.weight_hh_l1_reverse.shape == (4, 400, 100)
    bound = 400**-0.5
    for name, parameter in layer.named_parameters():
        if name.startswith("weight"):
            assert -bound <= parameter.min() and parameter.max() <= bound, name
            assert parameter.max() - parameter.min() > 1.9 * bound, f"{name} does not span its range"
        else:
            by_gate = parameter.view(4, 4, 100)
            assert torch.equal(by_gate[[0, 2, 3]], torch.zeros_like(by_gate[[0, 2, 3]])), name
            assert torch.allclose(by_gate[1], torch.linspace(3, 6, 100).expand(4, 100)), name
    lstm = fused_rnn.MultiHeadLSTM(3, 6, num_heads=3)
    assert [name for name, _ in lstm.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert lstm.weight_hh_l0.shape == (3, 8, 2) and fused_rnn.MultiHeadGRU(3, 6, num_heads=2).weight_hh_l0.shape == (
        2,
        9,
        3,
    )
    assert not any(name.startswith("bias") for name, _ in fused_rnn.sLSTM(3, 4, bias=False).named_parameters())


def test_auto_on_cpu_runs_the_compiled_kernel_else_the_torch_steps_never_the_interpreter():
    compiled = "cpu" if native.unavailable() is None else "torch"
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.float32) == compiled
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.float64) == compiled
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.bfloat16) == "torch"


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_compile_fullgraph_matches_eager_without_graph_breaks(backend):
    torch._dynamo.reset()
    layer = fused_rnn.sLSTM(3, 6, num_layers=2, num_heads=2, backend=backend).double().to(DEVICE)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def loss(x):
        output, (h_n, c_n, n_n, m_n) = layer(x)
        return output.square().sum() + h_n.sum() + c_n.sum() + n_n.sum() + m_n.sum()

    explanation = torch._dynamo.explain(loss)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_loss, compiled_loss = loss(x), compiled(x)
    eager_grads = torch.autograd.grad(eager_loss, [x, *layer.parameters()])
    compiled_grads = torch.autograd.grad(compiled_loss, [x, *layer.parameters()])
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("loss", eager_loss, compiled_loss, atol, rtol)
    for index, (e, c) in enumerate(zip(eager_grads, compiled_grads)):
        assert_close(f"grad {index}", e, c, atol, rtol)


def test_bad_input_is_rejected_with_named_errors():
    x, state, weight_ih, weight_hh, bias, _ = detached(leaves("slstm", 2, 3, 4, 2, 3))
    call = lambda **changes: functional.slstm(
        **{"input": x, "state": state, "weight_ih": weight_ih, "weight_hh": weight_hh, "bias": bias, **changes}
    )
    f64 = {"dtype": torch.float64, "device": DEVICE}
    cases = [
        (
            ValueError,
            "weight_hh must be \\(num_heads, 4 \\* head_dim, head_dim\\)",
            {"weight_hh": torch.ones(24, 6, **f64)},
        ),
        (ValueError, "weight_hh must be", {"weight_hh": torch.ones(2, 10, 3, **f64)}),
        (ValueError, "weight_ih must be", {"weight_ih": torch.ones(24, 3, **f64)}),
        (ValueError, "bias_ih must be", {"bias": torch.ones(6, **f64)}),
        (TypeError, "weight_hh has dtype", {"weight_hh": weight_hh.float()}),
        (ValueError, "h0 must have shape", {"state": (torch.zeros(2, 6, **f64), *state[1:])}),
        (TypeError, "m0 has dtype", {"state": (*state[:3], state[3].float())}),
        (ValueError, "state must be a tuple \\(h, c, n, m\\)", {"state": state[:2]}),
        (ValueError, "input must be 3-D", {"input": x[0]}),
        (TypeError, "floating-point", {"input": x.long()}),
        (ValueError, "forget_gate must be", {"forget_gate": "relu"}),
        (ValueError, "backend must be one of", {"backend": "persistent"}),
        (ValueError, "batch_sizes must be positive and non-increasing", {"input": x[0], "batch_sizes": [1, 2]}),
    ]
    for error, message, changes in cases:
        with pytest.raises(error, match=message):
            call(**changes)
    with pytest.raises(ValueError, match="one bias"):
        functional.run("slstm", x, state, weight_ih, weight_hh, bias, bias)
    low_precision = [t.cpu().bfloat16() for t in (x, *state, weight_ih, weight_hh, bias)]
    with pytest.raises(ValueError, match="backend='cpu' cannot run here: dtype torch.bfloat16 is not supported"):
        functional.slstm(low_precision[0], tuple(low_precision[1:5]), *low_precision[5:], backend="cpu")
    if DEVICE.type == "cpu":  # why depends on the build and the machine: no CUDA kernels, no GPU, CPU tensors
        with pytest.raises(ValueError, match="backend='cuda' cannot run here: "):
            call(backend="cuda")
    with pytest.raises(ValueError, match="hidden_size must be divisible by num_heads"):
        fused_rnn.sLSTM(3, 10, num_heads=3)
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        fused_rnn.MultiHeadLSTM(3, 4, num_heads=0)
    with pytest.raises(ValueError, match="forget_gate must be"):
        fused_rnn.sLSTM(3, 4, forget_gate="tanh")
    with pytest.raises(ValueError, match="dropout must be"):
        fused_rnn.MultiHeadGRU(3, 4, dropout=-0.1)
    with pytest.raises(ValueError, match="input.size\\(-1\\) must be equal to input_size"):
        fused_rnn.sLSTM(3, 4)(torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="hx's c must have shape"):
        fused_rnn.MultiHeadLSTM(3, 4)(torch.zeros(2, 1, 3), (torch.zeros(1, 1, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(TypeError, match="hx must be a tuple \\(h, c, n, m\\)"):
        fused_rnn.sLSTM(3, 4)(torch.zeros(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(TypeError, match="hx must be a Tensor for MultiHeadGRU"):
        fused_rnn.MultiHeadGRU(3, 4)(torch.zeros(2, 1, 3), (torch.zeros(1, 1, 4),))
    with pytest.raises(TypeError, match="input must be a Tensor or PackedSequence"):
        fused_rnn.sLSTM(3, 4)([1.0])


def test_triton_refuses_a_step_too_large_for_32_bit_offsets():
    """The kernels index one step's [batch, 7 * hidden] saved block with 32-bit offsets: a step past 2**31 elements
    is refused by name, never indexed past the block."""
    batch, hidden = 2**19, 1024
    x = torch.zeros(1, 1, 1, device=DEVICE).expand(1, batch, 1)  # no memory behind the batch and the state
    state = (torch.zeros(1, 1, device=DEVICE).expand(batch, hidden),) * 4
    weight_ih, weight_hh = torch.zeros(4 * hidden, 1, device=DEVICE), torch.zeros(8, 4 * 128, 128, device=DEVICE)
    with pytest.raises(ValueError, match="backend='triton' cannot run here: batch x hidden_size is too large"):
        functional.slstm(x, state, weight_ih, weight_hh, backend="triton")


def test_forget_gate_is_refused_by_name_outside_the_slstm():
    for layer in (fused_rnn.MultiHeadLSTM, fused_rnn.MultiHeadGRU):
        with pytest.raises(ValueError, match="forget_gate is the sLSTM's"):
            layer(3, 4, forget_gate="exp")
