"""Zoneout for the LSTM and GRU: the Triton kernels (interpreter on CPU) against the reference given the same masks,
and the reference against a plain loop of Krueger et al.'s equations written here; masks from torch's RNG,
modules, packed and bidirectional input, gradcheck, double backward, torch.compile, low precision, errors."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn import functional

from checks import DEVICE, TOLERANCE, assert_close, assert_within_twice_torch_error, gradients
from layers import layer_weights, packed_batch_sizes, sequence_inputs

GATES = {"lstm": 4, "gru": 3}
ZONEOUT = {"lstm": (0.3, 0.6), "gru": 0.4}  # the LSTM's h and c at different rates, as Krueger et al. use
NAMES = ["input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
SHAPES = [  # T, B, I, H
    pytest.param(1, 1, 2, 5, id="T1-B1-I2-H5"),
    pytest.param(4, 3, 4, 13, id="T4-B3-I4-H13"),
    pytest.param(6, 1, 3, 8, id="T6-B1-I3-H8"),
    pytest.param(3, 3, 5, 16, id="T3-B3-I5-H16"),
]


def leaves(cell, steps, batch, input_size, hidden, *, rows=None, dtype=torch.float64, device=DEVICE):
    """(x, h0, c0 or None, weight_ih, weight_hh, bias_ih, bias_hh) requiring grad."""
    gates = GATES[cell]
    make = lambda *shape: torch.randn(shape, dtype=torch.float64)
    x = make(rows, input_size) if rows is not None else make(steps, batch, input_size)
    scale = hidden**-0.5
    tensors = [
        x,
        make(batch, hidden),
        make(batch, hidden) if cell == "lstm" else None,
        make(gates * hidden, input_size) * scale,
        make(gates * hidden, hidden) * scale * 2,
        make(gates * hidden) * 0.5,
        make(gates * hidden) * 0.5,
    ]
    return [t.to(dtype=dtype, device=device).requires_grad_() if t is not None else None for t in tensors]


def probabilities(cell, zoneout):
    """(p of h, p of c) for the LSTM, (p,) for the GRU, as written in the layers' docstring."""
    if cell == "gru":
        return (zoneout,)
    return tuple(zoneout) if isinstance(zoneout, tuple) else (zoneout, zoneout)


def masks_as_the_docstring_says(
    cell, zoneout, num_rows, hidden, training, dtype=torch.float64, *, hidden_out=None, device="cpu"
):
    """d per (row, unit) of h (hidden_out units, the projection's; else hidden) and of c: one torch.bernoulli over all
    rows on `device`, or p in evaluation."""
    widths = [hidden_out or hidden, hidden][: len(probabilities(cell, zoneout))]
    p = [q for q, width in zip(probabilities(cell, zoneout), widths) for _ in range(width)]
    p = torch.tensor(p, dtype=dtype, device=device).expand(num_rows, -1)
    d = torch.bernoulli(p) if training else p
    return d.split(widths, dim=1)


