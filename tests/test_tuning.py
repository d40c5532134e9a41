"""backend="auto" tuned on this machine (fused_rnn.tuning): real timings on this CPU between the compiled kernels and
torch.nn's, the choice's margin, the file that remembers winners (corrupt, written by two processes at once, another
version), and where it must not tune. The rest of the suite runs with tuning off (tests/conftest.py), so that "auto"
follows the committed rules there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_rnn
from fused_rnn import tuning
from fused_rnn.backends import Workload, native, resolve

REPOSITORY = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture
def tuned(monkeypatch, tmp_path):
    """Tuning on, remembering in a file of its own."""
    monkeypatch.setattr(tuning, "ENABLED", True)
    monkeypatch.setenv("FUSED_RNN_CACHE_DIR", str(tmp_path))
    tuning.forget()
    yield tmp_path / "autotune.json"
    tuning.forget()


def needs_compiled_kernels():
    if native.unavailable() is not None:
        pytest.skip(f"the compiled kernels are unavailable: {native.unavailable()}")


def gru_packed_training(batch=4):
    # "cpu" took 0.19-0.28x torch.nn's time here (benchmarks/results/cpu_native/cpu.md): far from the margin
    return Workload("gru", batch, packed=True, training=True, hidden=32, steps=16)


def test_auto_times_the_compiled_kernels_against_torch_nn_and_remembers_the_winner(tuned, monkeypatch):
    needs_compiled_kernels()
    timed = []
    measure = tuning.measure
    monkeypatch.setattr(tuning, "measure", lambda *args: timed.append(args[3]) or measure(*args))
    assert resolve("auto", CPU, torch.float32, workload=gru_packed_training()) == "cpu"
    assert timed == [["torch", "cpu"]]
    entries = json.loads(tuned.read_text())["entries"]
    (entry,) = entries.values()
    assert entry["winner"] == "cpu" and entry["ms"]["cpu"] <= tuning.MARGIN * entry["ms"]["torch"]
    # Another batch of the same class (rounded up to 4) is not timed again; another class is.
    assert resolve("auto", CPU, torch.float32, workload=gru_packed_training(batch=3)) == "cpu"
    assert len(timed) == 1
    resolve("auto", CPU, torch.float32, workload=gru_packed_training(batch=5))
    assert len(timed) == 2


def test_a_later_process_reads_the_winner_from_the_file(tuned, monkeypatch):
    key = tuning._key(CPU, torch.float32, gru_packed_training())
    tuned.write_text(json.dumps({"version": tuning.FILE_VERSION, "entries": {key: {"winner": "torch", "ms": {}}}}))
    monkeypatch.setattr(tuning, "measure", lambda *args: pytest.fail("timed what the file knows"))
    needs_compiled_kernels()
    assert resolve("auto", CPU, torch.float32, workload=gru_packed_training()) == "torch"


def test_another_version_of_torch_or_fused_rnn_times_again(tuned, monkeypatch):
    key = tuning._key(CPU, torch.float32, gru_packed_training())
    tuned.write_text(json.dumps({"version": tuning.FILE_VERSION, "entries": {key: {"winner": "torch", "ms": {}}}}))
    monkeypatch.setattr(tuning, "_version", lambda package: "99.0")
    monkeypatch.setattr(tuning, "measure", lambda device, dtype, workload, candidates: {"torch": 2.0, "cpu": 1.0})
    needs_compiled_kernels()
    assert resolve("auto", CPU, torch.float32, workload=gru_packed_training()) == "cpu"
    assert len(json.loads(tuned.read_text())["entries"]) == 2  # the old version's entry is kept, unused


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "entries": [1, 2]}', '{"version": 0}', ""])
def test_a_file_that_cannot_be_read_is_ignored_and_rewritten(tuned, monkeypatch, content):
    tuned.write_text(content)
    monkeypatch.setattr(tuning, "measure", lambda device, dtype, workload, candidates: {"torch": 1.0, "cpu": 0.5})
    needs_compiled_kernels()
    assert resolve("auto", CPU, torch.float32, workload=gru_packed_training()) == "cpu"
    assert [e["winner"] for e in json.loads(tuned.read_text())["entries"].values()] == ["cpu"]


WRITER = """
import sys
from fused_rnn import tuning
for index in range(25):
    tuning._write_file({f"{sys.argv[1]} {index}": {"winner": "torch", "ms": {}}})
