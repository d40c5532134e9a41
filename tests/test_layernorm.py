"""LayerNorm LSTM/GRU: the Triton kernels (interpreter on CPU) and the torch loop against the reference, and the
reference and the modules against plain loops written here; gradcheck, double backward, torch.compile, low precision,
errors, parameter names."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn.backends import native
from fused_rnn.layernorm import functional, sequence

from checks import DEVICE, TOLERANCE, assert_close, assert_within_twice_torch_error, gradients
from layers import packed_batch_sizes

CELLS = ["lstm", "gru"]
FUSED = ["triton", "torch"]
# The compiled step loop (csrc/cpu/layernorm.cpp) where it is built: "cpu" on CPU tensors (float32 and float64),
# "cuda" on CUDA tensors (float16 and bfloat16 too).
if DEVICE.type == "cpu":
    COMPILED = ["cpu"] if native.unavailable() is None else []
else:
    COMPILED = ["cuda"] if native.built_with_cuda() else []
# "cuda-rows-on-host": the CUDA backend's driver with its kernel's arithmetic (one column per thread, a block's sums
# over the row) run on the host by the ops layernorm_recurrence_*_row_loop, on CPU tensors (see cuda_rows_on_host).
ROWS_ON_HOST = ["cuda-rows-on-host"] if DEVICE.type == "cpu" and native.unavailable() is None else []
FUSED_FP32_FP64 = [*FUSED, *COMPILED, *ROWS_ON_HOST]
FUSED_LOW_PRECISION = [*FUSED, *(b for b in COMPILED if b == "cuda"), *ROWS_ON_HOST]


def runnable(backend, monkeypatch):
    """`backend` itself, or for "cuda-rows-on-host" "auto", which then runs the CUDA backend's path with the row
    loop ops in place of the kernel launches (every other backend asked for runs as usual)."""
    if backend != "cuda-rows-on-host":
        return backend
    ops = native.ops()
    loops = (ops.layernorm_recurrence_forward_row_loop, ops.layernorm_recurrence_backward_row_loop)
    monkeypatch.setattr(sequence, "_recurrence", lambda kernel: loops)
    chosen = functional.chosen_backend
    monkeypatch.setattr(functional, "chosen_backend", lambda b, *rest: "cuda" if b == "auto" else chosen(b, *rest))
    return "auto"


NAMES = {
    "lstm": ["input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "gain_ih", "gain_hh", "gain_c", "shift_c"],
    "gru": ["input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "gain_ih", "gain_hh"],
}
SHAPES = [  # T, B, I, H
    pytest.param(1, 1, 1, 1, id="T1-B1-I1-H1"),
    pytest.param(1, 3, 5, 7, id="T1-B3-I5-H7"),
    pytest.param(5, 1, 3, 13, id="T5-B1-I3-H13"),
    pytest.param(2, 5, 8, 130, id="T2-B5-I8-H130"),  # two column chunks per row
    pytest.param(2, 19, 4, 40, id="T2-B19-I4-H40"),  # two programs along the batch
]


def plain_loop(cell, x, h0, *rest):
    """The equations over padded (T, B, I) input, written out independently of fused_rnn with F.layer_norm: x, h0,
    (c0,) then the weights in functional.layernorm_lstm/gru's order. Returns output, h_n (and c_n)."""
    eps = 1e-5
    outputs, h = [], h0
    if cell == "lstm":
        c, weight_ih, weight_hh, b, gain_ih, gain_hh, gain_c, shift_c = rest
        width = weight_hh.shape[0]
        for x_t in x:
            gates = F.layer_norm(x_t @ weight_ih.T, (width,), gain_ih, None, eps)
            gates = gates + F.layer_norm(h @ weight_hh.T, (width,), gain_hh, None, eps)
            gates = gates + (b if b is not None else 0)
            i, f, g, o = gates.sigmoid().chunk(4, 1)
            g = gates.chunk(4, 1)[2].tanh()
            c = f * c + i * g
            h = o * F.layer_norm(c, (c.shape[1],), gain_c, shift_c, eps).tanh()
            outputs.append(h)
        return torch.stack(outputs), h, c
    weight_ih, weight_hh, b_ih, b_hh, gain_ih, gain_hh = rest
    width = weight_hh.shape[0]
    for x_t in x:
        a = F.layer_norm(x_t @ weight_ih.T, (width,), gain_ih, b_ih, eps)
        u = F.layer_norm(h @ weight_hh.T, (width,), gain_hh, b_hh, eps)
        hidden = h.shape[1]
        r = (a[:, :hidden] + u[:, :hidden]).sigmoid()
        z = (a[:, hidden : 2 * hidden] + u[:, hidden : 2 * hidden]).sigmoid()
        n = (a[:, 2 * hidden :] + r * u[:, 2 * hidden :]).tanh()
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs), h


