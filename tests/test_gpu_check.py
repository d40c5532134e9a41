"""benchmarks.gpu_check, the one command for a GPU machine, runs end to end here as a dry run on CPU."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import gpu_check
from benchmarks.configs import Config

REPOSITORY = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_part_and_writes_at_most_8_files(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", str(tmp_path)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == list(gpu_check.TIME_LIMITS_S)
    assert done.stdout.endswith("\n".join(summary) + "\n")
    assert "not checked (dry run, no GPU)" in summary[3]
    assert len(list(tmp_path.iterdir())) <= 8
    assert {"cpu.json", "cpu.md", "cpu.png", "tests.log", "sanitizer.log"} <= {p.name for p in tmp_path.iterdir()}
    results = json.loads((tmp_path / "cpu.json").read_text())["results"]
    assert {"fused_rnn.triton", "fused_rnn.reference", "torch.nn"} <= {r["contender"] for r in results}
    assert [r for r in results if r["failure"]] == []
    assert {r["mode"] for r in results} == {"fw", "fwbw"} and {r["dtype"] for r in results} == {"fp32", "bf16", "fp16"}


def test_a_part_past_its_time_limit_is_killed_with_its_children(tmp_path):
    log = tmp_path / "part.log"
    start = time.monotonic()
    status = gpu_check.run_logged(["bash", "-c", "sleep 30 & wait"], log, 0.5, dict(os.environ))
    assert status is None and time.monotonic() - start < 10
    assert "killed after the part's time limit" in log.read_text()


def test_cases_not_in_the_committed_results_come_first(tmp_path):
    configs = {name: Config(name, batch=1, steps=2, input_size=3, hidden_size=4) for name in ("a", "b")}
    cases = [(configs[name], cell, "fp32") for name in ("a", "b") for cell in ("lstm", "gru")]
    measured = [{"config": "a", "cell": "lstm", "dtype": "fp32"}, {"config": "b", "cell": "lstm", "dtype": "fp32"}]
    (tmp_path / "nvidia-h200.json").write_text(json.dumps({"results": measured}))
    other_gpu = [{"config": "a", "cell": "gru", "dtype": "fp32"}]
    (tmp_path / "nvidia-h100.json").write_text(json.dumps({"results": other_gpu}))
    committed = gpu_check.committed_cases(tmp_path, "nvidia-h200")
    assert committed == {("a", "lstm", "fp32"), ("b", "lstm", "fp32")}
    ordered = [(config.name, cell) for config, cell, _ in gpu_check.unmeasured_first(cases, committed)]
    assert ordered == [("a", "gru"), ("b", "gru"), ("a", "lstm"), ("b", "lstm")]
