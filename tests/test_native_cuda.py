"""The compiled CUDA kernels (backend="cuda": csrc/cuda/recurrence.cu driven by csrc/sequence.cpp, IndRNN's
csrc/cuda/indrnn.cu, LayerNorm LSTM/GRU's csrc/cuda/layernorm.cu and the multi-head cells' csrc/cuda/multihead.cu,
whose arithmetic tests/test_layernorm.py and tests/test_multihead.py run on the host).

Without a GPU: the extension imports, registers its CUDA kernels under the same op names as its CPU kernels,
every CUDA kernel compiled for sm_80 and sm_90 uses no local memory (no register spills), read from the built
library with the cuobjdump that triton ships, and the CUDA path's driver loop with its kernels' bodies run on the
host (ops sequence_*_step_loop) gives what the CPU kernels give, saved activations included.
With a GPU (tests marked `gpu`): backend="cuda" against torch.nn in float64 on the CPU, by tests/test_gpu.py's
rule (our error at most twice cuDNN's), and bit-identical repeats.
"""

import copy
import re
import subprocess
from pathlib import Path

import pytest
import torch
from test_gpu import CASES, FLOOR, TORCH_CLASS, outputs_and_grads

import fused_rnn
from fused_rnn import functional
from fused_rnn.backends import native, resolve

from checks import assert_within_twice_torch_error
from layers import layer_weights, sequence_inputs

pytestmark = pytest.mark.skipif(
    native.unavailable() is not None or not native.built_with_cuda(),
    reason=f"the compiled extension has no CUDA kernels: {native.unavailable() or native.cuda_unbuildable()}",
)

OPS = [
    "sequence_forward",
    "sequence_backward",
    "indrnn_recurrence_forward",
    "indrnn_recurrence_backward",
    "layernorm_recurrence_forward",
    "layernorm_recurrence_backward",
    "multihead_recurrence_forward",
    "multihead_recurrence_backward",
]
NAMES = ["input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"]
CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
STORAGE_TYPES = {"float": "f", "double": "d", "c10::Half": "N3c104HalfE", "c10::BFloat16": "N3c108BFloat16E"}


def extension_library() -> Path:
    """The shared library holding the kernels: the installed fused_rnn._C, or the JIT build's."""
    return Path(native._module.__file__)


def cuobjdump() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"


