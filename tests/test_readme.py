"""The README's promises that can be checked mechanically."""

import re
from pathlib import Path

import fused_rnn

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_usage_example_runs():
    (example,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert type(namespace["model"][0]) is fused_rnn.GRU
    assert namespace["output"].shape == (8, 100, 64)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.M)
    assert len(commands) == 2, "one command installs and runs the benchmark, one installs and runs the tests"
    assert commands[0].endswith("python -m benchmarks.run --quick")
    assert commands[1].endswith("pytest -q")
    assert "README.md" in (Path(__file__).parents[1] / ".ci" / "run").read_text()
