"""Every Triton kernel specialization the fused sequence driver launches compiles for sm_80 and sm_90, unspilled.

No GPU is needed: the kernels are compiled ahead of time with `triton.compile(ASTSource(...), target=GPUTarget(...))`
and Triton's bundled `ptxas -v` reports each one's registers and spills. The interpreter, which the other CPU
tests run the kernels in, hides compile errors and register pressure; this test sees both.

The specializations are recorded, not listed by hand: the driver (fused_rnn/backends/triton/sequence.py) runs on
meta tensors with each kernel replaced by a recorder, so every argument dtype, None pointer, flag, tile (as
`_tiles` picks it) and alignment is what a real launch passes, and the test follows the code when it changes.
Each distinct specialization is compiled once per architecture, in parallel, through Triton's on-disk cache
(TRITON_CACHE_DIR, default ~/.triton/cache): minutes cold on 2 cores, seconds warm.

    python tests/test_triton_compile.py          # prints the table of registers and spills

The compile runs in a subprocess because tests/conftest.py sets TRITON_INTERPRET=1 on machines without a GPU
before any kernel is defined, and interpreted kernels cannot be compiled.
"""

import argparse
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fused_rnn.cells import CELLS

REPOSITORY = Path(__file__).resolve().parents[1]
ARCHITECTURES = (80, 90)
DTYPES = ("fp32", "bf16", "fp16", "fp64")
# Every flag combination the driver can produce comes from these layer variants: with and without biases, with
# and without the LSTM's projection (the other cells have none), saving for the backward (training) or not.
LAYER_VARIANTS = [
    {"bias": bias, "projection": projection, "training": training}
    for bias, projection, training in itertools.product((True, False), repeat=3)
]
# Zoneout's kernels (ZONEOUT, the keep weights read per step): the LSTM and GRU, and the projected LSTM, whose
# kernels zone c only (ZONEOUT_H off). Its bias-free variants are left out: HAS_BIAS only drops a load, and each
# variant adds about 30 compiles to a test that takes minutes cold.
ZONEOUT_CELLS = ("lstm", "gru")
ZONEOUT_VARIANTS = [
    {"bias": bias, "projection": projection, "training": training, "zoneout": True}
    for bias, projection, training in itertools.product((True, False), repeat=3)
    if bias or not projection
]
# (batch, hidden) of BENCHMARKS.md's standard configurations. Every cell, dtype and layer variant is compiled at
# these: they give the one-row tile (B=1, where Triton also makes the batch a constant) and the largest tile.
STANDARD_SHAPES = [(64, 512), (1, 512), (16, 768), (64, 1024), (256, 1024), (32, 2048)]
# The other tiles: what `_tiles` picks for batch and hidden sizes that are powers of two from 1 to 4096, and two
# unaligned shapes, for the training variant in fp32 and fp64 (one storage dtype per accumulator dtype: bf16 and
# fp16 load narrower values into the same fp32 math). Per BLOCK_H only the largest tile is compiled: registers
# grow with a tile's area, and tiles of every area up to the largest come from the standard shapes already.
SWEEP_SIZES = [2**k for k in range(13)]
SWEEP_UNALIGNED = [(3, 100), (5, 7)]
SWEEP_DTYPES = ("fp32", "fp64")
STEPS = 2  # a second step reads row slices at an offset, whose alignment can differ from the first's
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Specialization:
    """One variant of a kernel as Triton's JIT compiles it: everything `triton.compile` needs but the target."""

    cell: str
    direction: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    aligned: tuple[int, ...]
    """Indices of the arguments specialized as divisible by 16 (pointers and integers)."""
    options: tuple[tuple[str, int], ...]

    @property
    def dtype(self) -> str:
        signature = dict(self.signature)
        # The storage dtype: the plain cells' and IndRNN's gate inputs, the LayerNorm kernels' h W_hh^T (their
        # normalized input part is fp32 whatever the storage).
        storage = ("p_xg", "p_dgx", "p_dpre", "p_hg", "p_dhg")
        gates = next(name for name in storage if signature.get(name, "constexpr") != "constexpr")
        return signature[gates].lstrip("*")

    @property
    def tile(self) -> tuple[int, int]:
        constants = dict(self.constexprs)
        return constants["BLOCK_B"], constants["BLOCK_H"]

    def label(self) -> str:
        """E.g. "lstm fwd fp32 16x128 bs=16n H=16n HAS_BIAS SAVE p_h=None": bs and H are 1, a multiple of 16
        ("16n") or neither ("any"); then the flags that are on and the pointers that are None."""
        constants = dict(self.constexprs)
        integers = [
            f"{name}={constants.get(name, '16n' if self.signature_index(name) in self.aligned else 'any')}"
            for name in ("bs", "B", "T", "H")
            if name in dict(self.signature)
        ]
        flags = [
            name if value is True else f"{name}={value}"
            for name, value in self.constexprs
            if name not in ("BLOCK_B", "BLOCK_H", "ACC", "bs", "B", "T", "H") and value is not False
        ]
        warps = "".join(f" {name}={value}" for name, value in self.options)
        batch, hidden = self.tile
        return f"{self.cell} {self.direction} {self.dtype} {batch}x{hidden}{warps} {' '.join(integers + flags)}"

    def signature_index(self, name: str) -> int:
        return [argument for argument, _ in self.signature].index(name)