def leaves(cell, steps, batch, input_size, hidden, *, rows=None, bias=True, dtype=torch.float64):
    """The inputs of functional.layernorm_lstm/gru in order, requiring grad: weights scaled as torch.nn's init, gains
    around 1 and shifts around 0 (not at their init, so that a gain or shift left out would show)."""
    make = lambda *shape: torch.randn(shape, dtype=torch.float64)
    gates = (4 if cell == "lstm" else 3) * hidden
    x = make(rows, input_size) if rows is not None else make(steps, batch, input_size)
    tensors = [x, make(batch, hidden)] + ([make(batch, hidden)] if cell == "lstm" else [])
    tensors += [make(gates, input_size) * hidden**-0.5, make(gates, hidden) * hidden**-0.5]
    biases = 1 if cell == "lstm" else 2
    tensors += [make(gates) * 0.3 if bias else None for _ in range(biases)]
    tensors += [1 + 0.3 * make(gates), 1 + 0.3 * make(gates)]
    if cell == "lstm":
        tensors += [1 + 0.3 * make(hidden), 0.3 * make(hidden)]
    return [t.to(dtype=dtype, device=DEVICE).requires_grad_() if t is not None else None for t in tensors]


def run(cell, backend, tensors, batch_sizes=None, reverse=False):
    """(output, h_n[, c_n]) of the functional API."""
    if cell == "lstm":
        x, h0, c0, *weights = tensors
        output, (h_n, c_n) = functional.layernorm_lstm(
            x, (h0, c0), *weights, batch_sizes=batch_sizes, reverse=reverse, backend=backend
        )
        return output, h_n, c_n
    x, h0, *weights = tensors
    return functional.layernorm_gru(x, h0, *weights, batch_sizes=batch_sizes, reverse=reverse, backend=backend)


def outputs_and_gradients(cell, backend, tensors, batch_sizes=None, reverse=False):
    outputs = run(cell, backend, tensors, batch_sizes, reverse)
    return outputs, gradients(outputs, tensors)


def assert_match(cell, expected, actual, dtype):
    atol, rtol = TOLERANCE[dtype]
    (ref, ref_grads), (ours, our_grads) = expected, actual
    for name, r, o in zip(["output", "h_n", "c_n"][: len(ref)], ref, ours, strict=True):
        assert_close(name, r, o, atol, rtol)
    for name, r, o in zip(NAMES[cell], ref_grads, our_grads, strict=True):
        assert_close(f"grad {name}", r, o, atol, rtol)


