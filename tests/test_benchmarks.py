"""The benchmark harness: small CPU timings through pytest-benchmark, the CLI's files, and the speed check."""

import copy
import json

import pytest
import torch

from benchmarks import check, run
from benchmarks.configs import Config
from benchmarks.contenders import (
    NAIVE,
    TORCH,
    fused_contender,
    make_contender,
    make_input,
    make_torch_layer,
    output_tensor,
    workload,
)
from benchmarks.timing import time_interleaved

CPU = torch.device("cpu")
SMALL_CONFIGS = [
    pytest.param(Config("b4_t16_i24_h32", batch=4, steps=16, input_size=24, hidden_size=32), id="B4-T16-I24-H32"),
    pytest.param(
        Config("packed_bidir", batch=5, steps=12, input_size=8, hidden_size=16, bidirectional=True, min_steps=3),
        id="packed-bidir-B5-T3..12-H16",
    ),
    pytest.param(
        Config("2layer_bidir", batch=3, steps=7, input_size=16, hidden_size=12, num_layers=2, bidirectional=True),
        id="2layer-bidir-B3-T7-H12",
    ),
]
CELLS = ["lstm", "gru", "rnn_tanh"]
# The Triton interpreter takes seconds even at these sizes; the kernels have their own tests.
CPU_CONTENDERS = [fused_contender("reference"), TORCH, NAIVE]


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    # Ops this small gain nothing from threads, and OpenMP threads waiting on busy cores can take 100x longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _case(config, cell, contender):
    torch.manual_seed(0)
    source = make_torch_layer(config, cell, torch.float32, CPU)
    input = make_input(config, torch.float32, CPU, seed=0)
    return source, input, make_contender(contender, source, config, cell)


