"""Builds fused_rnn and its compiled kernels (csrc/) as the extension module fused_rnn._C; metadata is in pyproject.toml.

Environment:
    FUSED_RNN_SKIP_BUILD=1  install pure Python; the compiled kernels are then built on first use (ninja, cached),
                            or fused_rnn.available_backends() says why they cannot be.
    FUSED_RNN_FORCE_CUDA=1  fail unless the CUDA kernels can be built.
    TORCH_CUDA_ARCH_LIST    GPUs to compile CUDA kernels for; default "8.0;9.0+PTX" (A100, H100/H200, PTX for newer).
    MAX_JOBS                parallel compile jobs (read by torch's BuildExtension); default 2, the CI machine's cores.

Install with `pip install --no-build-isolation ...` so the extension compiles against the torch already installed.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _native_build_settings():
    # fused_rnn/backends/native.py holds the sources and flags for its JIT build too; load that one file (importing
    # the fused_rnn package would import triton and the rest).
    spec = importlib.util.spec_from_file_location("fused_rnn_native_build", ROOT / "fused_rnn/backends/native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda_unavailable(torch) -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc was not found (set CUDA_HOME)"
    return "the CUDA kernels are not written yet (csrc/ has only the CPU kernels)"


def _extensions():
    if os.environ.get("FUSED_RNN_SKIP_BUILD") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    why_no_cuda = _cuda_unavailable(torch)
    if os.environ.get("FUSED_RNN_FORCE_CUDA") == "1" and why_no_cuda is not None:
        raise RuntimeError(f"FUSED_RNN_FORCE_CUDA=1, but the CUDA kernels cannot be built: {why_no_cuda}")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    os.environ.setdefault("MAX_JOBS", "2")
    native = _native_build_settings()
    extension = CppExtension(
        "fused_rnn._C",
        sources=[f"csrc/{source}" for source in native.SOURCES],
        extra_compile_args={"cxx": native.cxx_flags()},
        extra_link_args=native.link_flags(),
    )
    return [extension], {"build_ext": BuildExtension}


extensions, commands = _extensions()
setup(ext_modules=extensions, cmdclass=commands)
