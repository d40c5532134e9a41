"""backend="persistent" is chosen only when asked for, and only when it can run: the compiled kernels, a GPU and the
capacity model's verdict; "auto" picks it, and cuDNN, only where the committed GPU results show it fastest. Runs on
CPU: where a GPU would be needed, the checks that come before the capacity model are replaced, and the model is given
an H100's limits."""

import json
from pathlib import Path

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
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


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


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("dtype", persistent.DTYPES, ids=["fp32", "bf16", "fp16"])
def test_auto_picks_persistent_only_in_its_measured_range_and_torch_nn_elsewhere(
    gpu_with_kernels, monkeypatch, dtype, training
):
    monkeypatch.setattr(backends, "_triton_cannot_run", lambda device, dtype, offsets_fit_32_bits: None)

    def auto(cell="lstm", batch=1, hidden=512, projected=False, single_step=False):
        call = Workload(cell, batch, False, training, hidden, projected, single_step=single_step)
        return resolve("auto", CUDA, dtype, workload=call)

    assert auto() == "persistent"  # B=1 T=1024 H=512: 0.22-0.47x cuDNN's time
    assert auto(batch=3, hidden=100) == "persistent"  # one batch tile of 8 rows, fewer rows of W_hh per CTA
    assert auto(batch=8) == ("torch" if dtype == torch.float16 else "persistent")  # cuDNN's fp16 persistent kernel
    assert auto(batch=9) == "torch"  # a second batch tile
    assert auto(hidden=513) == "torch"
    assert auto(single_step=True) == "torch"  # an LSTMCell: torch.nn's cell op
    assert auto(batch=16, hidden=768) == "torch"  # 0.98-1.32x
    assert auto(batch=64, hidden=1024) == "torch"  # 5-13x
    assert auto(projected=True) == "torch"
    # torch.nn serves these, and no committed result shows another backend faster: a drop-in is never slower
    assert auto(cell="gru") == auto(cell="rnn_tanh") == auto(cell="rnn_relu") == "torch"


def test_auto_keeps_the_fused_kernels_when_deterministic_algorithms_are_asked_for(gpu_with_kernels, monkeypatch):
    monkeypatch.setattr(backends, "_triton_cannot_run", lambda device, dtype, offsets_fit_32_bits: None)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    for cell in ("lstm", "gru", "rnn_tanh"):
        assert resolve("auto", CUDA, torch.float32, workload=workload(cell, batch=16, hidden=768)) == "triton"
    assert resolve("auto", CUDA, torch.float32, workload=workload(batch=1, hidden=512)) == "persistent"
    one_step = Workload("gru", 4, packed=False, training=True, hidden=64, single_step=True)
    assert resolve("auto", CUDA, torch.float32, workload=one_step) == "torch"  # torch.gru_cell: no cuDNN RNN


def test_auto_does_not_pick_persistent_on_a_gpu_it_was_not_measured_on(gpu_with_kernels, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve("auto", CUDA, torch.float32, workload=workload(batch=1, hidden=512)) == "torch"


RESULTS = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/nvidia-h200.json").read_text())


def _measured_ms(keep, contender):
    """(config, dtype, mode) -> ms of `contender` in the committed H200 results, over the results `keep` accepts."""
    return {
        (r["config"], r["dtype"], r["mode"]): r["ms"]
        for r in RESULTS["results"]
        if r["contender"] == contender and not r["failure"] and keep(r)
    }


def _in_range(r, rule):
    return r["cell"] == rule.cell and r["batch"] <= rule.max_batch and r["hidden_size"] <= rule.max_hidden


def test_the_auto_rules_stand_on_the_committed_gpu_results():
    """Each range where "auto" picks "persistent" holds committed measurements, the configs it names, every one faster
    than cuDNN by 2x in every dtype and mode; no committed measurement where "persistent" was not faster lies inside
    it. Outside the ranges no fused backend beat cuDNN by more than the noise of those runs (fused_rnn.torch, cuDNN
    itself, took 0.63-1.49x torch.nn's time), which is why "auto" runs cuDNN there."""
    assert backends.CUDA_PERSISTENT_FASTER
    for rule in backends.CUDA_PERSISTENT_FASTER:
        inside = lambda r, rule=rule: _in_range(r, rule)  # noqa: E731
        ours, cudnn = _measured_ms(inside, "fused_rnn.persistent"), _measured_ms(inside, "torch.nn")
        assert {config for config, _, _ in ours} == set(rule.measured)
        assert len(ours) == 6 * len(rule.measured) and ours.keys() == cudnn.keys()  # 3 dtypes x forward, training
        assert all(ours[case] < 0.5 * cudnn[case] for case in ours), (ours, cudnn)
    outside = lambda r: not any(_in_range(r, rule) for rule in backends.CUDA_PERSISTENT_FASTER)  # noqa: E731
    cudnn = _measured_ms(outside, "torch.nn")
    assert len(cudnn) >= 24
    for contender, margin in (("fused_rnn.triton", 1.0), ("fused_rnn.cuda", 0.9), ("fused_rnn.persistent", 0.9)):
        ours = _measured_ms(outside, contender)
        assert ours.keys() <= cudnn.keys() and len(ours) >= 24
        faster = [case for case in ours if ours[case] < margin * cudnn[case]]
        assert faster == [], f"{contender} beat cuDNN in {faster}"


def test_without_the_kernels_the_reason_is_the_build(monkeypatch):
    monkeypatch.setattr(backends, "_native_cuda_unavailable", lambda device, dtype: None)
    monkeypatch.setattr(persistent, "has_kernels", lambda: False)
    with pytest.raises(ValueError, match="no persistent kernels"):
        resolve("persistent", CUDA, torch.float32, workload=workload())


def test_on_cpu_the_layer_raises_a_clear_error():
    layer = fused_rnn.LSTM(4, 8, backend="persistent")
    with pytest.raises(ValueError, match="backend='persistent' cannot run here"):
        layer(torch.randn(3, 2, 4))


def test_available_backends_says_why_not():
    """On a GPU (the extension built with its CUDA half, as CI builds it) the status names the device; without one it
    names what is missing."""
    status = fused_rnn.available_backends()["persistent"]
    if torch.cuda.is_available():
        assert status.startswith(f"available on CUDA ({torch.cuda.get_device_name()}) for LSTM/GRU layers"), status
    else:
        assert status == "unavailable: no CUDA GPU is visible"
