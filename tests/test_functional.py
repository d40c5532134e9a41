"""fused_rnn.functional: the public per-layer functions, backend choice and argument checks."""

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn import backends, functional
from fused_rnn.backends import TRITON_INTERPRETER, resolve

from checks import DEVICE, TOLERANCE, assert_close
from layers import layer_weights


def test_available_backends_explains_each():
    status = fused_rnn.available_backends()
    assert set(status) == {"reference", "torch", "cpu", "cuda", "persistent", "triton"}
    assert all(text.startswith(("available", "unavailable: ")) for text in status.values())
    if not torch.cuda.is_available():
        assert status["triton"].startswith("available on CPU through the Triton interpreter")


def test_resolve():
    cpu, double = torch.device("cpu"), torch.float64
    assert resolve("reference", cpu, double) == "reference"
    # torch.nn's kernels beat the reference on CPU; the interpreter is for tests, never chosen by "auto".
    assert resolve("auto", cpu, double) == "torch"
    assert resolve("torch", cpu, double) == "torch"
    if TRITON_INTERPRETER:
        assert resolve("triton", cpu, double) == "triton"
    else:
        with pytest.raises(ValueError, match="backend='triton' cannot run here: on CPU"):
            resolve("triton", cpu, double)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve("cudnn", cpu, double)
    with pytest.raises(ValueError, match="dtype"):
        resolve("triton", cpu, torch.complex64)


@pytest.mark.parametrize("backend", ["reference", "triton", "torch"])
def test_public_functions_match_torch_nn(backend):
    with torch.device(DEVICE if backend == "triton" else "cpu"):
        check_public_functions(backend)


def check_public_functions(backend):
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    atol, rtol = TOLERANCE[torch.float64]
    lstm = nn.LSTM(3, 5).double()
    h0, c0 = torch.randn(1, 2, 5, dtype=torch.float64), torch.randn(1, 2, 5, dtype=torch.float64)
    expected, (h_n, c_n) = lstm(x, (h0, c0))
    output, (ours_h, ours_c) = functional.lstm(x, (h0[0], c0[0]), *lstm._flat_weights, backend=backend)
    for name, e, o in [("output", expected, output), ("h_n", h_n[0], ours_h), ("c_n", c_n[0], ours_c)]:
        assert_close(f"lstm {name}", e, o, atol, rtol)

    gru = nn.GRU(3, 5).double()
    expected, h_n = gru(x)
    output, ours_h = functional.gru(x, None, *gru._flat_weights, backend=backend)
    assert_close("gru output", expected, output, atol, rtol)
    assert_close("gru h_n", h_n[0], ours_h, atol, rtol)

    rnn = nn.RNN(3, 5, nonlinearity="relu", bias=False).double()
    expected, h_n = rnn(x)
    output, ours_h = functional.rnn(x, None, *rnn._flat_weights, nonlinearity="relu", backend=backend)
    assert_close("rnn output", expected, output, atol, rtol)

    cell = nn.GRUCell(3, 5).double()
    h = torch.randn(2, 5, dtype=torch.float64)
    assert_close(
        "gru_cell", cell(x[0], h), functional.gru_cell(x[0], h, *cell.parameters(), backend=backend), atol, rtol
    )
    cell = nn.LSTMCell(3, 5).double()
    for name, e, o in zip("hc", cell(x[0]), functional.lstm_cell(x[0], None, *cell.parameters(), backend=backend)):
        assert_close(f"lstm_cell {name}", e, o, atol, rtol)
    cell = nn.RNNCell(3, 5, nonlinearity="tanh").double()
    assert_close(
        "rnn_cell", cell(x[0], h), functional.rnn_cell(x[0], h, *cell.parameters(), backend=backend), atol, rtol
    )


def lstm_call(**changes):
    """functional.lstm on valid arguments (T=4, B=2, I=3, H=5), with some replaced."""
    w_ih, w_hh, b_ih, b_hh = (w.detach() for w in layer_weights("lstm", 3, 5)[:4])
    arguments = {
        "input": torch.randn(4, 2, 3, dtype=torch.float64),
        "hx": (torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64)),
        "weight_ih": w_ih,
        "weight_hh": w_hh,
        "bias_ih": b_ih,
        "bias_hh": b_hh,
    }
    arguments.update(changes)
    return functional.lstm(**arguments)