@pytest.mark.parametrize("steps, batch, input_size, hidden", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_reference_matches_the_plain_loop(cell, steps, batch, input_size, hidden):
    tensors = leaves(cell, steps, batch, input_size, hidden)
    expected = plain_loop(cell, *tensors)
    assert_match(
        cell, (expected, gradients(expected, tensors)), outputs_and_gradients(cell, "reference", tensors), torch.float64
    )


@pytest.mark.parametrize(
    "reverse, dtype",
    [(False, torch.float32), (False, torch.float64), (True, torch.float64)],
    ids=["forward-fp32", "forward-fp64", "reverse-fp64"],
)
@pytest.mark.parametrize("steps, batch, input_size, hidden", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_FP32_FP64)
def test_fused_matches_reference(backend, cell, steps, batch, input_size, hidden, reverse, dtype, monkeypatch):
    backend = runnable(backend, monkeypatch)
    tensors = leaves(cell, steps, batch, input_size, hidden, dtype=dtype)
    assert_match(
        cell,
        outputs_and_gradients(cell, "reference", tensors, reverse=reverse),
        outputs_and_gradients(cell, backend, tensors, reverse=reverse),
        dtype,
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [[5, 3, 3, 1], [1], [4, 2, 2, 1, 1]], ids=lambda x: "-".join(map(str, x)))
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_FP32_FP64)
def test_packed(backend, cell, lengths, reverse, monkeypatch):
    backend = runnable(backend, monkeypatch)
    batch_sizes = packed_batch_sizes(lengths)
    tensors = leaves(cell, None, len(lengths), 4, 7, rows=sum(lengths))
    assert_match(
        cell,
        outputs_and_gradients(cell, "reference", tensors, batch_sizes, reverse),
        outputs_and_gradients(cell, backend, tensors, batch_sizes, reverse),
        torch.float64,
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_FP32_FP64)
def test_without_bias_and_without_hx(backend, cell, monkeypatch):
    backend = runnable(backend, monkeypatch)
    x, *rest = leaves(cell, 3, 2, 4, 5, bias=False)
    weights = rest[2:] if cell == "lstm" else rest[1:]
    if cell == "lstm":
        call = lambda b: functional.layernorm_lstm(x, None, *weights, backend=b)
        flatten = lambda result: [result[0], *result[1]]
    else:
        call = lambda b: functional.layernorm_gru(x, None, *weights, backend=b)
        flatten = list
    wrt = [x, *weights]
    expected, ours = flatten(call("reference")), flatten(call(backend))
    atol, rtol = TOLERANCE[torch.float64]
    for index, (e, o) in enumerate(zip([*expected, *gradients(expected, wrt)], [*ours, *gradients(ours, wrt)])):
        assert_close(f"result {index}", e, o, atol, rtol)


@pytest.mark.parametrize("packed, reverse", [(False, False), (True, True)], ids=["padded-forward", "packed-reverse"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["triton", *COMPILED])
def test_fused_gradcheck(backend, cell, packed, reverse):
    lengths = [2, 1]
    batch_sizes = packed_batch_sizes(lengths) if packed else None
    tensors = leaves(cell, 2, 2, 2, 3, rows=sum(lengths) if packed else None)
    # fast_mode checks a random projection of the Jacobian: the full one takes minutes in the interpreter (one
    # forward per input element), and every gradient entry is compared with the reference's in the tests above.
    assert torch.autograd.gradcheck(lambda *t: run(cell, backend, t, batch_sizes, reverse), tensors, fast_mode=True)


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward_recomputes_through_the_reference(cell):
    tensors = leaves(cell, 2, 1, 1, 2)
    # Second derivatives w.r.t. the input, the recurrent weight and gain (the rest held fixed): each numerical
    # evaluation runs the interpreted kernels once more.
    wrt = [0, 4 if cell == "lstm" else 3, 7]  # input, weight_hh, norm_hh_weight

    def with_fixed_rest(*varied):
        given = list(tensors)
        for index, tensor in zip(wrt, varied):
            given[index] = tensor
        return run(cell, "triton", given)

    assert torch.autograd.gradgradcheck(with_fixed_rest, [tensors[i] for i in wrt], fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_LOW_PRECISION)
def test_low_precision_within_twice_torch_error(backend, cell, dtype, monkeypatch):
    """Against the float64 reference, our error is at most twice that of the reference run in the same dtype."""
    backend = runnable(backend, monkeypatch)
    exact_leaves = leaves(cell, 4, 2, 4, 16)
    low = [t.detach().to(dtype).requires_grad_() for t in exact_leaves]
    exact = outputs_and_gradients(cell, "reference", exact_leaves)
    theirs = outputs_and_gradients(cell, "reference", low)
    ours = outputs_and_gradients(cell, backend, low)
    for index, name in enumerate(["output", "h_n", "c_n"][: len(exact[0])]):
        assert ours[0][index].dtype == dtype
        assert_within_twice_torch_error(name, exact[0][index], ours[0][index], theirs[0][index], floor=1e-3)
    for name, e, t, o in zip(NAMES[cell], exact[1], theirs[1], ours[1]):
        assert_within_twice_torch_error(f"grad {name}", e, o, t, floor=1e-3 * e.abs().max().item())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_LOW_PRECISION)
