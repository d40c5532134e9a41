"""torch.compile(fullgraph=True) and torch.export of every layer, each case's first call in a fresh process.

    python -m benchmarks.compile_matrix                          # the CPU matrix (CI: tests/test_compile_matrix.py)
    python -m benchmarks.compile_matrix --device cuda --reduced  # the reduced matrix on a GPU (for gpu_check)
    python -m benchmarks.compile_matrix --list                   # the cases' ids, without running them
    python -m benchmarks.compile_matrix --only lstm- train-      # the cases whose id contains every text given

It prints a line per case and ends with a summary line; it exits 1 if a case failed.

A case builds a layer and compiles it (`torch.compile(layer, backend="aot_eager" | "inductor", fullgraph=True)`) or
exports its forward (`torch.export.export(layer, (input,), strict=False | True)`: "export" is non-strict, torch's
default, which runs the layer's Python on fake tensors; "export_strict" traces it with dynamo), and makes that the
layer's first call; only then does it run the same layer eagerly, and a float64 oracle. In training ("train") it
differentiates a fixed random weighting of the output and the final states with respect to the input (where it
requires grad) and every parameter; in inference ("infer") the layer is in eval mode and called under torch.no_grad().
The compiled call's output, final states and gradients must match the eager call's within RELATIVE_TOLERANCE, and the
oracle's: torch.nn's own layer in float64 for torch.nn's cells (`fused_rnn.to_torch`), the layer's step-by-step
"reference" backend in float64 for the others. Errors are normwise, ||got - expected|| / ||expected||. Zoneout draws
random masks in training, which torch.nn lacks and a float64 draw need not repeat: there the eager call (same seed,
same masks) is the comparison. An exported program is a forward: its cases compare outputs and final states.

Why fresh processes: what a process works out once and keeps (torch's CPU capability, whether the compiled kernels
load) was first worked out inside the traced region when a process's first call was compiled, which broke the graph
(issue 32); tests that ran after eager calls never saw it. Each batch of about PER_PROCESS cases runs in a new process,
and every layer comes first in one of them (batches()).

The dimensions: layer (torch.nn's LSTM, GRU, RNN tanh and relu; the variants: LSTM and GRU with zoneout 0.1, LayerNorm
LSTM and GRU, IndRNN, sLSTM and multi-head LSTM and GRU with 2 heads), num_layers (1, 2), directions (1, 2), backend
("auto", "cpu", "torch", "triton" through the interpreter), input with and without requires_grad, input form (padded;
packed with unsorted lengths, whose batch the graph knows from sorted_indices; packed with sorted lengths, whose batch
is data to it), mode (train, infer) and compiler (aot_eager, inductor, export, export_strict). Inductor compiles take
seconds, so not the cross product (8064 cases) but (cases()):
- torch.nn's cells under aot_eager: every combination of the dimensions that decide a call's path: cell (LSTM, GRU, RNN
  tanh; relu is tanh's path), backend, input grad, padded or packed, train or infer (torch.nn's op for all layers in
  one call, torch's decomposition and its oneDNN special case, the fused op per direction, the refusals), each cell and
  backend in all four stacks of layers and directions; and issue 32's LSTM failure (training, input without grad,
  torch.nn's op: "auto" and "torch") in all four stacks for every cell, and twice under inductor.
- the variants' first calls: every variant on every backend (training, input without grad, aot_eager).
- on top of each: a pairwise cover of all the dimensions, every pair of values of any two of them in some case (a
  greedy cover, computed by pairwise_cover; the tests check the property): inductor and either export meet every
  layer, backend, stack, input grad, form and mode.
Not in the matrix, because fused_rnn refuses them by name while tracing (tests/test_compile_matrix.py checks the words):
packed input on "torch" (torch's decomposition of its packed op splits the rows by the batch sizes, data in a graph)
and on step-by-step loops ("reference", and the LayerNorm layers' "torch"); and what eager calls refuse too (zoneout on
"torch" or "persistent"; "persistent" runs the LSTM and GRU).

--reduced, for a GPU: the two pairwise covers only, on CUDA's backends ("auto", "torch", "triton", "cuda",
"persistent").
"""

