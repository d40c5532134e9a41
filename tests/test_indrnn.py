"""IndRNN: the Triton kernel (interpreter on CPU), the compiled C++ kernel and the torch loop against the reference,
and the reference and the modules against plain loops written here; gradcheck, double backward, torch.compile, low
precision, errors. The compiled CUDA kernel: its lane bodies run on the host against the reference (where the
extension was built with CUDA), and with a GPU (tests marked `gpu`) backend="cuda" in every test the other fused
backends run."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn.backends import native
from fused_rnn.indrnn import functional, reference

from checks import DEVICE, TOLERANCE, assert_close, assert_within_twice_torch_error, gradients
from layers import packed_batch_sizes

NAMES = ["input", "h0", "weight_ih", "weight_hh", "bias_ih"]
# The compiled CPU kernel ("cpu") runs CPU tensors in float32/float64, the compiled CUDA kernel ("cuda") CUDA tensors;
# the others any device and dtype.
CUDA = pytest.param("cuda", marks=pytest.mark.gpu)
FUSED = ["triton", "torch", *(["cpu"] if DEVICE.type == "cpu" else []), CUDA]
ANY_DTYPE = ["triton", "torch", CUDA]
ON_CPU = pytest.mark.skipif(DEVICE.type != "cpu", reason="the compiled CPU kernel runs CPU tensors")
WITH_CUDA_KERNELS = pytest.mark.skipif(
    native.unavailable() is not None or not native.built_with_cuda(),
    reason=f"the compiled extension has no CUDA kernels: {native.unavailable() or native.cuda_unbuildable()}",
)
SHAPES = [  # T, B, I, H
    pytest.param(1, 1, 1, 1, id="T1-B1-I1-H1"),
    pytest.param(1, 3, 5, 7, id="T1-B3-I5-H7"),
    pytest.param(6, 1, 3, 33, id="T6-B1-I3-H33"),
    pytest.param(4, 5, 8, 130, id="T4-B5-I8-H130"),  # several programs along the batch and the hidden units
]


def plain_loop(x, h0, weight_ih, weight_hh, bias_ih, nonlinearity):
    """The paper's equation over padded (T, B, I) input, written out independently of fused_rnn."""
    act = torch.relu if nonlinearity == "relu" else torch.tanh
    h, outputs = h0, []
    for x_t in x:
        h = act(x_t @ weight_ih.T + (bias_ih if bias_ih is not None else 0) + weight_hh * h)
        outputs.append(h)
    return torch.stack(outputs), h


def leaves(steps, batch, input_size, hidden, *, rows=None, bias=True, dtype=torch.float64):
    """(x, h0, weight_ih, u, bias_ih) requiring grad; u spans (-1.2, 1.2) so that signs flip and states grow."""
    make = lambda *shape: torch.randn(shape, dtype=torch.float64)
    x = make(rows, input_size) if rows is not None else make(steps, batch, input_size)
    tensors = [x, make(batch, hidden), make(hidden, input_size) * hidden**-0.5, (torch.rand(hidden) * 2.4 - 1.2)]
    tensors.append(make(hidden) if bias else None)
    return [t.to(dtype=dtype, device=DEVICE).requires_grad_() if t is not None else None for t in tensors]


def outputs_and_gradients(backend, tensors, nonlinearity, batch_sizes=None, reverse=False):
    outputs = functional.indrnn(
        *tensors, nonlinearity=nonlinearity, batch_sizes=batch_sizes, reverse=reverse, backend=backend
    )
    return outputs, gradients(outputs, tensors)


def assert_match(expected, actual, dtype):
    atol, rtol = TOLERANCE[dtype]
    (ref, ref_grads), (ours, our_grads) = expected, actual
    for name, r, o in zip(["output", "h_n"], ref, ours, strict=True):
        assert_close(name, r, o, atol, rtol)
    for name, r, o in zip(NAMES, ref_grads, our_grads, strict=True):
        assert_close(f"grad {name}", r, o, atol, rtol)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("steps, batch, input_size, hidden", SHAPES)
