"""The examples/ scripts at a tiny size: each main() runs end to end and its metrics make sense."""

import importlib.util
import math
import re
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
def test_language_model_beats_the_unigram_baseline(tie):
    """Using the context, the model's validation perplexity ends well below the unigram model's (no context)."""
    args = "--device cpu --sentences 300 --hidden-size 32 --epochs 6 --batch-size 8 --bptt 16 --generate 3".split()
    result = load_example("language_model").main(args + ["--tie"] * tie)
    assert result["valid_perplexity"] < 0.6 * result["unigram_perplexity"], result
    assert 1 <= result["sample"].count(".") <= 3


def test_language_model_with_zoneout_and_weight_drop_beats_the_unigram_baseline():
    """Regularized by zoneout (different rates for h and c) and DropConnect on W_hh, it still learns the context."""
    args = "--device cpu --sentences 300 --hidden-size 32 --epochs 6 --batch-size 8 --bptt 16 --generate 3".split()
    result = load_example("language_model").main([*args, "--zoneout", "0.05,0.3", "--weight-drop", "0.2"])
    assert "WeightDrop" in result["recurrent_layer"] and "zoneout=(0.05, 0.3)" in result["recurrent_layer"], result
    assert result["valid_perplexity"] < 0.6 * result["unigram_perplexity"], result
    with pytest.raises(SystemExit):  # torch.nn.LSTM, the baseline, has no zoneout
        load_example("language_model").main([*args, "--zoneout", "0.1", "--backend", "torch"])


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_classify_packed_beats_chance(cell):
    args = "--device cpu --train-size 1000 --test-size 256 --max-length 20 --hidden-size 32 --epochs 3 --batch-size 32"
    result = load_example("classify_packed").main([*args.split(), "--cell", cell])
    assert result["test_accuracy"] > result["chance"] + 0.3, result


def test_seq2seq_fused_matches_torch():
    """Same seed, same initialisation (fused_rnn's modules run torch.nn's own): same training."""
    args = "--device cpu --steps 3 --hidden-size 16 --embedding-size 8 --batch-size 8 --test-size 8 --max-length 5"
    seq2seq = load_example("seq2seq")
    results = {backend: seq2seq.main([*args.split(), "--backend", backend]) for backend in ("reference", "torch")}
    assert math.isfinite(results["reference"]["train_loss"])
    assert results["reference"]["train_loss"] == pytest.approx(results["torch"]["train_loss"], rel=1e-4)
    assert results["reference"]["test_sequence_accuracy"] == results["torch"]["test_sequence_accuracy"]


def readme_gradient_factors() -> dict[str, tuple[float, float]]:
    """label -> (ratio, per-step factor) as examples/README.md states them for vanishing_gradients.py's defaults."""
    text = (EXAMPLES / "README.md").read_text()
    block = text[text.index("$ python examples/vanishing_gradients.py") :]
    lines = re.findall(r"^  (\S.*?)\s+(\d\.\de[+-]\d+)\s+x(\d\.\d+) per step$", block, flags=re.MULTILINE)
    return {label: (float(ratio), float(factor)) for label, ratio, factor in lines}


def test_vanishing_gradients_as_the_readme_states(tmp_path):
    """The gradient ratios and per-step factors examples/README.md prints (at the default sizes), and the training
    claims: without clipping SGD diverges, with clip_grad_norm_ the loss falls."""
    pytest.importorskip("matplotlib")
    figure = tmp_path / "vanishing.png"
    args = "--device cpu --train-steps 30 --train-length 30"
    result = load_example("vanishing_gradients").main([*args.split(), "--figure", str(figure)])
    stated = readme_gradient_factors()
    assert set(stated) == set(result["gradient_ratio"]) and len(stated) == 5
    for label, ratio in result["gradient_ratio"].items():
        stated_ratio, stated_factor = stated[label]
        assert ratio == pytest.approx(stated_ratio, rel=0.1), label
        assert f"{ratio ** (1 / 199):.3f}" == f"{stated_factor:.3f}", label
    assert not math.isfinite(result["unclipped_losses"][-1]) or len(result["unclipped_losses"]) < 30
    clipped = result["clipped_losses"]
    assert len(clipped) == 30 and clipped[-1] < 0.9 * clipped[0], clipped
    assert figure.stat().st_size > 0


def test_forecast_beats_the_seasonal_naive_baseline(tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "forecast.png"
    args = "--device cpu --length 1200 --window 48 --horizon 12 --hidden-size 32 --epochs 6 --batch-size 32"
    result = load_example("forecast").main([*args.split(), "--figure", str(figure)])
    mse = result["mse"]
    assert mse["LSTM"] < 0.75 * min(mse["seasonal naive"], mse["last value"]), mse
    assert mse["LSTM"] > result["noise_variance"], "below the noise floor: the test set leaked"
    assert figure.stat().st_size > 0


def test_classify_packed_on_triton_matches_reference():
    """The packed, bidirectional path on the Triton kernels (the interpreter on CPU) trains as the reference does."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = f"--device {device} --train-size 8 --test-size 4 --min-length 2 --max-length 4 --hidden-size 4"
    args += " --embedding-size 4 --epochs 1 --batch-size 4"
    classify = load_example("classify_packed")
    results = {backend: classify.main([*args.split(), "--backend", backend]) for backend in ("triton", "reference")}
    assert results["triton"]["train_loss"] == pytest.approx(results["reference"]["train_loss"], rel=1e-4)
    assert results["triton"]["test_accuracy"] == results["reference"]["test_accuracy"]
