"""A pytest plugin for benchmarks.gpu_check (`pytest -p benchmarks.gpu_check_pytest`).

- Each failure's reason is written to the log when the test ends: pytest prints reasons only in its closing summary,
  which a run killed at its time limit never reaches (the first GPU run's zoneout failures went unexplained so).
- FUSED_RNN_TEST_SHARD="i/n" keeps every n-th collected test from the i-th on, so that n processes share one GPU
  and run a long selection in a fraction of its time.
"""

import os

import pytest


def shard_of(environment: dict) -> tuple[int, int] | None:
    """(index, count) from FUSED_RNN_TEST_SHARD="index/count", or None; ValueError when it says something else."""
    text = environment.get("FUSED_RNN_TEST_SHARD")
    if not text:
        return None
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ValueError(f"FUSED_RNN_TEST_SHARD must be 'index/count' with index < count, got {text!r}")
    return int(index), int(count)


def pytest_collection_modifyitems(config, items):
    shard = shard_of(os.environ)
    if shard is None:
        return
    index, count = shard
    kept = [item for position, item in enumerate(items) if position % count == index]
    config.hook.pytest_deselected(items=[item for position, item in enumerate(items) if position % count != index])
    items[:] = kept


def failure_line(report) -> str:
    """One line: the test, the phase that failed, and why (the exception's message where pytest has it)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        reason = crash.message
    else:
        lines = [line for line in str(report.longrepr).splitlines() if line.strip()]
        reason = lines[-1] if lines else "no reason given"
    reason = " ".join(reason.split())  # one line, however long the message
    return f"FAILED {report.nodeid} ({report.when}): {reason}"


class _LiveFailures:
    def __init__(self, reporter):
        self.reporter = reporter

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.reporter.ensure_newline()
            self.reporter.write_line(failure_line(report))


@pytest.hookimpl(trylast=True)  # after pytest's terminal reporter is registered
def pytest_configure(config):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        config.pluginmanager.register(_LiveFailures(reporter), "fused_rnn_live_failures")