def test_low_precision_carries_the_state_in_float32(backend, cell, monkeypatch):
    """Zero weights make every normalized product 0, so the gates are their biases. The LSTM's c grows by
    tanh(1e-3) per step from 1 (f = i = 1); the GRU's h moves 1e-3 of the way from 0.5 to n = 1 per step. Either
    step is below half a bfloat16 spacing there (2**-8 at 1, 2**-9 at 0.5): a bfloat16 state would never move."""
    backend = runnable(backend, monkeypatch)
    steps, hidden, bf16 = 64, 3, torch.bfloat16
    gates = (4 if cell == "lstm" else 3) * hidden
    x = torch.ones(steps, 1, 1, dtype=bf16, device=DEVICE)
    zeros = [torch.zeros(gates, 1, dtype=bf16, device=DEVICE), torch.zeros(gates, hidden, dtype=bf16, device=DEVICE)]
    ones = torch.ones(gates, dtype=bf16, device=DEVICE)
    if cell == "lstm":
        bias = torch.tensor([20.0, 20.0, 1e-3, 20.0], dtype=bf16, device=DEVICE).repeat_interleave(hidden)
        state = torch.ones(1, hidden, dtype=bf16, device=DEVICE)
        cell_norm = [torch.ones(hidden, dtype=bf16, device=DEVICE), torch.zeros(hidden, dtype=bf16, device=DEVICE)]
        _, (_, final) = functional.layernorm_lstm(
            x, (state, state), *zeros, bias, ones, ones, *cell_norm, backend=backend
        )
        exact = 1 + steps * torch.tanh(bias[2 * hidden].double())
    else:
        bias = torch.tensor([0.0, 6.906754778648554, 20.0], dtype=bf16, device=DEVICE).repeat_interleave(hidden)
        state = torch.full((1, hidden), 0.5, dtype=bf16, device=DEVICE)
        _, final = functional.layernorm_gru(x, state, *zeros, torch.zeros_like(bias), bias, ones, ones, backend=backend)
        exact = 1 - 0.5 * torch.sigmoid(bias[hidden].double()) ** steps
    # One bfloat16 spacing (2**-8 in [0.5, 1), 2**-7 in [1, 2)): the Triton interpreter rounds toward zero where
    # it stores bfloat16 (0.5310 became 0.5273), a GPU to nearest. A bfloat16 state would be 6% off.
    assert_close("final state", torch.full_like(final, exact.item(), dtype=torch.float64), final, atol=0, rtol=2**-7)


@pytest.mark.parametrize("backend", ["triton", *COMPILED])
def test_fused_is_deterministic(backend):
    tensors = leaves("lstm", 4, 6, 4, 9)
    first, second = (outputs_and_gradients("lstm", backend, tensors) for _ in range(2))
    for a, b in zip([*first[0], *first[1]], [*second[0], *second[1]]):
        assert torch.equal(a, b)


def layer_weights(layer, k, suffix):
    names = ["weight_ih", "weight_hh", "bias_ih"]
    names += ["norm_ih_weight", "norm_hh_weight", "norm_c_weight", "norm_c_bias"] if layer.CELL == "lstm" else []
    names = names if layer.CELL == "lstm" else [*names, "bias_hh", "norm_ih_weight", "norm_hh_weight"]
    return [getattr(layer, f"{name}_l{k}{suffix}") for name in names]


def per_sequence_oracle(layer, padded, lengths, states):
    """What a bidirectional multi-layer layer computes, one sequence at a time with the plain loop: output (T, B, 2H)
    zero past each length, and the final states, each (layers * 2, B, H). The reverse direction runs over the
    sequence's own steps."""
    cell = layer.CELL
    output = padded.new_zeros(padded.shape[0], len(lengths), 2 * layer.hidden_size)
    finals = []
    for b, length in enumerate(lengths):
        x, finals_b = padded[:length, b : b + 1], []
        for k in range(layer.num_layers):
            directions = []
            for d, suffix in enumerate(("", "_reverse")):
                initial = [s[2 * k + d, b : b + 1] for s in states]
                source = x if d == 0 else x.flip(0)
                out, *final = plain_loop(cell, source, *initial, *layer_weights(layer, k, suffix))
                directions.append(out if d == 0 else out.flip(0))
                finals_b.append(final)
            x = torch.cat(directions, -1)
        output[:length, b : b + 1] = x
        finals.append([torch.stack(parts) for parts in zip(*finals_b)])
    return output, [torch.cat(parts, 1) for parts in zip(*finals)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FUSED_FP32_FP64)
