"""The fused Triton path (kernels + driver) against the reference: outputs, final states and every gradient."""

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from fused_rnn import autograd, functional, packing

from checks import DEVICE, TOLERANCE, assert_close, assert_within_twice_torch_error, gradients
from layers import layer_weights, sequence_inputs

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
NAMES = ["input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"]
SHAPES = [  # T, B, I, H
    pytest.param(1, 1, 1, 1, id="T1-B1-I1-H1"),
    pytest.param(1, 3, 5, 7, id="T1-B3-I5-H7"),
    pytest.param(4, 1, 3, 33, id="T4-B1-I3-H33"),
    pytest.param(3, 5, 8, 100, id="T3-B5-I8-H100"),
    pytest.param(5, 2, 16, 16, id="T5-B2-I16-H16"),
    pytest.param(2, 40, 3, 33, id="T2-B40-I3-H33"),  # several programs along the batch
    pytest.param(2, 20, 3, 130, id="T2-B20-I3-H130"),  # several along the hidden units
]


def run_both(cell, inputs, weights, batch_sizes, reverse):
    """(outputs, gradients) of the triton and the reference backends on the same leaves."""
    x, h0, c0 = inputs
    leaves = [x, h0, c0, *weights]
    results = []
    for backend in ("triton", "reference"):
        outputs = functional.sequence(cell, x, h0, c0, *weights, batch_sizes, reverse, backend)
        results.append((outputs, gradients(outputs, leaves)))
    return results