import argparse
import concurrent.futures
import copy
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

INPUT_SIZE, HIDDEN_SIZE, STEPS, BATCH = 4, 8, 3, 3
# Lengths of the packed batch: not sorted (pack_padded_sequence(enforce_sorted=False)) and sorted (enforce_sorted=True).
LENGTHS = {"packed": (2, 3, 1), "packed_sorted": (3, 2, 1)}
# float32 against float64 and compiled against eager in these tiny shapes: errors are ~1e-7.
RELATIVE_TOLERANCE = 1e-5
PER_PROCESS = 16

CORE_LAYERS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
# The cells whose calls take different paths (rnn_relu is rnn_tanh's path with another activation).
PATH_CELLS = ("lstm", "gru", "rnn_tanh")
VARIANT_LAYERS = (
    "lstm_zoneout",
    "gru_zoneout",
    "layernorm_lstm",
    "layernorm_gru",
    "indrnn",
    "slstm",
    "multihead_lstm",
    "multihead_gru",
)
CPU_BACKENDS = ("auto", "cpu", "torch", "triton")
CUDA_BACKENDS = ("auto", "torch", "triton", "cuda", "persistent")
FORMS = ("padded", "packed", "packed_sorted")
MODES = ("train", "infer")
COMPILERS = ("aot_eager", "inductor", "export", "export_strict")


@dataclass(frozen=True)
class Case:
    layer: str
    num_layers: int
    bidirectional: bool
    backend: str
    input_grad: bool
    form: str
    mode: str
    compiler: str

    @property
    def id(self) -> str:
        directions = "bi" if self.bidirectional else "uni"
        grad = "xgrad" if self.input_grad else "nograd"
        return "-".join(
            (self.layer, f"L{self.num_layers}", directions, self.backend, grad, self.form, self.mode, self.compiler)
        )

    @staticmethod
    def from_id(text: str) -> "Case":
        layer, layers, directions, backend, grad, form, mode, compiler = text.split("-")
        return Case(layer, int(layers[1:]), directions == "bi", backend, grad == "xgrad", form, mode, compiler)


def refused(layer: str, backend: str, form: str) -> bool:
    """Whether fused_rnn refuses such a call by name (while tracing, or always), so that it is not in the matrix."""
    if backend == "persistent":
        return layer not in ("lstm", "gru")
    if backend == "torch" and layer.endswith("zoneout"):
        return True
    return form != "padded" and backend == "torch" and (layer in CORE_LAYERS or layer.startswith("layernorm"))