def test_module_bidirectional_two_layers_on_unsorted_packed_input(backend, cell, monkeypatch):
    backend = runnable(backend, monkeypatch)
    lengths = [3, 5, 1, 4]
    kind = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    layer = kind(3, 4, num_layers=2, bidirectional=True, backend=backend).double().to(DEVICE)
    with torch.no_grad():  # gains and shifts away from their init
        for name, parameter in layer.named_parameters():
            if name.startswith("norm_"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    padded = torch.randn(5, 4, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    states = [torch.randn(4, 4, 4, dtype=torch.float64, device=DEVICE) for _ in range(2 if cell == "lstm" else 1)]
    packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
    output, finals = layer(packed, tuple(states) if cell == "lstm" else states[0])
    finals = list(finals) if cell == "lstm" else [finals]
    output, _ = pad_packed_sequence(output)
    expected_output, expected_finals = per_sequence_oracle(layer, padded, lengths, states)
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", expected_output, output, atol, rtol)
    for index, (e, o) in enumerate(zip(expected_finals, finals, strict=True)):
        assert_close(f"final state {index}", e, o, atol, rtol)
    wrt = [padded, *layer.parameters()]
    for index, (e, o) in enumerate(
        zip(gradients([expected_output, *expected_finals], wrt), gradients([output, *finals], wrt), strict=True)
    ):
        assert_close(f"grad {index}", e, o, atol, rtol)


@pytest.mark.parametrize("cell", CELLS)
def test_module_batch_first_unbatched_and_cell_agree_with_the_plain_loop(cell):
    kind = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    layer = kind(3, 6, batch_first=True, backend="torch").double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    zeros = [torch.zeros(2, 6, dtype=torch.float64)] * (2 if cell == "lstm" else 1)
    expected, *expected_finals = plain_loop(cell, x.transpose(0, 1), *zeros, *layer_weights(layer, 0, ""))
    output, finals = layer(x)
    finals = list(finals) if cell == "lstm" else [finals]
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("batch_first output", expected.transpose(0, 1), output, atol, rtol)
    for e, o in zip(expected_finals, finals, strict=True):
        assert_close("final state", e.unsqueeze(0), o, atol, rtol)
    unbatched, unbatched_finals = layer(x[0])
    assert_close("unbatched output", expected[:, 0], unbatched, atol, rtol)
    unbatched_finals = list(unbatched_finals) if cell == "lstm" else [unbatched_finals]
    for e, o in zip(expected_finals, unbatched_finals, strict=True):
        assert_close("unbatched final state", e[:1], o, atol, rtol)

    cell_kind = fused_rnn.LayerNormLSTMCell if cell == "lstm" else fused_rnn.LayerNormGRUCell
    step = cell_kind(3, 6, backend="triton").double().to(DEVICE)
    states = [torch.randn(2, 6, dtype=torch.float64, device=DEVICE) for _ in zeros]
    weights = [p for _, p in step.named_parameters()]
    _, *expected_step = plain_loop(cell, x[:, :1].transpose(0, 1).to(DEVICE), *states, *weights)
    got = step(x[:, 0].to(DEVICE), tuple(states) if cell == "lstm" else states[0])
    got = list(got) if cell == "lstm" else [got]
    for e, o in zip(expected_step, got, strict=True):
        assert_close("cell", e, o, atol, rtol)
    got = step(x[1, 0].to(DEVICE), tuple(s[1] for s in states) if cell == "lstm" else states[0][1])
    got = list(got) if cell == "lstm" else [got]
    for e, o in zip(expected_step, got, strict=True):
        assert_close("unbatched cell", e[1], o, atol, rtol)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers_in_training_only(cell):
    """Three layers with dropout: in training each layer's output but the last's is dropped as F.dropout drops it
    (the same masks from the same seed); in eval nothing is. Against the plain loop run layer by layer."""
    kind = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    layer = kind(3, 4, num_layers=3, dropout=0.4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    zeros = [torch.zeros(2, 4, dtype=torch.float64)] * (2 if cell == "lstm" else 1)

    def expected(training):
        # The masks the layer draws after manual_seed(7), drawn here first: the oracle may use the generator too.
        torch.manual_seed(7)
        masks = [F.dropout(torch.ones(5, 2, 4, dtype=torch.float64), 0.4, training=training) for _ in range(2)]
        y = x
        for k in range(3):
            y, *_ = plain_loop(cell, y, *zeros, *layer_weights(layer, k, ""))
            if k < 2:
                y = y * masks[k]
        return y

    atol, rtol = TOLERANCE[torch.float64]
    for training in (True, False):
        layer.train(training)
        torch.manual_seed(7)
        output, _ = layer(x)
        assert_close(f"output, training={training}", expected(training), output, atol, rtol)


def test_parameters_state_dict_and_init():
    torch.manual_seed(0)
    layer = fused_rnn.LayerNormLSTM(10, 300, num_layers=2, bidirectional=True)
    kinds = ["weight_ih", "weight_hh", "bias_ih", "norm_ih_weight", "norm_hh_weight", "norm_c_weight", "norm_c_bias"]
    expected = [f"{kind}_l{k}{suffix}" for k in range(2) for suffix in ("", "_reverse") for kind in kinds]
    assert [name for name, _ in layer.named_parameters()] == expected
    assert list(layer.state_dict()) == expected
    assert layer.weight_ih_l1.shape == (1200, 600) and layer.norm_c_bias_l1_reverse.shape == (300,)
    bound = 300**-0.5
    for name, parameter in layer.named_parameters():
        if name.startswith("norm_") and "_weight" in name:
            assert torch.equal(parameter, torch.ones_like(parameter)), name
        elif name.startswith("norm_"):
            assert torch.equal(parameter, torch.zeros_like(parameter)), name
        else:
            assert -bound <= parameter.min() and parameter.max() <= bound, name
            assert parameter.max() - parameter.min() > 0.9 * 2 * bound, f"{name} does not span its range"
    gru = fused_rnn.LayerNormGRU(3, 4, bias=False)
    assert [name for name, _ in gru.named_parameters()] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "norm_ih_weight_l0",
        "norm_hh_weight_l0",
    ]
    assert [name for name, _ in fused_rnn.LayerNormGRUCell(3, 4).named_parameters()] == [
        "weight_ih",
        "weight_hh",
        "bias_ih",
        "bias_hh",
        "norm_ih_weight",
        "norm_hh_weight",
    ]
    copy = fused_rnn.LayerNormLSTM(10, 300, num_layers=2, bidirectional=True)
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy.weight_hh_l1_reverse, layer.weight_hh_l1_reverse)


def test_auto_on_cpu_runs_the_compiled_kernels_else_the_torch_loop_never_the_interpreter():
    compiled = "cpu" if native.unavailable() is None else "torch"
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.float32) == compiled
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.float64) == compiled
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.bfloat16) == "torch"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_compile_fullgraph_matches_eager_without_graph_breaks(backend, cell):
    torch._dynamo.reset()
    kind = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    layer = kind(3, 5, num_layers=2, backend=backend).double().to(DEVICE)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def loss(x):
        output, finals = layer(x)
        h_n = finals[0] if cell == "lstm" else finals
        return output.square().sum() + h_n.sum()

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
    x, h0, c0, weight_ih, weight_hh, bias, gain_ih, gain_hh, gain_c, shift_c = (
        t.detach() for t in leaves("lstm", 2, 3, 4, 5)
    )
    arguments = {
        "input": x,
        "hx": (h0, c0),
        "weight_ih": weight_ih,
        "weight_hh": weight_hh,
        "bias_ih": bias,
        "norm_ih_weight": gain_ih,
        "norm_hh_weight": gain_hh,
        "norm_c_weight": gain_c,
        "norm_c_bias": shift_c,
    }
    call = lambda **changes: functional.layernorm_lstm(**{**arguments, **changes})
    ones = lambda *shape: torch.ones(shape, dtype=torch.float64, device=DEVICE)
    cases = [
        (ValueError, "weight_hh must be \\(4 \\* hidden_size, hidden_size\\)", {"weight_hh": ones(5, 5)}),
        (ValueError, "weight_ih must have shape \\(20, 4\\)", {"weight_ih": ones(20, 3)}),
        (ValueError, "bias_ih must have shape \\(20,\\)", {"bias_ih": ones(4)}),
        (ValueError, "norm_hh_weight must have shape \\(20,\\)", {"norm_hh_weight": ones(5)}),
        (ValueError, "norm_c_bias must have shape \\(5,\\)", {"norm_c_bias": ones(20)}),
        (TypeError, "norm_c_weight must be a Tensor", {"norm_c_weight": None}),
        (TypeError, "norm_ih_weight has dtype", {"norm_ih_weight": gain_ih.float()}),
        (ValueError, "hx\\[0\\] must have shape", {"hx": (ones(2, 5), c0)}),
        (TypeError, "hx\\[1\\] has dtype", {"hx": (h0, c0.float())}),
        (TypeError, "hx must be a tuple", {"hx": h0}),
        (ValueError, "input must be 3-D", {"input": x[0]}),
        (TypeError, "floating-point", {"input": x.long()}),
        (ValueError, "backend must be one of", {"backend": "persistent"}),
        (ValueError, "batch_sizes must be positive and non-increasing", {"input": x[0], "batch_sizes": [1, 2]}),
        (ValueError, "batch_sizes sum to", {"input": x[0], "batch_sizes": [2, 2]}),
    ]
    for error, message, changes in cases:
        with pytest.raises(error, match=message):
            call(**changes)
    if DEVICE.type == "cpu":  # why depends on the build and the machine: no CUDA kernels, no GPU, CPU tensors
        with pytest.raises(ValueError, match="backend='cuda' cannot run here: "):
            call(backend="cuda")
    low_precision = {name: value.cpu().bfloat16() for name, value in arguments.items() if name != "hx"}
    with pytest.raises(ValueError, match="backend='cpu' cannot run here: dtype torch.bfloat16 is not supported"):
        functional.layernorm_lstm(**low_precision, hx=None, backend="cpu")
    gru_weights = [torch.ones(shape, device=DEVICE) if shape else None for shape in [(15, 4), (15, 5), 15, 0, 15, 15]]
    with pytest.raises(ValueError, match="bias_ih and bias_hh must both be given or both be None"):
        functional.layernorm_gru(x.float(), None, *gru_weights)
    with pytest.raises(ValueError, match="proj_size is not supported by LayerNormLSTM"):
        fused_rnn.LayerNormLSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        fused_rnn.LayerNormGRU(3, 0)
    with pytest.raises(ValueError, match="dropout must be"):
        fused_rnn.LayerNormLSTM(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_rnn.LayerNormGRUCell(3, 4, backend="persistent")
    with pytest.raises(ValueError, match="input.size\\(-1\\) must be equal to input_size"):
        fused_rnn.LayerNormGRU(3, 4)(torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="h0 must have shape"):
        fused_rnn.LayerNormLSTM(3, 4)(torch.zeros(2, 1, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 1, 4)))
    with pytest.raises(TypeError, match="hx must be a tuple \\(h0, c0\\)"):
        fused_rnn.LayerNormLSTM(3, 4)(torch.zeros(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(TypeError, match="input must be a Tensor or PackedSequence"):
        fused_rnn.LayerNormGRU(3, 4)([1.0])
    with pytest.raises(ValueError, match="LayerNormLSTMCell: Expected input to be 1D or 2D"):
        fused_rnn.LayerNormLSTMCell(3, 4)(torch.zeros(1, 1, 3))


def test_triton_refuses_a_step_too_large_for_32_bit_offsets():
    """The kernels index a step's [batch, 4 * hidden] block with 32-bit offsets: larger is refused by name."""
    batch, hidden = 2**19, 1024
    x = torch.zeros(1, 1, 1, device=DEVICE).expand(1, batch, 1)  # no memory behind the batch
    h = torch.zeros(1, 1, device=DEVICE).expand(batch, hidden)
    on_device = {"device": DEVICE}
    weights = [torch.zeros(4 * hidden, 1, **on_device), torch.zeros(4 * hidden, hidden, **on_device), None]
    weights += [torch.ones(4 * hidden, **on_device), torch.ones(4 * hidden, **on_device)]
    weights += [torch.ones(hidden, **on_device), torch.zeros(hidden, **on_device)]
    with pytest.raises(ValueError, match="backend='triton' cannot run here: batch x hidden_size is too large"):
        functional.layernorm_lstm(x, (h, h), *weights, backend="triton")
