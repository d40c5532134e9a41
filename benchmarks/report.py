"""From measurements (dicts, as stored in the results JSON) to ratios, a table, files and a plot."""

import argparse
import json
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

import fused_rnn
from benchmarks.contenders import TORCH

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "benchmarks" / "results"
README = REPOSITORY / "README.md"
README_BEGIN = (
    "<!-- generated from benchmarks/results/*.json by `python -m benchmarks.report --readme`; edit those, not this -->"
)
README_END = "<!-- end of the generated benchmark tables -->"
TABLE_COLUMNS = (
    "config",
    "cell",
    "dtype",
    "mode",
    "contender",
    "ms",
    "ms/step",
    "x torch.nn",
    "x torch.nn best dtype",
    "peak MiB",
    "max diff",
)
LEGEND = """\
- ms: median time of one call. fw: forward without grad; fwbw: forward, loss = output.sum(), backward
  to the weights and the input.
- ms/step: ms / T (for packed input, the longest sequence's length).
- x torch.nn: ms / torch.nn's ms in the same dtype and mode; x torch.nn best dtype: ms / torch.nn's
  fastest dtype for that config, cell and mode.
- peak MiB: CUDA memory one call allocates at its peak, beyond what was allocated before it.
- max diff: largest |output - torch.nn's output| in the same dtype."""
DTYPE_LINE_STYLES = {"fp32": "-", "bf16": "--", "fp16": ":"}


def describe_environment(device: torch.device) -> dict:
    """Versions, device and commit that results were measured with."""
    cuda = device.type == "cuda"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "device_slug": device_slug(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torch": torch.__version__,
        "triton": triton_version,
        "fused_rnn": fused_rnn.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_tracked_changes": _git("status", "--porcelain", "--untracked-files=no") not in (None, ""),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backends": fused_rnn.available_backends(),
    }


def device_slug(device: torch.device) -> str:
    """The results' file name stem: "cpu", or the GPU's name, e.g. "nvidia-h100-80gb-hbm3"."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git(*arguments: str) -> str | None:
    try:
        done = subprocess.run(["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def add_ratios(results: list[dict]) -> None:
    """Fill each result's ratio_to_torch and ratio_to_torch_best_dtype (None where a time is missing)."""
    torch_results = [r for r in results if r["contender"] == TORCH and r["ms"]]
    torch_ms = {(_case(r), r["dtype"]): r["ms"] for r in torch_results}
    torch_best_ms: dict[tuple, float] = {}
    for r in torch_results:
        torch_best_ms[_case(r)] = min(r["ms"], torch_best_ms.get(_case(r), r["ms"]))
    for r in results:
        same_dtype, best = torch_ms.get((_case(r), r["dtype"])), torch_best_ms.get(_case(r))
        r["ratio_to_torch"] = r["ms"] / same_dtype if r["ms"] and same_dtype else None
        r["ratio_to_torch_best_dtype"] = r["ms"] / best if r["ms"] and best else None


def _case(result: dict) -> tuple:
    return result["config"], result["cell"], result["mode"]