def pairwise_cover(dimensions: dict[str, Sequence], keep=lambda values: True, seed_cases: Iterable[dict] = ()):
    """Assignments of the dimensions such that every pair of values of any two dimensions that some kept assignment
    holds appears in at least one of them: the greedy cover (each step takes the kept assignment of the full product
    that covers the most pairs not yet covered; ties by the product's order), after `seed_cases`."""
    names = list(dimensions)
    candidates = [dict(zip(names, values)) for values in itertools.product(*dimensions.values())]
    candidates = [c for c in candidates if keep(c)]

    def pairs(assignment):
        return {((a, assignment[a]), (b, assignment[b])) for a, b in itertools.combinations(names, 2)}

    uncovered = set().union(*(pairs(c) for c in candidates))
    chosen = []
    for assignment in seed_cases:
        chosen.append(assignment)
        uncovered -= pairs(assignment)
    while uncovered:
        best = max(candidates, key=lambda c: len(pairs(c) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


def _cases_from(assignments, **fixed) -> list[Case]:
    return [Case(**{**fixed, **assignment}) for assignment in assignments]


def _kept(**fixed):
    """pairwise_cover's `keep` for assignments completed by `fixed`: those fused_rnn does not refuse."""

    def keep(assignment):
        merged = {**fixed, **assignment}
        return not refused(merged["layer"], merged["backend"], merged["form"])

    return keep


def cases(device: str = "cpu", reduced: bool = False) -> list[Case]:
    """The matrix on `device` (see the module docstring), in a fixed order."""
    backends = CPU_BACKENDS if device == "cpu" else CUDA_BACKENDS
    dimensions = {
        "num_layers": (1, 2),
        "bidirectional": (False, True),
        "backend": backends,
        "input_grad": (False, True),
        "form": FORMS,
        "mode": MODES,
        "compiler": COMPILERS,
    }
    core, variants = {"layer": CORE_LAYERS, **dimensions}, {"layer": VARIANT_LAYERS, **dimensions}
    if reduced:
        return _cases_from(pairwise_cover(core, _kept()) + pairwise_cover(variants, _kept()))
    shapes = list(itertools.product(dimensions["num_layers"], dimensions["bidirectional"]))
    core_paths = []
    for block, (layer, backend) in enumerate(itertools.product(PATH_CELLS, backends)):
        calls = itertools.product((False, True), ("padded", "packed"), MODES)
        calls = [(grad, form, mode) for grad, form, mode in calls if not refused(layer, backend, form)]
        for index, (grad, form, mode) in enumerate(calls):
            # every stack for each cell and backend, a different one for each call from one cell or backend to the next
            num_layers, bidirectional = shapes[(index + block) % len(shapes)]
            core_paths.append(
                {"layer": layer, "num_layers": num_layers, "bidirectional": bidirectional, "backend": backend}
                | {"input_grad": grad, "form": form, "mode": mode, "compiler": "aot_eager"}
            )
        # issue 32's LSTM: training with an input that needs no grad (whose later layers' inputs do) on torch.nn's op
        # (what "auto" runs on CPU for padded input), which runs every layer and direction in one call
        if backend in ("auto", "torch"):
            core_paths += [
                {"layer": layer, "num_layers": num_layers, "bidirectional": bidirectional, "backend": backend}
                | {"input_grad": False, "form": "padded", "mode": "train", "compiler": "aot_eager"}
                for num_layers, bidirectional in shapes
            ]
    core_paths += [
        {"layer": "lstm", "num_layers": num_layers, "bidirectional": bidirectional, "backend": backend}
        | {"input_grad": False, "form": "padded", "mode": "train", "compiler": "inductor"}
        for backend, num_layers, bidirectional in (("auto", 1, True), ("torch", 2, False))
    ]
    variant_first_calls = [
        {"layer": layer, "num_layers": 1, "bidirectional": False, "backend": backend, "input_grad": False}
        | {"form": "padded", "mode": "train", "compiler": "aot_eager"}
        for layer, backend in itertools.product(VARIANT_LAYERS, backends)
        if not refused(layer, backend, "padded")
    ]
    matrix = pairwise_cover(core, _kept(), core_paths) + pairwise_cover(variants, _kept(), variant_first_calls)
    return list(dict.fromkeys(_cases_from(matrix)))  # the seeds repeat some cases


def batches(matrix: Sequence[Case], per_process: int = PER_PROCESS) -> list[list[Case]]:
    """The cases in batches of about per_process, one fresh process each. Every layer comes first in some process
    (what a process caches is first worked out inside its first traced call), on "auto" or "cpu" where it has such a
    case (the backends that consult that cache), the leaders taking turns with the backends and with aot_eager and
    inductor; the other cases are dealt round robin."""
    leaders = []
    for layer in dict.fromkeys(case.layer for case in matrix):
        own = [case for case in matrix if case.layer == layer]
        backend = ("auto", "cpu")[len(leaders) % 2]
        compiler = ("aot_eager", "inductor")[len(leaders) // 2 % 2]
        preferred = [c for c in own if c.backend in ("auto", "cpu")] or own
        leaders.append(next((c for c in preferred if (c.backend, c.compiler) == (backend, compiler)), preferred[0]))
    rest = [case for case in matrix if case not in leaders]
    count = max(len(leaders), -(-len(matrix) // per_process))
    groups = [[leader] for leader in leaders] + [[] for _ in range(count - len(leaders))]
    for index, case in enumerate(rest):
        groups[index % count].append(case)
    return groups


# ------------------------------------------------------------------------------------------------- one case


def _layer(case: Case):
    import fused_rnn

    common = {"num_layers": case.num_layers, "bidirectional": case.bidirectional, "backend": case.backend}
    heads = {"num_heads": 2}
    build = {
        "lstm": lambda: fused_rnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, **common),
        "gru": lambda: fused_rnn.GRU(INPUT_SIZE, HIDDEN_SIZE, **common),
        "rnn_tanh": lambda: fused_rnn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity="tanh", **common),
        "rnn_relu": lambda: fused_rnn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity="relu", **common),
        "lstm_zoneout": lambda: fused_rnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, zoneout=0.1, **common),
        "gru_zoneout": lambda: fused_rnn.GRU(INPUT_SIZE, HIDDEN_SIZE, zoneout=0.1, **common),
        "layernorm_lstm": lambda: fused_rnn.LayerNormLSTM(INPUT_SIZE, HIDDEN_SIZE, **common),
        "layernorm_gru": lambda: fused_rnn.LayerNormGRU(INPUT_SIZE, HIDDEN_SIZE, **common),
        "indrnn": lambda: fused_rnn.IndRNN(INPUT_SIZE, HIDDEN_SIZE, **common),
        "slstm": lambda: fused_rnn.sLSTM(INPUT_SIZE, HIDDEN_SIZE, **heads, **common),
        "multihead_lstm": lambda: fused_rnn.MultiHeadLSTM(INPUT_SIZE, HIDDEN_SIZE, **heads, **common),
        "multihead_gru": lambda: fused_rnn.MultiHeadGRU(INPUT_SIZE, HIDDEN_SIZE, **heads, **common),
    }
    return build[case.layer]()


def _oracle(layer, case: Case):
    """The float64 oracle of `layer` (a copy): torch.nn's layer for torch.nn's cells, else the reference backend."""
    import torch

    import fused_rnn

    if case.layer in CORE_LAYERS:
        return fused_rnn.to_torch(copy.deepcopy(layer)).to(torch.float64)
    oracle = copy.deepcopy(layer).to(torch.float64)
    oracle.backend = "reference"
    return oracle


def _as_input(x, form: str):
    from torch.nn.utils.rnn import pack_padded_sequence

    if form == "padded":
        return x
    return pack_padded_sequence(x, list(LENGTHS[form]), enforce_sorted=form == "packed_sorted")


def _flat(result) -> list:
    """A layer's (output, final state(s)) as a list of tensors, a packed output as its rows."""
    output, state = result
    states = list(state) if isinstance(state, (tuple, list)) else [state]
    return [getattr(output, "data", output), *states]


def _outputs_and_gradients(call, layer, x, case: Case) -> list:
    """call(input)'s tensors and, in training, the gradients of a fixed weighting of them with respect to the input
    (where it requires grad) and every parameter of `layer`."""
    import torch

    x = x.detach().requires_grad_(case.input_grad)
    if case.mode == "infer":
        layer.eval()
        with torch.no_grad():
            return _flat(call(_as_input(x, case.form)))
    layer.train()
    torch.manual_seed(1)  # the same zoneout masks in every call
    tensors = _flat(call(_as_input(x, case.form)))
    if case.compiler.startswith("export"):  # an exported program is a forward
        return [t.detach() for t in tensors]
    generator = torch.Generator().manual_seed(2)
    weights = [torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t) for t in tensors]
    loss = sum((t * w).sum() for t, w in zip(tensors, weights))
    wrt = ([x] if case.input_grad else []) + list(layer.parameters())
    return [t.detach() for t in tensors] + list(torch.autograd.grad(loss, wrt))