def resource_usage() -> dict[str, dict[str, dict[str, int]]]:
    """{arch: {demangled-ish kernel symbol: {"REG": n, "STACK": n, "LOCAL": n, ...}}} of every kernel in the library."""
    dump = subprocess.run(
        [cuobjdump(), "--dump-resource-usage", extension_library()], check=True, capture_output=True, text=True
    ).stdout
    usage, arch, kernel = {}, None, None
    for line in dump.splitlines():
        if match := re.match(r"\s*arch = (sm_\d+)", line):
            arch = match.group(1)
            usage.setdefault(arch, {})
        elif match := re.match(r"\s*Function (\S+):", line):
            kernel = match.group(1)
        elif kernel is not None and "REG:" in line:
            usage[arch][kernel] = {key: int(value) for key, value in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            kernel = None
    return usage


def test_extension_registers_cuda_kernels_for_the_same_ops():
    for op in OPS:
        assert native.has_kernel(op, "cpu"), op
        assert native.has_kernel(op, "cuda"), op


def test_every_cuda_kernel_is_compiled_for_sm80_and_sm90_without_spills():
    usage = resource_usage()
    assert {"sm_80", "sm_90"} <= usage.keys()
    for arch in ("sm_80", "sm_90"):
        kernels = usage[arch]
        # Every step kernel of every cell and storage type: 2 directions x 4 cells x 4 dtypes.
        names = [name for name in kernels if "_step_kernel" in name]
        assert len(names) == 2 * len(CELLS) * len(STORAGE_TYPES), sorted(names)
        # IndRNN's whole-sequence kernels: 2 directions x 4 storage types.
        names += [name for name in kernels if "indrnn_" in name and "_kernel" in name]
        assert len(names) == (2 * len(CELLS) + 2) * len(STORAGE_TYPES), sorted(names)
        # LayerNorm LSTM/GRU's row kernels: 2 directions x 4 storage types.
        names += [name for name in kernels if "layernorm_cu" in name and "_kernel" in name]
        assert len(names) == (2 * len(CELLS) + 4) * len(STORAGE_TYPES), sorted(names)
        # The multi-head cells' step kernels: 2 directions x 3 cells (LSTM, GRU, sLSTM) x 4 storage types.
        names += [name for name in kernels if "multihead_cu" in name and "_kernel" in name]
        assert len(names) == (2 * len(CELLS) + 4 + 6) * len(STORAGE_TYPES), sorted(names)
        for name in names:
            assert kernels[name]["LOCAL"] == 0 and kernels[name]["STACK"] == 0, (arch, name, kernels[name])


STEP_LOOP_CASES = [  # cell, T, B, I, H, proj, packed lengths, reverse
    pytest.param("lstm", 1, 1, 3, 5, 0, None, False, id="lstm-T1-B1"),
    pytest.param("lstm", 4, 3, 5, 33, 0, None, True, id="lstm-H33-reverse"),
    pytest.param("lstm", None, 4, 3, 11, 4, [5, 3, 3, 1], False, id="lstm-proj-packed"),
    pytest.param("lstm", None, 4, 3, 11, 4, [5, 3, 3, 1], True, id="lstm-proj-packed-reverse"),
    pytest.param("gru", 3, 2, 4, 7, 0, None, False, id="gru-H7"),
    pytest.param("gru", None, 4, 4, 9, 0, [5, 3, 3, 1], True, id="gru-packed-reverse"),
    pytest.param("rnn_tanh", None, 3, 2, 6, 0, [4, 2, 1], False, id="rnn_tanh-packed"),
    pytest.param("rnn_relu", 3, 2, 2, 5, 0, None, True, id="rnn_relu-reverse"),
]


@pytest.mark.parametrize(
    "cell, steps, batch, input_size, hidden, proj, lengths, reverse, zoned",
    [
        *(pytest.param(*case.values, False, id=case.id) for case in STEP_LOOP_CASES),
        *(
            pytest.param(*case.values, True, id=f"{case.id}-zoneout")
            for case in STEP_LOOP_CASES
            if case.values[0] in ("lstm", "gru")
        ),
    ],
)
def test_cuda_step_loop_matches_the_cpu_kernels(cell, steps, batch, input_size, hidden, proj, lengths, reverse, zoned):
    """The CUDA path's C++ loop (per-step GEMMs, step bodies, carries, packed rows, projection, zoneout) with its
    kernels' bodies run on the host, against the CPU kernels (tested against the reference): every output, the saved
    activations in the same layout, and every gradient, in float64. Zoneout's keep weights are uniform in [0, 1)
    rather than masks, so that every term of the blend counts."""
    ops = native.ops()
    weights = [w.detach() if w is not None else None for w in layer_weights(cell, input_size, hidden, proj=proj)]
    x, h0, c0, batch_sizes = sequence_inputs(cell, steps, batch, input_size, hidden, proj=proj, lengths=lengths)
    rows, h0 = x.detach().reshape(-1, input_size), h0.detach()
    c0 = c0.detach() if c0 is not None else None
    weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = weights
    width = (proj or hidden) + hidden if cell == "lstm" else hidden
    zoneout = {"zoneout": torch.rand(rows.shape[0], width, dtype=rows.dtype)} if zoned else {}
    results = {}
    for name, forward, backward in [
        ("cpu", ops.sequence_forward, ops.sequence_backward),
        ("step loop", ops.sequence_forward_step_loop, ops.sequence_backward_step_loop),
    ]:
        outputs = forward(cell, rows, h0, c0, *weights, batch_sizes, reverse, True, **zoneout)
        output, h_n, c_n, saved, projection_input = outputs
        generator = torch.Generator().manual_seed(1)
        grad_output, grad_h_n, grad_c_n = (
            torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in (output, h_n, c_n)
        )
        grads = backward(
            cell,
            grad_output,
            grad_h_n,
            grad_c_n if c0 is not None else None,
            rows,
            h0,
            c0,
            weight_ih,
            weight_hh,
            weight_hr,
            output,
            saved,
            projection_input,
            batch_sizes,
            reverse,
            [True, True, c0 is not None, True, True, bias_ih is not None, bias_hh is not None, weight_hr is not None],
            **zoneout,
        )
        results[name] = [*outputs, *grads]
    names = ["output", "h_n", "c_n", "saved", "projection_input", *(f"grad {n}" for n in NAMES)]
    for name, expected, got in zip(names, results["cpu"], results["step loop"], strict=True):
        assert expected.shape == got.shape, name
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10, msg=name)


