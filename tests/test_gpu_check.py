"""benchmarks.gpu_check, the one command for a GPU machine, runs end to end here as a dry run on CPU."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import gpu_check

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