def _relative_error(got, expected) -> float:
    import torch

    expected = expected.double()
    difference = torch.linalg.vector_norm(got.double() - expected).item()
    scale = torch.linalg.vector_norm(expected).item()
    return difference / scale if scale > 0 else difference


def _compare(label: str, got: list, expected: list) -> list[str]:
    import torch

    problems = []
    if len(got) != len(expected):
        return [f"{label}: {len(got)} tensors, expected {len(expected)}"]
    for index, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            problems.append(f"{label} tensor {index}: shape {tuple(g.shape)}, expected {tuple(e.shape)}")
        elif not torch.isfinite(g).all():
            problems.append(f"{label} tensor {index}: not finite")
        else:
            error = _relative_error(g, e)
            if error > RELATIVE_TOLERANCE:
                problems.append(f"{label} tensor {index}: relative error {error:.2e} > {RELATIVE_TOLERANCE:.0e}")
    return problems


def run_case(case: Case, device: str) -> list[str]:
    """Runs one case (compiled or exported call first); the problems found, empty when it passed."""
    import torch

    torch.manual_seed(0)
    layer = _layer(case).to(device)
    x = torch.randn(STEPS, BATCH, INPUT_SIZE, device=device)
    if case.compiler.startswith("export"):
        exported = _exported(layer, x, case)
        first = _outputs_and_gradients(exported, layer, x, case)
    else:
        compiled = torch.compile(layer, backend=case.compiler, fullgraph=True)
        first = _outputs_and_gradients(compiled, layer, x, case)
    eager = _outputs_and_gradients(layer, layer, x, case)
    problems = _compare("against eager", first, eager)
    zoned_training = case.layer.endswith("zoneout") and case.mode == "train"
    if not zoned_training:
        oracle = _oracle(layer, case)
        expected = _outputs_and_gradients(oracle, oracle, x.double(), case)
        problems += _compare("against the float64 oracle", first, expected)
    return problems


