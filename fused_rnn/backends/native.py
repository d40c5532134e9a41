"""The compiled kernels in csrc/ (torch ops `fused_rnn_native::sequence_forward/backward`), loaded on first use.

The installed package normally carries them as the extension module `fused_rnn._C` (built by setup.py). When it
does not (installed with FUSED_RNN_SKIP_BUILD=1, or a failed build), they are compiled once from csrc/ with
torch.utils.cpp_extension.load (ninja; cached under torch's extensions directory, so later processes load them in
a second). Either build includes the CUDA kernels when torch has CUDA and nvcc is found (`cuda_unbuildable()`).
When neither works, `unavailable()` says why and the Python backends keep working.

setup.py reads the sources and the compiler flags from here, so both builds compile the same thing.
"""

import os
import platform
import sys
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = (
    "sequence.cpp",
    "cpu/recurrence.cpp",
    "cpu/recurrence_avx2.cpp",
    "cpu/recurrence_avx512.cpp",
    "cpu/indrnn.cpp",
    "cpu/multihead.cpp",
    "cpu/layernorm.cpp",
)
CUDA_SOURCES = (
    "cuda/recurrence.cu",
    "cuda/indrnn.cu",
    "cuda/layernorm.cu",
    "cuda/multihead.cu",
    "persistent/forward.cu",
    "persistent/backward.cu",
    "persistent/binding.cpp",
)
JIT_NAME = "fused_rnn_native"
# A100 (8.0) and H100/H200 (9.0), plus PTX that newer GPUs compile when loading.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
# Where this project's machines have the CUDA toolkit: the nvcc on PATH there is a wrapper script, from which
# torch would guess /usr/local and then fail to link the CUDA runtime.
STANDARD_CUDA_HOME = Path("/usr/local/cuda")


def cuda_home() -> str | None:
    """The CUDA toolkit to build with: $CUDA_HOME (or $CUDA_PATH), else /usr/local/cuda when it has nvcc."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            return os.environ[variable]
    return str(STANDARD_CUDA_HOME) if (STANDARD_CUDA_HOME / "bin/nvcc").exists() else None


def cuda_unbuildable() -> str | None:
    """Why the CUDA kernels cannot be compiled here, or None when they can (torch has CUDA and nvcc is found).

    Sets $CUDA_HOME for torch.utils.cpp_extension, which reads it when first imported; no GPU is needed."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    home = cuda_home()
    if home is None or not (Path(home) / "bin/nvcc").exists():
        return "nvcc was not found (set CUDA_HOME to the CUDA toolkit)"
    os.environ["CUDA_HOME"] = home
    return None


def held_build_lock(name: str) -> Path | None:
    """The lock file of torch.utils.cpp_extension's build of `name` while it is held, else None.

    Older torch (2.11 included) locks with a FileBaton: the file's existence is the lock, and a build that was killed
    leaves it held for ever. torch 2.14 holds an advisory FileLock on the file instead, which the system releases when
    its holder dies, and the file stays after every build: held only while another process holds it (asked here
    without waiting)."""
    from torch.utils import cpp_extension

    try:
        lock = Path(cpp_extension._get_build_directory(name, verbose=False)) / "lock"
    except (AttributeError, TypeError):  # a private function: another torch may lack it
        return None
    if not lock.exists():
        return None
    advisory = _advisory_build_lock()
    if advisory is None:
        return lock
    from filelock import Timeout

    try:
        with advisory(str(lock), timeout=0):
            return None
    except Timeout:
        return lock


def _advisory_build_lock():
    """The advisory lock class torch.utils.cpp_extension builds under (torch 2.14's FileLock), or None where it locks
    with a FileBaton, whose file is held for as long as it exists."""
    from torch.utils import cpp_extension

    return None if hasattr(cpp_extension, "FileBaton") else getattr(cpp_extension, "FileLock", None)