DOUBLE = torch.float64
BAD_CALLS = [
    pytest.param({"input": [[1.0]]}, TypeError, "input must be a Tensor", id="input-not-tensor"),
    pytest.param({"input": torch.ones(4, 2, 3, dtype=torch.long)}, TypeError, "floating-point", id="input-int"),
    pytest.param({"input": torch.ones(4, 3, dtype=DOUBLE)}, ValueError, "input must be 3-D", id="input-2d"),
    pytest.param({"input": torch.ones(0, 2, 3, dtype=DOUBLE)}, ValueError, "at least one time step", id="input-empty"),
    pytest.param({"input": torch.ones(4, 2, 6, dtype=DOUBLE)}, ValueError, "weight_ih must be", id="input-size"),
    pytest.param({"input": torch.ones(4, 2, 3)}, TypeError, "weight_ih has dtype", id="dtype-mismatch"),
    pytest.param({"weight_hh": torch.ones(20, 4, dtype=DOUBLE)}, ValueError, "weight_hh must be", id="weight_hh-shape"),
    pytest.param({"weight_hh": torch.ones(18, 5, dtype=DOUBLE)}, ValueError, "weight_hh must be", id="weight_hh-gates"),
    pytest.param({"bias_ih": torch.ones(19, dtype=DOUBLE)}, ValueError, "bias_ih must be", id="bias-shape"),
    pytest.param({"bias_hh": None}, ValueError, "given together", id="one-bias"),
    pytest.param({"weight_hr": torch.ones(5, 5, dtype=DOUBLE)}, ValueError, "weight_hr must be", id="proj-too-big"),
    pytest.param(
        {"hx": torch.zeros(2, 5, dtype=DOUBLE)}, TypeError, r"hx must be a tuple \(h0, c0\)", id="hx-not-pair"
    ),
    pytest.param(
        {"hx": (torch.zeros(3, 5, dtype=DOUBLE), torch.zeros(2, 5, dtype=DOUBLE))},
        ValueError,
        "h0 must have shape",
        id="h0-shape",
    ),
    pytest.param(
        {"hx": (torch.zeros(2, 5, dtype=DOUBLE), torch.zeros(2, 4, dtype=DOUBLE))},
        ValueError,
        "c0 must have shape",
        id="c0-shape",
    ),
    pytest.param(
        {"hx": (torch.zeros(2, 5), torch.zeros(2, 5, dtype=DOUBLE))}, TypeError, "h0 has dtype", id="h0-dtype"
    ),
    pytest.param(
        {"hx": (torch.zeros(2, 5, dtype=DOUBLE), torch.zeros(2, 5, dtype=DOUBLE, device="meta"))},
        ValueError,
        "c0 is on meta",
        id="c0-device",
    ),
    pytest.param(
        {"weight_ih": torch.zeros(20, 3, dtype=DOUBLE, device="meta")},
        ValueError,
        "weight_ih is on meta",
        id="weight-device",
    ),
    pytest.param({"batch_sizes": [2, 2]}, ValueError, "packed input must be 2-D", id="packed-3d"),
    pytest.param(
        {"input": torch.ones(4, 3, dtype=DOUBLE), "batch_sizes": [1, 2, 1]},
        ValueError,
        "non-increasing",
        id="batch_sizes-order",
    ),
    pytest.param(
        {"input": torch.ones(4, 3, dtype=DOUBLE), "batch_sizes": [2, 1]}, ValueError, "sum to 3", id="batch_sizes-sum"
    ),
    pytest.param({"backend": "cudnn"}, ValueError, "backend must be one of", id="backend"),
]


@pytest.mark.parametrize("changes, error, message", BAD_CALLS)
def test_bad_arguments_raise_named_errors(changes, error, message):
    with pytest.raises(error, match=message):
        lstm_call(**changes)


def test_valid_call_passes():
    """The baseline of the table above is itself valid, so each bad call fails for its own reason."""
    output, (h_n, c_n) = lstm_call()
    assert output.shape == (4, 2, 5) and h_n.shape == c_n.shape == (2, 5)


