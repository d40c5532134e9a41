"""csrc/persistent/partition.h, compiled with g++, against the capacity model in fused_rnn/backends/persistent.py.

The launcher sizes the persistent kernel's launch from the header and "persistent" is chosen from the Python model,
so the two must agree on every partition: CTA count, units per CTA, every shared-memory region, the verdict. The
header's index math (units of each CTA, W_hh rows, saved-activation layout, the walk over packed steps) is checked
against what the rest of fused_rnn assumes (fused_rnn.packing, fused_rnn.cells).
"""

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fused_rnn.backends import persistent
from fused_rnn.cells import CELLS
from fused_rnn.packing import time_steps

HEADER_DIR = Path(__file__).resolve().parents[1] / "csrc" / "persistent"

# Reads one query per line, answers each on one line. Queries:
#   plan GATES HAS_CELL HIDDEN BATCH ELEMENT_BYTES SMS SMEM_OPTIN REGISTERS THREADS
#   backward GATES HAS_CELL HIDDEN BATCH ELEMENT_BYTES SMS SMEM_OPTIN REGISTERS THREADS  (HAS_CELL unused)
#   units HIDDEN UNITS_PER_CTA CTAS               -> "first count" of each CTA
#   rows UNITS_PER_CTA GATES HIDDEN CTA           -> the W_hh row of each local row of the CTA
#   saved ROW SLOT UNIT HIDDEN WIDTH              -> element index
#   walk STEPS BATCH REVERSE PACKED [OFFSET ACTIVE]... -> "offset active buffer" of each position of the walk
#   backward_walk STEPS REVERSE                   -> the step at each position of the backward's walk
#   constants            -> kThreads kMaxRegistersPerThread kBatchTile kBackwardBatchTile kAlignment
PROBE = r"""
#include <iostream>
#include <string>
#include <vector>
#include "partition.h"
using namespace fused_rnn::persistent;

int main() {
    std::string query;
    while (std::cin >> query) {
        if (query == "plan" || query == "backward") {
            int gates, has_cell, hidden, batch, element_bytes;
            DeviceLimits d;
            std::cin >> gates >> has_cell >> hidden >> batch >> element_bytes >> d.multiprocessors
                >> d.shared_memory_per_block_optin >> d.registers_per_multiprocessor >> d.max_threads_per_block;
            if (query == "plan") {
                Partition p = plan(gates, has_cell != 0, hidden, batch, element_bytes, d);
                std::cout << static_cast<int>(p.verdict) << ' ' << p.ctas << ' ' << p.units_per_cta << ' '
                          << p.smem.weight_bytes << ' ' << p.smem.h_tile_bytes << ' ' << p.smem.preact_bytes << ' '
                          << p.smem.cell_bytes << ' ' << p.smem.total_bytes << '\n';
            } else {
                BackwardPartition p = plan_backward(gates, hidden, batch, element_bytes, d);
                std::cout << static_cast<int>(p.verdict) << ' ' << p.ctas << ' ' << p.units_per_cta << ' '
                          << p.smem.weight_bytes << ' ' << p.smem.grad_tile_bytes << ' ' << p.smem.dh_bytes << ' '
                          << p.smem.dc_bytes << ' ' << p.smem.total_bytes << '\n';
            }
        } else if (query == "backward_walk") {
            int steps, reverse;
            std::cin >> steps >> reverse;
            for (int s = 0; s < steps; ++s) std::cout << backward_step_at(s, steps, reverse != 0) << ' ';
            std::cout << '\n';
        } else if (query == "units") {
            int hidden, units_per_cta, ctas;
            std::cin >> hidden >> units_per_cta >> ctas;
            for (int cta = 0; cta < ctas; ++cta)
                std::cout << first_unit(cta, units_per_cta) << ' ' << units_of_cta(cta, units_per_cta, hidden) << ' ';
            std::cout << '\n';
        } else if (query == "rows") {
            int units_per_cta, gates, hidden, cta;
            std::cin >> units_per_cta >> gates >> hidden >> cta;
            for (int r = 0; r < gates * units_per_cta; ++r)
                std::cout << gate_column(local_gate(r, units_per_cta),
                                         first_unit(cta, units_per_cta) + local_unit(r, units_per_cta), hidden) << ' ';
            std::cout << '\n';
        } else if (query == "saved") {
            long row;
            int slot, unit, hidden, width;
            std::cin >> row >> slot >> unit >> hidden >> width;
            std::cout << saved_index(row, slot, unit, hidden, width) << '\n';
        } else if (query == "walk") {
            int steps, batch, reverse, packed;
            std::cin >> steps >> batch >> reverse >> packed;
            std::vector<int> step_rows(2 * steps);
            if (packed) for (int& v : step_rows) std::cin >> v;
            for (int s = 0; s < steps; ++s) {
                StepRows r = step_rows_of(packed ? step_rows.data() : nullptr, step_at(s, steps, reverse != 0), batch);
                std::cout << r.offset << ' ' << r.active << ' ' << read_buffer(s) << ' ';
            }
            std::cout << '\n';
        } else if (query == "constants") {
            std::cout << kThreads << ' ' << kMaxRegistersPerThread << ' ' << kBatchTile << ' ' << kBackwardBatchTile
                      << ' ' << kAlignment << '\n';
        }
    }
}
"""

