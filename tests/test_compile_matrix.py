"""torch.compile(fullgraph=True) and torch.export of every layer, each batch of cases in a fresh process
(benchmarks/compile_matrix.py says what the matrix holds and why), the design of that matrix, and what fused_rnn
refuses by name while tracing."""

import dataclasses
import itertools
import time
import types
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from benchmarks import compile_matrix
from benchmarks.compile_matrix import CORE_LAYERS, FORMS, MODES, PATH_CELLS, VARIANT_LAYERS, Case, cases
from fused_rnn import backends
from fused_rnn.backends import native

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_matrix_passes_with_each_first_call_in_a_fresh_process():
    matrix = cases("cpu")
    start = time.monotonic()
    results = compile_matrix.run(matrix, "cpu")
    failures = {case: result["problems"] for case, result in results.items() if result["problems"]}
    assert not failures, f"{compile_matrix.summary(results)}\n" + "\n".join(f"{c}: {p}" for c, p in failures.items())
    assert set(results) == {case.id for case in matrix}
    print(f"\n{compile_matrix.summary(results)} in {time.monotonic() - start:.0f} s")


def _pairs(case: Case, names):
    return {((a, getattr(case, a)), (b, getattr(case, b))) for a, b in itertools.combinations(names, 2)}


def _allowed(layers, backends):
    """Every case of the full product over these layers and backends that fused_rnn does not refuse."""
    product = itertools.product(layers, (1, 2), (False, True), backends, (False, True), FORMS, MODES)
    return [
        Case(*values, compiler)
        for values in product
        for compiler in compile_matrix.COMPILERS
        if not compile_matrix.refused(values[0], values[3], values[5])
    ]


@pytest.mark.parametrize("reduced", [False, True], ids=["cpu", "cuda-reduced"])
def test_every_pair_of_values_of_any_two_dimensions_is_in_the_matrix(reduced):
    device = "cuda" if reduced else "cpu"
    backends = compile_matrix.CUDA_BACKENDS if reduced else compile_matrix.CPU_BACKENDS
    matrix = cases(device, reduced)
    names = [name for name in Case.__dataclass_fields__]
    for layers in (CORE_LAYERS, VARIANT_LAYERS):
        present = set().union(*(_pairs(c, names) for c in matrix if c.layer in layers))
        wanted = set().union(*(_pairs(c, names) for c in _allowed(layers, backends)))
        assert wanted <= present, sorted(wanted - present)[:5]
    assert {c.backend for c in matrix} == set(backends)
    assert not [c for c in matrix if compile_matrix.refused(c.layer, c.backend, c.form)]


def test_the_calls_paths_are_crossed_in_full_under_aot_eager():
    """Cell, backend, input grad, padded or packed, train or infer decide which path a call takes (issue 32's LSTM
    failed only on 'auto'/'torch', without input grad, in training): every combination is a case."""
    matrix = set(cases("cpu"))
    combinations = itertools.product(PATH_CELLS, compile_matrix.CPU_BACKENDS, (False, True), FORMS[:2], MODES)
    for cell, backend, grad, form, mode in combinations:
        if compile_matrix.refused(cell, backend, form):
            continue
        found = [
            c
            for c in matrix
            if (c.layer, c.backend, c.input_grad, c.form, c.mode, c.compiler)
            == (cell, backend, grad, form, mode, "aot_eager")
        ]
        assert found, (cell, backend, grad, form, mode)
    for cell, backend in itertools.product(PATH_CELLS, compile_matrix.CPU_BACKENDS):
        stacks = {(c.num_layers, c.bidirectional) for c in matrix if (c.layer, c.backend) == (cell, backend)}
        assert stacks == {(1, False), (1, True), (2, False), (2, True)}, (cell, backend)


def test_every_layer_comes_first_in_some_process_on_a_backend_that_consults_the_process_cache():
    matrix = cases("cpu")
    groups = compile_matrix.batches(matrix)
    assert sorted(case.id for group in groups for case in group) == sorted(case.id for case in matrix)
    leaders = [group[0] for group in groups]
    for layer in CORE_LAYERS + VARIANT_LAYERS:
        assert any(c.layer == layer and c.backend in ("auto", "cpu") for c in leaders), layer
    assert {c.compiler for c in leaders} >= {"aot_eager", "inductor"}
    assert max(len(group) for group in groups) <= compile_matrix.PER_PROCESS


def test_a_failing_case_is_reported_with_its_reason():
    """The runner itself: a case that cannot run (here: a refused one) comes back failed, with fused_rnn's words."""
    case = Case("gru", 1, False, "torch", True, "packed", "train", "aot_eager")
    results = compile_matrix.run([case], "cpu", jobs=1)
    assert "backend='torch' cannot run packed input under torch.compile" in " ".join(results[case.id]["problems"])


def _packed(x, lengths=(2, 3, 1)):
    return pack_padded_sequence(x, list(lengths), enforce_sorted=False)


# What cannot run packed input under tracing (a PackedSequence's batch sizes are data there), and the words it uses.
REFUSED_PACKED = [
    pytest.param(lambda: fused_rnn.GRU(4, 8, backend="torch"), "backend='torch' cannot run packed input", id="torch"),
    pytest.param(
        lambda: fused_rnn.LSTM(4, 8, num_layers=2, backend="reference"),
        "packed input cannot run step by step",
        id="reference",
    ),
    pytest.param(
        lambda: fused_rnn.LayerNormGRU(4, 8, backend="torch"), "packed input cannot run step by step", id="layernorm"
    ),
]


