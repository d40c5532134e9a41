"""The examples/ scripts at a tiny size: each main() runs end to end and its metrics make sense."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_language_model(tie):
    args = "--device cpu --sentences 40 --hidden-size 16 --epochs 2 --batch-size 4 --bptt 8 --generate 3".split()
    result = load_example("language_model").main(args + ["--tie"] * tie)
    for name in ("train_perplexity", "valid_perplexity"):
        assert math.isfinite(result[name]) and 1 < result[name] < 2 * result["vocab_size"], (name, result[name])
    assert 1 <= result["sample"].count(".") <= 3


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_classify_packed(cell):
    args = "--device cpu --train-size 64 --test-size 32 --max-length 9 --hidden-size 8 --epochs 1 --batch-size 16"
    result = load_example("classify_packed").main([*args.split(), "--cell", cell])
    assert math.isfinite(result["train_loss"])
    assert 0 <= result["test_accuracy"] <= 1 and 0.5 <= result["chance"] <= 1


def test_seq2seq_fused_matches_torch():
    """Same seed, same initialisation (fused_rnn's modules run torch.nn's own): same training."""
    args = "--device cpu --steps 3 --hidden-size 16 --embedding-size 8 --batch-size 8 --test-size 8 --max-length 5"
    seq2seq = load_example("seq2seq")
    results = {backend: seq2seq.main([*args.split(), "--backend", backend]) for backend in ("reference", "torch")}
    assert math.isfinite(results["reference"]["train_loss"])
    assert results["reference"]["train_loss"] == pytest.approx(results["torch"]["train_loss"], rel=1e-4)
    assert 0 <= results["reference"]["test_sequence_accuracy"] <= 1


def test_vanishing_gradients(tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "vanishing.png"
    args = "--device cpu --length 30 --hidden-size 8 --batch-size 4 --train-steps 4 --train-length 10"
    result = load_example("vanishing_gradients").main([*args.split(), "--figure", str(figure)])
    assert figure.stat().st_size > 0
    ratio = result["gradient_ratio"]
    assert ratio["RNN-tanh"] < ratio["LSTM, forget bias +3"] < 1, ratio
    assert all(math.isfinite(loss) for loss in result["clipped_losses"])


def test_forecast(tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "forecast.png"
    args = "--device cpu --length 240 --window 24 --horizon 6 --hidden-size 8 --epochs 1 --batch-size 32"
    result = load_example("forecast").main([*args.split(), "--figure", str(figure)])
    assert figure.stat().st_size > 0
    assert set(result["mse"]) == {"LSTM", "last value", "seasonal naive"}
    assert all(math.isfinite(value) and value > 0 for value in result["mse"].values())


def test_classify_packed_on_triton_matches_reference():
    """The packed, bidirectional path on the Triton kernels (the interpreter on CPU) trains as the reference does."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = f"--device {device} --train-size 8 --test-size 4 --min-length 2 --max-length 4 --hidden-size 4"
    args += " --embedding-size 4 --epochs 1 --batch-size 4"
    classify = load_example("classify_packed")
    results = {backend: classify.main([*args.split(), "--backend", backend]) for backend in ("triton", "reference")}
    assert results["triton"]["train_loss"] == pytest.approx(results["reference"]["train_loss"], rel=1e-4)
    assert results["triton"]["test_accuracy"] == results["reference"]["test_accuracy"]