def test_rnn_nonlinearity_checked():
    w = layer_weights("rnn_tanh", 3, 5)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        functional.rnn(torch.randn(2, 1, 3, dtype=DOUBLE), None, *w[:4], nonlinearity="sigmoid")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inputs_not_modified(cell):
    weights = [w.detach() for w in layer_weights(cell, 3, 5, device=DEVICE)[:4]]
    for w in weights:
        w.requires_grad_()
    x, h0 = torch.randn(4, 2, 3, dtype=DOUBLE, device=DEVICE), torch.randn(2, 5, dtype=DOUBLE, device=DEVICE)
    c0 = torch.randn(2, 5, dtype=DOUBLE, device=DEVICE) if cell == "lstm" else None
    inputs = [t for t in (x, h0, c0, *weights) if t is not None]
    before = [t.detach().clone() for t in inputs]
    output, h_n, c_n = functional.sequence(cell, x, h0, c0, *weights, None, None, False, "triton")
    (output.sum() + h_n.sum() + (c_n.sum() if c_n is not None else 0)).backward()
    for original, now in zip(before, inputs, strict=True):
        assert torch.equal(original, now)


def test_weight_hr_only_for_the_lstm():
    weights = layer_weights("gru", 3, 6)[:4]
    with pytest.raises(ValueError, match="weight_hr .* only supported for the LSTM, not gru"):
        functional.sequence(
            "gru",
            torch.randn(2, 1, 3, dtype=DOUBLE),
            None,
            None,
            *weights,
            torch.ones(2, 6, dtype=DOUBLE),
            None,
            False,
            "reference",
        )
    with pytest.raises(ValueError, match="cell must be one of"):
        functional.sequence(
            "lstmx", torch.randn(2, 1, 3, dtype=DOUBLE), None, None, *weights, None, None, False, "reference"
        )


def test_too_large_for_32_bit_offsets_is_refused():
    """batch x 5 x hidden >= 2**31 (the LSTM's saved activations of one step) would overflow the kernels' offsets."""
    batch, hidden = 838_861, 512
    weights = [w.detach() for w in layer_weights("lstm", 1, hidden, device=DEVICE)[:4]]
    x = torch.zeros(1, 1, 1, dtype=DOUBLE, device=DEVICE).expand(1, batch, 1)  # no memory behind the batch
    state = torch.zeros(1, 1, dtype=DOUBLE, device=DEVICE).expand(batch, hidden)
    with pytest.raises(ValueError, match="backend='triton' cannot run here: batch x hidden_size is too large"):
        functional.sequence("lstm", x, state, state, *weights, None, None, False, "triton")


def test_auto_serves_what_is_too_large_for_triton(monkeypatch):
    """Where Triton runs (a GPU), "auto" passes a batch too large for its offsets on to a backend that can serve it."""
    monkeypatch.setattr(backends, "_triton_unavailable", lambda device: None)
    cuda = torch.device("cuda")
    zoned = backends.Workload("gru", 4, packed=False, training=True, hidden=8, zoneout=True)  # torch.nn has none
    assert resolve("auto", cuda, torch.float32, workload=zoned) == "triton"
    assert resolve("auto", cuda, torch.float32, offsets_fit_32_bits=False, workload=zoned) == "reference"
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)  # keeps cuDNN's RNN out
    plain = zoned._replace(zoneout=False)
    assert resolve("auto", cuda, torch.float32, workload=plain) == "triton"
    assert resolve("auto", cuda, torch.float32, offsets_fit_32_bits=False, workload=plain) == "reference"


FUNCTIONAL_CELLS = {
    "lstm": (nn.LSTMCell, {}),
    "gru": (nn.GRUCell, {}),
    "rnn_tanh": (nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNNCell, {"nonlinearity": "relu"}),
}


def _functional_cell(cell, x, hx, torch_cell, backend):
    weights = (torch_cell.weight_ih, torch_cell.weight_hh, torch_cell.bias_ih, torch_cell.bias_hh)
    if cell == "lstm":
        return list(functional.lstm_cell(x, hx, *weights, backend=backend))
    if cell == "gru":
        return [functional.gru_cell(x, hx, *weights, backend=backend)]
    return [functional.rnn_cell(x, hx, *weights, nonlinearity=cell[4:], backend=backend)]


