"""The persistent kernels compile with nvcc for sm_80 and sm_90, without a GPU, within the capacity model's budget.

ptxas -v reports, per kernel and architecture, registers, spills, stack frame and static shared memory. The capacity
model (fused_rnn/backends/persistent.py) assumes at most MAX_REGISTERS_PER_THREAD registers, no local memory and
no static shared memory (all of it is the dynamic layout it computes); a kernel that needs more would fail to
launch, or spill to local memory on every step. (cuobjdump lists 1 KiB of shared memory for every sm_90 kernel
that uses any: the block's system-reserved share, which the opt-in limit of 227 KiB already leaves out.) One nvcc
run compiles forward and backward x 2 cells x 3 dtypes x 2 architectures.
"""

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fused_rnn.backends import persistent

SOURCES = [Path(__file__).resolve().parents[1] / "csrc" / "persistent" / name for name in ("forward.cu", "backward.cu")]
ARCHITECTURES = {80: persistent.A100, 90: persistent.H100_SXM}  # the device of each compiled architecture
CELL_OF = {"Lstm": "lstm", "Gru": "gru"}
DTYPE_OF = {"f": torch.float32, "6__half": torch.float16, "13__nv_bfloat16": torch.bfloat16}
KERNEL = re.compile(r"(forward|backward)_kernelINS\d+_(?:\d+)?(Lstm|Gru)E(f|6__half|13__nv_bfloat16)E")
PLAN = {"forward": persistent.plan, "backward": persistent.plan_backward}


def find_nvcc() -> str | None:
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    for home in candidates:
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def ptxas_report(text: str) -> dict[tuple[str, str, torch.dtype, int], dict[str, int]]:
    """(direction, cell, dtype, sm) -> registers, spill_stores, spill_loads, stack_frame, static_smem, from
    `nvcc -Xptxas -v`."""
    report, key = {}, None
    for line in text.splitlines():
        if entry := re.search(r"Compiling entry function '(\S+)' for 'sm_(\d+)", line):
            kernel = KERNEL.search(entry[1])
            assert kernel, f"unexpected kernel {entry[1]}"
            key = (kernel[1], CELL_OF[kernel[2]], DTYPE_OF[kernel[3]], int(entry[2]))
            report[key] = {"static_smem": 0}
        elif frame := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            report[key].update(stack_frame=int(frame[1]), spill_stores=int(frame[2]), spill_loads=int(frame[3]))
        elif used := re.search(r"Used (\d+) registers", line):
            report[key]["registers"] = int(used[1])
            if smem := re.search(r"(\d+) bytes smem", line):
                report[key]["static_smem"] = int(smem[1])
    return report


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME or install the CUDA toolkit): persistent kernels not compiled")
    gencode = [f"-gencode=arch=compute_{sm},code=sm_{sm}" for sm in ARCHITECTURES]
    done = subprocess.run(
        [nvcc, "-std=c++17", "-O3", "-c", *map(str, SOURCES), *gencode, "-Xptxas", "-v"],
        cwd=tmp_path_factory.mktemp("persistent_compile"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return ptxas_report(done.stdout + done.stderr)


def test_every_cell_dtype_and_architecture_is_compiled(resources):
    assert set(resources) == set(itertools.product(PLAN, CELL_OF.values(), DTYPE_OF.values(), ARCHITECTURES))


def test_no_spills_no_local_memory_and_registers_within_the_cap(resources):
    for key, usage in resources.items():
        assert usage["spill_stores"] == 0 and usage["spill_loads"] == 0, f"{key} spills: {usage}"
        assert usage["stack_frame"] == 0, f"{key} uses local memory: {usage}"
        assert usage["registers"] <= persistent.MAX_REGISTERS_PER_THREAD, f"{key}: {usage}"
        assert usage["registers"] * persistent.THREADS <= ARCHITECTURES[key[3]].registers_per_multiprocessor


@pytest.mark.parametrize("hidden", [1, 33, 512, 1024])
@pytest.mark.parametrize("batch", [1, 13, 64])
def test_shared_memory_is_the_models(resources, hidden, batch):
    """Static shared memory is what the model leaves out (none), so static + the model's dynamic bytes is the CTA's
    total, within what a block may opt into wherever the model says the configuration fits."""
    for (direction, cell, dtype, sm), usage in resources.items():
        device = ARCHITECTURES[sm]
        model = PLAN[direction](cell, hidden, batch, dtype, device)
        assert usage["static_smem"] == 0, f"{direction} {cell} {dtype} sm_{sm}: {usage}"
        if model.fits:
            assert usage["static_smem"] + model.smem_bytes <= device.shared_memory_per_block_optin
