"""The compiled CPU kernels (backend="cpu": csrc/cpu/recurrence.h driven by csrc/sequence.cpp) against the
reference: outputs, final states and every gradient, over every cell, odd sizes, packed, reverse, projection."""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_rnn
from fused_rnn import functional
from fused_rnn.backends import Workload, native, resolve

from checks import TOLERANCE, assert_close, gradients
from layers import layer_weights, sequence_inputs

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
NAMES = ["input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"]
SHAPES = [  # T, B, I, H
    pytest.param(1, 1, 1, 1, id="T1-B1-I1-H1"),
    pytest.param(1, 3, 5, 7, id="T1-B3-I5-H7"),
    pytest.param(4, 1, 3, 33, id="T4-B1-I3-H33"),
    pytest.param(3, 5, 8, 100, id="T3-B5-I8-H100"),
    # Large enough per step to run on every thread, with partial SIMD blocks and partial register tiles.
    pytest.param(3, 13, 16, 203, id="T3-B13-I16-H203"),
    pytest.param(2, 40, 3, 65, id="T2-B40-I3-H65"),
]


def run_both(cell, inputs, weights, batch_sizes, reverse):
    """(outputs, gradients) of the cpu and the reference backends on the same leaves."""
    x, h0, c0 = inputs
    leaves = [x, h0, c0, *weights]
    results = []
    for backend in ("cpu", "reference"):
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


def test_extension_loads_and_registers_its_cpu_kernels():
    assert native.unavailable() is None
    assert native.has_kernel("sequence_forward", "cpu") and native.has_kernel("sequence_backward", "cpu")
    assert fused_rnn.available_backends()["cpu"].startswith("available")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AVX2/AVX-512 builds exist on x86-64 only")
def test_the_widest_instruction_set_torch_reports_runs():
    expected = "AVX512" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "AVX2"
    assert native.cpu_instruction_set() == expected
    assert expected in fused_rnn.available_backends()["cpu"]


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512", reason="this process already runs the AVX2 build"
)
def test_the_avx2_build_passes_this_file_too():
    """This process runs the AVX-512 build; ATEN_CPU_CAPABILITY=avx2 makes a child run the AVX2 one (8-wide
    vectors, other tiles and tails) through every other test here."""
    environment = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not avx2_build"]
    run = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    check = "from fused_rnn.backends import native; print(native.cpu_instruction_set())"
    child = subprocess.run([sys.executable, "-c", check], env=environment, capture_output=True, text=True)
    assert child.stdout.strip() == "AVX2", child.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("steps, batch, input_size, hidden", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, steps, batch, input_size, hidden, reverse, dtype):
    weights = layer_weights(cell, input_size, hidden, dtype=dtype)
    x, h0, c0, _ = sequence_inputs(cell, steps, batch, input_size, hidden, dtype=dtype)
    assert_match(run_both(cell, (x, h0, c0), weights, None, reverse), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    "cell, hidden, proj",
    [("lstm", 183, 0), ("lstm", 200, 190), ("gru", 211, 0), ("rnn_tanh", 365, 0), ("rnn_relu", 365, 0)],
)
def test_one_row_reads_large_weights_in_place(cell, hidden, proj, reverse, dtype):
    """At B = 1 a forward whose W_hh holds 512 KiB or more reads it (and W_hr) in place, with dot products, instead
    of packing it (recurrence.h, weights_in_place): these sizes cross that line in float32, with partial SIMD
    blocks and a projection."""
    weights = layer_weights(cell, 5, hidden, proj=proj, dtype=dtype)
    x, h0, c0, _ = sequence_inputs(cell, 3, 1, 5, hidden, proj=proj, dtype=dtype)
    assert_match(run_both(cell, (x, h0, c0), weights, None, reverse), dtype)