@pytest.mark.parametrize("contender", CPU_CONTENDERS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config", SMALL_CONFIGS)
def test_contender_output_matches_torch(config, cell, contender):
    """Each contender holds the source layer's weights and configuration: its output matches the source layer run
    in float64 (torch.nn's own contender included, which a comparison in float32 would compare with itself)."""
    source, input, module = _case(config, cell, contender)
    with torch.no_grad():
        exact = output_tensor(copy.deepcopy(source).double()(input.double()))
        torch.testing.assert_close(output_tensor(module(input)).double(), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("contender", CPU_CONTENDERS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("config", SMALL_CONFIGS[:2])
def test_training_step_speed(benchmark, config, cell, contender):
    _, input, module = _case(config, cell, contender)
    training_step, reset = workload(module, input, "fwbw")
    benchmark.pedantic(training_step, setup=reset, rounds=5, warmup_rounds=1)
    assert all(parameter.grad is not None for parameter in module.parameters())


@pytest.mark.parametrize("contender", CPU_CONTENDERS)
def test_forward_speed(benchmark, contender):
    _, input, module = _case(SMALL_CONFIGS[0].values[0], "lstm", contender)
    forward, reset = workload(module, input, "fw")
    benchmark.pedantic(forward, setup=reset, rounds=5, warmup_rounds=1)
    assert all(parameter.grad is None for parameter in module.parameters())


def test_triton_only_when_asked_for_on_cpu():
    # conftest turns the Triton interpreter on, so triton could run here; by default it must not.
    assert "triton" not in run.parse_args(["--device", "cpu"]).backend
    assert "reference" in run.parse_args(["--device", "cpu"]).backend


def test_main_writes_results_table_and_plot(tmp_path, capsys):
    argv = ["--quick", "--sweep", "--config", "quick_b8_t16_h32_2layer_bidir", "--dtype", "fp32", "bf16"]
    argv += ["--cell", "rnn_tanh", "--warmup", "0", "--repeats", "2", "--device", "cpu", "--out", str(tmp_path)]
    results = run.main([*argv, "--backend", "reference"])

    contenders = [fused_contender("reference"), TORCH, NAIVE]
    configs = {r["config"] for r in results}
    assert "quick_b8_t16_h32_2layer_bidir" in configs and any(name.startswith("sweep_") for name in configs)
    assert {r["contender"] for r in results} == set(contenders)
    assert {(r["dtype"], r["mode"]) for r in results} == {(d, m) for d in ("fp32", "bf16") for m in ("fw", "fwbw")}
    for r in results:
        assert r["failure"] is None
        assert r["ms"] > 0 and r["ms_per_step"] > 0 and r["ms_p20"] <= r["ms"] <= r["ms_p80"]
        assert r["peak_memory_mb"] is None
        assert r["ratio_to_torch"] > 0 and r["ratio_to_torch_best_dtype"] > 0
        assert r["max_diff_vs_torch"] < (1e-5 if r["dtype"] == "fp32" else 5e-2)
        if r["contender"] == TORCH:
            assert r["ratio_to_torch"] == 1.0 and r["ratio_to_torch_best_dtype"] >= 1.0

    document = json.loads((tmp_path / "cpu.json").read_text())
    assert set(document) == {"environment", "settings", "results"}
    environment = document["environment"]
    for key in ("device", "device_name", "torch", "triton", "cuda", "cudnn", "git_commit", "date_utc"):
        assert key in environment
    assert environment["device"] == "cpu" and environment["cudnn"] is None
    assert document["results"] == results
    assert document["settings"]["contenders"] == contenders

    markdown = (tmp_path / "cpu.md").read_text()
    assert markdown.startswith("# fused_rnn benchmarks") and "| quick_b8_t16_h32_2layer_bidir | rnn_tanh" in markdown
    assert (tmp_path / "cpu.png").read_bytes().startswith(b"\x89PNG")
    assert "x torch.nn best dtype" in capsys.readouterr().out


def test_on_cpu_a_case_times_its_contenders_interleaved_with_the_same_rounds(tmp_path, monkeypatch):
    """On CPU every contender of a case and mode is timed in ONE interleaved run (a round times each once, after its
    reset and one untimed call of its own), so that drift and load fall on all alike and none is timed in another's
    wake; the default is 2 warm-up and 15 timed rounds."""
    seen = []

    def recording(calls, warmup, repeats, resets=None, settle=0):
        seen.append((sorted(calls), warmup, repeats, sorted(resets or {}), settle))
        return time_interleaved(calls, warmup, repeats, resets, settle)

    monkeypatch.setattr(run, "time_interleaved", recording)
    argv = ["--quick", "--config", "quick_b1_t32_h64", "--cell", "gru", "--dtype", "fp32", "--backend", "auto"]
    run.main([*argv, "--device", "cpu", "--out", str(tmp_path)])
    contenders = sorted([fused_contender("auto"), TORCH, NAIVE])
    assert seen == [(contenders, 2, 15, contenders, 1)] * 2  # fw, then fwbw


def test_main_records_a_failing_contender_and_goes_on(tmp_path, monkeypatch):
    def make_contender_failing_naive(name, *args):
        if name == NAIVE:
            raise RuntimeError("no kernel image is available")
        return make_contender(name, *args)

    monkeypatch.setattr(run, "make_contender", make_contender_failing_naive)
    argv = ["--quick", "--config", "quick_b1_t32_h64", "--cell", "rnn_tanh", "--dtype", "fp32", "--mode", "fw"]
    results = run.main(argv + ["--warmup", "0", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)])

    failed = [r for r in results if r["failure"]]
    assert [r["contender"] for r in failed] == [NAIVE]
    assert failed[0]["failure"] == "RuntimeError: no kernel image is available" and failed[0]["ms"] is None
    assert all(r["ms"] > 0 for r in results if not r["failure"])
    markdown = (tmp_path / "cpu.md").read_text()
    assert "| failed" in markdown and "## Failures" in markdown and "no kernel image is available" in markdown


def _result(config="fastrnns", cell="lstm", dtype="bf16", contender="fused_rnn.triton", ratio=0.8, failure=None):
    return {
        "config": config,
        "cell": cell,
        "dtype": dtype,
        "mode": "fwbw",
        "contender": contender,
        "ms": None if failure else 5.0 * ratio,
        "ratio_to_torch": None if failure else ratio,
        "failure": failure,
    }


def _write_results(path, results, device="cuda"):
    path.write_text(json.dumps({"environment": {"device": device}, "settings": {}, "results": results}))
    return ["--results", str(path)]


@pytest.mark.parametrize(
    ("results", "exit_code"),
    [
        pytest.param([_result(ratio=0.8), _result(config="varlen", ratio=1.0)], 0, id="all-meet-target"),
        pytest.param([_result(ratio=0.8), _result(cell="gru", ratio=1.3)], 1, id="one-slower"),
        pytest.param([_result(failure="RuntimeError: boom")], 1, id="targeted-run-failed"),
        pytest.param([_result(config="quick_b1_t32_h64")], 1, id="nothing-targeted"),
        pytest.param([_result(contender="torch.nn", ratio=1.0), _result(contender=NAIVE, ratio=9.0)], 1, id="no-fused"),
    ],
)
def test_check_exit_code(tmp_path, capsys, results, exit_code):
    assert check.main(_write_results(tmp_path / "gpu.json", results)) == exit_code
    output = capsys.readouterr().out
    assert ("FAIL" in output) == (exit_code == 1)


def test_check_reports_the_slow_measurement(tmp_path, capsys):
    check.main(_write_results(tmp_path / "gpu.json", [_result(ratio=0.8), _result(cell="gru", ratio=1.3)]))
    assert "FAIL fastrnns gru bf16 fwbw" in capsys.readouterr().out


def test_check_skips_cpu_results_explicitly(tmp_path, capsys):
    assert check.main(_write_results(tmp_path / "cpu.json", [_result(ratio=5.0)], device="cpu")) == 0
    assert capsys.readouterr().out.startswith("SKIPPED")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check measures instead of skipping")
def test_check_without_results_or_gpu_skips_explicitly(capsys):
    assert check.main([]) == 0
    assert capsys.readouterr().out.startswith("SKIPPED")


def test_regularizers_benchmark_checks_each_contender_against_its_baseline_and_writes_its_table(tmp_path):
    """benchmarks.regularizers_cpu asserts before timing that fused_rnn's DropConnect and locked dropout give the
    baseline's outputs for the same seed; its table has one row per regularizer, shape and contender."""
    from benchmarks import regularizers_cpu

    result = regularizers_cpu.main(["--quick", "--out", str(tmp_path / "regularizers")])
    contenders = {r["kind"]: set() for r in result["rows"]}
    for r in result["rows"]:
        contenders[r["kind"]].add(r["contender"])
    assert contenders == {
        "weight_drop": {"fused_rnn_weight_drop", "awd_weight_drop_torch_nn", "torch_nn_without_drop"},
        "locked_dropout": {"fused_rnn_locked_dropout", "awd_locked_dropout", "nn_dropout_per_step"},
    }
    table = (tmp_path / "regularizers.md").read_text()
    assert table.count("| weight_drop |") == 3 and table.count("| locked_dropout |") == 3


def test_cells_benchmark_checks_every_contender_against_torch_nn_and_writes_its_table(tmp_path):
    """benchmarks.cells_cpu asserts before timing that each fused_rnn cell gives torch.nn's step; its table has a row
    per cell, shape, mode and contender."""
    from benchmarks import cells_cpu

    result = cells_cpu.main(["--quick", "--out", str(tmp_path / "cells")])
    assert {(r["cell"], r["mode"], r["contender"]) for r in result["rows"]} == {
        (cell, mode, contender)
        for cell in ("lstm", "gru", "rnn_tanh")
        for mode in ("fw", "fwbw")
        for contender in ("torch.nn", "fused_rnn.auto", "fused_rnn.cpu")
    }
    assert (tmp_path / "cells.md").read_text().count("| fused_rnn.auto |") == 6


def test_time_interleaved_settles_each_contender_before_timing_it():
    """With settle=1 each timed call directly follows an untimed call of the same contender (after its reset)."""
    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in "abc"}
    resets = {name: (lambda name=name: log.append(f"reset {name}")) for name in "abc"}
    time_interleaved(calls, warmup=1, repeats=3, resets=resets, settle=1)
    assert len(log) == 4 * 3 * 4  # 4 rounds of 3 contenders: reset, settle call, reset, timed call
    for start in range(0, len(log), 4):
        name = log[start + 1]
        assert log[start : start + 4] == [f"reset {name}", name, f"reset {name}", name]
    rounds = [tuple(log[start + 1] for start in range(first, first + 12, 4)) for first in range(0, len(log), 12)]
    assert len(set(rounds)) > 1, "every round in the same order"