"""


def test_two_processes_writing_at_once_keep_each_others_entries(tuned):
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, name], cwd=REPOSITORY, env=_environment(tuned))
        for name in ("first", "second")
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    entries = json.loads(tuned.read_text())["entries"]
    assert set(entries) == {f"{name} {index}" for name in ("first", "second") for index in range(25)}


def _environment(file):
    return dict(os.environ, FUSED_RNN_CACHE_DIR=str(file.parent))


def test_torch_nn_keeps_a_call_unless_another_backend_is_clearly_faster():
    assert tuning.fastest({"torch": 1.0, "cpu": 0.95}) == "torch"  # within the noise: what is replaced
    assert tuning.fastest({"torch": 1.0, "cpu": 0.85, "triton": 0.9}) == "cpu"
    assert tuning.fastest({"torch": 1.0, "cpu": 1.5}) == "torch"
    assert tuning.fastest({"triton": 1.0, "cuda": 0.5}) == "cuda"  # deterministic CUDA: the rule's pick first


def test_no_tuning_while_tracing_with_tuning_off_or_where_one_backend_serves(tuned, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda *args: pytest.fail("tuned"))
    needs_compiled_kernels()
    with monkeypatch.context() as patch:
        patch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not tuning.applies()
        assert resolve("auto", CPU, torch.float32, workload=gru_packed_training()) == "cpu"  # the committed rule
    with monkeypatch.context() as patch:
        patch.setattr(tuning, "ENABLED", False)
        assert resolve("auto", CPU, torch.float32, workload=gru_packed_training()) == "cpu"
    # bfloat16 has no compiled CPU kernel: torch.nn's alone serves it; a cell's step and zoneout keep their rules
    assert resolve("auto", CPU, torch.bfloat16, workload=gru_packed_training()) == "torch"
    assert resolve("auto", CPU, torch.float32, workload=gru_packed_training()._replace(single_step=True)) == "torch"
    assert resolve("auto", CPU, torch.float32, workload=gru_packed_training()._replace(zoneout=True)) == "cpu"
    assert not tuned.exists()


def test_a_long_tuning_says_so_in_one_line(tuned, monkeypatch, capsys):
    monkeypatch.setattr(tuning, "SAY_WHEN_LONGER_S", 0.0)
    needs_compiled_kernels()
    resolve("auto", CPU, torch.float32, workload=gru_packed_training())
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fused_rnn: 'auto' timed torch, cpu for gru float32 training B=4 H=32 T=16 in ")
    assert str(tuned) in line


def test_a_tuned_layer_gives_torch_nns_numbers(tuned):
    """Whatever the tuning picks, the layer stays a drop-in (here the GRU on packed rows, tuned on its first call)."""
    needs_compiled_kernels()
    reference = torch.nn.GRU(5, 8, dtype=torch.float64)
    ours = fused_rnn.from_torch(reference)
    x = torch.nn.utils.rnn.pack_sequence(
        [torch.randn(4, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)]
    )
    expected, got = reference(x), ours(x)
    torch.testing.assert_close(got[0].data, expected[0].data)
    torch.testing.assert_close(got[1], expected[1])


def test_the_key_changes_with_the_versions_the_machine_and_the_class(monkeypatch):
    workload = gru_packed_training()
    key = tuning._key(CPU, torch.float32, workload)
    assert tuning._key(CPU, torch.float32, gru_packed_training(batch=3)) == key  # the same class
    changed = [
        tuning._key(CPU, torch.float64, workload),
        tuning._key(CPU, torch.float32, workload._replace(training=False)),
        tuning._key(CPU, torch.float32, workload._replace(packed=False)),
        tuning._key(CPU, torch.float32, workload._replace(projected=True)),
        tuning._key(CPU, torch.float32, workload._replace(hidden=33)),
        tuning._key(CPU, torch.float32, workload._replace(steps=17)),
    ]
    with monkeypatch.context() as patch:
        patch.setattr(torch, "__version__", "9.9.9")
        changed.append(tuning._key(CPU, torch.float32, workload))
    for package in ("triton", "fused_rnn"):
        with monkeypatch.context() as patch:
            patch.setattr(tuning, "_version", lambda name, package=package: "9.9" if name == package else "1.0")
            changed.append(tuning._key(CPU, torch.float32, workload))
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        changed.append(tuning._key(CPU, torch.float32, workload))
    finally:
        torch.set_num_threads(threads)
    assert len({key, *changed}) == len(changed) + 1


def test_a_known_class_is_answered_without_building_its_key(tuned, monkeypatch):
    """Every call of a layer on "auto" asks; rebuilding the key each time (it reads the CPU's model) once made a tuned
    LSTM at B=1 H=256 take 0.81 ms a call where its backend took 0.26."""
    needs_compiled_kernels()
    monkeypatch.setattr(tuning, "measure", lambda device, dtype, workload, candidates: {"torch": 1.0, "cpu": 0.5})
    resolve("auto", CPU, torch.float32, workload=gru_packed_training())
    monkeypatch.setattr(tuning, "_key", lambda *args: pytest.fail("built the key of a known class"))
    assert resolve("auto", CPU, torch.float32, workload=gru_packed_training(batch=3)) == "cpu"
