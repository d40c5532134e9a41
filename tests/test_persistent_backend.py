"""backend="persistent" is chosen only when asked for, and only when it can run: the compiled kernels, a GPU and the
capacity model's verdict. "auto" never picks it (no GPU results are committed). Runs on CPU: where a GPU would be
needed, the checks that come before the capacity model are replaced, and the model is given an H100's limits."""

import pytest
import torch

import fused_rnn
from fused_rnn import backends
from fused_rnn.backends import Workload, persistent, resolve

CUDA = torch.device("cuda")


@pytest.fixture
def gpu_with_kernels(monkeypatch):
    """As on an H100 with the extension built with CUDA: only the capacity model is left to decide."""
    monkeypatch.setattr(backends, "_native_cuda_unavailable", lambda device, dtype: None)
    monkeypatch.setattr(persistent, "has_kernels", lambda: True)
    monkeypatch.setattr(persistent, "device_limits", lambda device: persistent.H100_SXM)


def workload(cell="lstm", batch=8, hidden=512, projected=False):
    return Workload(cell, batch, packed=False, training=True, hidden=hidden, projected=projected)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", persistent.DTYPES, ids=["fp32", "bf16", "fp16"])
def test_forced_persistent_resolves_where_the_model_says_it_fits(gpu_with_kernels, cell, dtype):
    assert resolve("persistent", CUDA, dtype, workload=workload(cell, batch=64, hidden=1024)) == "persistent"


@pytest.mark.parametrize(
    "call, message",
    [
        (workload(hidden=4096), "each of 128 CTAs needs .* KiB of shared memory"),
        (workload(cell="rnn_tanh"), "exist for lstm and gru, not rnn_tanh"),
        (workload(projected=True), "proj_size is not supported"),
    ],
    ids=["too-large", "rnn", "projection"],
)
def test_forced_persistent_that_cannot_run_raises_the_reason(gpu_with_kernels, call, message):
    with pytest.raises(ValueError, match=f"backend='persistent' cannot run here: .*{message}"):
        resolve("persistent", CUDA, torch.float32, workload=call)


def test_without_a_shape_resolution_says_whether_it_runs_here_at_all(gpu_with_kernels):
    """benchmarks.run asks without a shape; each call then passes its own, checked against the capacity model."""
    assert resolve("persistent", CUDA, torch.float32) == "persistent"


def test_float64_is_refused(gpu_with_kernels):
    with pytest.raises(ValueError, match="dtype torch.float64 is not supported"):
        resolve("persistent", CUDA, torch.float64, workload=workload())


@pytest.mark.parametrize("hidden", [33, 512, 1024])
@pytest.mark.parametrize("batch", [1, 64])
def test_auto_never_picks_persistent(gpu_with_kernels, hidden, batch):
    for dtype in persistent.DTYPES:
        assert resolve("auto", CUDA, dtype, workload=workload(batch=batch, hidden=hidden)) != "persistent"


def test_without_the_kernels_the_reason_is_the_build(monkeypatch):
    monkeypatch.setattr(backends, "_native_cuda_unavailable", lambda device, dtype: None)
    monkeypatch.setattr(persistent, "has_kernels", lambda: False)
    with pytest.raises(ValueError, match="no persistent kernels"):
        resolve("persistent", CUDA, torch.float32, workload=workload())


def test_on_cpu_the_layer_raises_a_clear_error():
    layer = fused_rnn.LSTM(4, 8, backend="persistent")
    with pytest.raises(ValueError, match="backend='persistent' cannot run here"):
        layer(torch.randn(3, 2, 4))


def test_available_backends_says_why_not_and_that_auto_skips_it():
    status = fused_rnn.available_backends()["persistent"]
    if not torch.cuda.is_available():
        assert status.startswith("unavailable: ")
    assert "'auto' does not pick it" in status