def record_specializations() -> list[Specialization]:
    """The distinct kernel launches the driver makes over the shapes above (standard ones, then the sweep's)."""
    standard = _record(
        (cell, dtype, batch, hidden, variant)
        for cell, dtype, (batch, hidden), variant in itertools.product(
            CELLS, DTYPES, STANDARD_SHAPES, LAYER_VARIANTS + ZONEOUT_VARIANTS
        )
        if (not variant["projection"] or CELLS[cell].has_cell_state)
        and (not variant.get("zoneout") or cell in ZONEOUT_CELLS)
    )
    training = {"bias": True, "projection": False, "training": True}
    sweep_shapes = list(itertools.product(SWEEP_SIZES, SWEEP_SIZES)) + SWEEP_UNALIGNED
    sweep = _record(
        (cell, dtype, batch, hidden, {**training, "zoneout": zoneout})
        for cell, dtype, (batch, hidden), zoneout in itertools.product(CELLS, SWEEP_DTYPES, sweep_shapes, (False, True))
        if not zoneout or cell in ZONEOUT_CELLS
    )
    largest_block_b: dict[tuple, int] = {}
    for s in sweep:
        group = (s.cell, s.direction, s.dtype, s.tile[1])
        largest_block_b[group] = max(largest_block_b.get(group, 0), s.tile[0])
    largest = [s for s in sweep if s.tile[0] == largest_block_b[(s.cell, s.direction, s.dtype, s.tile[1])]]
    return list(dict.fromkeys(standard + largest + _record_indrnn() + _record_layernorm() + _record_multihead()))