@pytest.mark.parametrize("backend", ["auto", "torch", "reference", "triton"])
@pytest.mark.parametrize("cell", list(FUNCTIONAL_CELLS))
def test_functional_cells_match_torch_nn_cells(cell, backend):
    """functional.lstm_cell/gru_cell/rnn_cell against torch.nn's cells in float64: outputs and the gradients of the
    input, the state and every weight, with a state and without."""
    if backend == "triton" and not TRITON_INTERPRETER and not torch.cuda.is_available():
        pytest.skip("the Triton kernels need a GPU or the interpreter")
    device = DEVICE if backend == "triton" else torch.device("cpu")
    torch_class, extra = FUNCTIONAL_CELLS[cell]
    torch_cell = torch_class(4, 5, dtype=torch.float64, device=device, **extra)
    for with_hx in (True, False):
        x = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
        state = lambda: torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
        hx = ((state(), state()) if cell == "lstm" else state()) if with_hx else None
        leaves = [x, *([hx] if isinstance(hx, torch.Tensor) else hx or []), *torch_cell.parameters()]
        expected = torch_cell(x, hx)
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        ours = _functional_cell(cell, x, hx, torch_cell, backend)
        for index, (e, o) in enumerate(zip(expected, ours, strict=True)):
            assert_close(f"{cell} {backend} hx={with_hx} output {index}", e, o, *TOLERANCE[torch.float64])
        weights = [torch.randn_like(e) for e in expected]
        expected_grads = torch.autograd.grad(sum((e * w).sum() for e, w in zip(expected, weights)), leaves)
        our_grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ours, weights)), leaves)
        for index, (e, o) in enumerate(zip(expected_grads, our_grads, strict=True)):
            assert_close(f"{cell} {backend} hx={with_hx} grad {index}", e, o, *TOLERANCE[torch.float64])


@pytest.mark.parametrize("cell", list(FUNCTIONAL_CELLS))
def test_functional_cells_on_auto_run_torchs_cell_op_on_cpu(cell):
    """On CPU "auto" steps a functional cell on torch's own cell op (aten::lstm_cell, ...), as torch.nn's cells do,
    not on a sequence of one step."""
    torch_class, extra = FUNCTIONAL_CELLS[cell]
    torch_cell = torch_class(4, 5, **extra)
    x = torch.randn(3, 4)
    with torch.profiler.profile() as profile:
        _functional_cell(cell, x, None, torch_cell, "auto")
    ops = {event.key for event in profile.key_averages()}
    assert f"aten::{cell}_cell" in ops and not ops & {"aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu"}


def test_functional_cells_still_name_a_bad_state():
    weights = [w.detach() for w in layer_weights("lstm", 4, 5)[:4]]
    x = torch.randn(3, 4, dtype=weights[0].dtype)
    bad = torch.zeros(2, 5, dtype=weights[0].dtype)
    with pytest.raises(ValueError, match="h0 must have shape"):
        functional.lstm_cell(x, (bad, bad), *weights)


@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_reverse_is_the_backward_direction_of_torch_nns_bidirectional_layer(cell, backend, form):
    """functional.lstm/gru/rnn(reverse=True) on torch.nn's kernels: output in the input's time order, h_n, and the
    input's gradient equal the reverse half of torch.nn's bidirectional layer in float64."""
    torch_class = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell, nn.RNN)
    layer = torch_class(3, 5, bidirectional=True, dtype=torch.float64)
    padded = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = [4, 3, 1] if form == "packed" else [4, 4, 4]
    packed = nn.utils.rnn.pack_padded_sequence(padded, lengths)
    expected, expected_state = layer(packed if form == "packed" else padded)
    expected = (expected.data if form == "packed" else expected)[..., 5:]
    expected_h_n = (expected_state[0] if cell == "lstm" else expected_state)[1]
    weights = [getattr(layer, f"{name}_l0_reverse") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    x, batch_sizes = (packed.data, packed.batch_sizes) if form == "packed" else (padded, None)
    run = {"lstm": functional.lstm, "gru": functional.gru, "rnn_tanh": functional.rnn}[cell]
    output, state = run(x, None, *weights, batch_sizes=batch_sizes, reverse=True, backend=backend)
    h_n = state[0] if cell == "lstm" else state
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", expected, output, atol, rtol)
    assert_close("h_n", expected_h_n, h_n, atol, rtol)
    weight = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad((expected * weight).sum(), padded, retain_graph=True)  # packing's graph
    (grad,) = torch.autograd.grad((output * weight).sum(), padded)
    assert_close("grad input", expected_grad, grad, atol, rtol)