def format_table(results: list[dict]) -> str:
    """The results as a markdown table whose columns also line up as plain text."""
    rows = [TABLE_COLUMNS] + [_table_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |" for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def _table_row(r: dict) -> tuple[str, ...]:
    ratio = lambda value: "-" if value is None else f"{value:.2f}"
    difference = "-" if r["max_diff_vs_torch"] is None else f"{r['max_diff_vs_torch']:.1e}"
    ms = "failed" if r["failure"] else _number(r["ms"])
    return (
        r["config"],
        r["cell"],
        r["dtype"],
        r["mode"],
        r["contender"],
        ms,
        _number(r["ms_per_step"]),
        ratio(r["ratio_to_torch"]),
        ratio(r["ratio_to_torch_best_dtype"]),
        _number(r["peak_memory_mb"]),
        difference,
    )


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:#.3g}"


def write_reports(results: list[dict], environment: dict, settings: dict, directory: Path) -> list[Path]:
    """<device slug>.json (everything), .md (the table) and, when there are sweep results, .png."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / environment["device_slug"]
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    document = {"environment": environment, "settings": settings, "results": results}
    paths[0].write_text(json.dumps(document, indent=1) + "\n")
    paths[1].write_text(format_markdown(results, environment, settings))
    if any(r["sweep_axes"] for r in results):
        paths.append(stem.with_suffix(".png"))
        plot_sweeps(results, environment, paths[-1])
    return paths


def format_markdown(results: list[dict], environment: dict, settings: dict) -> str:
    env = environment
    commit = env["git_commit"] or "unknown"
    if env["git_tracked_changes"]:
        commit += " with uncommitted changes"
    cuda = f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env["device"] == "cuda" else ""
    lines = [
        f"# fused_rnn benchmarks: {env['device_name']}",
        "",
        f"{env['date_utc']}; torch {env['torch']}, triton {env['triton']}{cuda}; CPU threads: {env['cpu_threads']}; "
        f"commit {commit}. Warmup {settings['warmup']}, repeats {settings['repeats']}, seed {settings['seed']}.",
        "",
        LEGEND,
        "",
        format_table(results),
    ]
    failures = [r for r in results if r["failure"]]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [
            f"- {r['config']} {r['cell']} {r['dtype']} {r['mode']} {r['contender']}: {r['failure']}" for r in failures
        ]
    return "\n".join(lines) + "\n"


def plot_sweeps(results: list[dict], environment: dict, path: Path) -> None:
    """Time per step against batch size and against sequence length, one row of plots per cell and mode."""
    swept = [r for r in results if r["sweep_axes"] and r["ms"]]
    panels = sorted({(r["cell"], r["mode"]) for r in swept})
    contenders = list(dict.fromkeys(r["contender"] for r in swept))
    colors = {name: f"C{index}" for index, name in enumerate(contenders)}
    # Figure without pyplot renders through Agg and leaves pyplot's global backend alone.
    figure = Figure(figsize=(11, 3.6 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 2, squeeze=False)
    for row, (cell, mode) in enumerate(panels):
        for column, (axis, fixed) in enumerate((("batch", "steps"), ("steps", "batch"))):
            ax = axes[row][column]
            points = [r for r in swept if (r["cell"], r["mode"]) == (cell, mode) and axis in r["sweep_axes"]]
            if not points:
                continue
            for contender in contenders:
                for dtype, style in DTYPE_LINE_STYLES.items():
                    line = sorted(
                        (r[axis], r["ms_per_step"] * 1e3)
                        for r in points
                        if r["contender"] == contender and r["dtype"] == dtype
                    )
                    if line:
                        sizes, microseconds = zip(*line, strict=True)
                        ax.plot(
                            sizes,
                            microseconds,
                            style,
                            color=colors[contender],
                            marker="o",
                            label=f"{contender} {dtype}",
                        )
            fixed_text = f"{'T' if fixed == 'steps' else 'B'}={points[0][fixed]}, H={points[0]['hidden_size']}"
            ax.set_title(f"{cell} {mode} vs {'batch size' if axis == 'batch' else 'sequence length'} ({fixed_text})")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ticks = sorted({r[axis] for r in points})
            ax.set_xticks(ticks, [str(tick) for tick in ticks])
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("batch size B" if axis == "batch" else "sequence length T")
            ax.set_ylabel("us per time step")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(DTYPE_LINE_STYLES), fontsize="small")
    figure.suptitle(f"fused_rnn vs torch.nn on {environment['device_name']}")
    figure.savefig(path, dpi=110)


def plot_ratios(results: list[dict], environment: dict, path: Path) -> None:
    """Each fused contender's time relative to torch.nn's in the same dtype and mode, one bar per case."""
    measured = [r for r in results if r["contender"] != TORCH and r["ratio_to_torch"]]
    cases = list(dict.fromkeys(_summary_case(r) for r in measured))
    contenders = list(dict.fromkeys(r["contender"] for r in measured))
    height = 0.8 / max(1, len(contenders))
    figure = Figure(figsize=(9, 1.5 + 0.2 * len(cases) * max(1, len(contenders))), layout="constrained")
    ax = figure.subplots()
    for index, contender in enumerate(contenders):
        ratios = {_summary_case(r): r["ratio_to_torch"] for r in measured if r["contender"] == contender}
        rows = [row for row, case in enumerate(cases) if case in ratios]
        ax.barh([row + index * height for row in rows], [ratios[cases[row]] for row in rows], height, label=contender)
    ax.set_yticks([row + 0.4 - height / 2 for row in range(len(cases))], [" ".join(c) for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("time / torch.nn's time in the same dtype and mode (below 1: faster than torch.nn)")
    ax.legend(loc="lower right", fontsize="small")
    figure.suptitle(f"fused_rnn vs torch.nn on {environment['device_name']}")
    figure.savefig(path, dpi=100)


def _summary_case(result: dict) -> tuple[str, str, str, str]:
    return result["config"], result["cell"], result["dtype"], result["mode"]


def readme_documents(directory: Path = RESULTS) -> list[dict]:
    """The results files the README shows: the GPU ones first, then the CPU ones."""
    documents = [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]
    # Only benchmarks.run's results (with its settings and results); other benchmarks, such as
    # benchmarks.variants_cpu and benchmarks.cpu_inference, write their own tables beside their JSON.
    documents = [d for d in documents if "settings" in d and "results" in d]
    return sorted(documents, key=lambda d: d["environment"]["device"] != "cuda")


def readme_tables(documents: list[dict]) -> str:
    """Per results file: where and when it was measured, with which versions, then ms per contender per case."""
    sections = []
    for document in documents:
        env, settings = document["environment"], document["settings"]
        cuda = f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env["device"] == "cuda" else ""
        sections.append(
            f"{env['device_name']} ({env['device']}), {env['date_utc'][:10]}: torch {env['torch']}, triton "
            f"{env['triton']}{cuda}, fused_rnn {env['fused_rnn']} at commit {(env['git_commit'] or 'unknown')[:12]}. "
            f"Median ms of {settings['repeats']} runs; in brackets, the time relative to torch.nn in the same dtype."
        )
        sections.append(summary_table(document["results"]))
    return "\n\n".join(sections)


def summary_table(results: list[dict]) -> str:
    """One row per (config, cell, dtype, mode), one column per contender: ms (x torch.nn)."""
    contenders = list(dict.fromkeys(r["contender"] for r in results))
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in results:
        by_case.setdefault(_summary_case(r), {})[r["contender"]] = r
    lines = [
        "| config | cell | dtype | mode | " + " | ".join(contenders) + " |",
        "|---|---|---|---|" + "---|" * len(contenders),
    ]
    for case, per_contender in by_case.items():
        cells = []
        for contender in contenders:
            r = per_contender.get(contender)
            if r is None or r["failure"]:
                cells.append("-" if r is None else "failed")
            elif contender == TORCH or r["ratio_to_torch"] is None:
                cells.append(_number(r["ms"]))
            else:
                cells.append(f"{_number(r['ms'])} ({r['ratio_to_torch']:.2f}x)")
        lines.append("| " + " | ".join(case) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_with_tables(readme: str, tables: str) -> str:
    """`readme` with the text between README_BEGIN and README_END replaced by `tables`."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"the README has no {README_BEGIN!r} ... {README_END!r} section")
    return readme[: begin + len(README_BEGIN)] + "\n\n" + tables + "\n\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description="The README's benchmark tables.")
    parser.add_argument("--readme", action="store_true", help="rewrite them in README.md from benchmarks/results/")
    args = parser.parse_args(argv)
    updated = readme_with_tables(README.read_text(), readme_tables(readme_documents()))
    if args.readme:
        README.write_text(updated)
    else:
        print(updated[updated.index(README_BEGIN) : updated.index(README_END) + len(README_END)])
    return 0


if __name__ == "__main__":
    sys.exit(main())


def write_gpu_rows(outdir: Path, suffix: str, rows: list[dict], device, markdown, not_started: list[str], what: str):
    """OUTDIR/<device>-<suffix>.json and .md of a GPU benchmark's rows, and its closing lines: what was not started
    and one summary line. Returns the exit status: 1 when a measurement failed."""
    result = {"environment": describe_environment(device), "rows": rows}
    path = outdir / f"{device_slug(device)}-{suffix}.json"
    outdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    failed = [r for r in rows if r["failure"]]
    for label in not_started:
        print(f"not started (time limit): {label}")
    print(
        f"{what}: {len(rows) - len(failed)} of {len(rows)} measurements ok, {len(failed)} failed, "
        f"{len(not_started)} cases not started, on {result['environment']['device_name']}; wrote {path.name}, "
        f"{path.with_suffix('.md').name}"
    )
    return 1 if failed else 0