VERDICT_WORDS = {1: "threads", 2: "registers", 3: "shared memory"}  # partition.h's Verdict -> the model's reason


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    directory = tmp_path_factory.mktemp("partition_probe")
    (directory / "probe.cpp").write_text(PROBE)
    binary = directory / "probe"
    subprocess.run(
        [compiler, "-std=c++17", "-O1", f"-I{HEADER_DIR}", str(directory / "probe.cpp"), "-o", str(binary)],
        check=True,
        capture_output=True,
        timeout=120,
    )

    def ask(queries: list[str]) -> list[list[int]]:
        done = subprocess.run([binary], input="\n".join(queries), capture_output=True, text=True, check=True)
        return [[int(v) for v in line.split()] for line in done.stdout.splitlines()]

    return ask


DEVICES = [
    persistent.H100_SXM,
    persistent.A100,
    persistent.DeviceLimits(1, 48 * 1024, 65536, 1024),
    persistent.DeviceLimits(16, 99 * 1024, 65536, 1024),
    persistent.DeviceLimits(80, 99 * 1024, 65536, 1024),
    persistent.DeviceLimits(144, 227 * 1024, 65536, 1024),
    persistent.DeviceLimits(132, 227 * 1024, 16384, 1024),  # too few registers for 256 x 128
    persistent.DeviceLimits(132, 227 * 1024, 65536, 128),  # too few threads per block
]
HIDDEN = [1, 7, 33, 100, 128, 131, 132, 133, 255, 256, 500, 511, 512, 768, 1000, 1024, 1500, 2048, 4096]
BATCH = [1, 3, 8, 9, 17, 64, 100, 1024, 8192]


def model_sizes(direction: str, model) -> list[int]:
    """The model's partition in the probe's order: CTAs, units per CTA, each shared-memory region, the total."""
    if direction == "plan":
        regions = [model.weight_bytes, model.h_tile_bytes, model.preact_bytes, model.cell_bytes]
    else:
        regions = [model.weight_bytes, model.grad_tile_bytes, model.dh_bytes, model.dc_bytes]
    return [model.ctas, model.units_per_cta, *regions, model.smem_bytes]


@pytest.mark.parametrize("direction", ["plan", "backward"])
def test_header_and_model_agree_on_every_partition(probe, direction):
    configs = list(itertools.product(("lstm", "gru"), persistent.DTYPES, HIDDEN, BATCH, DEVICES))
    queries = [
        f"{direction} {CELLS[cell].gates} {int(CELLS[cell].has_cell_state)} {hidden} {batch} {dtype.itemsize} "
        f"{d.multiprocessors} {d.shared_memory_per_block_optin} {d.registers_per_multiprocessor} "
        f"{d.max_threads_per_block}"
        for cell, dtype, hidden, batch, d in configs
    ]
    answers = probe(queries)
    assert len(answers) == len(configs)
    model_plan = persistent.plan if direction == "plan" else persistent.plan_backward
    verdicts = set()
    for (cell, dtype, hidden, batch, device), answer in zip(configs, answers, strict=True):
        verdict, *sizes = answer
        model = model_plan(cell, hidden, batch, dtype, device)
        where = f"{direction} {cell} {dtype} H={hidden} B={batch} {device}"
        assert sizes == model_sizes(direction, model), where
        assert (verdict == 0) == model.fits, f"{where}: header verdict {verdict}, model {model.reason}"
        if verdict:
            assert VERDICT_WORDS[verdict] in model.reason, where
        verdicts.add(verdict)
    assert verdicts == {0, 1, 2, 3}, "the configurations should reach every verdict"


