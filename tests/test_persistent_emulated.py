"""The persistent kernels' own code, run on CPU: csrc/persistent/*.cu compiled by g++ against a CUDA emulation
(tests/persistent_emulation/: every GPU thread a fiber, barriers and warp shuffles emulated), driven by the Python
driver of backend="persistent" and checked against the float64 reference, forward and every gradient.

What this covers without a GPU: the partition and index math in use, the h and gate-gradient exchange by step
parity, the packed steps, the saved-activation layout, the backward's fallback, barriers every thread reaches.
What it cannot: timing-dependent races and the real memory system (compute-sanitizer and the GPU tests do).
"""

import ctypes
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import torch
from test_gpu import FLOOR

from fused_rnn import autograd, reference
from fused_rnn.backends import native, persistent
from fused_rnn.cells import CELLS

from checks import TOLERANCE, assert_close, assert_within_twice_torch_error, gradients

ROOT = Path(__file__).resolve().parents[1]
EMULATION = ROOT / "tests" / "persistent_emulation"
SOURCES = [ROOT / "csrc" / "persistent" / name for name in ("forward.cu", "backward.cu")]
MULTIPROCESSORS = 4  # H=13 -> 4 CTAs of 4, 4, 4 and 1 units
CELL_CODE = {"lstm": 0, "gru": 1}
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
INVALID_CONFIGURATION = 9  # cudaErrorInvalidConfiguration


class ForwardArgs(ctypes.Structure):  # csrc/persistent/launch.h
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("input_gates", "weight_hh", "bias_hh", "h0", "c0", "step_rows")),
        *((name, ctypes.c_void_p) for name in ("h_exchange", "output", "h_n", "c_n", "saved")),
        *((name, ctypes.c_int) for name in ("steps", "batch", "hidden")),
        ("reverse", ctypes.c_bool),
    ]


class BackwardArgs(ctypes.Structure):  # csrc/persistent/launch.h
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("saved", "grad_output", "grad_h_n", "grad_c_n", "h_prev")),
        *((name, ctypes.c_void_p) for name in ("weight_hh", "step_rows", "grad_exchange", "grad_input_gates")),
        *((name, ctypes.c_void_p) for name in ("grad_hidden_gates", "grad_h0", "grad_c0")),
        *((name, ctypes.c_int) for name in ("steps", "batch", "hidden")),
        ("reverse", ctypes.c_bool),
    ]


def pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None or t.numel() == 0 else t.data_ptr()


def steps_of(step_rows, rows, batch):
    return step_rows.shape[0] if step_rows is not None else rows // batch


