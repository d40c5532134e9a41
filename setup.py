"""Builds fused_rnn and its compiled kernels (csrc/) as the extension module fused_rnn._C (metadata: pyproject.toml).

Environment:
    FUSED_RNN_SKIP_BUILD=1  install pure Python; the compiled kernels are then built on first use (ninja, cached),
                            or fused_rnn.available_backends() says why they cannot be.
    FUSED_RNN_FORCE_CUDA=1  fail unless the CUDA kernels can be built.
    TORCH_CUDA_ARCH_LIST    GPUs to compile CUDA kernels for; default "8.0;9.0+PTX" (A100, H100/H200, PTX for newer).
    MAX_JOBS                parallel compile jobs (read by torch's BuildExtension); default 2, the CI machine's cores.
    CUDA_HOME               the CUDA toolkit; default /usr/local/cuda when it has nvcc. The CUDA kernels are built when
                            torch has CUDA and nvcc is found (no GPU needed), else the CPU kernels only.

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


def _extensions():
    if os.environ.get("FUSED_RNN_SKIP_BUILD") == "1":
        return [], {}
    native = _native_build_settings()
    # Before torch.utils.cpp_extension is imported: it reads $CUDA_HOME once, on import.
    why_no_cuda = native.cuda_unbuildable()
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    if os.environ.get("FUSED_RNN_FORCE_CUDA") == "1" and why_no_cuda is not None:
        raise RuntimeError(f"FUSED_RNN_FORCE_CUDA=1, but the CUDA kernels cannot be built: {why_no_cuda}")
    os.environ.setdefault("MAX_JOBS", "2")
    sources = [f"csrc/{source}" for source in native.SOURCES]
    if why_no_cuda is not None:
        print(f"fused_rnn: building the CPU kernels only: {why_no_cuda}")
        extension = CppExtension(
            "fused_rnn._C",
            sources=sources,
            extra_compile_args={"cxx": native.cxx_flags(with_cuda=False)},
            extra_link_args=native.link_flags(),
        )
    else:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", native.DEFAULT_CUDA_ARCHS)
        print(f"fused_rnn: building the CPU and CUDA kernels for {os.environ['TORCH_CUDA_ARCH_LIST']}")
        extension = CUDAExtension(
            "fused_rnn._C",
            sources=sources + [f"csrc/{source}" for source in native.CUDA_SOURCES],
            extra_compile_args={"cxx": native.cxx_flags(with_cuda=True), "nvcc": native.nvcc_flags()},
            extra_link_args=native.link_flags(),
        )
    return [extension], {"build_ext": BuildExtension}


extensions, commands = _extensions()
setup(ext_modules=extensions, cmdclass=commands)
