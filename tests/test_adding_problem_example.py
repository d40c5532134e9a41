"""examples/adding_problem.py at a small size: the IndRNN learns to add the two marked values."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "adding_problem.py"


def test_indrnn_beats_the_mean_predictor_on_the_adding_problem():
    spec = importlib.util.spec_from_file_location("example_adding_problem", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main("--device cpu --length 30 --steps 500 --hidden-size 32 --test-size 500".split())
    assert result["test_mse"] < 0.5 * result["mean_predictor_mse"], result