def _exported(layer, x, case: Case):
    """The layer's forward exported in the case's mode, as a callable module: non-strict ("export", torch's default:
    the layer's Python runs on fake tensors) or strict ("export_strict": dynamo traces it, as torch.compile does)."""
    import torch

    layer.train(case.mode == "train")
    sample = _as_input(x.detach().requires_grad_(case.input_grad), case.form)
    with torch.no_grad() if case.mode == "infer" else torch.enable_grad():
        program = torch.export.export(layer, (sample,), strict=case.compiler == "export_strict")
    return program.module()


def work(ids: Sequence[str], device: str) -> int:
    """Runs the cases `ids` in this process, in order, one JSON line each on stdout; 1 if any failed."""
    import torch

    if device == "cuda":  # fp32 must mean fp32 against the float64 oracle (cuDNN's RNN would use TF32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    # Compile for real: inductor's on-disk caches do not key on a custom op's schema, so an entry of another version
    # of fused_rnn would be replayed; run() gives its processes a cache of their own. Zoneout's masks come from
    # torch's generator, as in eager mode.
    if CACHE_VARIABLE not in os.environ:
        torch._inductor.config.force_disable_caches = True
    torch._inductor.config.fallback_random = True
    failed = False
    for text in ids:
        case = Case.from_id(text)
        torch._dynamo.reset()  # a new layer recompiles the same forward: no recompile limit across cases
        start = time.perf_counter()
        try:
            problems = run_case(case, device)
        except Exception as error:  # the case's verdict: a graph break, a compile error, a refusal
            problems = [_described(error)]
        failed = failed or bool(problems)
        seconds = time.perf_counter() - start
        print(json.dumps({"case": text, "problems": problems, "seconds": round(seconds, 2)}), flush=True)
    return 1 if failed else 0


