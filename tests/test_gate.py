"""The speed gate (benchmarks.gate): its verdict, and a deliberately slowed "auto" failing it."""

import pytest

from benchmarks import gate
from fused_rnn import backends


def test_a_median_ratio_above_its_limit_fails():
    ratios = {"a": {gate.TORCH: 1.09, gate.ORT: 1.14}, "b": {gate.TORCH: 1.11}, "c": {gate.ORT: 1.2}}
    assert gate.failures(ratios) == [
        "b: auto took 1.11x torch.nn's time (limit 1.10x)",
        "c: auto took 1.20x onnxruntime's time (limit 1.15x)",
    ]


def test_an_auto_that_runs_the_reference_fails_the_gate(monkeypatch, capsys):
    """The reference loop in place of what "auto" picks: several times torch.nn's time."""
    monkeypatch.setattr(backends, "_tuned", lambda chosen, *args: "reference")
    assert gate.main(["--cases", "gru-infer-B8-H256-1t", "--rounds", "3"]) == 1
    output = capsys.readouterr().out
    assert "FAILED gru-infer-B8-H256-1t: auto took" in output
    assert output.splitlines()[-1].startswith("speed gate: 0 of 1 cases within 1.10x torch.nn (3 rounds")


def test_cases_cover_both_cells_modes_batches_sizes_and_thread_counts():
    assert len(gate.CASES) == 48 == len({case.name for case in gate.CASES})
    for field, values in {"cell": {"lstm", "gru"}, "training": {False, True}, "batch": {1, 8, 64}}.items():
        assert {getattr(case, field) for case in gate.CASES} == values
    assert {case.hidden for case in gate.CASES} == {256, 512} and {case.threads for case in gate.CASES} == {1, 2}


@pytest.mark.parametrize("against", [["onnxruntime"], ["torch.nn", "onnxruntime"]])
def test_onnx_runtime_is_compared_in_inference_only(against, monkeypatch):
    measured = []
    monkeypatch.setattr(gate, "measure", lambda case, others, rounds, paths: measured.append(case) or {})
    assert gate.main(["--against", *against, "--cases", "lstm-train-B1-H256-1t", "lstm-infer-B1-H256-1t"]) == 0
    assert [case.name for case in measured] == ["lstm-infer-B1-H256-1t", "lstm-train-B1-H256-1t"]