def _record_indrnn() -> list[Specialization]:
    """IndRNN's whole-sequence kernels (fused_rnn/backends/triton/indrnn.py), forward and backward, for every dtype,
    activation, direction and layout (padded, packed) at the standard shapes and the sweep's sizes."""
    import torch

    from fused_rnn.backends.triton import indrnn

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    recorded: list[Specialization] = []

    def recorder(direction, kernel):
        class Recorder:
            def __getitem__(self, grid):
                return lambda **arguments: recorded.append(_specialize("indrnn", direction, kernel, arguments))

        return Recorder()

    kernels = indrnn.indrnn_fwd_kernel, indrnn.indrnn_bwd_kernel
    indrnn.indrnn_fwd_kernel, indrnn.indrnn_bwd_kernel = recorder("fwd", kernels[0]), recorder("bwd", kernels[1])
    shapes = STANDARD_SHAPES + [(batch, batch) for batch in SWEEP_SIZES] + SWEEP_UNALIGNED
    try:
        for dtype, (batch, hidden), reverse, relu, packed in itertools.product(
            DTYPES, shapes, (False, True), (False, True), (False, True)
        ):
            meta = {"device": "meta", "dtype": dtypes[dtype]}
            batch_sizes = [batch, max(1, batch // 2)] if packed else None
            rows = sum(batch_sizes) if packed else STEPS * batch
            h0, u = torch.empty(batch, hidden, **meta), torch.empty(hidden, **meta)
            output, _ = indrnn.recurrence_forward(torch.empty(rows, hidden, **meta), u, h0, batch_sizes, reverse, relu)
            indrnn.recurrence_backward(output, torch.empty_like(h0), output, h0, u, batch_sizes, reverse, relu)
    finally:
        indrnn.indrnn_fwd_kernel, indrnn.indrnn_bwd_kernel = kernels
    return list(dict.fromkeys(recorded))


LAYERNORM_CELLS = ("layernorm_lstm", "layernorm_gru")


def _record_layernorm() -> list[Specialization]:
    """The LayerNorm LSTM/GRU step kernels (fused_rnn/backends/triton/layernorm.py), forward and backward, for every
    cell, dtype, bias and training flag at the standard shapes and the sweep's sizes."""
    import torch

    from fused_rnn.backends.triton import layernorm

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    recorded: list[Specialization] = []

    def recorder(cell, direction, kernel):
        class Recorder:
            def __getitem__(self, grid):
                return lambda **arguments: recorded.append(_specialize(cell, direction, kernel, arguments))

        return Recorder()

    names = ("lstm_fwd_kernel", "lstm_bwd_kernel", "gru_fwd_kernel", "gru_bwd_kernel")
    kernels = {name: getattr(layernorm, name) for name in names}
    for name, kernel in kernels.items():
        cell, direction, _ = name.split("_")
        setattr(layernorm, name, recorder(f"layernorm_{cell}", direction, kernel))
    # As for the plain cells: every variant at the standard shapes; from the sweep (training, fp32 and fp64), per
    # BLOCK_H only the largest tile.
    standard = itertools.product(DTYPES, STANDARD_SHAPES, ("lstm", "gru"), (True, False), (True, False))
    sweep_shapes = list(itertools.product(SWEEP_SIZES, SWEEP_SIZES)) + SWEEP_UNALIGNED
    sweep = itertools.product(SWEEP_DTYPES, sweep_shapes, ("lstm", "gru"), (True,), (True,))
    try:
        for dtype, (batch, hidden), cell, bias, training in standard:
            _run_layernorm_driver(cell, dtypes[dtype], batch, hidden, bias, training)
        from_standard = len(recorded)
        for dtype, (batch, hidden), cell, bias, training in sweep:
            _run_layernorm_driver(cell, dtypes[dtype], batch, hidden, bias, training)
    finally:
        for name, kernel in kernels.items():
            setattr(layernorm, name, kernel)
    largest_block_b: dict[tuple, int] = {}
    for s in recorded[from_standard:]:
        group = (s.cell, s.direction, s.dtype, s.tile[1])
        largest_block_b[group] = max(largest_block_b.get(group, 0), s.tile[0])
    largest = [
        s for s in recorded[from_standard:] if s.tile[0] == largest_block_b[(s.cell, s.direction, s.dtype, s.tile[1])]
    ]
    return list(dict.fromkeys(recorded[:from_standard] + largest))


def _run_layernorm_driver(cell, dtype, batch, hidden, bias, training):
    """One forward (and, when training, one backward) of a LayerNorm layer with input size = hidden, on meta
    tensors, through the driver that launches the Triton kernels."""
    import torch

    meta = {"device": "meta", "dtype": dtype}
    lstm, width = cell == "lstm", (4 if cell == "lstm" else 3) * hidden
    vector = lambda size: torch.empty(size, **meta)
    input, h0 = torch.empty(STEPS * batch, hidden, **meta), torch.empty(batch, hidden, **meta)
    c0 = torch.empty(batch, hidden, **meta) if lstm else None
    weights = [torch.empty(width, hidden, **meta), torch.empty(width, hidden, **meta)]
    biases = [vector(width) if bias else None, vector(width) if bias and not lstm else None]
    gains = [vector(width), vector(width)]
    cell_norm = [vector(hidden), vector(hidden)] if lstm else [None, None]
    from fused_rnn.layernorm import sequence

    output, h_n, c_n, *saved = sequence.sequence_forward(
        cell, input, h0, c0, *weights, *biases, *gains, *cell_norm, None, False, training, "triton"
    )
    if training:
        needs_grad = [True, True, lstm, True, True, bias, bias and not lstm, True, True, lstm, lstm]
        sequence.sequence_backward(
            cell,
            torch.empty_like(output),
            torch.empty_like(h_n),
            torch.empty_like(c_n) if lstm else None,
            input,
            h0,
            *weights,
            *gains,
            *cell_norm,
            output,
            saved,
            None,
            False,
            needs_grad,
            "triton",
        )


# The multi-head cells' step kernels (fused_rnn/backends/triton/multihead.py), named as in the table.
MULTIHEAD_CELLS = {"slstm": "slstm", "headed_lstm": "lstm", "headed_gru": "gru"}


def _record_multihead() -> list[Specialization]:
    """The multi-head driver's step kernels (fused_rnn/multihead/sequence.py), forward and backward, for every dtype
    and flag (bias, saving for the backward, the sLSTM's forget gate) at two standard shapes, with one and eight
    heads, and an unaligned one (head_dim 25); and the tallest tile of every BLOCK_H in fp32 and fp64."""
    import torch

    from fused_rnn.backends.triton import multihead
    from fused_rnn.multihead import sequence
    from fused_rnn.multihead.reference import GATES, STATES

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    recorded: list[Specialization] = []

    def recorder(name, direction, kernel):
        class Recorder:
            def __getitem__(self, grid):
                return lambda **arguments: recorded.append(_specialize(name, direction, kernel, arguments))

        return Recorder()

    kernels = {}
    for name, cell in MULTIHEAD_CELLS.items():
        for direction in ("fwd", "bwd"):
            attribute = f"{cell}_{direction}_kernel"
            kernels[attribute] = getattr(multihead, attribute)
            setattr(multihead, attribute, recorder(name, direction, kernels[attribute]))

    def run(cell, dtype, batch, hidden, heads, bias, training, exp_forget):
        meta = {"device": "meta", "dtype": dtypes[dtype]}
        gates, head_dim = GATES[cell], hidden // heads
        input = torch.empty(STEPS * batch, hidden, **meta)
        state = tuple(torch.empty(batch, hidden, **meta) for _ in STATES[cell])
        weight_ih = torch.empty(gates * hidden, hidden, **meta)
        weight_hh = torch.empty(heads, gates * head_dim, head_dim, **meta)
        bias_ih = torch.empty(gates * hidden, **meta) if bias else None
        bias_hh = bias_ih if bias and cell != "slstm" else None
        output, final, saved = sequence.sequence_forward(
            cell, input, state, weight_ih, weight_hh, bias_ih, bias_hh, None, False, training, exp_forget, "triton"
        )
        if training:
            needs_grad = [True] * (1 + len(state)) + [True, True, bias, bias and cell != "slstm"]
            sequence.sequence_backward(
                cell,
                torch.empty_like(output),
                final,
                input,
                state,
                weight_ih,
                weight_hh,
                output,
                saved,
                None,
                False,
                exp_forget,
                needs_grad,
                "triton",
            )

    # (batch, hidden, heads): every dtype at one standard shape; fp32 and fp64 (one storage dtype per accumulator
    # dtype, as the sweep) also at B=1 with eight heads and unaligned.
    shapes = [(dtype, (64, 1024, 1)) for dtype in DTYPES]
    shapes += [(dtype, shape) for dtype in SWEEP_DTYPES for shape in [(1, 512, 8), (3, 100, 4)]]
    try:
        for name, (dtype, (batch, hidden, heads)), bias, training, exp_forget in itertools.product(
            MULTIHEAD_CELLS, shapes, (True, False), (True, False), (False, True)
        ):
            cell = MULTIHEAD_CELLS[name]
            if exp_forget and cell != "slstm":
                continue
            run(cell, dtype, batch, hidden, heads, bias, training, exp_forget)
        for name, dtype, hidden in itertools.product(MULTIHEAD_CELLS, SWEEP_DTYPES, [2**k for k in range(8)]):
            run(MULTIHEAD_CELLS[name], dtype, 4096, hidden, 1, True, True, False)
    finally:
        for attribute, kernel in kernels.items():
            setattr(multihead, attribute, kernel)
    return list(dict.fromkeys(recorded))


def kernel_of(specialization: Specialization):
    """The @triton.jit function a specialization was recorded from."""
    if specialization.cell in LAYERNORM_CELLS:
        from fused_rnn.backends.triton import layernorm

        return getattr(layernorm, f"{specialization.cell.removeprefix('layernorm_')}_{specialization.direction}_kernel")
    if specialization.cell == "indrnn":
        from fused_rnn.backends.triton import indrnn

        return indrnn.indrnn_fwd_kernel if specialization.direction == "fwd" else indrnn.indrnn_bwd_kernel
    if specialization.cell in MULTIHEAD_CELLS:
        from fused_rnn.backends.triton import multihead

        return getattr(multihead, f"{MULTIHEAD_CELLS[specialization.cell]}_{specialization.direction}_kernel")
    from fused_rnn.backends.triton.launch import KERNELS

    forward, backward, _ = KERNELS[specialization.cell]
    return forward if specialization.direction == "fwd" else backward


def _record(cases) -> list[Specialization]:
    """Run the driver for each (cell, dtype, batch, hidden, layer variant) with the kernels replaced by recorders."""
    import torch

    from fused_rnn.backends.triton import launch, sequence

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    recorded: list[Specialization] = []

    def recorder(cell, direction, kernel):
        class Recorder:
            def __getitem__(self, grid):
                return lambda **arguments: recorded.append(_specialize(cell, direction, kernel, arguments))

        return Recorder()

    kernels = launch.KERNELS
    launch.KERNELS = {
        cell: (recorder(cell, "fwd", forward), recorder(cell, "bwd", backward), constants)
        for cell, (forward, backward, constants) in kernels.items()
    }
    try:
        for cell, dtype, batch, hidden, variant in cases:
            _run_driver(sequence, CELLS[cell], dtypes[dtype], batch, hidden, **variant)
    finally:
        launch.KERNELS = kernels
    return list(dict.fromkeys(recorded))


def _run_driver(sequence, spec, dtype, batch, hidden, bias, projection, training, zoneout=False):
    """One forward (and, when training, one backward) of a layer with input size = hidden, on meta tensors; with
    zoneout's keep weights (as fused_rnn.functional.zoneout_keep makes them) when `zoneout`."""
    import torch

    meta = {"device": "meta", "dtype": dtype}
    keep_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    output_size = hidden // 2 if projection else hidden
    keep_width = output_size + hidden if spec.has_cell_state else hidden  # h's keep weights, then c's
    keep = torch.empty(STEPS * batch, keep_width, device="meta", dtype=keep_dtype) if zoneout else None
    input = torch.empty(STEPS * batch, hidden, **meta)
    h0 = torch.empty(batch, output_size, **meta)
    c0 = torch.empty(batch, hidden, **meta) if spec.has_cell_state else None
    weight_ih = torch.empty(spec.gates * hidden, hidden, **meta)
    weight_hh = torch.empty(spec.gates * hidden, output_size, **meta)
    biases = (torch.empty(spec.gates * hidden, **meta),) * 2 if bias else (None, None)
    weight_hr = torch.empty(output_size, hidden, **meta) if projection else None
    output, h_n, c_n, saved, projection_input = sequence.sequence_forward(
        spec.name, input, h0, c0, weight_ih, weight_hh, *biases, weight_hr, None, False, training, keep
    )
    if training:
        sequence.sequence_backward(
            spec.name,
            torch.empty_like(output),
            torch.empty_like(h_n),
            torch.empty_like(c_n) if spec.has_cell_state else None,
            input,
            h0,
            c0,
            weight_ih,
            weight_hh,
            weight_hr,
            output,
            saved,
            projection_input,
            None,
            False,
            (True, True, spec.has_cell_state, True, True, bias, bias, projection),
            keep,
        )


def _specialize(cell: str, direction: str, kernel, arguments: dict) -> Specialization:
    """The specialization Triton's JIT compiles for a launch with these keyword arguments.

    Triton's rules (3.6 to 3.8): None arguments and integers equal to 1 become constants; pointers whose address
    and integers whose value is divisible by 16 are marked so. A meta tensor has no address, so a pointer's
    alignment is its offset into its allocation, which torch aligns to far more than 16 bytes.
    """
    import torch

    pointer_types = {
        torch.float32: "fp32",
        torch.bfloat16: "bf16",
        torch.float16: "fp16",
        torch.float64: "fp64",
        torch.int32: "i32",
    }
    signature, constexprs, aligned = [], [], []
    for index, name in enumerate(kernel.arg_names):
        value = arguments[name]
        if kernel.params[index].is_constexpr or value is None or (type(value) is int and value == 1):
            signature.append((name, "constexpr"))
            constexprs.append((name, value))
        elif isinstance(value, torch.Tensor):
            signature.append((name, "*" + pointer_types[value.dtype]))
            if value.storage_offset() * value.element_size() % 16 == 0:
                aligned.append(index)
        else:
            signature.append((name, "i32"))
            if value % 16 == 0:
                aligned.append(index)
    options = tuple(sorted((name, arguments[name]) for name in ("num_warps", "num_stages") if name in arguments))
    return Specialization(cell, direction, tuple(signature), tuple(constexprs), tuple(aligned), options)


def compile_and_measure(job: tuple[Specialization, int]) -> dict:
    """Compile one specialization for sm_<arch>: its registers and spills, or the compile error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    specialization, arch = job
    source = ASTSource(
        kernel_of(specialization),
        dict(specialization.signature),
        dict(specialization.constexprs),
        {(index,): [["tt.divisibility", 16]] for index in specialization.aligned},
    )
    row = {"kernel": specialization.label(), "arch": arch}
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(specialization.options))
        row.update(ptxas_usage(compiled.asm["ptx"]))
    except Exception as error:
        row["error"] = f"{type(error).__name__}: {error}"
    return row


def ptxas_usage(ptx: str) -> dict:
    """Registers, spill bytes and stack frame of a PTX kernel, from Triton's bundled `ptxas -v`.

    The ptxas report is cached beside Triton's own cache, keyed by the PTX, so a warm rerun runs no ptxas.
    """
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    cache = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache")) / "fused_rnn_ptxas"
    log_path = cache / f"{hashlib.sha256(f'{ptxas}{ptx}'.encode()).hexdigest()}.log"
    if log_path.exists():
        log = log_path.read_text()
    else:
        gpu_name = re.search(r"^\.target\s+(\w+)", ptx, flags=re.M).group(1)
        cache.mkdir(parents=True, exist_ok=True)
        ptx_path = log_path.with_suffix(f".{os.getpid()}.ptx")
        ptx_path.write_text(ptx)
        try:
            done = subprocess.run(
                [str(ptxas), "-v", f"--gpu-name={gpu_name}", str(ptx_path), "-o", os.devnull],
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            ptx_path.unlink()
        log = done.stderr
        log_path.write_text(log)
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    if not (registers and spills and stack):
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return {
        "registers": int(registers.group(1)),
        "spill_stores": int(spills.group(1)),
        "spill_loads": int(spills.group(2)),
        "stack_frame": int(stack.group(1)),
    }


def compile_all() -> list[dict]:
    """One row per (specialization, architecture), compiled on every CPU core."""
    jobs = [(s, arch) for s in record_specializations() for arch in ARCHITECTURES]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(compile_and_measure, jobs, chunksize=4))


def format_table(rows: list[dict]) -> str:
    """One line per specialization: registers/spill-store bytes per architecture, or the error."""
    by_kernel: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_kernel.setdefault(row["kernel"], {})[row["arch"]] = row
    width = max(len(kernel) for kernel in by_kernel)
    lines = [f"{'kernel':{width}}  " + "  ".join(f"sm_{arch} regs/spill" for arch in ARCHITECTURES)]
    for kernel, per_arch in by_kernel.items():
        cells = []
        for arch in ARCHITECTURES:
            row = per_arch[arch]
            text = "ERROR" if "error" in row else f"{row['registers']}/{row['spill_stores']}"
            cells.append(f"{text:>16}")
        lines.append(f"{kernel:{width}}  " + "  ".join(cells))
    return "\n".join(lines)


# The one known exception, to be fixed with a GPU at hand: ptxas puts a few bytes of the float64 IndRNN backward
# (a whole-sequence loop; float64 is the gradcheck dtype) on the stack in a handful of its 160 variants, at 40-90
# registers, whatever the warps (1, 2, 4, 8), stages or tile (measured 2026-11-30). Only that kernel in float64 and
# only up to this many bytes is reported rather than failed.
KNOWN_SPILL = ("indrnn bwd fp64 ", 24)


def failures(rows: list[dict]) -> list[str]:
    """A line for each compile error and each kernel that spills (but the known exception above)."""
    found = []
    for row in rows:
        where = f"{row['kernel']} sm_{row['arch']}"
        if "error" in row:
            found.append(f"{where}: {row['error']}")
        elif row["spill_stores"] or row["spill_loads"]:
            prefix, bytes_allowed = KNOWN_SPILL
            if row["kernel"].startswith(prefix) and max(row["spill_stores"], row["spill_loads"]) <= bytes_allowed:
                continue
            found.append(f"{where}: spills {row['spill_stores']} bytes (stores), {row['spill_loads']} (loads)")
    return found


def test_every_kernel_specialization_compiles_without_spilling():
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--json"],
        env=environment,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    print(format_table(rows))
    print(f"{len(rows)} compiles in {time.perf_counter() - start:.0f} s")
    compiled = {(*row["kernel"].split()[:3], row["arch"]) for row in rows}
    expected = itertools.product(
        [*CELLS, "indrnn", *LAYERNORM_CELLS, *MULTIHEAD_CELLS], ("fwd", "bwd"), DTYPES, ARCHITECTURES
    )
    assert compiled == set(expected), "a cell, direction, dtype or architecture was never compiled"
    problems = failures(rows)
    assert not problems, "\n".join(problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    rows = compile_all()
    if args.json:
        print(json.dumps(rows))
        return
    print(format_table(rows))
    problems = failures(rows)
    print("\n".join(problems) or f"{len(rows)} compiles, no errors, no spills")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