def test_cuda_backend_says_why_it_cannot_run_here():
    status = fused_rnn.available_backends()["cuda"]
    if torch.cuda.is_available():
        assert status.startswith("available on CUDA")
    else:
        assert status == "unavailable: no CUDA GPU is visible"
        with pytest.raises(ValueError, match=r"backend='cuda' cannot run here: no CUDA GPU is visible"):
            fused_rnn.LSTM(3, 4, backend="cuda")(torch.randn(2, 1, 3))


def test_auto_does_not_pick_the_cuda_backend():
    """The compiled "cuda" backend was slower than cuDNN in the committed GPU results (up to 13x): "auto" skips it."""
    assert resolve("auto", torch.device("cuda"), torch.float32) != "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cell, steps, batch, input_size, hidden, extra, lengths", CASES)
def test_cuda_matches_cudnn(cell, steps, batch, input_size, hidden, extra, lengths, dtype, monkeypatch):
    """As tests/test_gpu.py's Triton test: our error against torch.nn in float64 on the CPU is at most twice
    cuDNN's in the same dtype (odd H, B=1, T=1, packed ragged unsorted, reverse, proj, multi-layer bidirectional)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cudnn = TORCH_CLASS[cell](input_size, hidden, **extra, device="cuda")
    exact = copy.deepcopy(cudnn).to("cpu", torch.float64)
    ours = fused_rnn.from_torch(cudnn, backend="cuda").to(dtype)
    cudnn = cudnn.to(dtype)
    x = torch.randn(steps, batch, input_size, device="cuda")
    expected = [t.to("cuda") for t in outputs_and_grads(exact, x.to("cpu", torch.float64), lengths)]
    theirs = outputs_and_grads(cudnn, x.to(dtype), lengths)
    mine = outputs_and_grads(ours, x.to(dtype), lengths)
    names = ["output", "h_n", "c_n"][: len(expected) - 1 - len(list(cudnn.parameters()))]
    names += ["grad input", *(f"grad {n}" for n, _ in cudnn.named_parameters())]
    for name, e, t, m in zip(names, expected, theirs, mine, strict=True):
        assert m.dtype == t.dtype, name
        assert_within_twice_torch_error(name, e, m, t, FLOOR[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.RNN])
def test_cuda_repeated_runs_are_bit_identical(cls):
    module = cls(64, 96, num_layers=2, bidirectional=True, backend="cuda", device="cuda", dtype=torch.bfloat16)
    x = torch.randn(50, 8, 64, device="cuda", dtype=torch.bfloat16)
    first = outputs_and_grads(module, x, [50, 7, 33, 50, 1, 20, 20, 9])
    for _ in range(3):
        again = outputs_and_grads(module, x, [50, 7, 33, 50, 1, 20, 20, 9])
        for i, (a, b) in enumerate(zip(first, again, strict=True)):
            assert torch.equal(a, b), f"tensor {i} differs between runs"


@pytest.mark.gpu
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_float64_gradients_are_exact(cell):
    """float64 on the GPU: the hand-written backward is the derivative of the forward (finite differences)."""
    weights = layer_weights(cell, 2, 3, device="cuda")
    x, h0, c0, batch_sizes = sequence_inputs(cell, 3, 2, 2, 3, lengths=[3, 2], device="cuda")
    if cell == "rnn_relu":  # keep pre-activations away from relu's kink, where finite differences are wrong
        with torch.no_grad():
            weights[2].add_(2.0)

    def run(*tensors):
        return tuple(o for o in functional.sequence(cell, *tensors, batch_sizes, True, "cuda") if o is not None)

    assert torch.autograd.gradcheck(run, [x, h0, c0, *weights], fast_mode=True)
