"""benchmarks.gpu_check, the one command for a GPU machine: its plan, and every part rehearsed here on CPU."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import gpu_check
from benchmarks.configs import Config

REPOSITORY = Path(__file__).resolve().parents[1]


def test_rehearsal_runs_every_part_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--rehearse", str(tmp_path)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == [part.name for part in gpu_check.PARTS]
    assert done.stdout.endswith("\n".join(summary) + "\n")
    parts = dict(line.split(": ", 1) for line in summary)
    assert parts["failed-before"].startswith("ok: ") and " 0 failed" in parts["failed-before"]
    assert re.match(r"ok: [1-9]\d* passed, 0 failed", parts["variant-tests"])  # two shards, joined
    assert re.search(r"([1-9]\d*) of \1 compile-matrix cases passed", parts["compile-matrix"])
    assert "memcheck not checked (rehearsal, no GPU)" in parts["sanitizer"] and "zoneout_gru on" in parts["sanitizer"]
    assert "synccheck not checked (rehearsal, no GPU)" in parts["sanitizer"]
    written = {p.name for p in tmp_path.iterdir()}
    assert {"cpu.json", "cpu.md", "cpu.png", "cpu-variants.json", "cpu-graphs.json", "sanitizer.log"} <= written
    results = json.loads((tmp_path / "cpu.json").read_text())["results"]
    assert {"fused_rnn.triton", "fused_rnn.reference", "torch.nn"} <= {r["contender"] for r in results}
    assert [r for r in results if r["failure"]] == []
    assert {r["mode"] for r in results} == {"fw", "fwbw"} and {r["dtype"] for r in results} == {"fp32", "bf16", "fp16"}
    variants = json.loads((tmp_path / "cpu-variants.json").read_text())["rows"]
    assert {"plain_loop", "plain_loop_compiled", "fused_rnn.triton"} <= {r["contender"] for r in variants}
    assert [r for r in variants if r["failure"]] == []


def test_dry_run_prints_the_plan_within_11_minutes_most_valuable_first(tmp_path):
    def planned(*options):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", *options, str(tmp_path / "out")],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    lines = planned()
    names = [re.match(r"\d+\. (\S+) \((\d+) s\)", line).group(1) for line in lines[:-1]]
    assert names == ["install", "environment", "failed-before", "gpu-tests", "variant-tests", "compile-matrix"] + [
        "sanitizer",
        "graphs",
        "benchmarks",
        "variant-benchmarks",
    ]
    budgets = [int(re.search(r"\((\d+) s\)", line).group(1)) for line in lines[:-1]]
    assert lines[-1].startswith(f"total: {sum(budgets)} s of at most 660 s") and sum(budgets) <= 660
    assert [line.split(" (")[0] for line in planned("--only", "sanitizer,gpu-tests")[:-1]] == [
        "1. gpu-tests",
        "2. sanitizer",
    ]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_only_runs_the_parts_named(tmp_path):
    assert gpu_check.main(["--rehearse", "--only", "environment", str(tmp_path)]) == 0
    summary = dict(line.split(": ", 1) for line in (tmp_path / "summary.txt").read_text().splitlines())
    assert summary.pop("environment").startswith("ok: ")
    assert set(summary.values()) == {"not run (--only)"}


SLOW_FAILURE = """
import time

def test_fails_first():
    assert 1 + 1 == 3, "arithmetic is off"

def test_then_hangs():
    time.sleep(60)
"""


def test_a_part_killed_at_its_limit_still_says_what_failed_and_why(tmp_path):
    (tmp_path / "test_slow_failure.py").write_text(SLOW_FAILURE)
    outcome = gpu_check.run_pytest(tmp_path / "part.log", [str(tmp_path / "test_slow_failure.py")], True, 15)
    assert not outcome.ok
    assert "0 passed, 1 failed" in outcome.line and "killed at its 15 s limit" in outcome.line
    assert "test_fails_first (call): AssertionError: arithmetic is off" in outcome.line


SHARDED = """
import pytest

@pytest.mark.parametrize("index", range(7))
def test_numbered(index):
    pass
"""


def test_shards_split_a_selection_into_disjoint_parts_that_cover_it(tmp_path):
    (tmp_path / "test_sharded.py").write_text(SHARDED)
    outcome = gpu_check.run_pytest(tmp_path / "part.log", [str(tmp_path / "test_sharded.py")], True, 60, shards=3)
    assert outcome.ok and outcome.line.startswith("ok: 7 passed, 0 failed"), outcome.line
    ran = [re.findall(r"test_numbered\[(\d)\] PASSED", (tmp_path / f"part.shard{i}.log").read_text()) for i in range(3)]
    assert sorted(int(i) for shard in ran for i in shard) == list(range(7)) and all(ran)


def test_a_benchmark_much_slower_against_cudnn_than_committed_is_a_regression():
    committed = [
        {
            "config": "a",
            "cell": "gru",
            "dtype": "bf16",
            "mode": "fw",
            "contender": "fused_rnn.cuda",
            "ratio_to_torch": 2.0,
        }
    ]
    same = dict(committed[0])
    assert gpu_check.regressions([same | {"ratio_to_torch": 2.5}], committed) == []
    slower = gpu_check.regressions([same | {"ratio_to_torch": 2.7}], committed)
    assert slower == ["a gru bf16 fw fused_rnn.cuda: 2.70x cuDNN's time, committed 2.00x"]
    assert gpu_check.regressions([same | {"contender": "fused_rnn.persistent", "ratio_to_torch": 9.0}], committed) == []


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


def test_committed_cases_are_not_measured_again_unless_asked():
    configs = {name: Config(name, batch=1, steps=2, input_size=3, hidden_size=4) for name in ("a", "b")}
    cases = [(configs[name], "gru", "fp32") for name in ("a", "b")]
    committed = {("a", "gru", "fp32")}
    assert [c[0].name for c in gpu_check.cases_to_measure(cases, committed, remeasure=False)] == ["b"]
    assert [c[0].name for c in gpu_check.cases_to_measure(cases, committed, remeasure=True)] == ["b", "a"]