def test_reference_matches_the_plain_loop(steps, batch, input_size, hidden, nonlinearity):
    tensors = leaves(steps, batch, input_size, hidden)
    expected = plain_loop(*tensors, nonlinearity)
    assert_match(
        (expected, gradients(expected, tensors)),
        outputs_and_gradients("reference", tensors, nonlinearity),
        torch.float64,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("steps, batch, input_size, hidden", SHAPES)
@pytest.mark.parametrize("backend", FUSED)
def test_fused_matches_reference(backend, steps, batch, input_size, hidden, nonlinearity, reverse, dtype):
    tensors = leaves(steps, batch, input_size, hidden, dtype=dtype)
    assert_match(
        outputs_and_gradients("reference", tensors, nonlinearity, reverse=reverse),
        outputs_and_gradients(backend, tensors, nonlinearity, reverse=reverse),
        dtype,
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [[5, 3, 3, 1], [1], [2, 2], [6, 5, 4, 2, 1]], ids=lambda x: "-".join(map(str, x)))
@pytest.mark.parametrize("backend", FUSED)
def test_packed(backend, lengths, reverse):
    batch_sizes = packed_batch_sizes(lengths)
    tensors = leaves(None, len(lengths), 4, 7, rows=sum(lengths))
    assert_match(
        outputs_and_gradients("reference", tensors, "relu", batch_sizes, reverse),
        outputs_and_gradients(backend, tensors, "relu", batch_sizes, reverse),
        torch.float64,
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=ON_CPU), CUDA])
def test_compiled_kernels_over_many_lanes_stay_exact(backend, reverse):
    """Enough lanes per step that the CPU kernel hands them to several threads and the CUDA kernel to many blocks
    (packed, ragged, so rows leave and join), against the reference in float64."""
    lengths = [4] * 100 + [3] * 50 + [1] * 10
    tensors = leaves(None, len(lengths), 3, 1100, rows=sum(lengths))
    batch_sizes = packed_batch_sizes(lengths)
    assert_match(
        outputs_and_gradients("reference", tensors, "tanh", batch_sizes, reverse),
        outputs_and_gradients(backend, tensors, "tanh", batch_sizes, reverse),
        torch.float64,
    )


def cuda_lane_bodies(projection, h0, u, batch_sizes, reverse, nonlinearity, grad_output, grad_h_n):
    """The CUDA kernels' lane bodies run on the host (csrc/cuda/indrnn.cu): output, h_n, and the gradients of the
    pre-activation, h0 and u."""
    ops, relu = native.ops(), nonlinearity == "relu"
    output, h_n = ops.indrnn_recurrence_forward_lane_loop(projection, u, h0, batch_sizes, reverse, relu)
    grads = ops.indrnn_recurrence_backward_lane_loop(grad_output, grad_h_n, output, h0, u, batch_sizes, reverse, relu)
    return [output, h_n, *grads]


def reference_of_the_recurrence(projection, h0, u, batch_sizes, reverse, nonlinearity, grad_output, grad_h_n):
    """What cuda_lane_bodies returns, from the reference with W = I and no bias (so that x W^T is exactly the
    projection) and autograd."""
    projection, h0, u = (t.detach().requires_grad_() for t in (projection, h0, u))
    identity = torch.eye(projection.shape[1], dtype=projection.dtype)
    output, h_n = reference.sequence(projection, h0, identity, u, None, batch_sizes, reverse, nonlinearity)
    grads = torch.autograd.grad([output, h_n], [projection, h0, u], [grad_output, grad_h_n])
    return [output.detach(), h_n.detach(), *grads]


def recurrence_inputs(rows, batch, hidden, dtype=torch.float64):
    """projection (rows, H), h0 (B, H), u in (-1.2, 1.2) (signs flip, states grow), grad_output, grad_h_n."""
    make = lambda *shape: torch.randn(shape, dtype=torch.float64)
    tensors = [make(rows, hidden), make(batch, hidden), torch.rand(hidden, dtype=torch.float64) * 2.4 - 1.2]
    return [t.to(dtype) for t in (*tensors, make(rows, hidden), make(batch, hidden))]


RECURRENCE_NAMES = ["output", "h_n", "grad projection", "grad h0", "grad weight_hh"]
LANE_CASES = [  # T (None: packed), B, H, packed lengths
    *(pytest.param(t, b, h, None, id=f"T{t}-B{b}-H{h}") for t, b, h in [(1, 1, 1), (1, 3, 7), (6, 1, 33), (4, 5, 130)]),
    pytest.param(None, 4, 7, [5, 3, 3, 1], id="packed-5-3-3-1-H7"),
    pytest.param(None, 5, 9, [6, 5, 4, 2, 1], id="packed-6-5-4-2-1-H9"),
]