class EmulatedOps:
    """torch.ops.fused_rnn_native as backend="persistent" uses it, with the persistent launchers emulated."""

    def __init__(self, library, shared_memory_per_block_optin):
        self.library, self.optin = library, shared_memory_per_block_optin

    def persistent_device_limits(self, index):
        return [MULTIPROCESSORS, self.optin, 65536, 1024]

    def persistent_forward(self, cell, input_gates, weight_hh, bias_hh, h0, c0, step_rows, reverse, *outputs):
        output, h_n, c_n, saved, h_exchange = outputs
        batch, hidden = h0.shape
        args = ForwardArgs(
            *map(pointer, (input_gates, weight_hh, bias_hh, h0, c0, step_rows, h_exchange, output, h_n, c_n, saved)),
            steps_of(step_rows, input_gates.shape[0], batch),
            batch,
            hidden,
            reverse,
        )
        status = self.library.emulation_forward(CELL_CODE[cell], DTYPE_CODE[input_gates.dtype], ctypes.byref(args))
        assert status == 0, f"emulated forward launch failed: cudaError {status}"

    def persistent_backward(self, cell, saved, grad_output, grad_h_n, grad_c_n, h_prev, weight_hh, step_rows, *rest):
        reverse, grad_input_gates, grad_hidden_gates, grad_h0, grad_c0, grad_exchange = rest
        batch, hidden = grad_h_n.shape
        tensors = (saved, grad_output, grad_h_n, grad_c_n, h_prev, weight_hh, step_rows, grad_exchange)
        tensors += (grad_input_gates, grad_hidden_gates if cell == "gru" else None, grad_h0, grad_c0)
        args = BackwardArgs(
            *map(pointer, tensors), steps_of(step_rows, grad_output.shape[0], batch), batch, hidden, reverse
        )
        status = self.library.emulation_backward(CELL_CODE[cell], DTYPE_CODE[grad_output.dtype], ctypes.byref(args))
        assert status == 0, f"emulated backward launch failed: cudaError {status}"

    def sequence_backward(self, *args):
        """The step loop the backward falls back to: the compiled CPU kernels' (same saved layout)."""
        return native.ops().sequence_backward(*args)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    path = tmp_path_factory.mktemp("persistent_emulation") / "libpersistent_emulation.so"
    command = [compiler, "-std=c++20", "-O1", "-fPIC", "-shared", "-x", "c++", *map(str, SOURCES), "-x", "none"]
    command += [str(EMULATION / "emulation.cpp"), f"-I{EMULATION}", f"-I{SOURCES[0].parent}", "-o", str(path)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    lib = ctypes.CDLL(str(path))
    lib.emulation_forward.argtypes = lib.emulation_backward.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.emulation_forward_args_size.restype = lib.emulation_backward_args_size.restype = ctypes.c_size_t
    assert lib.emulation_forward_args_size() == ctypes.sizeof(ForwardArgs)
    assert lib.emulation_backward_args_size() == ctypes.sizeof(BackwardArgs)
    return lib


def emulate(monkeypatch, library, optin=227 * 1024):
    """backend="persistent" on CPU tensors, with an emulated GPU of MULTIPROCESSORS SMs."""
    library.emulation_set_device(MULTIPROCESSORS, optin)
    ops = EmulatedOps(library, optin)
    monkeypatch.setattr(persistent, "native", types.SimpleNamespace(ops=lambda: ops))
    monkeypatch.setattr(
        persistent, "device_limits", lambda device: persistent.DeviceLimits(*ops.persistent_device_limits(0))
    )


def layer(cell, batch, hidden, input_size=6, rows=None, lengths=None):
    """Random inputs and weights of one layer (float64 leaves) and its packed batch sizes."""
    gates = CELLS[cell].gates
    batch_sizes = None
    if lengths is not None:  # sorted by decreasing length, as PackedSequence
        batch_sizes = [sum(length > t for length in lengths) for t in range(max(lengths))]
    rows = sum(batch_sizes) if batch_sizes else rows
    tensors = [
        torch.randn(rows, input_size, dtype=torch.float64),
        torch.randn(batch, hidden, dtype=torch.float64),
        torch.randn(batch, hidden, dtype=torch.float64) if cell == "lstm" else None,
        torch.randn(gates * hidden, input_size, dtype=torch.float64) * 0.4,
        torch.randn(gates * hidden, hidden, dtype=torch.float64) * 0.4,
        torch.randn(gates * hidden, dtype=torch.float64) * 0.1,
        torch.randn(gates * hidden, dtype=torch.float64) * 0.1,
    ]
    return [t.requires_grad_() if t is not None else None for t in tensors], batch_sizes


def run(cell, tensors, batch_sizes, reverse, dtype, backend):
    """Outputs (output, h_n, c_n) of one layer and the gradients of every input, in `dtype` on `backend`."""
    inputs = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in tensors]
    if backend == "reference":
        outputs = reference.sequence(cell, *inputs[:7], None, batch_sizes, reverse)
    else:
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = inputs
        args = (cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, batch_sizes, reverse, True)
        outputs = autograd.sequence_forward(*args, backend=backend)[:3]
        outputs = [o if o.numel() else None for o in outputs]
    return [*outputs, *gradients(outputs, inputs)]


NAMES = ["output", "h_n", "c_n", "grad x", "grad h0", "grad c0", "grad w_ih", "grad w_hh", "grad b_ih", "grad b_hh"]
CASES = [  # batch, hidden, padded rows, packed lengths, reverse
    pytest.param(3, 13, 15, None, False, id="B3-T5-H13"),
    pytest.param(11, 13, None, [6, 6, 5, 4, 4, 3, 3, 2, 2, 1, 1], False, id="B11-packed"),
    pytest.param(11, 13, None, [6, 6, 5, 4, 4, 3, 3, 2, 2, 1, 1], True, id="B11-packed-reverse"),
    pytest.param(1, 7, 1, None, False, id="B1-T1-H7"),
    pytest.param(2, 5, 8, None, True, id="B2-T4-H5-reverse"),
]


