"""benchmarks.cpu_inference: every contender checked, timed and measured, in tiny shapes."""

import json

import pytest

from benchmarks import cpu_inference

pytest.importorskip("onnxruntime", reason="installed by the test extra")


def test_quick_run_times_and_measures_every_contender(tmp_path):
    out = tmp_path / "cpu_inference"
    cpu_inference.main(["--quick", "--threads", "1", "--out", str(out)])

    document = json.loads(out.with_suffix(".json").read_text())
    times = {(r["config"], r["contender"]): r for r in document["times"]}
    configs = [config.name for config in cpu_inference.QUICK_CONFIGS]
    assert set(times) == {(config, contender) for config in configs for contender in cpu_inference.CONTENDERS}
    failed = {key: row["relative_error"] for key, row in times.items() if not row["passed_check"]}
    assert not failed, f"relative errors against float64 torch.nn above {cpu_inference.MAX_RELATIVE_ERROR}: {failed}"
    for key, row in times.items():
        assert row["ms"] > 0 and row["threads"] == 1, key
        assert row["x_torch"] > 0 and row["x_onnxruntime"] > 0, key
    peaks = {(r["config"], r["contender"], r["mode"]): r for r in document["peak_memory"]}
    expected_peaks = {(config, contender, "fw") for config in configs for contender in cpu_inference.CONTENDERS}
    expected_peaks |= {(config, contender, "fwbw") for config in configs for contender in cpu_inference.FWBW_CONTENDERS}
    assert set(peaks) == expected_peaks
    for key, row in peaks.items():
        assert row["failure"] is None and row["peak_mib"] >= 0, (key, row["failure"])
    environment = document["environment"]
    assert environment["threads"] == [1] and environment["onnxruntime"] and environment["cpu_instruction_set"]
    assert "onnxruntime" in out.with_suffix(".md").read_text()


def test_a_contender_with_other_weights_fails_the_check_and_is_not_timed(tmp_path):
    config = cpu_inference.QUICK_CONFIGS[0]
    other_weights = cpu_inference.make_torch_layer(config, seed=1)
    onnx_path = cpu_inference.export_onnx(other_weights, config, tmp_path / "layer.onnx")

    rows = {r["contender"]: r for r in cpu_inference.measure_times(config, onnx_path, 1, 0, 1, seed=0)}

    assert not rows["onnxruntime"]["passed_check"] and rows["onnxruntime"]["ms"] is None
    assert rows["onnxruntime"]["x_torch"] is None and rows["torch.nn"]["x_onnxruntime"] is None
    assert rows["torch.nn"]["passed_check"] and rows["torch.nn"]["ms"] > 0