@WITH_CUDA_KERNELS
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("steps, batch, hidden, lengths", LANE_CASES)
def test_cuda_lane_bodies_on_the_host_match_the_reference(steps, batch, hidden, lengths, nonlinearity, reverse):
    """The CUDA kernels' code (step table, per-lane walk, h0 where a packed row starts, du per lane then summed over
    rows) run on the host in float64, forward and backward, against the reference."""
    batch_sizes = packed_batch_sizes(lengths) if lengths else None
    inputs = recurrence_inputs(sum(lengths) if lengths else steps * batch, batch, hidden)
    expected = reference_of_the_recurrence(*inputs[:3], batch_sizes, reverse, nonlinearity, *inputs[3:])
    got = cuda_lane_bodies(*inputs[:3], batch_sizes, reverse, nonlinearity, *inputs[3:])
    atol, rtol = TOLERANCE[torch.float64]
    for name, e, g in zip(RECURRENCE_NAMES, expected, got, strict=True):
        assert g.dtype == torch.float64, name
        assert_close(name, e, g, atol, rtol)


@WITH_CUDA_KERNELS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("packed, reverse", [(False, False), (True, True)], ids=["padded-forward", "packed-reverse"])
def test_cuda_lane_bodies_low_precision_within_twice_torch_error(dtype, packed, reverse):
    """fp16/bf16 storage, fp32 math and carried state: against the float64 reference of the same rounded inputs, our
    error is at most twice the reference's own in that dtype."""
    lengths = [8, 6, 6, 3] if packed else None
    batch_sizes = packed_batch_sizes(lengths) if packed else None
    low = recurrence_inputs(sum(lengths) if packed else 8 * 4, 4, 40, dtype)
    exact = reference_of_the_recurrence(
        *(t.double() for t in low[:3]), batch_sizes, reverse, "relu", *(t.double() for t in low[3:])
    )
    theirs = reference_of_the_recurrence(*low[:3], batch_sizes, reverse, "relu", *low[3:])
    ours = cuda_lane_bodies(*low[:3], batch_sizes, reverse, "relu", *low[3:])
    for name, e, t, o in zip(RECURRENCE_NAMES, exact, theirs, ours, strict=True):
        assert o.dtype == dtype, name
        assert_within_twice_torch_error(name, e, o, t, floor=1e-3 * e.abs().max().item())


@WITH_CUDA_KERNELS
def test_cuda_lane_bodies_carry_the_state_and_its_gradients_in_float32():
    """bfloat16 storage. Unit 0 (u = 1): h grows by 1e-3 per step from 1, which a bfloat16 state (spacing 2**-7 at 1)
    would never do, and du sums 64 values near 1, of which a bfloat16 running sum would drop the fractions. Unit 1
    (u = 1 - 2**-8, exact in bfloat16): the gradient reaching h0 is u**64 = 0.779, which a bfloat16 carry would
    round to 0.75."""
    steps = 64
    projection = torch.full((steps, 2), 1e-3, dtype=torch.bfloat16)
    h0 = torch.ones(1, 2, dtype=torch.bfloat16)
    u = torch.tensor([1, 1 - 2**-8], dtype=torch.bfloat16)
    grad_output = torch.zeros(steps, 2, dtype=torch.bfloat16)
    grad_h_n = torch.ones(1, 2, dtype=torch.bfloat16)
    low = [projection, h0, u, grad_output, grad_h_n]
    ours = cuda_lane_bodies(*low[:3], None, False, "relu", *low[3:])
    exact = reference_of_the_recurrence(
        *(t.double() for t in low[:3]), None, False, "relu", *(t.double() for t in low[3:])
    )
    for name, e, o in zip(RECURRENCE_NAMES, exact, ours, strict=True):
        if name in ("h_n", "grad h0", "grad weight_hh"):
            assert_close(name, e, o, atol=0, rtol=2**-8)


@pytest.mark.parametrize("backend", FUSED)
def test_without_bias_and_without_h0(backend):
    x, _, weight_ih, u, _ = leaves(3, 2, 4, 5, bias=False)
    tensors = [x, None, weight_ih, u, None]
    assert_match(
        outputs_and_gradients("reference", tensors, "tanh"),
        outputs_and_gradients(backend, tensors, "tanh"),
        torch.float64,
    )