def cxx_flags(with_cuda: bool) -> list[str]:
    """Compiler flags of the C++ sources: optimised, OpenMP (the CPU kernel's one parallel region, on the same
    libgomp torch loads), and on x86-64 AVX2 + FMA so at::vec::Vectorized uses 8-wide float vectors and SLEEF (and
    F16C, which every AVX2 CPU has, for c10::Half's conversions in the host row loops of csrc/cpu/layernorm.cpp).
    with_cuda: the driver also registers the CUDA kernels."""
    flags = ["-O3", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags + ["-DFUSED_RNN_WITH_CUDA"] if with_cuda else flags


def nvcc_flags() -> list[str]:
    """nvcc flags of the CUDA sources. No --use_fast_math: its approximate expf/tanhf would give up the relative
    precision near 0 that the shared cell math keeps (tests/test_native_sequence.py, small signals)."""
    return ["-O3", "-DFUSED_RNN_WITH_CUDA"]


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
_module = None  # the loaded extension module


@torch.compiler.assume_constant_result
def unavailable() -> str | None:
    """Why the compiled kernels cannot be used in this process, or None once they are loaded (built if needed).

    The answer holds for the life of the process, so torch.compile takes it as a constant: the first call of a process
    may come while tracing (a model compiled before any eager call), and what it runs (torch's CPU capability, a str
    that dynamo cannot trace; importing or building the extension) must run outside the traced region."""
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


class TorchGemms:
    """torch's GEMMs, as gemms() gives them where the compiled ones do not apply."""

    @staticmethod
    def product(a, b, bias):
        """a b^T (+ bias)."""
        return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())

    @staticmethod
    def weight_gradient(g, x):
        """g^T x."""
        return torch.mm(g.t(), x)


def gemms(compiled_cpu: bool):
    """The GEMMs around a recurrence, `product(a, b, bias)` and `weight_gradient(g, x)`: on a compiled CPU path those
    of the C++ drivers (oneDNN for large float32 products on x86-64, where torch.mm's MKL runs AVX2 code on AMD CPUs;
    csrc/sequence.cpp), else torch's."""
    return ops() if compiled_cpu else TorchGemms


def cpu_instruction_set() -> str | None:
    """Which build of the CPU recurrence runs: "AVX512" or "AVX2" on x86-64 (torch's CPU capability, so
    ATEN_CPU_CAPABILITY=avx2 forces the narrower one), "DEFAULT" elsewhere; None when the kernels are not loaded."""
    return _module.cpu_instruction_set if unavailable() is None else None


def built_with_cuda() -> bool:
    """Whether the loaded kernels were compiled with their CUDA half (False when they are not loaded)."""
    return unavailable() is None and bool(_module.with_cuda)


@torch.compiler.assume_constant_result  # a process constant, asked while tracing (a bool dynamo cannot trace)
def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded kernels registered `op` ("sequence_forward"/"sequence_backward") for `device_type`."""
    return unavailable() is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"fused_rnn_native::{op}", device_type.upper()
    )


def _load() -> str | None:
    global _module
    try:
        import fused_rnn._C  # importing it registers the ops

        _module = fused_rnn._C
        return None
    except ImportError as error:
        installed_error = str(error)
    with_cuda = cuda_unbuildable() is None
    sources = SOURCES + CUDA_SOURCES if with_cuda else SOURCES
    if not all((CSRC / source).exists() for source in sources):
        return f"the package has no compiled extension ({installed_error}) and no csrc/ sources to build it from"
    try:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        from torch.utils.cpp_extension import load

        print(
            f"fused_rnn: loading the native kernels ({'CPU and CUDA' if with_cuda else 'CPU'}) from csrc/ "
            "(compiled on first use, then cached by torch.utils.cpp_extension)",
            file=sys.stderr,
        )
        name = JIT_NAME + ("_cuda" if with_cuda else "")
        lock = held_build_lock(name)
        if lock is not None:
            left_behind = (
                ""
                if _advisory_build_lock()
                else ", or a build that was killed left it behind (then delete it; torch waits for it forever)"
            )
            print(
                f"fused_rnn: waiting for {lock}: another process is building the kernels{left_behind}",
                file=sys.stderr,
            )
        _module = load(
            name=name,
            sources=[str(CSRC / source) for source in sources],
            extra_cflags=cxx_flags(with_cuda),
            extra_cuda_cflags=nvcc_flags(),
            extra_ldflags=link_flags(),
            verbose=os.environ.get("FUSED_RNN_VERBOSE_BUILD") == "1",
        )
        return None
    except Exception as error:  # a missing compiler or ninja, or a compile error: say which, keep Python working
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"no compiled extension, and building it failed: {first_line}"