def plain_loop(
    cell, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, masks, batch_sizes=None, weight_hr=None, reverse=False
):
    """Krueger et al.'s zoneout LSTM / zoneout GRU over padded (T, B, I) or packed (N, I) rows, written out
    independently of fused_rnn. masks: d of h (and of c), one row per input row. weight_hr: the LSTM's projection,
    applied before h is zoned. reverse: the steps from the last to the first."""
    rows = x.reshape(-1, x.shape[-1])
    steps = batch_sizes if batch_sizes is not None else [x.shape[1]] * x.shape[0]
    offsets = [sum(steps[:t]) for t in range(len(steps))]
    order = list(zip(offsets, steps))[:: -1 if reverse else 1]
    h, c, outputs = h0, c0, {}
    for offset, batch in order:
        x_t, h_prev = rows[offset : offset + batch], h[:batch]
        d_h = masks[0][offset : offset + batch]
        if cell == "lstm":
            c_prev = c[:batch]
            i, f, g, o = (x_t @ weight_ih.T + bias_ih + h_prev @ weight_hh.T + bias_hh).chunk(4, 1)
            c_new = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if weight_hr is not None:
                h_new = h_new @ weight_hr.T
            d_c = masks[1][offset : offset + batch]
            c = torch.cat([d_c * c_prev + (1 - d_c) * c_new, c[batch:]])
        else:
            x_r, x_z, x_n = (x_t @ weight_ih.T + bias_ih).chunk(3, 1)
            h_r, h_z, h_n = (h_prev @ weight_hh.T + bias_hh).chunk(3, 1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            h_new = (1 - z) * torch.tanh(x_n + r * h_n) + z * h_prev
        h_t = d_h * h_prev + (1 - d_h) * h_new
        outputs[offset] = h_t
        h = torch.cat([h_t, h[batch:]])
    output = torch.cat([outputs[offset] for offset in offsets]).reshape(*x.shape[:-1], -1)
    return output, h, c


def run(backend, cell, tensors, zoneout, training, seed, batch_sizes=None, reverse=False):
    """functional.sequence with the masks drawn after torch.manual_seed(seed): (output, h_n, c_n). tensors: NAMES's,
    and weight_hr when the LSTM has a projection."""
    torch.manual_seed(seed)
    x, h0, c0, *weights = tensors
    weight_hr = weights.pop() if len(weights) == 5 else None
    return functional.sequence(cell, x, h0, c0, *weights, weight_hr, batch_sizes, reverse, backend, zoneout, training)


def outputs_and_gradients(backend, cell, tensors, zoneout=None, training=True, seed=0, **layout):
    outputs = run(backend, cell, tensors, ZONEOUT[cell] if zoneout is None else zoneout, training, seed, **layout)
    return outputs, gradients(outputs, tensors)


def assert_match(expected, actual, dtype, atol=None, rtol=None):
    atol, rtol = (atol, rtol) if atol is not None else TOLERANCE[dtype]
    (ref, ref_grads), (ours, our_grads) = expected, actual
    for name, r, o in zip(["output", "h_n", "c_n"], ref, ours, strict=True):
        assert_close(name, r, o, atol, rtol)
    for name, r, o in zip([*NAMES, "weight_hr"][: len(ref_grads)], ref_grads, our_grads, strict=True):
        assert_close(f"grad {name}", r, o, atol, rtol)


def plain_loop_and_reference(cell, training, steps, batch, input_size, hidden, device, batch_sizes=None):
    """The plain loop's and the reference's outputs and gradients for the same leaves and masks on `device`
    (padded (steps, batch) input, or packed rows of `batch_sizes`)."""
    rows = sum(batch_sizes) if batch_sizes is not None else None
    tensors = leaves(cell, steps, batch, input_size, hidden, rows=rows, device=device)
    torch.manual_seed(5)
    num_rows = rows if rows is not None else steps * batch
    masks = masks_as_the_docstring_says(cell, ZONEOUT[cell], num_rows, hidden, training, device=device)
    expected = plain_loop(cell, *tensors, masks, batch_sizes)
    layout = {"batch_sizes": batch_sizes} if batch_sizes is not None else {}
    ours = outputs_and_gradients("reference", cell, tensors, training=training, seed=5, **layout)
    return (expected, gradients(expected, tensors)), ours


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("steps, batch, input_size, hidden", SHAPES)
def test_reference_matches_the_plain_loop(steps, batch, input_size, hidden, cell, training):
    expected, ours = plain_loop_and_reference(cell, training, steps, batch, input_size, hidden, DEVICE)
    assert_match(expected, ours, torch.float64)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reference_matches_the_plain_loop_on_packed_rows(cell, training):
    lengths = [5, 3, 3, 1]
    batch_sizes = packed_batch_sizes(lengths)
    expected, ours = plain_loop_and_reference(cell, training, None, len(lengths), 3, 6, DEVICE, batch_sizes)
    assert_match(expected, ours, torch.float64)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_plain_loop_comparison_keeps_every_tensor_on_the_layers_device(training, packed):
    """On the first GPU run every test_reference_matches_the_plain_loop* case failed on CUDA, in training and in
    evaluation: the test drew its masks on the CPU while the layer's tensors were on the GPU, and CUDA refuses to mix
    them. The meta device refuses the same mix, so the same comparison run there on a CPU machine shows a tensor made
    on the wrong device (the numbers are not computed on meta; the CUDA and CPU runs compare those)."""
    meta = torch.device("meta")
    batch_sizes = packed_batch_sizes([4, 2, 1]) if packed else None
    for cell in ("lstm", "gru"):
        (expected, expected_grads), (ours, our_grads) = plain_loop_and_reference(
            cell, training, None if packed else 3, 3, 2, 5, meta, batch_sizes
        )
        computed = [t for t in (*expected, *expected_grads, *ours, *our_grads) if t is not None]
        assert computed and all(t.device == meta for t in computed)


@pytest.mark.parametrize(
    "dtype, training",
    [(torch.float64, True), (torch.float64, False), (torch.float32, True)],
    ids=["fp64-train", "fp64-eval", "fp32-train"],
)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("steps, batch, input_size, hidden", SHAPES)
def test_triton_matches_reference(steps, batch, input_size, hidden, cell, training, dtype):
    tensors = leaves(cell, steps, batch, input_size, hidden, dtype=dtype)
    assert_match(
        outputs_and_gradients("reference", cell, tensors, training=training),
        outputs_and_gradients("triton", cell, tensors, training=training),
        dtype,
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_triton_matches_reference_on_packed_rows(cell, reverse):
    lengths = [6, 5, 4, 2, 1]
    batch_sizes = packed_batch_sizes(lengths)
    tensors = leaves(cell, None, len(lengths), 4, 7, rows=sum(lengths))
    layout = {"batch_sizes": batch_sizes, "reverse": reverse}
    assert_match(
        outputs_and_gradients("reference", cell, tensors, **layout),
        outputs_and_gradients("triton", cell, tensors, **layout),
        torch.float64,
    )


PROJECTED_SHAPES = [  # T, B, I, H, P
    pytest.param(1, 1, 2, 5, 1, id="T1-B1-I2-H5-P1"),
    pytest.param(4, 3, 4, 13, 5, id="T4-B3-I4-H13-P5"),
    pytest.param(3, 2, 3, 8, 7, id="T3-B2-I3-H8-P7"),
]


def projected_leaves(steps, batch, input_size, hidden, proj, *, rows=None):
    """(x, h0 (B, P), c0, weight_ih, weight_hh (4H, P), bias_ih, bias_hh, weight_hr (P, H)), float64, requiring grad."""
    make = lambda *shape: torch.randn(shape, dtype=torch.float64)
    x = make(rows, input_size) if rows is not None else make(steps, batch, input_size)
    tensors = [
        x,
        make(batch, proj),
        make(batch, hidden),
        make(4 * hidden, input_size) * hidden**-0.5,
        make(4 * hidden, proj) * proj**-0.5 * 2,
        make(4 * hidden) * 0.5,
        make(4 * hidden) * 0.5,
        make(proj, hidden) * hidden**-0.5 * 2,
    ]
    return [t.to(DEVICE).requires_grad_() for t in tensors]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("steps, batch, input_size, hidden, proj", PROJECTED_SHAPES)
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_projected_lstm_matches_the_plain_loop(backend, steps, batch, input_size, hidden, proj, training):
    """With proj_size h is zoned after the projection: its keep weights have P units, c's H."""
    tensors = projected_leaves(steps, batch, input_size, hidden, proj)
    x, h0, c0, *weights, weight_hr = tensors
    torch.manual_seed(5)
    masks = masks_as_the_docstring_says(
        "lstm", ZONEOUT["lstm"], steps * batch, hidden, training, hidden_out=proj, device=DEVICE
    )
    expected = plain_loop("lstm", x, h0, c0, *weights, masks, weight_hr=weight_hr)
    assert_match(
        (expected, gradients(expected, tensors)),
        outputs_and_gradients(backend, "lstm", tensors, training=training, seed=5),
        torch.float64,
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_projected_lstm_on_packed_rows_matches_the_plain_loop(backend, reverse):
    lengths = [6, 5, 4, 2, 1]
    batch_sizes = packed_batch_sizes(lengths)
    tensors = projected_leaves(None, len(lengths), 4, 7, 3, rows=sum(lengths))
    x, h0, c0, *weights, weight_hr = tensors
    torch.manual_seed(2)
    masks = masks_as_the_docstring_says("lstm", ZONEOUT["lstm"], sum(lengths), 7, True, hidden_out=3, device=DEVICE)
    expected = plain_loop("lstm", x, h0, c0, *weights, masks, batch_sizes, weight_hr, reverse)
    assert_match(
        (expected, gradients(expected, tensors)),
        outputs_and_gradients(backend, "lstm", tensors, seed=2, batch_sizes=batch_sizes, reverse=reverse),
        torch.float64,
    )


@pytest.mark.parametrize("backend", ["auto", "triton", "reference"])
def test_projected_module_matches_the_plain_loop(backend):
    """fused_rnn.LSTM(proj_size=3, zoneout=) in training: h zoned after the projection (3 units), c over its 5, with
    the masks drawn as the docstring says; output and both final states."""
    layer = fused_rnn.LSTM(4, 5, proj_size=3, zoneout=ZONEOUT["lstm"], backend=backend).double().to(DEVICE)
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=DEVICE)
    torch.manual_seed(4)
    output, (h_n, c_n) = layer(x)
    torch.manual_seed(4)
    masks = masks_as_the_docstring_says("lstm", ZONEOUT["lstm"], 6, 5, True, hidden_out=3, device=DEVICE)
    weights = [getattr(layer, f"{name}_l0") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
    zeros = [torch.zeros(3, width, dtype=torch.float64, device=DEVICE) for width in (3, 5)]
    expected = plain_loop("lstm", x, *zeros, *weights[:4], masks, weight_hr=weights[4])
    for name, e, o in zip(["output", "h_n", "c_n"], expected, (output, h_n[0], c_n[0]), strict=True):
        assert_close(name, e, o, *TOLERANCE[torch.float64])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_projected_module_bidirectional_two_layers_on_unsorted_packed_input_matches_the_plain_loop(training):
    """fused_rnn.LSTM(proj_size=, zoneout=) on Triton against the plain loop run per layer and direction, with the
    masks drawn as the docstring says: one torch.bernoulli per layer and direction, in that order."""
    lengths, hidden, proj = [3, 5, 1, 4], 5, 2
    padded = torch.randn(5, 4, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    pack = lambda: pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
    layer = fused_rnn.LSTM(
        3, hidden, num_layers=2, bidirectional=True, proj_size=proj, zoneout=ZONEOUT["lstm"], backend="triton"
    )
    layer = layer.double().to(DEVICE).train(training)
    torch.manual_seed(9)
    output, (h_n, c_n) = layer(pack())

    torch.manual_seed(9)
    packed = pack()  # its own graph: the gradients of both sides are taken one after the other
    x, batch_sizes = packed.data, packed.batch_sizes.tolist()
    zero_h, zero_c = (torch.zeros(len(lengths), width, dtype=torch.float64, device=DEVICE) for width in (proj, hidden))
    finals = []
    for k in range(2):
        outputs = []
        for direction, suffix in enumerate(("", "_reverse")):
            masks = masks_as_the_docstring_says(
                "lstm", ZONEOUT["lstm"], x.shape[0], hidden, training, hidden_out=proj, device=DEVICE
            )
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
            weights = [getattr(layer, f"{name}_l{k}{suffix}") for name in names]
            out, *final = plain_loop("lstm", x, zero_h, zero_c, *weights[:4], masks, batch_sizes, weights[4], direction)
            outputs.append(out)
            finals.append(final)
        x = torch.cat(outputs, -1)
    expected = [x, *(torch.stack(f).index_select(1, packed.unsorted_indices) for f in zip(*finals))]
    ours = [output.data, h_n, c_n]
    atol, rtol = TOLERANCE[torch.float64]
    for name, e, o in zip(["output", "h_n", "c_n"], expected, ours, strict=True):
        assert_close(name, e, o, atol, rtol)
    wrt = [padded, *layer.parameters()]
    for (name, _), e, o in zip(
        [("input", None), *layer.named_parameters()], gradients(expected, wrt), gradients(ours, wrt), strict=True
    ):
        assert_close(f"grad {name}", e, o, atol, rtol)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_rate_zero_zones_only_the_other_state(cell):
    """(p, 0) zones h only (haste's LSTM zoneout), (0, p) c only; the GRU at 0 is the plain GRU."""
    tensors = leaves(cell, 4, 3, 4, 5)
    rates = [(0.5, 0.0), (0.0, 0.5)] if cell == "lstm" else [0.0]
    for rate in rates:
        assert_match(
            outputs_and_gradients("reference", cell, tensors, zoneout=rate),
            outputs_and_gradients("triton", cell, tensors, zoneout=rate),
            torch.float64,
        )


@pytest.mark.parametrize(
    "cell, packed, reverse, proj",
    [("lstm", True, True, 0), ("gru", False, False, 0), ("lstm", True, False, 2)],
    ids=["lstm-packed-reverse", "gru-padded", "lstm-projected-packed"],
)
def test_triton_gradcheck_with_fixed_masks(cell, packed, reverse, proj):
    """float64 gradcheck of the fused path; re-seeding inside the function fixes the masks (fast mode: the
    interpreter runs every step's kernels per evaluation)."""
    lengths = [3, 2, 1]
    batch_sizes = packed_batch_sizes(lengths) if packed else None
    rows = sum(lengths) if packed else None
    if proj:
        tensors = projected_leaves(3, 3, 2, 3, proj, rows=rows)
    else:
        tensors = leaves(cell, 3, 3, 2, 3, rows=rows)
    present = [i for i, t in enumerate(tensors) if t is not None]

    def call(*inputs):
        full = list(tensors)
        for index, t in zip(present, inputs):
            full[index] = t
        outputs = run("triton", cell, full, ZONEOUT[cell], True, 3, batch_sizes, reverse)
        return tuple(o for o in outputs if o is not None)

    assert torch.autograd.gradcheck(call, [tensors[i] for i in present], fast_mode=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_double_backward_recomputes_through_the_reference_with_the_same_masks(cell):
    """Second derivatives (a gradient penalty) through the Triton path equal the reference's, masks from one seed,
    and the reference's pass gradgradcheck."""
    tensors = leaves(cell, 3, 2, 3, 4)
    present = [t for t in tensors if t is not None]
    results = []
    for backend in ("reference", "triton"):
        outputs = run(backend, cell, tensors, ZONEOUT[cell], True, 4)
        first = torch.autograd.grad(sum(o.square().sum() for o in outputs if o is not None), present, create_graph=True)
        penalty = sum(g.square().sum() for g in first)
        results.append(torch.autograd.grad(penalty, present))
    for name, r, t in zip([n for n, x in zip(NAMES, tensors) if x is not None], *results, strict=True):
        assert_close(f"second derivative {name}", r, t, *TOLERANCE[torch.float64])

    def reference_call(*inputs):
        full = [*inputs[:2], None, *inputs[2:]] if cell == "gru" else list(inputs)
        return tuple(o for o in run("reference", cell, full, ZONEOUT[cell], True, 4) if o is not None)

    assert torch.autograd.gradgradcheck(reference_call, present, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("gru", 0), ("lstm", 10)], ids=["lstm", "gru", "lstm-P10"])
def test_low_precision_within_twice_torch_error(cell, proj, dtype):
    """Against the float64 reference (same masks), our error is at most twice that of the reference in `dtype`, with
    tests/test_triton_sequence.py's weights and floors. Evaluation mode, where d = p exactly: float64 and float32
    draws need not coincide. (On CPU the Triton interpreter rounds float32 -> bfloat16 toward zero, not to nearest
    as a GPU does, which the zoned state compounds: the GRU's bf16 output error is ~2.7x the reference's here.)"""
    weights = [w for w in layer_weights(cell, 8, 24, proj=proj, device=DEVICE) if w is not None]
    x, h0, c0, _ = sequence_inputs(cell, 6, 4, 8, 24, proj=proj, device=DEVICE)
    exact_leaves = [x, h0, c0, *weights]
    low = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in exact_leaves]
    exact = outputs_and_gradients("reference", cell, exact_leaves, training=False)
    theirs = outputs_and_gradients("reference", cell, low, training=False)
    ours = outputs_and_gradients("triton", cell, low, training=False)
    floor = 1e-3 if dtype == torch.float16 else 1e-2
    for index, name in enumerate(["output", "h_n", "c_n"]):
        if exact[0][index] is None:
            continue
        assert ours[0][index].dtype == dtype
        assert_within_twice_torch_error(name, exact[0][index], ours[0][index], theirs[0][index], floor)
    for name, e, t, o in zip([*NAMES, "weight_hr"], exact[1], theirs[1], ours[1]):
        if e is not None:
            assert_within_twice_torch_error(f"grad {name}", e, o, t, floor)


def test_triton_is_deterministic_and_the_seed_reproduces_the_masks():
    tensors = leaves("lstm", 5, 4, 3, 9)
    first, second = (outputs_and_gradients("triton", "lstm", tensors, seed=7) for _ in range(2))
    for a, b in zip([*first[0], *first[1]], [*second[0], *second[1]]):
        assert torch.equal(a, b)
    other_seed = run("triton", "lstm", tensors, ZONEOUT["lstm"], True, seed=8)
    assert not torch.equal(first[0][0], other_seed[0])


def test_keep_weights_rate_and_layout():
    """One Bernoulli draw per (row, unit): the empirical keep rate of each state is its p (within 5 sigma), the
    draw is what the docstring says (one torch.bernoulli over all rows), and evaluation gets p itself."""
    rows, hidden = 4000, 16
    like = torch.zeros(1, dtype=torch.float32)
    torch.manual_seed(11)
    keep = functional.zoneout_keep((0.05, 0.5), (hidden, hidden), rows, True, like)
    assert keep.shape == (rows, 2 * hidden) and keep.dtype == torch.float32
    for p, part in zip((0.05, 0.5), keep.split(hidden, 1)):
        assert set(part.unique().tolist()) <= {0.0, 1.0}
        sigma = (p * (1 - p) / part.numel()) ** 0.5
        assert abs(part.mean().item() - p) < 5 * sigma, (p, part.mean().item())
    torch.manual_seed(11)
    expected = masks_as_the_docstring_says("lstm", (0.05, 0.5), rows, hidden, True, torch.float32)
    assert torch.equal(keep, torch.cat(expected, 1))
    evaluation = functional.zoneout_keep((0.05, 0.5), (hidden, hidden), 3, False, like.bfloat16())
    assert evaluation.dtype == torch.float32  # p is not rounded to bfloat16
    assert torch.equal(evaluation, torch.tensor([[0.05] * hidden + [0.5] * hidden] * 3))
    assert functional.zoneout_keep((0.0, 0.0), (hidden, hidden), rows, True, like) is None


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_module_units_keep_their_previous_value_at_the_rate(backend):
    """End to end through the layer: a unit's output equals its previous step's exactly where it was kept."""
    p = 0.3
    layer = fused_rnn.GRU(4, 16, zoneout=p, backend=backend).to(DEVICE)
    x = torch.randn(6, 32, 4, device=DEVICE)
    output, _ = layer(x)
    kept = (output[1:] == output[:-1]).double().mean().item()
    sigma = (p * (1 - p) / output[1:].numel()) ** 0.5
    assert abs(kept - p) < 5 * sigma, kept

    cell = fused_rnn.LSTMCell(4, 16, zoneout=(0.1, 0.6), backend=backend).to(DEVICE)
    h, c = torch.randn(2000, 16, device=DEVICE), torch.randn(2000, 16, device=DEVICE)
    h_new, c_new = cell(torch.randn(2000, 4, device=DEVICE), (h, c))
    for name, p, old, new in (("h", 0.1, h, h_new), ("c", 0.6, c, c_new)):
        rate = (old == new).double().mean().item()
        assert abs(rate - p) < 5 * (p * (1 - p) / old.numel()) ** 0.5, (name, rate)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_module_eval_is_the_expectation(cell):
    """module.eval(): no randomness, and the plain loop with d = p."""
    zoneout = (0.2, 0.7) if cell == "LSTM" else 0.35
    layer = getattr(fused_rnn, cell)(3, 5, zoneout=zoneout).double().eval()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    output, _ = layer(x)
    assert torch.equal(output, layer(x)[0])
    name = cell.lower()
    masks = masks_as_the_docstring_says(name, zoneout, 8, 5, training=False)
    weights = [getattr(layer, f"{w}_l0") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    zeros = torch.zeros(2, 5, dtype=torch.float64)
    expected, _, _ = plain_loop(name, x, zeros, zeros if cell == "LSTM" else None, *weights, masks)
    assert_close("eval output", expected, output, *TOLERANCE[torch.float64])
    layer.train()
    assert not torch.equal(output, layer(x)[0])


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell"])
def test_cell_eval_is_the_expectation(cell):
    """cell.eval(): two steps from the same state agree, and equal the plain loop's step with d = p."""
    zoneout = (0.2, 0.7) if cell == "LSTMCell" else 0.35
    step = getattr(fused_rnn, cell)(3, 5, zoneout=zoneout).double().eval()
    name = cell[:-4].lower()
    x = torch.randn(2, 3, dtype=torch.float64)
    states = [torch.randn(2, 5, dtype=torch.float64) for _ in range(2 if name == "lstm" else 1)]
    hx = tuple(states) if name == "lstm" else states[0]
    first, second = step(x, hx), step(x, hx)
    first, second = (list(s) if name == "lstm" else [s] for s in (first, second))
    masks = masks_as_the_docstring_says(name, zoneout, 2, 5, training=False)
    weights = [getattr(step, w) for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    _, *expected = plain_loop(name, x.unsqueeze(0), *states, *([] if name == "lstm" else [None]), *weights, masks)
    for index, (e, a, b) in enumerate(zip(expected, first, second)):
        assert torch.equal(a, b), f"state {index}: two eval steps differ"
        assert_close(f"state {index}", e, a, *TOLERANCE[torch.float64])


def test_zoneout_zero_runs_exactly_what_runs_without_it():
    torch.manual_seed(0)
    plain = fused_rnn.LSTM(3, 6, num_layers=2)
    zero = fused_rnn.LSTM(3, 6, num_layers=2, zoneout=(0.0, 0.0))
    zero.load_state_dict(plain.state_dict())
    x = torch.randn(5, 2, 3)
    state = torch.get_rng_state()
    assert torch.equal(plain(x)[0], zero(x)[0])
    assert torch.equal(state, torch.get_rng_state())  # no masks drawn
    assert "zoneout" not in repr(zero) and "zoneout=0.4" in repr(fused_rnn.GRU(3, 6, zoneout=0.4))
    # Without zoneout "auto" keeps its choice (torch.nn's kernels on CPU); with it, the reference on CPU.
    tensors = leaves("gru", 3, 2, 3, 4)
    assert_match(
        outputs_and_gradients("torch", "gru", tensors, zoneout=0.0),
        outputs_and_gradients("triton", "gru", tensors, zoneout=0.0),
        torch.float64,
    )


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_module_bidirectional_two_layers_on_unsorted_packed_input(cell):
    """Triton and the reference draw the same masks from the same seed, one per layer and direction."""
    lengths = [3, 5, 1, 4]
    zoneout = ZONEOUT[cell.lower()]
    padded = torch.randn(5, 4, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    results = []
    for backend in ("reference", "triton"):
        packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
        torch.manual_seed(0)
        layer = getattr(fused_rnn, cell)(3, 4, num_layers=2, bidirectional=True, zoneout=zoneout, backend=backend)
        layer = layer.double().to(DEVICE)
        torch.manual_seed(9)
        output, state = layer(packed)
        output, _ = pad_packed_sequence(output)
        finals = list(state) if cell == "LSTM" else [state]
        wrt = [padded, *layer.parameters()]
        results.append(([output, *finals], gradients([output, *finals], wrt)))
    atol, rtol = TOLERANCE[torch.float64]
    for index, (r, t) in enumerate(zip(results[0][0] + results[0][1], results[1][0] + results[1][1], strict=True)):
        assert_close(f"result {index}", r, t, atol, rtol)


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_compile_fullgraph_matches_eager_without_graph_breaks(backend):
    torch._dynamo.reset()
    layer = fused_rnn.LSTM(3, 5, num_layers=2, zoneout=(0.2, 0.5), backend=backend).double().to(DEVICE)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def loss(x):
        output, (h_n, c_n) = layer(x)
        return output.square().sum() + h_n.sum() + c_n.sum()

    explanation = torch._dynamo.explain(loss)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    eager_loss = loss(x)
    eager_grads = torch.autograd.grad(eager_loss, [x, *layer.parameters()])
    torch.manual_seed(3)
    compiled_loss = compiled(x)
    compiled_grads = torch.autograd.grad(compiled_loss, [x, *layer.parameters()])
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("loss", eager_loss, compiled_loss, atol, rtol)
    for index, (e, c) in enumerate(zip(eager_grads, compiled_grads)):
        assert_close(f"grad {index}", e, c, atol, rtol)


def test_auto_picks_triton_on_cuda_and_the_compiled_kernels_on_cpu():
    from fused_rnn.backends import Workload, native_cpu_unavailable, resolve

    zoned = Workload("lstm", 4, False, True, 8, False, True)
    projected = zoned._replace(projected=True)
    gru = zoned._replace(cell="gru")
    on_cpu = "cpu" if native_cpu_unavailable(torch.device("cpu"), torch.float32) is None else "reference"
    for dtype in (torch.float32, torch.float64):
        for workload in (zoned, projected, gru):
            assert resolve("auto", torch.device("cpu"), dtype, True, workload) == on_cpu
    # The compiled CPU kernels run float32 and float64 only.
    assert resolve("auto", torch.device("cpu"), torch.bfloat16, True, zoned) == "reference"
    assert resolve("auto", torch.device("cpu"), torch.float32, True, zoned._replace(zoneout=False)) != "reference"
    if torch.cuda.is_available():
        assert resolve("auto", torch.device("cuda"), torch.float32, True, zoned) == "triton"
        assert resolve("auto", torch.device("cuda"), torch.float32, True, projected) == "triton"


def test_bad_input_is_rejected_with_named_errors():
    x = torch.randn(2, 3, 4)
    for zoneout, error, message in [
        (1.0, ValueError, r"zoneout probabilities must be in \[0, 1\)"),
        (-0.1, ValueError, r"zoneout probabilities must be in \[0, 1\)"),
        ((0.1, 1.5), ValueError, r"zoneout probabilities must be in \[0, 1\)"),
        ("0.1", TypeError, "zoneout must be a number"),
        (True, TypeError, "zoneout must be a number"),
        ((0.1,), TypeError, r"zoneout must be a pair \(p_hidden, p_cell\)"),
        ((0.1, 0.2, 0.3), TypeError, r"zoneout must be a pair \(p_hidden, p_cell\)"),
    ]:
        with pytest.raises(error, match=message):
            fused_rnn.LSTM(4, 5, zoneout=zoneout)
        with pytest.raises(error, match=message):
            fused_rnn.LSTMCell(4, 5, zoneout=zoneout)
        with pytest.raises(error, match=message):
            functional.lstm(x, None, torch.randn(20, 4), torch.randn(20, 5), zoneout=zoneout)
    with pytest.raises(TypeError, match="zoneout must be a number \\(the GRU has one state\\)"):
        fused_rnn.GRU(4, 5, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="zoneout probabilities must be in"):
        fused_rnn.GRUCell(4, 5, zoneout=1.0)
    with pytest.raises(ValueError, match="zoneout is supported for the LSTM and GRU, not rnn_tanh"):
        functional.sequence(
            "rnn_tanh", x, None, None, torch.randn(5, 4), torch.randn(5, 5), None, None, None, None, False, "auto", 0.1
        )
    with pytest.raises(TypeError, match="unexpected keyword argument 'zoneout'"):
        fused_rnn.RNNCell(4, 5, zoneout=0.1)
    for backend in ("torch", "persistent"):
        with pytest.raises(ValueError, match=f"backend='{backend}' cannot run zoneout"):
            fused_rnn.GRU(4, 5, zoneout=0.1, backend=backend)(x)
    with pytest.raises(ValueError, match="backend='cpu' cannot run this zoneout call: dtype torch.bfloat16"):
        fused_rnn.GRU(4, 5, zoneout=0.1, backend="cpu").bfloat16()(x.bfloat16())
    with pytest.raises(ValueError, match="torch.nn.LSTM has no zoneout"):
        fused_rnn.to_torch(fused_rnn.LSTM(4, 5, zoneout=0.1))
    assert isinstance(fused_rnn.to_torch(fused_rnn.LSTM(4, 5, zoneout=0.0)), torch.nn.LSTM)