@pytest.mark.parametrize("batch, hidden, rows, lengths, reverse", CASES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_emulated_kernels_match_the_reference(monkeypatch, library, cell, batch, hidden, rows, lengths, reverse):
    emulate(monkeypatch, library)
    tensors, batch_sizes = layer(cell, batch, hidden, rows=rows, lengths=lengths)
    exact = run(cell, tensors, batch_sizes, reverse, torch.float64, "reference")
    ours = run(cell, tensors, batch_sizes, reverse, torch.float32, "persistent")
    for name, e, o in zip(NAMES, exact, ours, strict=True):
        assert_close(name, e, o, *TOLERANCE[torch.float32])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_saved_activations_are_the_cpu_kernels(monkeypatch, library, cell):
    """The layout fused_rnn/cells.py states, as the compiled CPU kernels write it."""
    emulate(monkeypatch, library)
    tensors, batch_sizes = layer(cell, 11, 13, lengths=[5, 5, 4, 4, 3, 3, 3, 2, 2, 1, 1])
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = (t.detach().float() if t is not None else None for t in tensors)
    args = (cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, batch_sizes, False, True)
    saved = autograd.sequence_forward(*args, backend="persistent")[3]
    expected = autograd.sequence_forward(*args, backend="cpu")[3]
    assert_close("saved", expected, saved, *TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_emulated_half_precision_within_twice_the_references_error(monkeypatch, library, cell, dtype):
    emulate(monkeypatch, library)
    tensors, batch_sizes = layer(cell, 11, 13, lengths=[6, 6, 5, 4, 4, 3, 3, 2, 2, 1, 1])
    exact = run(cell, tensors, batch_sizes, False, torch.float64, "reference")
    same_dtype = run(cell, tensors, batch_sizes, False, dtype, "reference")
    ours = run(cell, tensors, batch_sizes, False, dtype, "persistent")
    for name, e, t, o in zip(NAMES, exact, same_dtype, ours, strict=True):
        if e is not None:
            assert o.dtype == dtype, name
            assert_within_twice_torch_error(name, e, o, t, FLOOR[dtype])


def test_backward_that_does_not_fit_runs_the_step_loop(monkeypatch, library):
    """Shared memory for the forward but not the backward (its dh and dc double the LSTM's cell state): the backward
    runs the step-loop driver on the persistent forward's saved activations, and the gradients stay exact."""
    optin = 3000
    limits = persistent.DeviceLimits(MULTIPROCESSORS, optin, 65536, 1024)
    assert persistent.plan("lstm", 13, 64, torch.float32, limits).fits
    assert not persistent.plan_backward("lstm", 13, 64, torch.float32, limits).fits
    emulate(monkeypatch, library, optin)
    tensors, _ = layer("lstm", 64, 13, rows=64 * 3)
    exact = run("lstm", tensors, None, False, torch.float64, "reference")
    ours = run("lstm", tensors, None, False, torch.float32, "persistent")
    for name, e, o in zip(NAMES, exact, ours, strict=True):
        assert_close(name, e, o, *TOLERANCE[torch.float32])


def test_launcher_refuses_what_does_not_fit(library):
    """The launcher's own guard, behind the capacity model: no launch, an error, never a hang."""
    library.emulation_set_device(MULTIPROCESSORS, 1024)
    outputs = [torch.zeros(3, 13) for _ in range(3)]
    h0, c0 = torch.zeros(1, 13), torch.zeros(1, 13)
    input_gates, weight_hh = torch.zeros(3, 52), torch.zeros(52, 13)
    args = ForwardArgs(*map(pointer, (input_gates, weight_hh, None, h0, c0, None, torch.zeros(2, 1, 13))))
    args.output, args.h_n, args.c_n = (t.data_ptr() for t in outputs)
    args.steps, args.batch, args.hidden = 3, 1, 13
    assert library.emulation_forward(CELL_CODE["lstm"], DTYPE_CODE[torch.float32], ctypes.byref(args)) == (
        INVALID_CONFIGURATION
    )
