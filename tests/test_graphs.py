"""The Triton step loops replayed as CUDA graphs (fused_rnn.backends.graphs), checked on CPU: capture is
emulated (the body runs once as the warm-up, each replay runs it again on the entry's buffers), so the chunking, the
copies in and out, the carried state, the cache's keys and bounds and the fallbacks run here for real, with the
Triton kernels in the interpreter. The replayed loop must give exactly the plain loop's numbers. On a GPU the same
code captures real graphs, and every padded Triton test (tests/test_gpu.py, test_triton_sequence.py) runs on them."""

import pytest
import torch

from fused_rnn import functional
from fused_rnn.backends import TRITON_INTERPRETER, graphs

from checks import gradients
from layers import layer_weights, sequence_inputs


class Emulated:
    """A captured graph on CPU: capture runs the body once (the warm-up), replay runs it again."""

    captured = 0

    def __init__(self, body, pool):
        body()
        self.body = body
        Emulated.captured += 1

    def replay(self):
        self.body()


@pytest.fixture
def replayed(monkeypatch):
    """Replay on CPU tensors through Emulated; the cache starts empty."""
    if torch.cuda.is_available() or not TRITON_INTERPRETER:
        pytest.skip("emulates CUDA graphs on CPU tensors, with the Triton kernels in the interpreter")
    graphs.clear()
    Emulated.captured = 0
    monkeypatch.setattr(graphs, "ENABLED", True)
    monkeypatch.setattr(graphs, "REPLAYED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(graphs, "_capturing", lambda device: False)
    monkeypatch.setattr(graphs, "new_pool", lambda device: None)
    monkeypatch.setattr(graphs, "capture", Emulated)
    monkeypatch.setattr(graphs, "CHUNK_STEPS", (4, 2, 1))  # the interpreter is slow: short chunks, short sequences
    yield
    graphs.clear()


def outputs_and_gradients(cell, leaves, reverse, zoneout=0.0, seed=0):
    x, h0, c0, *weights = leaves
    torch.manual_seed(seed)  # zoneout's masks
    outputs = functional.sequence(cell, x, h0, c0, *weights, None, reverse, "triton", zoneout, True)
    return [*outputs, *gradients(outputs, leaves)]


def leaves(cell, steps, batch=3, proj=0, dtype=torch.float64):
    weights = layer_weights(cell, 4, 6, proj=proj, dtype=dtype)
    x, h0, c0, _ = sequence_inputs(cell, steps, batch, 4, 6, proj=proj, dtype=dtype)
    return [x, h0, c0, *weights]


def assert_identical(replayed, plain):
    for index, (r, p) in enumerate(zip(replayed, plain, strict=True)):
        assert (r is None) == (p is None), index
        if r is not None:
            assert torch.equal(r, p), f"tensor {index}: max diff {(r - p).abs().max().item():.3e}"


def plain_loop(monkeypatch, run):
    with monkeypatch.context() as patch:
        patch.setattr(graphs, "ENABLED", False)
        return run()


@pytest.mark.parametrize(
    "cell, proj, zoneout",
    [("lstm", 0, 0.0), ("gru", 0, 0.0), ("rnn_tanh", 0, 0.0), ("lstm", 4, 0.0), ("lstm", 0, 0.3), ("gru", 0, 0.3)],
    ids=["lstm", "gru", "rnn", "lstm-proj", "lstm-zoneout", "gru-zoneout"],
)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_replayed_chunks_give_exactly_the_plain_loops_numbers(replayed, monkeypatch, cell, proj, zoneout, reverse):
    """7 steps: chunks of 4, 2 and 1 steps, forward and backward, each step once, in the plain loop's order."""
    tensors = leaves(cell, 7, proj=proj)
    plain = plain_loop(monkeypatch, lambda: outputs_and_gradients(cell, tensors, reverse, zoneout))
    assert_identical(outputs_and_gradients(cell, tensors, reverse, zoneout), plain)
    assert Emulated.captured == 6  # 3 chunk lengths, forward and backward
    if cell == "lstm" and not proj and not zoneout:
        assert_identical(outputs_and_gradients(cell, tensors, reverse, zoneout), plain)
        assert Emulated.captured == 6  # the second call replays what the first captured


def test_a_projected_zoned_lstm_in_low_precision_matches_too(replayed, monkeypatch):
    tensors = leaves("lstm", 5, proj=2, dtype=torch.float32)
    plain = plain_loop(monkeypatch, lambda: outputs_and_gradients("lstm", tensors, False, (0.2, 0.4)))
    assert_identical(outputs_and_gradients("lstm", tensors, False, (0.2, 0.4)), plain)


def test_saved_activations_are_each_calls_own(replayed, monkeypatch):
    """Two forwards before one backward: the first call's saved rows must survive the second call's replays."""
    weights = layer_weights("lstm", 4, 6)
    first, second = (sequence_inputs("lstm", 6, 2, 4, 6)[:3] for _ in range(2))

    def two_forwards_then_backwards():
        outputs = [functional.sequence("lstm", *x, *weights, None, False, "triton") for x in (first, second)]
        return [g for x, out in zip((first, second), outputs) for g in (*out, *gradients(out, [*x, *weights]))]

    plain = plain_loop(monkeypatch, two_forwards_then_backwards)
    assert_identical(two_forwards_then_backwards(), plain)


def test_entries_are_kept_per_weights_and_shapes_and_bounded(replayed, monkeypatch):
    monkeypatch.setattr(graphs, "MAX_ENTRIES", 2)
    x, h0, c0, *weights = leaves("gru", 2)
    with torch.no_grad():
        functional.sequence("gru", x, h0, c0, *weights, None, False, "triton")
        assert len(graphs._entries) == 1
        functional.sequence("gru", x, h0, c0, *weights, None, False, "triton")
        assert len(graphs._entries) == 1 and Emulated.captured == 1  # the same weights and shapes: replayed
        moved = [
            w.detach().clone() if w is not None else None for w in weights
        ]  # new storage: a new entry reads the new weights
        expected = plain_loop(monkeypatch, lambda: functional.sequence("gru", x, h0, c0, *moved, None, False, "triton"))
        assert_identical(functional.sequence("gru", x, h0, c0, *moved, None, False, "triton"), expected)
        assert len(graphs._entries) == 2
        functional.sequence("gru", x[:, :2], h0[:2], c0, *weights, None, False, "triton")  # another batch
        assert len(graphs._entries) == 2  # the least recently used one went
    monkeypatch.setattr(graphs, "MAX_BYTES", 1)
    with torch.no_grad():
        functional.sequence("gru", x, h0, c0, *weights, None, True, "triton")
    assert len(graphs._entries) == 1  # over the byte bound only the newest entry stays


def test_weights_updated_in_place_are_read_at_each_replay(replayed, monkeypatch):
    x, h0, c0, *weights = leaves("lstm", 3)
    with torch.no_grad():
        functional.sequence("lstm", x, h0, c0, *weights, None, False, "triton")
        weights[1].mul_(0.5)  # as an optimizer step does: the same storage
        replayed_output = functional.sequence("lstm", x, h0, c0, *weights, None, False, "triton")[0]
        plain = plain_loop(monkeypatch, lambda: functional.sequence("lstm", x, h0, c0, *weights, None, False, "triton"))
    assert torch.equal(replayed_output, plain[0])


def test_chunks_shrink_for_large_rows(replayed, monkeypatch):
    # A step of this float64 LSTM (B=3, H=6) buffers 3 rows of 480 bytes forward, 576 backward: 3 steps fit
    monkeypatch.setattr(graphs, "CHUNK_BYTES", 3 * 3 * 576)
    tensors = leaves("lstm", 5, batch=3)
    plain = plain_loop(monkeypatch, lambda: outputs_and_gradients("lstm", tensors, False))
    assert_identical(outputs_and_gradients("lstm", tensors, False), plain)
    assert [entry.longest for entry in graphs._entries.values()] == [2, 2]


def test_packed_input_and_a_capturing_stream_run_the_plain_loop(replayed, monkeypatch):
    lengths = [3, 2]
    x, h0, c0, batch_sizes = sequence_inputs("gru", None, 2, 4, 6, lengths=lengths)
    weights = layer_weights("gru", 4, 6)
    with torch.no_grad():
        functional.sequence("gru", x, h0, c0, *weights, batch_sizes, False, "triton")
        assert Emulated.captured == 0 and not graphs._entries
        monkeypatch.setattr(graphs, "_capturing", lambda device: True)  # inside torch.compile's or a user's graph
        x, h0, c0, _ = sequence_inputs("gru", 3, 2, 4, 6)
        functional.sequence("gru", x, h0, c0, *weights, None, False, "triton")
    assert Emulated.captured == 0 and not graphs._entries


def test_a_chunk_plan_covers_every_step_once_with_the_longest_chunks():
    for steps in range(150):
        for longest in graphs.CHUNK_STEPS:
            plan = graphs.chunk_plan(steps, longest)
            assert [first for first, _ in plan] == [sum(n for _, n in plan[:k]) for k in range(len(plan))]
            lengths = [n for _, n in plan]
            assert sum(lengths) == steps
            assert lengths == sorted(lengths, reverse=True) and all(n <= longest for n in lengths)
            # at most 3 chunks of each shorter length: 4 of them would make one chunk of the next length
            assert all(lengths.count(n) <= 3 for n in graphs.CHUNK_STEPS if n < longest)


class StepLoopOps:
    """The compiled "cuda" driver's C++ step loop, run on CPU tensors with its kernels' bodies on the host."""

    def __init__(self):
        from fused_rnn.backends import native

        if native.unavailable() is not None:
            pytest.skip(f"the compiled kernels are unavailable: {native.unavailable()}")
        ops = native.ops()
        self.sequence_forward, self.sequence_backward = ops.sequence_forward_step_loop, ops.sequence_backward_step_loop


def native_call(driver, cell, rows, h0, c0, weights, batch_sizes, zoneout=None):
    """The driver's forward and backward of one layer (every gradient): outputs, then gradients."""
    outputs = driver.sequence_forward(cell, rows, h0, c0, *weights, batch_sizes, False, True, zoneout=zoneout)
    output, h_n, c_n, saved, projection_input = outputs
    generator = torch.Generator().manual_seed(1)
    grad_output, grad_h_n = (torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in (output, h_n))
    grad_c_n = torch.randn(c_n.shape, generator=generator, dtype=c_n.dtype) if c0 is not None else None
    weight_ih, weight_hh, bias_ih, _, weight_hr = weights
    needs = [True, True, c0 is not None, True, True, bias_ih is not None, bias_ih is not None, weight_hr is not None]
    grads = driver.sequence_backward(
        cell, grad_output, grad_h_n, grad_c_n, rows, h0, c0, weight_ih, weight_hh, weight_hr, output, saved,
        projection_input, batch_sizes, False, needs, zoneout=zoneout,
    )  # fmt: skip
    return [*outputs, *grads]


@pytest.mark.parametrize(
    "cell, proj, lengths, zoned",
    [("lstm", 0, None, False), ("gru", 0, [3, 2, 2], False), ("lstm", 3, None, True), ("rnn_tanh", 0, None, False)],
    ids=["lstm", "gru-packed", "lstm-proj-zoneout", "rnn"],
)
def test_whole_calls_of_the_cuda_driver_replay_exactly_its_numbers(replayed, cell, proj, lengths, zoned):
    """The first call of a signature runs plainly, the second captures (and replays) it, later ones replay it, with
    each call's own inputs copied in."""
    ops = StepLoopOps()
    driver = graphs.WholeCalls(ops)
    weights = [w.detach() if w is not None else None for w in layer_weights(cell, 4, 6, proj=proj)]
    results = []
    for call in range(3):
        x, h0, c0, batch_sizes = sequence_inputs(cell, 3, 3, 4, 6, proj=proj, lengths=lengths)
        rows, h0, c0 = x.detach().reshape(-1, 4), h0.detach(), c0.detach() if c0 is not None else None
        width = (proj or 6) + 6 if cell == "lstm" else 6
        zoneout = torch.rand(rows.shape[0], width, dtype=rows.dtype) if zoned else None
        expected = native_call(ops, cell, rows, h0, c0, weights, batch_sizes, zoneout)
        results.append((native_call(driver, cell, rows, h0, c0, weights, batch_sizes, zoneout), expected))
        assert Emulated.captured == (0, 2, 2)[call]  # the forward's and the backward's graph
    for got, expected in results:  # each call's outputs are its own, not the graph's buffers the next call rewrote
        assert_identical(got, expected)


def test_whole_calls_are_kept_per_signature_and_bounded(replayed, monkeypatch):
    monkeypatch.setattr(graphs, "MAX_CALLS", 2)
    ops = StepLoopOps()
    driver = graphs.WholeCalls(ops)
    weights = [w.detach() if w is not None else None for w in layer_weights("gru", 4, 6)]
    x, h0, _, _ = sequence_inputs("gru", 3, 2, 4, 6)
    rows, h0 = x.detach().reshape(-1, 4), h0.detach()

    def forward(weights, rows=rows):
        return driver.sequence_forward("gru", rows, h0, None, *weights, None, False, False)

    for _ in range(2):
        forward(weights)
    assert Emulated.captured == 1
    moved = [w.clone() if w is not None else None for w in weights]  # new storage: a new signature
    moved[1].mul_(0.5)
    for _ in range(2):
        got = forward(moved)
    assert Emulated.captured == 2
    assert_identical(got, ops.sequence_forward("gru", rows, h0, None, *moved, None, False, False))
    forward(weights, rows[:4])  # a third signature: the least recently used goes
    assert len(graphs._calls) == 2
    forward(weights)  # seen once before, but forgotten: runs plainly again
    assert Emulated.captured == 2


def test_a_call_that_cannot_be_captured_runs_plainly_and_says_so(replayed, monkeypatch):
    def refuse(body, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "capture", refuse)
    ops = StepLoopOps()
    driver = graphs.WholeCalls(ops)
    weights = [w.detach() if w is not None else None for w in layer_weights("rnn_tanh", 4, 6)]
    x, h0, _, _ = sequence_inputs("rnn_tanh", 2, 2, 4, 6)
    rows, h0 = x.detach().reshape(-1, 4), h0.detach()
    expected = ops.sequence_forward("rnn_tanh", rows, h0, None, *weights, None, False, False)
    driver.sequence_forward("rnn_tanh", rows, h0, None, *weights, None, False, False)
    with pytest.warns(UserWarning, match="cannot be captured as a CUDA graph, runs plainly"):
        assert_identical(driver.sequence_forward("rnn_tanh", rows, h0, None, *weights, None, False, False), expected)
    assert_identical(driver.sequence_forward("rnn_tanh", rows, h0, None, *weights, None, False, False), expected)