@pytest.mark.parametrize("packed, reverse", [(False, False), (True, True)], ids=["padded-forward", "packed-reverse"])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("backend", ["triton", CUDA])
def test_gradcheck(backend, nonlinearity, packed, reverse):
    lengths = [3, 2, 1]
    batch_sizes = packed_batch_sizes(lengths) if packed else None
    tensors = leaves(3, 3, 2, 3, rows=sum(lengths) if packed else None)
    run = lambda *t: functional.indrnn(
        *t, nonlinearity=nonlinearity, batch_sizes=batch_sizes, reverse=reverse, backend=backend
    )
    assert torch.autograd.gradcheck(run, tensors)


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_recomputes_through_the_reference(backend):
    tensors = leaves(3, 2, 3, 4)
    run = lambda *t: functional.indrnn(*t, nonlinearity="tanh", backend=backend)
    assert torch.autograd.gradgradcheck(run, tensors)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", ANY_DTYPE)
def test_low_precision_within_twice_torch_error(backend, dtype):
    """Against the float64 reference, our error is at most twice that of the reference run in the same dtype."""
    exact_leaves = leaves(8, 3, 6, 40)
    low = [t.detach().to(dtype).requires_grad_() for t in exact_leaves]
    exact = outputs_and_gradients("reference", exact_leaves, "relu")
    theirs = outputs_and_gradients("reference", low, "relu")
    ours = outputs_and_gradients(backend, low, "relu")
    for index, name in enumerate(["output", "h_n"]):
        assert ours[0][index].dtype == dtype
        assert_within_twice_torch_error(name, exact[0][index], ours[0][index], theirs[0][index], floor=1e-3)
    for name, e, t, o in zip(NAMES, exact[1], theirs[1], ours[1]):
        assert_within_twice_torch_error(f"grad {name}", e, o, t, floor=1e-3 * e.abs().max().item())


@pytest.mark.parametrize("backend", ANY_DTYPE)
def test_low_precision_carries_the_state_in_float32(backend):
    """h grows by 1e-3 per step from 1 (u = 1): a bfloat16 state (spacing 2**-7 at 1) would never move."""
    steps, hidden = 64, 3
    x = torch.ones(steps, 1, 1, dtype=torch.bfloat16, device=DEVICE)
    weight_ih = torch.full((hidden, 1), 1e-3, dtype=torch.bfloat16, device=DEVICE)
    u = torch.ones(hidden, dtype=torch.bfloat16, device=DEVICE)
    h0 = torch.ones(1, hidden, dtype=torch.bfloat16, device=DEVICE)
    _, h_n = functional.indrnn(x, h0, weight_ih, u, backend=backend)
    exact = 1 + steps * weight_ih[0, 0].double()
    assert_close("h_n", torch.full_like(h_n, exact.item(), dtype=torch.float64), h_n, atol=0, rtol=2**-8)


@pytest.mark.parametrize("backend", ["triton", pytest.param("cpu", marks=ON_CPU), CUDA])
def test_fused_kernels_are_deterministic(backend):
    tensors = leaves(5, 6, 4, 9) if backend == "triton" else leaves(7, 9, 4, 300, dtype=torch.float32)
    first, second = (outputs_and_gradients(backend, tensors, "relu") for _ in range(2))
    for a, b in zip([*first[0], *first[1]], [*second[0], *second[1]]):
        assert torch.equal(a, b)


def per_sequence_oracle(layer, padded, lengths, h0):
    """What a bidirectional multi-layer IndRNN computes, one sequence at a time with the plain loop: output (T, B,
    2H) zero past each length, h_n (layers * 2, B, H). The reverse direction runs over the sequence's own steps."""
    outputs, finals = padded.new_zeros(padded.shape[0], len(lengths), 2 * layer.hidden_size), []
    for b, length in enumerate(lengths):
        x, h_b = padded[:length, b : b + 1], []
        for k in range(layer.num_layers):
            directions = []
            for d, suffix in enumerate(("", "_reverse")):
                weights = [getattr(layer, f"{name}_l{k}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih")]
                source = x if d == 0 else x.flip(0)
                out, h = plain_loop(source, h0[2 * k + d, b : b + 1], *weights, layer.nonlinearity)
                directions.append(out if d == 0 else out.flip(0))
                h_b.append(h)
            x = torch.cat(directions, -1)
        outputs[:length, b : b + 1] = x
        finals.append(torch.stack(h_b))
    return outputs, torch.cat(finals, 1)