def _described(error: BaseException) -> str:
    """The error's type and first line, and its cause's (dynamo wraps an exception raised in traced code)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if error.__cause__ is None else f"{text}; caused by {_described(error.__cause__)}"


# --------------------------------------------------------------------------------------------- fresh processes


CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def _worker_environment(device: str, cache: str) -> dict:
    environment = dict(os.environ)
    environment[CACHE_VARIABLE] = cache
    if device == "cpu":
        environment["TRITON_INTERPRET"] = "1"  # before fused_rnn is imported: the Triton kernels on CPU
    else:
        environment.pop("TRITON_INTERPRET", None)  # which would keep Triton off the GPU
    # One process per batch already keeps the cores busy; inductor's pool of compile workers would cost its start.
    environment["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    # "auto" is never tuned while tracing (fused_rnn.tuning); its eager calls here keep the same rules rather than
    # time the backends again in every new process.
    environment["FUSED_RNN_AUTOTUNE"] = "0"
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    return environment


def run(
    matrix: Sequence[Case],
    device: str = "cpu",
    per_process: int = PER_PROCESS,
    jobs: int = 2,
    time_limit_s: float | None = None,
    log=None,
) -> dict[str, dict]:
    """Runs `matrix` in fresh processes, `jobs` at a time; each case's result ({"problems": [...], "seconds": s}),
    by id. A batch whose process dies or runs past time_limit_s (the whole run's) reports its unfinished cases as
    failed. `log`: a text stream that gets one line per finished case."""
    with tempfile.TemporaryDirectory(prefix="compile_matrix_") as cache:
        return _run_batches(batches(matrix, per_process), device, jobs, time_limit_s, log, cache)


def _run_batches(pending, device, jobs, time_limit_s, log, cache) -> dict[str, dict]:
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    command = [sys.executable, "-m", "benchmarks.compile_matrix", "--device", device, "--work"]
    results: dict[str, dict] = {}
    lock = threading.Lock()

    def run_batch(batch):
        if deadline is not None and time.monotonic() >= deadline:
            outcome, why = "", "not started: the time limit had passed"
        else:
            timeout = None if deadline is None else deadline - time.monotonic()
            try:
                done = subprocess.run(
                    command + [case.id for case in batch],
                    cwd=REPOSITORY,
                    env=_worker_environment(device, cache),
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                outcome, why = done.stdout, (done.stderr.strip().splitlines() or ["no output"])[-1]
            except subprocess.TimeoutExpired as expired:
                outcome, why = expired.stdout or "", "killed at the time limit"
                outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        finished = {}
        for line in outcome.splitlines():
            if line.startswith("{"):
                result = json.loads(line)
                finished[result["case"]] = result
        for case in batch:
            finished.setdefault(case.id, {"case": case.id, "problems": [f"process ended: {why}"], "seconds": 0.0})
        with lock:
            results.update(finished)
            for result in finished.values() if log is not None else ():
                verdict = "ok" if not result["problems"] else "FAILED " + "; ".join(result["problems"])
                print(f"{result['case']}: {verdict} ({result['seconds']} s)", file=log, flush=True)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run_batch, pending))
    return results


def summary(results: dict[str, dict]) -> str:
    failed = [case for case, result in results.items() if result["problems"]]
    seconds = sum(result["seconds"] for result in results.values())
    text = f"{len(results) - len(failed)} of {len(results)} compile-matrix cases passed ({seconds:.0f} s of cases)"
    return text + (f"; failed: {', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''}" if failed else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--reduced", action="store_true", help="the pairwise covers only (the GPU run)")
    parser.add_argument("--only", nargs="*", default=[], help="cases whose id contains every one of these")
    parser.add_argument("--list", action="store_true", help="print the case ids and stop")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument("--per-process", type=int, default=PER_PROCESS)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds for the whole run")
    parser.add_argument("--work", nargs="+", metavar="CASE", help=argparse.SUPPRESS)  # a worker: run these here
    args = parser.parse_args(argv)
    if args.work:
        return work(args.work, args.device)
    matrix = [c for c in cases(args.device, args.reduced) if all(text in c.id for text in args.only)]
    if args.list:
        print("\n".join(case.id for case in matrix))
        return 0
    results = run(matrix, args.device, args.per_process, args.jobs, args.time_limit, log=sys.stdout)
    print(summary(results))
    return 0 if all(not result["problems"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