def assert_match(results, dtype):
    (ours, our_grads), (ref, ref_grads) = results
    atol, rtol = TOLERANCE[dtype]
    for name, r, o in zip(["output", "h_n", "c_n"], ref, ours, strict=True):
        assert_close(name, r, o, atol, rtol)
    for name, r, o in zip(NAMES, ref_grads, our_grads, strict=True):
        assert_close(f"grad {name}", r, o, atol, rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("steps, batch, input_size, hidden", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, steps, batch, input_size, hidden, reverse, dtype):
    weights = layer_weights(cell, input_size, hidden, dtype=dtype, device=DEVICE)
    x, h0, c0, _ = sequence_inputs(cell, steps, batch, input_size, hidden, dtype=dtype, device=DEVICE)
    assert_match(run_both(cell, (x, h0, c0), weights, None, reverse), dtype)


@pytest.mark.parametrize("initial_state", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("cell", CELLS)
def test_without_bias(cell, initial_state):
    weights = layer_weights(cell, 6, 9, bias=False, device=DEVICE)
    x, h0, c0, _ = sequence_inputs(cell, 4, 3, 6, 9, initial_state=initial_state, device=DEVICE)
    assert_match(run_both(cell, (x, h0, c0), weights, None, False), torch.float64)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [[5, 3, 3, 1], [1], [2, 2]], ids=["5-3-3-1", "1", "2-2"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed(cell, lengths, reverse):
    weights = layer_weights(cell, 4, 7, device=DEVICE)
    x, h0, c0, batch_sizes = sequence_inputs(cell, None, len(lengths), 4, 7, lengths=lengths, device=DEVICE)
    assert_match(run_both(cell, (x, h0, c0), weights, batch_sizes, reverse), torch.float64)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_lstm_projection(bias, reverse, packed):
    weights = layer_weights("lstm", 5, 11, bias=bias, proj=4, device=DEVICE)
    x, h0, c0, batch_sizes = sequence_inputs(
        "lstm", 4, 3, 5, 11, proj=4, lengths=[4, 2, 1] if packed else None, device=DEVICE
    )
    assert_match(run_both("lstm", (x, h0, c0), weights, batch_sizes, reverse), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_low_precision_error_within_twice_torch(cell, dtype):
    """fp16/bf16 storage with fp32 math is at least half as accurate as PyTorch's own same-dtype ops."""
    weights = layer_weights(cell, 8, 24, device=DEVICE)
    x, h0, c0, _ = sequence_inputs(cell, 6, 4, 8, 24, device=DEVICE)
    leaves = [x, h0, c0, *weights]
    exact = functional.sequence(cell, *leaves[:3], *weights, None, False, "reference")
    exact_grads = gradients(exact, leaves)
    low = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in leaves]
    results = {}
    for backend in ("triton", "reference"):
        outputs = functional.sequence(cell, *low[:3], *low[3:], None, False, backend)
        results[backend] = (outputs, gradients(outputs, low))
    floor = 1e-3 if dtype == torch.float16 else 1e-2
    for i, name in enumerate(["output", "h_n", "c_n"]):
        if exact[i] is not None:
            assert results["triton"][0][i].dtype == dtype
            assert_within_twice_torch_error(name, exact[i], results["triton"][0][i], results["reference"][0][i], floor)
    for i, name in enumerate(NAMES):
        if exact_grads[i] is not None:
            assert_within_twice_torch_error(
                f"grad {name}", exact_grads[i], results["triton"][1][i], results["reference"][1][i], floor
            )


@pytest.mark.parametrize(
    "cell, proj, lengths, reverse",
    [
        pytest.param("lstm", 0, None, False, id="lstm"),
        pytest.param("lstm", 2, [3, 2], True, id="lstm-proj-packed-reverse"),
        pytest.param("gru", 0, None, True, id="gru-reverse"),
        pytest.param("gru", 0, [3, 1], False, id="gru-packed"),
        pytest.param("rnn_tanh", 0, None, False, id="rnn_tanh"),
        pytest.param("rnn_relu", 0, None, False, id="rnn_relu"),
    ],
)
def test_gradcheck(cell, proj, lengths, reverse):
    """The hand-written backward is the exact derivative of the fused forward (float64 finite differences)."""
    hidden = 3
    weights = layer_weights(cell, 2, hidden, proj=proj, device=DEVICE)
    x, h0, c0, batch_sizes = sequence_inputs(cell, 3, 2, 2, hidden, proj=proj, lengths=lengths, device=DEVICE)
    if cell == "rnn_relu":  # keep pre-activations away from relu's kink, where finite differences are wrong
        with torch.no_grad():
            weights[2].add_(2.0)

    def run(*leaves):
        return tuple(o for o in functional.sequence(cell, *leaves, batch_sizes, reverse, "triton") if o is not None)

    leaves = [x, h0, c0, *weights]
    assert torch.autograd.gradcheck(run, leaves, fast_mode=True)


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_tanh", 0)])
def test_inference_saves_nothing_and_matches(cell, proj, monkeypatch):
    """Under no_grad the kernels save no activations (nor the projection's input); with grad they do. Results match."""
    weights = layer_weights(cell, 4, 6, proj=proj, device=DEVICE)
    x, h0, c0, _ = sequence_inputs(cell, 3, 2, 4, 6, proj=proj, device=DEVICE)
    kept = []

    def recording(*args):
        results = sequence_forward(*args)
        kept.append([t.numel() for t in results[3:]])  # saved activations, projection input
        return results

    driver = autograd._triton_sequence()  # what every call reaches, through the registered op or not (eager)
    sequence_forward = driver.sequence_forward
    monkeypatch.setattr(driver, "sequence_forward", recording)
    with torch.no_grad():
        ours = functional.sequence(cell, x, h0, c0, *weights, None, False, "triton")
    functional.sequence(cell, x, h0, c0, *weights, None, False, "triton")
    saved_with_grad = {"lstm": 5, "gru": 4}.get(cell, 0) * 6 * 3 * 2
    assert kept == [[0, 0], [saved_with_grad, 6 * 3 * 2 if proj else 0]]
    ref = functional.sequence(cell, x, h0, c0, *weights, None, False, "reference")
    for name, r, o in zip(["output", "h_n", "c_n"], ref, ours):
        if r is not None:
            assert_close(name, r.detach(), o, *TOLERANCE[torch.float64])
    assert not ours[0].requires_grad


@pytest.mark.parametrize("cell", CELLS)
def test_nan_propagates_like_the_reference(cell):
    """A diverging model must not look healthy: NaN in the input reaches the same outputs as in torch."""
    weights = layer_weights(cell, 3, 5, device=DEVICE)
    x, h0, c0, _ = sequence_inputs(cell, 3, 2, 3, 5, device=DEVICE)
    x = x.detach().clone()
    x[1, 0, 0] = float("nan")
    ours = functional.sequence(cell, x, h0, c0, *weights, None, False, "triton")
    ref = functional.sequence(cell, x, h0, c0, *weights, None, False, "reference")
    for name, r, o in zip(["output", "h_n", "c_n"], ref, ours, strict=True):
        if r is not None:
            assert r.isnan().any(), name
            assert torch.equal(r.isnan(), o.isnan()), name


def carrying_weights(cell, hidden, biases):
    """Zero weights and the given per-gate bias values: gates that do not depend on x or h."""
    gates = CELLS_GATES[cell]
    bias = torch.tensor([value for value in biases for _ in range(hidden)], dtype=torch.float64)
    return [
        torch.zeros(gates * hidden, 1, dtype=torch.float64),
        torch.zeros(gates * hidden, hidden, dtype=torch.float64),
        bias,
        torch.zeros(gates * hidden, dtype=torch.float64),
    ]


CELLS_GATES = {"lstm": 4, "gru": 3}
STEPS = 60
# (cell, gate biases, what is measured), each a function of the storage dtype's epsilon: the carried value starts
# at 1 and grows by about eps / 4 per step, below the half-ulp (eps / 2) that a carry in the storage dtype keeps.
logit = lambda p: math.log(p / (1 - p))
CARRIES = [
    # c' = f c + i g with f = i = sigmoid(20) ~ 1 and g = tanh(eps / 4): the forward cell state.
    pytest.param("lstm", lambda eps: (20.0, 20.0, eps / 4, -20.0), "c_n", id="lstm-cell-state"),
    # dc = dc' f + dh o (1 - tanh(c)^2) with dh = 1, c ~ 1, o (1 - tanh(1)^2) = eps / 4: the gradient through c.
    pytest.param("lstm", lambda eps: (20.0, 20.0, 0.0, logit(eps / 4 / 0.42)), "grad c0", id="lstm-cell-gradient"),
    # dh = z dh' + dh_t with z = sigmoid(20) ~ 1 and dh_t = 1 (scaled below): the GRU's gradient through h.
    pytest.param("gru", lambda eps: (0.0, 20.0, 0.0), "grad h0", id="gru-hidden-gradient"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell, biases, measured", CARRIES)
def test_low_precision_carries_state_and_gradients_in_float32(cell, biases, measured, dtype):
    """fp16/bf16 storage, but the cell state and the gradients carried across steps accumulate in fp32: a carry in
    the storage dtype rounds every small step away and ends several times the dtype's epsilon off."""
    hidden, eps = 3, torch.finfo(dtype).eps
    exact_leaves = [
        torch.ones(STEPS, 1, 1, dtype=torch.float64),
        torch.ones(1, hidden, dtype=torch.float64),
        torch.ones(1, hidden, dtype=torch.float64) if cell == "lstm" else None,
        *carrying_weights(cell, hidden, biases(eps)),
    ]
    exact_leaves = [t.to(dtype).double().requires_grad_() if t is not None else None for t in exact_leaves]
    low_leaves = [t.detach().to(DEVICE, dtype).requires_grad_() if t is not None else None for t in exact_leaves]
    # The GRU's hidden-state gradient grows by each step's output gradient (scaled to eps / 4); the LSTM's
    # cell-state gradient by the output gradient (1) through o.
    output_weight = eps / 4 if cell == "gru" else 1.0
    results = []
    for backend, leaves in (("reference", exact_leaves), ("triton", low_leaves)):
        output, h_n, c_n = functional.sequence(cell, *leaves, None, None, False, backend)
        loss = output.sum() * output_weight + h_n.sum() + (c_n.sum() if c_n is not None else 0)
        grad_h0, *grad_c0 = torch.autograd.grad(loss, [t for t in leaves[1:3] if t is not None])
        values = {"c_n": c_n, "grad h0": grad_h0, "grad c0": grad_c0[0] if grad_c0 else None}
        results.append(values[measured].double().cpu())
    exact, ours = results
    assert (exact - 1).abs().min() > 10 * eps, f"the test carries too little: {exact}"
    relative = ((ours - exact).abs() / exact.abs()).max().item()
    assert relative < 2 * eps, f"{measured}: relative error {relative:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_saves_activations_in_float32(dtype):
    weights = [w.detach().to(dtype) for w in layer_weights("lstm", 4, 6, device=DEVICE)[:4]]
    x, h0, c0, _ = sequence_inputs("lstm", 3, 2, 4, 6, dtype=dtype, device=DEVICE)
    rows = x.detach().reshape(-1, 4)
    output, h_n, c_n, saved, _ = autograd.sequence_forward(
        "lstm", rows, h0.detach(), c0.detach(), *weights, None, None, False, True
    )
    assert saved.dtype == torch.float32
    assert output.dtype == h_n.dtype == c_n.dtype == dtype


@pytest.mark.parametrize("frozen", [["weight_ih", "bias_ih"], ["weight_hh", "bias_hh", "weight_hr"], ["input", "h0"]])
@pytest.mark.parametrize("cell", CELLS)
def test_only_the_gradients_asked_for(cell, frozen):
    """With some leaves frozen (fine-tuning), their gradients are skipped and the others are unchanged."""
    proj = 2 if cell == "lstm" else 0
    weights = layer_weights(cell, 4, 5, proj=proj, device=DEVICE)
    x, h0, c0, _ = sequence_inputs(cell, 3, 2, 4, 5, proj=proj, device=DEVICE)
    leaves = dict(zip(NAMES, [x, h0, c0, *weights], strict=True))
    for name in frozen:
        if leaves[name] is not None:
            leaves[name].requires_grad_(False)
    trainable = [t if t is not None and t.requires_grad else None for t in leaves.values()]
    results = []
    for backend in ("triton", "reference"):
        outputs = functional.sequence(cell, *leaves.values(), None, False, backend)
        loss = sum(o.square().sum() for o in outputs if o is not None)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            grads = torch.autograd.grad(loss, [t for t in trainable if t is not None])
        found = iter(grads)
        results.append((outputs, [next(found) if t is not None else None for t in trainable]))
        if backend == "triton":
            ran = [event.name for event in profile.events()]
    assert_match(results, torch.float64)
    # Which GEMMs and reductions the backward ran: one W_hh GEMM per step (and one W_hr GEMM with a projection),
    # then one per gradient asked for; the biases' gradients are column sums.
    wanted = {name for name, t in zip(NAMES, trainable) if t is not None}
    steps = x.shape[0]
    after_loop = {"input", "weight_ih", "weight_hh", "weight_hr"} & wanted
    assert ran.count("aten::mm") == steps * (2 if proj else 1) + len(after_loop), sorted(wanted)
    assert ran.count("aten::sum") == len({"bias_ih", "bias_hh"} & wanted), sorted(wanted)


def test_packed_backward_builds_its_row_index_once_per_layout():
    """The packed backward's row index is built once per batch_sizes and device, then reused: rebuilding it copies
    it to the GPU on every call (a host sync, impossible inside CUDA graph capture)."""
    weights = layer_weights("gru", 2, 3, device=DEVICE)
    x, h0, _, batch_sizes = sequence_inputs("gru", 4, 3, 2, 3, lengths=[4, 2, 1], device=DEVICE)
    packing.previous_rows.cache_clear()
    for _ in range(3):
        output, h_n, _ = functional.sequence("gru", x, h0, None, *weights, batch_sizes, False, "triton")
        (output.sum() + h_n.sum()).backward()
    cache = packing.previous_rows.cache_info()
    assert (cache.misses, cache.hits) == (1, 2)


def test_reversed_rows_reverses_each_packed_sequence_within_its_length():
    lengths = [5, 3, 3, 1]
    padded = torch.arange(5 * 4, dtype=torch.float64).reshape(5, 4, 1)
    flipped = padded.clone()
    for b, length in enumerate(lengths):
        flipped[:length, b] = padded[:length, b].flip(0)
    packed, expected = (pack_padded_sequence(t, lengths) for t in (padded, flipped))
    index = packing.reversed_rows(tuple(packed.batch_sizes.tolist()), packed.data.device)
    assert torch.equal(packed.data.index_select(0, index), expected.data)