@pytest.mark.parametrize("backend", ["triton", pytest.param("cpu", marks=ON_CPU), "torch", "reference", CUDA])
def test_module_bidirectional_two_layers_on_unsorted_packed_input(backend):
    lengths = [3, 5, 1, 4]
    layer = fused_rnn.IndRNN(3, 4, num_layers=2, bidirectional=True, nonlinearity="tanh", backend=backend)
    layer = layer.double().to(DEVICE)
    padded = torch.randn(5, 4, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h0 = torch.randn(4, 4, 4, dtype=torch.float64, device=DEVICE)
    packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
    output, h_n = layer(packed, h0)
    output, _ = pad_packed_sequence(output)
    expected_output, expected_h_n = per_sequence_oracle(layer, padded, lengths, h0)
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", expected_output, output, atol, rtol)
    assert_close("h_n", expected_h_n, h_n, atol, rtol)
    wrt = [padded, *layer.parameters()]
    for index, (e, o) in enumerate(
        zip(gradients([expected_output, expected_h_n], wrt), gradients([output, h_n], wrt), strict=True)
    ):
        assert_close(f"grad {index}", e, o, atol, rtol)


def test_module_batch_first_unbatched_and_cell_agree_with_the_plain_loop():
    layer = fused_rnn.IndRNN(3, 6, batch_first=True, backend="torch").double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    weights = (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0)
    expected, expected_h = plain_loop(x.transpose(0, 1), torch.zeros(2, 6, dtype=torch.float64), *weights, "relu")
    output, h_n = layer(x)
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("batch_first output", expected.transpose(0, 1), output, atol, rtol)
    assert_close("h_n", expected_h.unsqueeze(0), h_n, atol, rtol)
    unbatched, unbatched_h = layer(x[0])
    assert_close("unbatched output", expected[:, 0], unbatched, atol, rtol)
    assert_close("unbatched h_n", expected_h[:1], unbatched_h, atol, rtol)

    cell = fused_rnn.IndRNNCell(3, 6, nonlinearity="tanh").double()
    h = torch.randn(2, 6, dtype=torch.float64)
    expected_step = torch.tanh(x[:, 0] @ cell.weight_ih.T + cell.bias_ih + cell.weight_hh * h)
    assert_close("cell", expected_step, cell(x[:, 0], h), atol, rtol)
    assert_close("unbatched cell", expected_step[1], cell(x[1, 0], h[1]), atol, rtol)


def test_parameters_and_init():
    torch.manual_seed(0)
    layer = fused_rnn.IndRNN(10, 400, num_layers=2, bidirectional=True)
    names = [name for name, _ in layer.named_parameters()]
    assert names == [
        f"{kind}_l{k}{suffix}"
        for k in range(2)
        for suffix in ("", "_reverse")
        for kind in ("weight_ih", "weight_hh", "bias_ih")
    ]
    assert layer.weight_ih_l1.shape == (400, 800) and layer.weight_hh_l1_reverse.shape == (400,)
    bound = 400**-0.5
    for name, parameter in layer.named_parameters():
        low, high = (0.0, 1.0) if name.startswith("weight_hh") else (-bound, bound)
        assert low <= parameter.min() and parameter.max() <= high, name
        assert parameter.max() - parameter.min() > 0.9 * (high - low), f"{name} does not span its range"
    assert not any(name.startswith("bias") for name, _ in fused_rnn.IndRNN(3, 4, bias=False).named_parameters())


def test_auto_on_cpu_runs_the_compiled_kernel_or_the_torch_loop_never_the_interpreter():
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.float32) == "cpu"
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.float64) == "cpu"
    assert functional.chosen_backend("auto", torch.device("cpu"), torch.bfloat16) == "torch"


def test_auto_on_cuda_keeps_triton_until_the_cuda_kernel_is_measured():
    assert functional.chosen_backend("auto", torch.device("cuda"), torch.float32) != "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is visible")
def test_cuda_backend_refuses_to_run_without_a_gpu_by_name():
    with pytest.raises(ValueError, match="backend='cuda' cannot run here"):
        functional.indrnn(*(t.detach() for t in leaves(2, 1, 3, 4)), backend="cuda")


def test_cpu_backend_refuses_what_it_cannot_run_by_name():
    with pytest.raises(ValueError, match="backend='cpu'.*dtype torch.bfloat16"):
        functional.chosen_backend("cpu", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="backend='cpu'.*CPU tensors only"):
        functional.chosen_backend("cpu", torch.device("meta"), torch.float32)