def test_constants_are_the_models(probe):
    (constants,) = probe(["constants"])
    assert constants == [
        persistent.THREADS,
        persistent.MAX_REGISTERS_PER_THREAD,
        persistent.BATCH_TILE,
        persistent.BACKWARD_BATCH_TILE,
        persistent.ALIGNMENT,
    ]


@pytest.mark.parametrize("hidden", [1, 33, 131, 512, 1000, 1024])
@pytest.mark.parametrize("multiprocessors", [7, 108, 132])
def test_ctas_cover_every_unit_once_with_no_empty_cta(probe, hidden, multiprocessors):
    device = persistent.DeviceLimits(multiprocessors, 227 * 1024, 65536, 1024)
    model = persistent.plan("lstm", hidden, 1, torch.float32, device)
    assert model.ctas <= multiprocessors
    (answer,) = probe([f"units {hidden} {model.units_per_cta} {model.ctas}"])
    covered = []
    for first, count in zip(answer[::2], answer[1::2], strict=True):
        assert 1 <= count <= model.units_per_cta
        covered += range(first, first + count)
    assert covered == list(range(hidden))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_local_weight_rows_are_the_ctas_units_gate_by_gate(probe, cell):
    gates, hidden, units = CELLS[cell].gates, 10, 3
    for cta in range(4):
        (rows,) = probe([f"rows {units} {gates} {hidden} {cta}"])
        expected = [gate * hidden + cta * units + j for gate in range(gates) for j in range(units)]
        assert rows == expected


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_saved_index_is_the_layout_of_the_other_backends(probe, cell):
    """saved is [rows, width * hidden]: slot k of unit j at column k * hidden + j, as the Triton kernels store it."""
    width, hidden, rows = CELLS[cell].saved_width, 5, 3
    saved = torch.arange(rows * width * hidden).view(rows, width * hidden)
    cases = [(row, slot, unit) for row in range(rows) for slot in range(width) for unit in range(hidden)]
    answers = probe([f"saved {row} {slot} {unit} {hidden} {width}" for row, slot, unit in cases])
    for (row, slot, unit), (index,) in zip(cases, answers, strict=True):
        assert index == saved[row, slot * hidden + unit]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("batch_sizes", [None, [4, 4, 3, 1], [2]], ids=["padded", "packed", "packed-T1"])
def test_walk_over_steps_is_fused_rnn_packings(probe, batch_sizes, reverse):
    batch = 4 if batch_sizes is None else batch_sizes[0]
    steps = 3 if batch_sizes is None else len(batch_sizes)
    expected = time_steps(batch_sizes, steps * batch if batch_sizes is None else sum(batch_sizes), batch, reverse)
    step_rows = "" if batch_sizes is None else " ".join(f"{o} {a}" for o, a in time_steps(batch_sizes, 0, 0, False))
    (walk,) = probe([f"walk {steps} {batch} {int(reverse)} {int(batch_sizes is not None)} {step_rows}"])
    triples = list(zip(walk[::3], walk[1::3], walk[2::3], strict=True))
    assert [(offset, active) for offset, active, _ in triples] == expected
    # The step at position s reads buffer s % 2 and writes the other: consecutive steps alternate.
    assert [buffer for *_, buffer in triples] == [s % 2 for s in range(steps)]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_backward_walk_is_the_forward_walk_reversed(probe, reverse):
    steps = 5
    (forward,) = probe([f"walk {steps} 1 {int(reverse)} 0"])
    (backward,) = probe([f"backward_walk {steps} {int(reverse)}"])
    assert backward == forward[::3][::-1]  # padded, batch 1: the forward's offsets are its step indices