@pytest.mark.parametrize("initial_state", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("cell", CELLS)
def test_without_bias(cell, initial_state):
    weights = layer_weights(cell, 6, 9, bias=False)
    x, h0, c0, _ = sequence_inputs(cell, 4, 3, 6, 9, initial_state=initial_state)
    assert_match(run_both(cell, (x, h0, c0), weights, None, False), torch.float64)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    "lengths, hidden",
    [([5, 3, 3, 1], 7), ([1], 7), ([2, 2], 7), ([6, 6, 5, 4, 4, 2, 2, 2, 1, 1, 1, 1, 1], 90)],
    ids=["5-3-3-1", "1", "2-2", "13-sequences-H90"],
)
@pytest.mark.parametrize("cell", CELLS)
def test_packed(cell, lengths, hidden, reverse):
    weights = layer_weights(cell, 4, hidden)
    x, h0, c0, batch_sizes = sequence_inputs(cell, None, len(lengths), 4, hidden, lengths=lengths)
    assert_match(run_both(cell, (x, h0, c0), weights, batch_sizes, reverse), torch.float64)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    "batch, hidden, proj", [(3, 11, 4), (17, 70, 37)], ids=["B3-H11-P4", "B17-H70-P37"]
)  # the second spans several threads and SIMD blocks of projected units
def test_lstm_projection(batch, hidden, proj, reverse, packed):
    weights = layer_weights("lstm", 5, hidden, proj=proj)
    lengths = [4, *[3] * (batch - 2), 1] if packed else None
    x, h0, c0, batch_sizes = sequence_inputs("lstm", 4, batch, 5, hidden, proj=proj, lengths=lengths)
    assert_match(run_both("lstm", (x, h0, c0), weights, batch_sizes, reverse), torch.float64)