@pytest.mark.parametrize("build, words", REFUSED_PACKED)
def test_packed_input_where_it_cannot_trace_is_refused_by_name(build, words):
    torch._dynamo.reset()
    layer = build()
    x = _packed(torch.randn(3, 3, 4))
    with pytest.raises(Exception, match=words):
        torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    with pytest.raises(ValueError, match=words):
        torch.export.export(layer, (x,), strict=False)
    # Without fullgraph the refusal is a graph break: the call runs eagerly, as without torch.compile.
    torch._dynamo.reset()
    eager = layer(x)
    compiled = torch.compile(layer, backend="aot_eager")(x)
    torch.testing.assert_close(compiled[0].data, eager[0].data, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["auto", "cpu", "triton"])
def test_packed_input_runs_on_the_fused_ops_under_tracing_whatever_its_batch_sizes(backend):
    """'auto' takes torch.nn's op for packed RNN input on CPU, which cannot trace packed input; traced, it takes the
    compiled kernels. The batch sizes are data in the graph: one graph serves every packing of the same shapes."""
    torch._dynamo.reset()
    layer = fused_rnn.RNN(4, 8, backend=backend)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for lengths in [(3, 2, 2, 1), (3, 3, 1, 1)]:  # batch sizes 4, 3, 1 and 4, 2, 2
            x = _packed(torch.randn(3, 4, 4), lengths)
            expected = fused_rnn.to_torch(layer)(x)
            got = compiled(x)
            torch.testing.assert_close(got[0].data, expected[0].data, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)


def test_no_registered_op_has_an_argument_named_kernel():
    """Inductor calls FallbackKernel.create(kernel, *args, **kwargs) for a custom op and passed an argument left at its
    default by name: one named `kernel` failed ("got multiple values for argument 'kernel'"), on packed input in
    LayerNorm, IndRNN and multi-head layers on Triton."""
    names = [name for name in torch._C._dispatch_get_all_op_names() if name.startswith("fused_rnn::")]
    assert len(names) >= 8  # each family's forward and backward
    for name in names:
        assert "kernel" not in [argument.name for argument in torch._C._get_schema(name, "").arguments], name


@pytest.mark.skipif(not native.built_with_cuda(), reason="the persistent kernels are not built")
def test_choosing_a_cuda_backend_traces_whole(monkeypatch):
    """What "auto" and "persistent" ask about the GPU while tracing (kernels built, compute capability, SM limits) is
    answered outside the traced region (as the CPU capability: issue 32). Without a GPU the driver's answers are
    stood in for here, so this checks what is ours around them (the dispatcher query of which kernels are built broke
    the graph); the reduced compile matrix on a GPU checks the rest."""
    from fused_rnn.backends import persistent

    monkeypatch.setattr(backends, "_native_cuda_unavailable", lambda device, dtype: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    limits = types.SimpleNamespace(persistent_device_limits=lambda index: dataclasses.astuple(persistent.H100_SXM))
    monkeypatch.setattr(native, "ops", lambda: limits)
    persistent._device_limits.cache_clear()
    device, workload = torch.device("cuda", 0), backends.Workload("lstm", 3, False, True, 8)

    def choose(x):
        chosen = backends.resolve("auto", device, torch.float32, True, workload)
        return x + 1, chosen, backends.resolve("persistent", device, torch.float32, True, workload)

    torch._dynamo.reset()
    assert torch.compile(choose, backend="eager", fullgraph=True)(torch.ones(1))[1:] == ("persistent", "persistent")
    assert choose(torch.ones(1))[1:] == ("persistent", "persistent")
    persistent._device_limits.cache_clear()


def test_the_readme_states_the_matrix_as_it_is():
    """The README's "Works with" row for torch.compile says what the matrix covers, with its counts."""
    rows = README.read_text().splitlines()
    row = next(line for line in rows if line.startswith("| `torch.compile(fullgraph=True)` |"))
    matrix, reduced = cases("cpu"), cases("cuda", reduced=True)
    count = lambda compiler: sum(c.compiler == compiler for c in matrix)
    assert f"{len(matrix)} cases" in row and f"{len(reduced)} cases" in row
    exports = f"{count('export')} non-strict and {count('export_strict')} strict torch.export cases"
    assert f"{count('inductor')} inductor, {exports}" in row
    tolerance = f"{compile_matrix.RELATIVE_TOLERANCE:.0e}".replace("e-0", "e-")
    assert f"normwise relative error at most {tolerance}" in row
    assert f"about {compile_matrix.PER_PROCESS} in a new process" in row
    for backend in compile_matrix.CUDA_BACKENDS:
        assert f'"{backend}"' in row


STATES = [
    pytest.param(
        lambda: fused_rnn.LSTM(4, 8, num_layers=2), lambda: (torch.randn(2, 3, 8), torch.randn(2, 3, 8)), id="lstm"
    ),
    pytest.param(
        lambda: fused_rnn.sLSTM(4, 8, num_heads=2),
        lambda: (torch.randn(1, 3, 8), torch.randn(1, 3, 8), torch.rand(1, 3, 8) + 1, torch.randn(1, 3, 8)),
        id="slstm",
    ),
]


@pytest.mark.parametrize("build, state", STATES)
def test_packed_input_with_sorted_lengths_and_a_state_compiles(build, state):
    """Sorted lengths leave a PackedSequence without sorted_indices: traced, its batch is then the given state's."""
    torch._dynamo.reset()
    layer, hx = build(), state()
    x = pack_padded_sequence(torch.randn(3, 3, 4), [3, 2, 1], enforce_sorted=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    got, expected = compile_matrix._flat(compiled(x, hx)), compile_matrix._flat(layer(x, hx))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
