"""The Triton step loops replayed as CUDA graphs (fused_rnn.backends.triton.graphs), checked on CPU: capture is
emulated (the body runs once as the warm-up, each replay runs it again on the entry's buffers), so the chunking, the
copies in and out, the carried state, the cache's keys and bounds and the fallbacks run here for real, with the
Triton kernels in the interpreter. The replayed loop must give exactly the plain loop's numbers. On a GPU the same
code captures real graphs, and every padded Triton test (tests/test_gpu.py, test_triton_sequence.py) runs on them."""

import pytest
import torch

from fused_rnn import functional
from fused_rnn.backends import TRITON_INTERPRETER
from fused_rnn.backends.triton import graphs

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