@pytest.mark.parametrize("backend", ["triton", "auto", CUDA])
def test_compile_fullgraph_matches_eager_without_graph_breaks(backend):
    torch._dynamo.reset()
    layer = fused_rnn.IndRNN(3, 5, num_layers=2, backend=backend).double().to(DEVICE)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def loss(x):
        output, h_n = layer(x)
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
    x, h0, weight_ih, u, bias = (t.detach() for t in leaves(2, 3, 4, 5))
    call = lambda **changes: functional.indrnn(
        **{"input": x, "hx": h0, "weight_ih": weight_ih, "weight_hh": u, "bias_ih": bias, **changes}
    )
    cases = [
        (ValueError, "weight_hh must be a vector", {"weight_hh": torch.ones(5, 5, dtype=torch.float64, device=DEVICE)}),
        (ValueError, "weight_ih must be", {"weight_ih": torch.ones(5, 3, dtype=torch.float64, device=DEVICE)}),
        (ValueError, "bias_ih must be", {"bias_ih": torch.ones(4, dtype=torch.float64, device=DEVICE)}),
        (TypeError, "weight_hh has dtype", {"weight_hh": u.float()}),
        (ValueError, "hx must have shape", {"hx": torch.zeros(2, 5, dtype=torch.float64)}),
        (TypeError, "hx has dtype", {"hx": h0.float()}),
        (ValueError, "input must be 3-D", {"input": x[0]}),
        (TypeError, "floating-point", {"input": x.long()}),
        (ValueError, "nonlinearity must be", {"nonlinearity": "gelu"}),
        (ValueError, "backend must be one of", {"backend": "persistent"}),
        (ValueError, "batch_sizes must be positive and non-increasing", {"input": x[0], "batch_sizes": [1, 2]}),
        (ValueError, "batch_sizes sum to", {"input": x[0], "batch_sizes": [2, 2]}),
    ]
    for error, message, changes in cases:
        with pytest.raises(error, match=message):
            call(**changes)
    with pytest.raises(ValueError, match="nonlinearity must be"):
        fused_rnn.IndRNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        fused_rnn.IndRNN(3, 0)
    with pytest.raises(ValueError, match="dropout must be"):
        fused_rnn.IndRNN(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="input.size\\(-1\\) must be equal to input_size"):
        fused_rnn.IndRNN(3, 4)(torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="hx must have shape"):
        fused_rnn.IndRNN(3, 4)(torch.zeros(2, 1, 3), torch.zeros(1, 2, 4))
    with pytest.raises(TypeError, match="input must be a Tensor or PackedSequence"):
        fused_rnn.IndRNN(3, 4)([1.0])


def test_triton_refuses_a_state_too_large_for_32_bit_offsets():
    """The kernels index a step's [batch, hidden] block with 32-bit offsets: batch x hidden >= 2**31 is refused by
    name, never indexed past the block."""
    batch, hidden = 2**21, 1024
    x = torch.zeros(1, 1, 1, device=DEVICE).expand(1, batch, 1)  # no memory behind the batch
    hx = torch.zeros(1, 1, device=DEVICE).expand(batch, hidden)
    weight_ih, weight_hh = torch.zeros(hidden, 1, device=DEVICE), torch.zeros(hidden, device=DEVICE)
    with pytest.raises(ValueError, match="backend='triton' cannot run here: batch x hidden_size is too large"):
        functional.indrnn(x, hx, weight_ih, weight_hh, backend="triton")


def test_autocast_runs_in_its_lower_precision_like_torch_nn():
    """Under CPU autocast to bfloat16 the layer runs in bfloat16 (as torch.nn's recurrent layers), close to the
    float64 result within bfloat16's error; float64 input is left alone."""
    layer = fused_rnn.IndRNN(3, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    exact, _ = layer.double()(x.double())
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, h_n = layer(x)
        double_output, _ = layer.double()(x.double())
    layer.float()
    assert output.dtype == h_n.dtype == torch.bfloat16 and double_output.dtype == torch.float64
    assert ((output.double() - exact).norm() / exact.norm()).item() < 3e-2


def test_weights_only_load_and_torch_export_keep_the_outputs(tmp_path):
    layer = fused_rnn.IndRNN(3, 5, num_layers=2, bidirectional=True, nonlinearity="tanh")
    x = torch.randn(4, 2, 3)
    torch.save(layer, tmp_path / "layer.pt")
    loaded = torch.load(tmp_path / "layer.pt", weights_only=True)
    assert type(loaded) is fused_rnn.IndRNN and torch.equal(loaded(x)[0], layer(x)[0])
    program = torch.export.export(layer, (x,))
    other = torch.randn(4, 2, 3)
    assert torch.equal(program.module()(other)[0], layer(other)[0])