def input_gates_chunk_bytes() -> int:
    """How many bytes of input gates the CPU loop computes at once (kInputGatesBytes in csrc/sequence.cpp): a
    sequence with more runs its input projection in chunks of whole steps."""
    source = (Path(__file__).parents[1] / "csrc/sequence.cpp").read_text()
    match = re.search(r"constexpr int64_t kInputGatesBytes = (\d+) << (\d+);", source)
    assert match, "kInputGatesBytes not found in csrc/sequence.cpp"
    return int(match[1]) << int(match[2])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_a_sequence_past_one_chunk_of_input_gates_matches_torch_nn(reverse):
    """A GRU whose input gates fill more than two chunks (the last one partial), each chunk's rows read from where
    it starts, in either direction: output and h_n against torch.nn's bidirectional GRU in float64."""
    batch, hidden = 64, 64
    steps_per_chunk = input_gates_chunk_bytes() // (batch * 3 * hidden * 8)
    steps = 2 * steps_per_chunk + steps_per_chunk // 3
    layer = torch.nn.GRU(3, hidden, bidirectional=True, dtype=torch.float64)
    x = torch.randn(steps, batch, 3, dtype=torch.float64)
    h0 = torch.randn(2, batch, hidden, dtype=torch.float64)
    with torch.no_grad():
        expected, expected_h_n = layer(x, h0)
        suffix = "_reverse" if reverse else ""
        weights = [getattr(layer, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        output, h_n = functional.gru(x, h0[int(reverse)], *weights, reverse=reverse, backend="cpu")
    atol, rtol = TOLERANCE[torch.float64]
    assert_close("output", expected[..., hidden:] if reverse else expected[..., :hidden], output, atol, rtol)
    assert_close("h_n", expected_h_n[int(reverse)], h_n, atol, rtol)


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
    """The hand-written backward is the exact derivative of the compiled forward (float64 finite differences)."""
    weights = layer_weights(cell, 2, 3, proj=proj)
    x, h0, c0, batch_sizes = sequence_inputs(cell, 3, 2, 2, 3, proj=proj, lengths=lengths)
    if cell == "rnn_relu":  # keep pre-activations away from relu's kink, where finite differences are wrong
        with torch.no_grad():
            weights[2].add_(2.0)

    def run(*leaves):
        return tuple(o for o in functional.sequence(cell, *leaves, batch_sizes, reverse, "cpu") if o is not None)

    assert torch.autograd.gradcheck(run, [x, h0, c0, *weights], fast_mode=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_double_backward_recomputes_through_the_reference(cell):
    weights = layer_weights(cell, 2, 3)
    x, h0, c0, _ = sequence_inputs(cell, 3, 2, 2, 3)

    def run(*leaves):
        return tuple(o for o in functional.sequence(cell, *leaves, None, False, "cpu") if o is not None)

    assert torch.autograd.gradgradcheck(run, [x, h0, c0, *weights], fast_mode=True)


@pytest.mark.parametrize("cell", CELLS)
def test_small_signals_keep_their_relative_precision(cell):
    """float32 with tiny weights and inputs: tanh near 0 must be accurate in relative terms (2 sigmoid(2x) - 1
    is not: normwise error 1e-3 there), so the error relative to the output's scale stays at float32's."""
    weights = [w.detach() * 1e-4 if w is not None else None for w in layer_weights(cell, 8, 40, dtype=torch.float32)]
    x, h0, c0, _ = sequence_inputs(cell, 5, 3, 8, 40, dtype=torch.float32)
    x, h0 = x.detach() * 1e-4, h0.detach() * 1e-4
    c0 = c0.detach() * 1e-4 if c0 is not None else None
    ours = functional.sequence(cell, x, h0, c0, *weights, None, False, "cpu")[0]
    exact = functional.sequence(
        cell,
        x.double(),
        h0.double(),
        c0.double() if c0 is not None else None,
        *[w.double() if w is not None else None for w in weights],
        None,
        False,
        "reference",
    )[0]
    assert ((ours.double() - exact).norm() / exact.norm()).item() < 1e-6


def test_runs_are_bit_identical():
    """No atomics and a fixed order of every sum: repeated forward + backward give the same bits."""
    weights = layer_weights("lstm", 16, 203, dtype=torch.float32)
    x, h0, c0, _ = sequence_inputs("lstm", 4, 13, 16, 203, dtype=torch.float32)
    leaves = [x, h0, c0, *weights]
    runs = []
    for _ in range(2):
        outputs = functional.sequence("lstm", x, h0, c0, *weights, None, False, "cpu")
        runs.append([*outputs, *gradients(outputs, leaves)])
    for first, second in zip(*runs):
        assert first is None or torch.equal(first, second)


def test_inference_saves_nothing_and_matches():
    weights = layer_weights("lstm", 4, 6, proj=3)
    x, h0, c0, _ = sequence_inputs("lstm", 3, 2, 4, 6, proj=3)
    with torch.no_grad():
        ours = functional.sequence("lstm", x, h0, c0, *weights, None, False, "cpu")
        rows = x.reshape(-1, 4)
        *_, saved, projection_input = native.ops().sequence_forward("lstm", rows, h0, c0, *weights, None, False, False)
        ref = functional.sequence("lstm", x, h0, c0, *weights, None, False, "reference")
    assert saved.numel() == 0 and projection_input.numel() == 0
    for name, r, o in zip(["output", "h_n", "c_n"], ref, ours):
        assert_close(name, r, o, *TOLERANCE[torch.float64])


def test_auto_picks_cpu_only_where_it_was_measured_faster():
    cpu = torch.device("cpu")
    assert resolve("auto", cpu, torch.float32, workload=Workload("gru", 1, False, False)) == "cpu"
    assert resolve("auto", cpu, torch.float32, workload=Workload("lstm", 64, True, True)) == "cpu"
    assert resolve("auto", cpu, torch.float32, workload=Workload("lstm", 1, False, False)) == "torch"
    # The padded LSTM: "cpu" only for inference at batch 1 with a W_hh read in place (hidden >= 512).
    assert resolve("auto", cpu, torch.float32, workload=Workload("lstm", 1, False, False, hidden=512)) == "cpu"
    assert resolve("auto", cpu, torch.float32, workload=Workload("lstm", 1, False, False, hidden=256)) == "torch"
    assert resolve("auto", cpu, torch.float32, workload=Workload("lstm", 2, False, False, hidden=512)) == "torch"
    assert resolve("auto", cpu, torch.float32, workload=Workload("lstm", 1, False, True, hidden=512)) == "torch"
    assert resolve("auto", cpu, torch.float32, workload=Workload("gru", 64, False, True)) == "cpu"
    assert resolve("auto", cpu, torch.float32, workload=Workload("gru", 256, False, True)) == "torch"  # not measured
    assert resolve("auto", cpu, torch.bfloat16, workload=Workload("gru", 1, False, False)) == "torch"


def test_unsupported_dtype_is_refused_by_name():
    weights = [w.detach().bfloat16() for w in layer_weights("gru", 3, 4)[:4]]
    with pytest.raises(ValueError, match=r"backend='cpu' cannot run here: dtype torch.bfloat16"):
        functional.gru(torch.randn(2, 1, 3, dtype=torch.bfloat16), None, *weights, backend="cpu")


# ---------------------------------------------------------------------------------------------------- zoneout
# Here rather than in test_zoneout.py so that the AVX2 child above runs them too.

ZONEOUT = {"lstm": (0.3, 0.6), "gru": 0.4}  # the LSTM's h and c at different rates


def zoned_results(cell, inputs, weights, batch_sizes, reverse, training, dtype, seed=3):
    """(outputs, gradients) of backend="cpu" with zoneout, then of the oracle with the same masks: in float64 the plain
    loop of Krueger et al.'s equations (tests/test_zoneout.py), in float32 the reference in float32."""
    from test_zoneout import masks_as_the_docstring_says, plain_loop

    x, h0, c0 = inputs
    leaves = [x, h0, c0, *weights]
    torch.manual_seed(seed)
    ours = functional.sequence(cell, x, h0, c0, *weights, batch_sizes, reverse, "cpu", ZONEOUT[cell], training)
    torch.manual_seed(seed)
    if dtype == torch.float32:
        expected = functional.sequence(
            cell, x, h0, c0, *weights, batch_sizes, reverse, "reference", ZONEOUT[cell], training
        )
    else:
        hidden = weights[1].shape[0] // (4 if cell == "lstm" else 3)
        weight_hr = weights[4]
        masks = masks_as_the_docstring_says(
            cell, ZONEOUT[cell], x.reshape(-1, x.shape[-1]).shape[0], hidden, training, dtype, hidden_out=h0.shape[1]
        )
        expected = plain_loop(cell, x, h0, c0, *weights[:4], masks, batch_sizes, weight_hr, reverse)
    return (ours, gradients(ours, leaves)), (expected, gradients(expected, leaves))


ZONEOUT_SHAPES = [  # T, B, I, H
    (1, 1, 2, 5),
    (4, 3, 4, 13),
    (5, 1, 3, 33),
    (3, 13, 16, 203),  # B*G*H*H >= 32768: both threads run, with partial SIMD blocks and register tiles
]
ZONEOUT_CASES = [  # cell, T, B, I, H, P (0: no projection)
    *[
        pytest.param(cell, *shape, 0, id=f"{cell}-T{shape[0]}-B{shape[1]}-H{shape[3]}")
        for cell in ("lstm", "gru")
        for shape in ZONEOUT_SHAPES
    ],
    pytest.param("lstm", 1, 2, 3, 5, 1, id="lstm-T1-B2-H5-P1"),
    pytest.param("lstm", 4, 3, 4, 13, 5, id="lstm-T4-B3-H13-P5"),
    pytest.param("lstm", 3, 17, 5, 70, 37, id="lstm-T3-B17-H70-P37"),  # several threads and blocks of P
]


@pytest.mark.parametrize(
    "dtype, training",
    [(torch.float64, True), (torch.float64, False), (torch.float32, True)],
    ids=["fp64-train", "fp64-eval", "fp32-train"],
)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell, steps, batch, input_size, hidden, proj", ZONEOUT_CASES)
def test_zoneout_matches_the_plain_loop(cell, steps, batch, input_size, hidden, proj, reverse, training, dtype):
    weights = layer_weights(cell, input_size, hidden, proj=proj, dtype=dtype)
    x, h0, c0, _ = sequence_inputs(cell, steps, batch, input_size, hidden, proj=proj, dtype=dtype)
    assert_match(zoned_results(cell, (x, h0, c0), weights, None, reverse, training, dtype), dtype)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    "cell, lengths, hidden, proj",
    [
        ("lstm", [5, 3, 3, 1], 7, 0),
        ("gru", [5, 3, 3, 1], 7, 0),
        ("lstm", [6, 6, 5, 4, 4, 2, 2, 2, 1, 1, 1, 1, 1], 90, 0),
        ("gru", [6, 6, 5, 4, 4, 2, 2, 2, 1, 1, 1, 1, 1], 90, 0),
        ("lstm", [6, 5, 4, 2, 1], 7, 3),
    ],
    ids=["lstm-5-3-3-1", "gru-5-3-3-1", "lstm-13-sequences-H90", "gru-13-sequences-H90", "lstm-P3"],
)
def test_zoneout_on_packed_rows_matches_the_plain_loop(cell, lengths, hidden, proj, reverse):
    weights = layer_weights(cell, 4, hidden, proj=proj)
    x, h0, c0, batch_sizes = sequence_inputs(cell, None, len(lengths), 4, hidden, proj=proj, lengths=lengths)
    assert_match(zoned_results(cell, (x, h0, c0), weights, batch_sizes, reverse, True, torch.float64), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    "cell, hidden, proj", [("lstm", 183, 0), ("lstm", 200, 190), ("gru", 211, 0)], ids=["lstm", "lstm-proj", "gru"]
)
def test_zoneout_with_one_row_reading_large_weights_in_place(cell, hidden, proj, dtype):
    """B = 1 with W_hh of 512 KiB or more (in float32 already): the forward's in-place path zones too."""
    weights = layer_weights(cell, 5, hidden, proj=proj, dtype=dtype)
    x, h0, c0, _ = sequence_inputs(cell, 3, 1, 5, hidden, proj=proj, dtype=dtype)
    assert_match(zoned_results(cell, (x, h0, c0), weights, None, False, True, dtype), dtype)


@pytest.mark.parametrize(
    "cell, proj, lengths, reverse",
    [
        pytest.param("lstm", 0, [3, 2], True, id="lstm-packed-reverse"),
        pytest.param("lstm", 2, [3, 2], False, id="lstm-proj-packed"),
        pytest.param("gru", 0, None, False, id="gru"),
        pytest.param("gru", 0, [3, 1], True, id="gru-packed-reverse"),
    ],
)
def test_zoneout_gradcheck_with_fixed_masks(cell, proj, lengths, reverse):
    """float64 finite differences; re-seeding inside the function fixes the masks."""
    weights = layer_weights(cell, 2, 3, proj=proj)
    x, h0, c0, batch_sizes = sequence_inputs(cell, 3, 2, 2, 3, proj=proj, lengths=lengths)
    leaves = [x, h0, c0, *weights]
    present = [i for i, t in enumerate(leaves) if t is not None]

    def run(*inputs):
        full = list(leaves)
        for index, t in zip(present, inputs):
            full[index] = t
        torch.manual_seed(4)
        outputs = functional.sequence(cell, *full, batch_sizes, reverse, "cpu", ZONEOUT[cell], True)
        return tuple(o for o in outputs if o is not None)

    assert torch.autograd.gradcheck(run, [leaves[i] for i in present], fast_mode=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zoneout_double_backward_recomputes_through_the_reference_with_the_same_masks(cell):
    """A gradient penalty through backend="cpu" with zoneout: its second derivatives equal the reference's."""
    weights = layer_weights(cell, 2, 3)
    x, h0, c0, _ = sequence_inputs(cell, 3, 2, 2, 3)
    leaves = [t for t in (x, h0, c0, *weights) if t is not None]
    results = []
    for backend in ("cpu", "reference"):
        torch.manual_seed(4)
        outputs = functional.sequence(cell, x, h0, c0, *weights, None, False, backend, ZONEOUT[cell], True)
        first = torch.autograd.grad(sum(o.square().sum() for o in outputs if o is not None), leaves, create_graph=True)
        results.append(torch.autograd.grad(sum(g.square().sum() for g in first), leaves))
    for index, (ours, expected) in enumerate(zip(*results, strict=True)):
        assert_close(f"second derivative {index}", expected, ours, *TOLERANCE[torch.float64])


def test_zoneout_keep_weights_are_checked_by_the_op():
    """A direct call of the op with keep weights of the wrong width or dtype gets an error naming them."""
    weights = layer_weights("gru", 3, 4)
    x, h0, _, _ = sequence_inputs("gru", 2, 1, 3, 4)
    rows = x.detach().reshape(-1, 3)
    arguments = ("gru", rows, h0.detach(), None, *[w.detach() for w in weights[:4]], None, None, False, False)
    with pytest.raises(RuntimeError, match=r"zoneout must have shape \[2, 4\]"):
        native.ops().sequence_forward(*arguments, zoneout=torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="zoneout must have dtype Double"):
        native.ops().sequence_forward(*arguments, zoneout=torch.zeros(2, 4))
