"""The compiled kernels in csrc/ (torch ops `fused_rnn_native::sequence_forward/backward`), loaded on first use.

The installed package normally carries them as the extension module `fused_rnn._C` (built by setup.py). When it
does not (installed with FUSED_RNN_SKIP_BUILD=1, or a failed build), they are compiled once from csrc/ with
torch.utils.cpp_extension.load (ninja; cached under torch's extensions directory, so later processes load them in
a second). When neither works, `unavailable()` says why and the Python backends keep working.

setup.py reads SOURCES and the compiler flags from here, so both builds compile the same thing.
"""

import os
import platform
import sys
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = ("sequence.cpp", "cpu/recurrence.cpp")
JIT_NAME = "fused_rnn_native"


def cxx_flags() -> list[str]:
    """Compiler flags of the C++ sources: optimised, OpenMP (the CPU kernel's one parallel region, on the same
    libgomp torch loads), and on x86-64 AVX2 + FMA so at::vec::Vectorized uses 8-wide float vectors and SLEEF."""
    flags = ["-O3", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


def link_flags() -> list[str]:
    return ["-fopenmp"]


def cpu_unsupported() -> str | None:
    """Why this CPU cannot run the kernels as compiled (AVX2 instructions), or None when it can."""
    if platform.machine() in ("x86_64", "AMD64") and torch.backends.cpu.get_cpu_capability() not in (
        "AVX2",
        "AVX512",
    ):
        return f"this CPU lacks AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    return None


_reason: str | None = None
_loaded = False


def unavailable() -> str | None:
    """Why the compiled kernels cannot be used in this process, or None once they are loaded (building them if needed)."""
    global _loaded, _reason
    if not _loaded:
        _loaded = True
        _reason = cpu_unsupported() or _load()
    return _reason


def ops():
    """torch.ops.fused_rnn_native, loading the kernels first; RuntimeError saying why when they cannot be."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"fused_rnn's compiled kernels are unavailable: {reason}")
    return torch.ops.fused_rnn_native


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded kernels registered `op` ("sequence_forward"/"sequence_backward") for `device_type`."""
    return unavailable() is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"fused_rnn_native::{op}", device_type.upper()
    )


def _load() -> str | None:
    try:
        import fused_rnn._C  # noqa: F401  (importing it registers the ops)

        return None
    except ImportError as error:
        installed_error = str(error)
    if not all((CSRC / source).exists() for source in SOURCES):
        return f"the package has no compiled extension ({installed_error}) and no csrc/ sources to build it from"
    try:
        from torch.utils.cpp_extension import load

        print(
            "fused_rnn: loading the native kernels from csrc/ (compiled on first use, then cached by torch.utils.cpp_extension)",
            file=sys.stderr,
        )
        load(
            name=JIT_NAME,
            sources=[str(CSRC / source) for source in SOURCES],
            extra_cflags=cxx_flags(),
            extra_ldflags=link_flags(),
            verbose=os.environ.get("FUSED_RNN_VERBOSE_BUILD") == "1",
        )
        return None
    except Exception as error:  # a missing compiler or ninja, or a compile error: say which, keep Python working
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"no compiled extension, and building it failed: {first_line}"
