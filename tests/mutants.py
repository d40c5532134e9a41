"""Mutation checks: each mutant breaks what a test promises to guard, and that test must then fail.

Usage: python tests/mutants.py [NAME ...]   (from the repository root; every mutant when no name is given)

Each mutant edits one line of a scratch copy of the repository (the edit must match exactly once, so a
mutant that no longer applies is reported rather than silently skipped) and runs only its target tests
there; a mutant of csrc/ first compiles the copy's extension (minutes). A mutant "survives" when its target
tests still pass: the test guards nothing. Targets that cannot run here (tests marked gpu on a machine
without one) are reported as not checked.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    targets: tuple[str, ...]


MUTANTS = [
    Mutant(
        "tanh through sigmoid (cancels near 0)",
        "fused_rnn/backends/triton/cell_math.py",
        "    return tl.where(x < 0, -t, t)\n",
        "    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0\n",
        ("tests/test_triton_cell_math.py",),
    ),
    Mutant(
        "autocast: states checked before the cast",
        "fused_rnn/modules.py",
        "checked.append(functional.checked_state(name, _autocast(state, cast), x, shape))",
        "checked.append(functional.checked_state(name, state, x, shape))",
        ("tests/test_integrations.py::test_autocast_accepts_a_float32_hx_beside_a_lower_precision_input",),
    ),
    Mutant(
        "from_torch converts a shared module once per reference",
        "fused_rnn/modules.py",
        "        if id(original) in replacements:\n",
        "        if False:\n",
        ("tests/test_deploy.py::test_conversion_keeps_shared_modules_and_tied_parameters",),
    ),
    Mutant(
        "auto refuses a batch too large for Triton's offsets",
        "fused_rnn/backends/__init__.py",
        '        return "triton" if reason is None else "reference"',
        '        return "triton"',
        ("tests/test_functional.py::test_auto_serves_what_is_too_large_for_triton",),
    ),
    Mutant(
        "packed row index rebuilt (and copied to the device) on every backward",
        "fused_rnn/packing.py",
        "    index = previous_rows(tuple(batch_sizes), reverse, output.device)",
        "    index = previous_rows.__wrapped__(tuple(batch_sizes), reverse, output.device)",
        ("tests/test_triton_sequence.py::test_packed_backward_builds_its_row_index_once_per_layout",),
    ),
    Mutant(
        "GRU hidden-state gradient carried in the storage dtype",
        "fused_rnn/backends/triton/sequence.py",
        "dh, dc = torch.zeros_like(grad_h_n), grad_h_n.to(acc, copy=True)",
        "dh, dc = torch.zeros_like(grad_h_n), grad_h_n.clone()",
        ("tests/test_triton_sequence.py::test_low_precision_carries_state_and_gradients_in_float32",),
    ),
    Mutant(
        "LSTM cell state kept in the storage dtype",
        "fused_rnn/backends/triton/sequence.py",
        "    c = c0.to(accumulate_dtype(input.dtype), copy=True) if spec.has_cell_state else None",
        "    c = c0.clone() if spec.has_cell_state else None",
        ("tests/test_triton_sequence.py::test_low_precision_carries_state_and_gradients_in_float32",),
    ),
    Mutant(
        "h_n stacked in reverse layer order",
        "fused_rnn/modules.py",
        "        return x, torch.stack(h_n), torch.stack(c_n) if c0 is not None else None",
        "        return x, torch.stack(h_n[::-1]), torch.stack(c_n[::-1]) if c0 is not None else None",
        ("tests/test_gpu.py::test_triton_matches_cudnn", "tests/test_modules.py::test_randomized_parity_with_torch_nn"),
    ),
    Mutant(
        "activations saved under no_grad",
        "fused_rnn/functional.py",
        "    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)",
        "    training = True",
        ("tests/test_triton_sequence.py::test_inference_saves_nothing_and_matches",),
    ),
    Mutant(
        "every gradient computed, frozen or not",
        "fused_rnn/autograd.py",
        "            [t is not None and needed for t, needed in zip(tensors, needs_grad, strict=True)],",
        "            [t is not None for t in tensors],",
        ("tests/test_triton_sequence.py::test_only_the_gradients_asked_for",),
    ),
    Mutant(
        "packed reverse direction ignores each sequence's length",
        "fused_rnn/packing.py",
        "    return (offsets[lengths[row_in_batch] - 1 - step] + row_in_batch).to(device)",
        "    return (offsets[len(batch_sizes) - 1 - step] + row_in_batch).clamp(max=int(sizes.sum()) - 1).to(device)",
        ("tests/test_modules.py::test_randomized_parity_with_torch_nn",),
    ),
    Mutant(
        "benchmark's torch.nn contender with other weights",
        "benchmarks/contenders.py",
        "        layer = copy.deepcopy(source)\n",
        "        layer = copy.deepcopy(source)\n        layer.weight_hh_l0.data.mul_(1.01)\n",
        ("tests/test_benchmarks.py::test_contender_output_matches_torch",),
    ),
    Mutant(
        "classifier blind to its input",
        "examples/classify_packed.py",
        "        packed = pack_padded_sequence(self.embedding(digits), lengths",
        "        packed = pack_padded_sequence(0 * self.embedding(digits), lengths",
        ("tests/test_examples.py::test_classify_packed_beats_chance",),
    ),
    Mutant(
        "forecaster reads only the first hidden unit",
        "examples/forecast.py",
        "        return self.head(h_n[-1])",
        "        return self.head(h_n[-1] * (torch.arange(h_n.shape[-1], device=h_n.device) == 0))",
        ("tests/test_examples.py::test_forecast_beats_the_seasonal_naive_baseline",),
    ),
    Mutant(
        "vanishing-gradient example with another forget bias than its README states",
        "examples/vanishing_gradients.py",
        '    "LSTM, forget bias +3": ("LSTMCell", 3.0, None),',
        '    "LSTM, forget bias +3": ("LSTMCell", 2.0, None),',
        ("tests/test_examples.py::test_vanishing_gradients_as_the_readme_states",),
    ),
    Mutant(
        "IndRNN kernel: du from the step's output instead of the state it started from",
        "fused_rnn/backends/triton/indrnn.py",
        "        b_du += b_dpre * b_hprev\n",
        "        b_du += b_dpre * b_h\n",
        ("tests/test_indrnn.py::test_fused_matches_reference",),
    ),
    Mutant(
        "IndRNN kernel: packed reverse walk ignores where each sequence starts",
        "fused_rnn/backends/triton/indrnn.py",
        "        from_output = active & (prev == prev_in_range) & (rows[:, None] < prev_batch)",
        "        from_output = active & (prev == prev_in_range)",
        ("tests/test_indrnn.py::test_packed",),
    ),
    Mutant(
        "IndRNN kernel: inactive packed rows lose their state",
        "fused_rnn/backends/triton/indrnn.py",
        "        b_h = tl.where(active, b_new, b_h)",
        "        b_h = b_new",
        ("tests/test_indrnn.py::test_packed",),
    ),
    Mutant(
        "IndRNN kernel: state carried in the storage dtype",
        "fused_rnn/backends/triton/indrnn.py",
        "        b_h = tl.where(active, b_new, b_h)",
        "        b_h = tl.where(active, b_new.to(p_out.dtype.element_ty).to(ACC), b_h)",
        ("tests/test_indrnn.py::test_low_precision_carries_the_state_in_float32",),
    ),
    Mutant(
        "IndRNN torch loop: state carried in the storage dtype",
        "fused_rnn/indrnn/torch_loop.py",
        "    in_place = output.dtype == acc\n",
        "    in_place, acc = True, output.dtype\n",
        ("tests/test_indrnn.py::test_low_precision_carries_the_state_in_float32",),
    ),
    Mutant(
        "IndRNN torch loop: tanh derivative from the pre-activation's sign",
        "fused_rnn/indrnn/torch_loop.py",
        "            torch.mul(carried, 1 - h.to(acc).square(), out=grad_pre[rows])",
        "            torch.mul(carried, 1 - h.to(acc).abs(), out=grad_pre[rows])",
        ("tests/test_indrnn.py::test_fused_matches_reference",),
    ),
    Mutant(
        "IndRNN double backward through the hand-written (non-differentiable) backward",
        "fused_rnn/indrnn/autograd.py",
        "    if torch.is_grad_enabled():\n",
        "    if False:\n",
        ("tests/test_indrnn.py::test_double_backward_recomputes_through_the_reference",),
    ),
    Mutant(
        "IndRNN layer runs its second direction forward in time",
        "fused_rnn/indrnn/modules.py",
        "                    reverse=direction == 1,",
        "                    reverse=False,",
        ("tests/test_indrnn.py::test_module_bidirectional_two_layers_on_unsorted_packed_input",),
    ),
    Mutant(
        "IndRNN init: recurrent weight drawn like the input weights",
        "fused_rnn/indrnn/modules.py",
        "            nn.init.uniform_(parameter, 0.0, 1.0)",
        "            nn.init.uniform_(parameter, -1.0, 1.0)",
        ("tests/test_indrnn.py::test_parameters_and_init",),
    ),
    Mutant(
        "WeightDrop: no gradient through the dropped weight",
        "fused_rnn/regularizers.py",
        "F.dropout(parameters[name], self.p, training=True)",
        "F.dropout(parameters[name].detach(), self.p, training=True)",
        ("tests/test_regularizers.py::test_weight_drop_runs_every_step_with_one_masked_recurrent_matrix",),
    ),
    Mutant(
        "WeightDrop drops in eval mode too",
        "fused_rnn/regularizers.py",
        "        if not self.training or self.p == 0:\n            return self.module(*args, **kwargs)",
        "        if self.p == 0:\n            return self.module(*args, **kwargs)",
        ("tests/test_regularizers.py::test_weight_drop_masks_are_reproducible_fresh_per_call_and_absent_in_eval",),
    ),
    Mutant(
        "LockedDropout: a new mask at every step",
        "fused_rnn/regularizers.py",
        "        return input * mask.unsqueeze(1 - batch_dim)",
        "        return F.dropout(input, self.p, training=True)",
        ("tests/test_regularizers.py::test_locked_dropout_shares_one_mask_per_sequence_across_steps",),
    ),
    Mutant(
        "LockedDropout: packed rows masked in sorted rather than batch order",
        "fused_rnn/regularizers.py",
        "            if sorted_indices is not None:\n                mask = mask.index_select(0, sorted_indices)",
        "            if False:\n                mask = mask.index_select(0, sorted_indices)",
        ("tests/test_regularizers.py::test_locked_dropout_gives_packed_sequences_the_mask_of_the_padded_batch",),
    ),
    Mutant(
        "sLSTMCell: an unbatched step returns (1, H) states",
        "fused_rnn/multihead/modules.py",
        "        return tuple(s.squeeze(0) for s in state) if unbatched else state",
        "        return state",
        ("tests/test_slstm_cell.py::test_unbatched_input_and_state_are_one_batch_row",),
    ),
    Mutant(
        "sLSTMCell: c and n returned in each other's place",
        "fused_rnn/multihead/functional.py",
        "    return new_state\n",
        "    return new_state[0], new_state[2], new_state[1], new_state[3]\n",
        ("tests/test_slstm_cell.py::test_t_steps_equal_the_slstm_layer_loaded_from_the_same_state_dict",),
    ),
    Mutant(
        "multi-head double backward: the recomputed gradients not differentiable",
        "fused_rnn/multihead/autograd.py",
        "            create_graph=True,\n",
        "            create_graph=False,\n",
        ("tests/test_slstm_cell.py::test_double_backward",),
    ),
    Mutant(
        "sLSTMCell: forget_gate not passed on (always sigmoid)",
        "fused_rnn/multihead/modules.py",
        "self.bias_ih, forget_gate=self.forget_gate",
        'self.bias_ih, forget_gate="sigmoid"',
        ("tests/test_slstm_cell.py::test_steps_match_a_plain_float64_loop",),
    ),
    Mutant(
        "sLSTMCell: hx's shapes unchecked",
        "fused_rnn/multihead/modules.py",
        'for s in _checked_hx("sLSTMCell", "slstm", hx, expected))',
        "for s in hx)",
        ("tests/test_slstm_cell.py::test_bad_input_is_rejected_with_named_errors",),
    ),
    Mutant(
        "sLSTMCell: bias initialised as a plain weight",
        "fused_rnn/multihead/modules.py",
        '        _init_parameters(self, "slstm")',
        '        _init_parameters(self, "lstm")',
        ("tests/test_slstm_cell.py::test_parameters_init_and_repr",),
    ),
    Mutant(
        "sLSTMCell not exported (so not a weights_only safe global)",
        "fused_rnn/__init__.py",
        '    "sLSTMCell",\n',
        "",
        ("tests/test_slstm_cell.py::test_loads_with_weights_only",),
    ),
    Mutant(
        "sLSTMCell: a graph break in forward",
        "fused_rnn/multihead/modules.py",
        "        state = functional.slstm_cell(\n",
        "        torch._dynamo.graph_break()\n        state = functional.slstm_cell(\n",
        ("tests/test_slstm_cell.py::test_compile_fullgraph_matches_eager_without_graph_breaks",),
    ),
    Mutant(
        "sLSTM torch step: the carried dc not scaled by f'",
        "fused_rnn/multihead/torch_steps.py",
        "        dc_in.copy_(dc * f_gate)",
        "        dc_in.copy_(dc)",
        ("tests/test_slstm_cell.py::test_gradcheck",),
    ),
    Mutant(
        "sLSTM Triton step: n' loses half of i'",
        "fused_rnn/backends/triton/multihead.py",
        "    b_n_new = b_f * b_n + b_i\n",
        "    b_n_new = b_f * b_n + 0.5 * b_i\n",
        ("tests/test_slstm_cell.py::test_steps_match_a_plain_float64_loop",),
    ),
    Mutant(
        "Triton projected zoneout: h's keep weights inverted",
        "fused_rnn/backends/triton/sequence.py",
        "torch.lerp(output[rows].to(keep.dtype), h[:active].to(keep.dtype), keep)",
        "torch.lerp(output[rows].to(keep.dtype), h[:active].to(keep.dtype), 1 - keep)",
        ("tests/test_zoneout.py::test_projected_lstm_matches_the_plain_loop",),
    ),
    Mutant(
        "Triton projected zoneout: h's keep weights inverted (the bidirectional layer)",
        "fused_rnn/backends/triton/sequence.py",
        "torch.lerp(output[rows].to(keep.dtype), h[:active].to(keep.dtype), keep)",
        "torch.lerp(output[rows].to(keep.dtype), h[:active].to(keep.dtype), 1 - keep)",
        (
            "tests/test_zoneout.py::test_projected_module_bidirectional_two_layers_on_unsorted_packed_input_matches_the_plain_loop",
        ),
    ),
    Mutant(
        "Triton projected zoneout: no gradient through h's kept share",
        "fused_rnn/backends/triton/sequence.py",
        "torch.mul(grad_h, keep, out=dh_kept[:active])",
        "torch.mul(grad_h, 0 * keep, out=dh_kept[:active])",
        ("tests/test_zoneout.py::test_triton_gradcheck_with_fixed_masks",),
    ),
    Mutant(
        "Triton projected zoneout: the projection gets the kept share's gradient too",
        "fused_rnn/backends/triton/sequence.py",
        "grad_projected[rows] = grad_h * (1 - keep)",
        "grad_projected[rows] = grad_h",
        ("tests/test_zoneout.py::test_projected_lstm_on_packed_rows_matches_the_plain_loop",),
    ),
    Mutant(
        "Triton projected zoneout: c's keep weights taken from the first H columns",
        "fused_rnn/backends/triton/sequence.py",
        "zoneout[:, projected:].contiguous()",
        "zoneout[:, : zoneout.shape[1] - projected].contiguous()",
        ("tests/test_zoneout.py::test_projected_lstm_on_packed_rows_matches_the_plain_loop",),
    ),
    Mutant(
        "Triton LSTM forward kernel: a projected layer's c not zoned",
        "fused_rnn/backends/triton/lstm.py",
        "b_keep_c = load_gate(p_zoneout, 0, rows, cols, mask, H, 1, ACC)\n        b_c_new",
        "b_keep_c = 0.0 * load_gate(p_zoneout, 0, rows, cols, mask, H, 1, ACC)\n        b_c_new",
        ("tests/test_zoneout.py::test_projected_lstm_matches_the_plain_loop",),
    ),
    Mutant(
        "Triton LSTM backward kernel: a projected layer's c passes no kept gradient",
        "fused_rnn/backends/triton/lstm.py",
        "b_keep_c = load_gate(p_zoneout, 0, rows, cols, mask, H, 1, ACC)\n        b_dc_kept",
        "b_keep_c = 0.0 * load_gate(p_zoneout, 0, rows, cols, mask, H, 1, ACC)\n        b_dc_kept",
        ("tests/test_zoneout.py::test_projected_lstm_matches_the_plain_loop",),
    ),
    Mutant(
        "adding-problem model blind to the markers",
        "examples/adding_problem.py",
        "        _, h_n = self.rnn(inputs)",
        "        _, h_n = self.rnn(inputs * torch.tensor([1.0, 0.0], device=inputs.device))",
        ("tests/test_adding_problem_example.py",),
    ),
    Mutant(
        "CPU zoneout: the LSTM's h not zoned",
        "csrc/cpu/recurrence.h",
        "                                if (!shape.projected) {\n",
        "                                if (false) {\n",
        ("tests/test_native_sequence.py::test_zoneout_matches_the_plain_loop",),
    ),
    Mutant(
        "CPU zoneout backward: W_hh's product overwrites the LSTM's kept share of dh",
        "csrc/cpu/recurrence.h",
        "const bool direct = C == CellKind::gru || (C == CellKind::lstm && buf.zoneout);",
        "const bool direct = C == CellKind::gru;",
        ("tests/test_native_sequence.py::test_zoneout_matches_the_plain_loop",),
    ),
    Mutant(
        "CPU zoneout backward: the GRU's kept share lost",
        "csrc/cpu/recurrence.h",
        "(keep ? d.h_prev + dh_kept : d.h_prev).store(",
        "d.h_prev.store(",
        ("tests/test_native_sequence.py::test_zoneout_gradcheck_with_fixed_masks",),
    ),
    Mutant(
        "zoneout backward: kept and fresh shares swapped (shared math)",
        "csrc/cell_math.h",
        "    return {keep * grad, (V(1) - keep) * grad};",
        "    return {(V(1) - keep) * grad, keep * grad};",
        ("tests/test_native_sequence.py::test_zoneout_gradcheck_with_fixed_masks",),
    ),
    Mutant(
        "remembered torch.nn route: the verdict's key ignores the input's width",
        "fused_rnn/functional.py",
        "        input.shape[-1],\n        batch,\n",
        "        batch,\n",
        ("tests/test_modules.py::test_a_module_on_the_remembered_route_still_refuses_another_input_width",),
    ),
    Mutant(
        "remembered torch.nn route: the verdict's key ignores padded against packed",
        "fused_rnn/functional.py",
        "        batch,\n        padded,\n        grads,\n",
        "        batch,\n        grads,\n",
        ("tests/test_modules.py::test_a_packed_call_after_a_padded_one_runs_what_a_fresh_module_runs",),
    ),
    Mutant(
        "remembered torch.nn route: the verdicts never dropped",
        "fused_rnn/functional.py",
        "                verdicts.clear()\n",
        "                pass\n",
        ("tests/test_modules.py::test_the_remembered_verdicts_stay_bounded",),
    ),
    Mutant(
        "zoneout cells draw masks in eval mode",
        "fused_rnn/modules.py",
        "                    self.training,\n                )\n        if unbatched:",
        "                    True,\n                )\n        if unbatched:",
        ("tests/test_zoneout.py::test_cell_eval_is_the_expectation",),
    ),
    Mutant(
        "LockedDropout keeps a feature with probability p",
        "fused_rnn/regularizers.py",
        ".bernoulli_(1 - self.p)",
        ".bernoulli_(self.p)",
        (
            "tests/test_regularizers.py::test_locked_dropout_keeps_a_feature_with_probability_one_minus_p_scaled_by_its_inverse",
        ),
    ),
    Mutant(
        "LayerNorm LSTM/GRU drop between layers in eval too",
        "fused_rnn/layernorm/modules.py",
        "            if self.dropout > 0 and self.training and layer < self.num_layers - 1:",
        "            if self.dropout > 0 and layer < self.num_layers - 1:",
        ("tests/test_layernorm.py::test_dropout_between_layers_in_training_only",),
    ),
    Mutant(
        "multi-head layers drop after the last layer too",
        "fused_rnn/multihead/modules.py",
        "            if self.dropout > 0 and self.training and layer < self.num_layers - 1:",
        "            if self.dropout > 0 and self.training:",
        ("tests/test_multihead.py::test_dropout_between_layers_in_training_only",),
    ),
    Mutant(
        "torch.nn's kernels: the reverse direction's output left in reversed time",
        "fused_rnn/backends/torch_rnn.py",
        "    if reverse:\n        output = _time_reversed(output, batch_sizes)\n",
        "",
        ("tests/test_functional.py::test_reverse_is_the_backward_direction_of_torch_nns_bidirectional_layer",),
    ),
    Mutant(
        "CPU driver: every chunk of input gates indexed from row 0",
        "csrc/sequence.cpp",
        "return InputGates<scalar_t>{current.data_ptr<scalar_t>(), first_row};",
        "return InputGates<scalar_t>{current.data_ptr<scalar_t>(), 0};",
        ("tests/test_native_sequence.py::test_a_sequence_past_one_chunk_of_input_gates_matches_torch_nn",),
    ),
    Mutant(
        "build lock: a lock file left behind taken for a held lock",
        "fused_rnn/backends/native.py",
        "    if advisory is None:\n        return lock\n",
        "    return lock\n",
        ("tests/test_native_modules.py::test_a_held_build_lock_is_named_and_a_lock_file_left_behind_is_not",),
    ),
    Mutant(
        "build lock: older torch's FileBaton probed as an advisory lock",
        "fused_rnn/backends/native.py",
        'return None if hasattr(cpp_extension, "FileBaton") else getattr(cpp_extension, "FileLock", None)',
        'return getattr(cpp_extension, "FileLock", None)',
        ("tests/test_native_modules.py::test_a_held_build_lock_is_named_and_a_lock_file_left_behind_is_not",),
    ),
    Mutant(
        "LayerNormGRUCell not exported (so not a weights_only safe global)",
        "fused_rnn/__init__.py",
        '    "LayerNormGRUCell",\n',
        "",
        ("tests/test_deploy.py::test_every_exported_module_round_trips_with_weights_only",),
    ),
]


def scratch_copy(destination: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "*.so")
    shutil.copytree(ROOT, destination, ignore=ignore)


def build_extension(copy: Path) -> str | None:
    """Compiles the copy's csrc/ into the copy's fused_rnn/_C, which its tests then import first: without it the
    editable install hands them the original's compiled kernels, and a csrc/ mutant is never run. Only the CPU half
    where no GPU is visible (the CUDA kernels could not run; they take most of the build's time). None once built,
    else the build's last lines."""
    import torch

    environment = dict(os.environ)
    if not torch.cuda.is_available():
        environment["CUDA_HOME"] = str(copy / "no-cuda-toolkit")  # native.cuda_unbuildable: "nvcc was not found"
    command = [sys.executable, "setup.py", "build_ext", "--inplace"]
    result = subprocess.run(command, cwd=copy, env=environment, capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stdout + result.stderr)[-500:]


def run(mutant: Mutant) -> str:
    """'killed', 'SURVIVED', 'not checked (...)' or 'STALE (...)' for one mutant."""
    with tempfile.TemporaryDirectory(prefix="fused_rnn_mutant_") as scratch:
        copy = Path(scratch) / "repo"
        scratch_copy(copy)
        target = copy / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            return f"STALE (the edit matches {text.count(mutant.old)} times in {mutant.path})"
        target.write_text(text.replace(mutant.old, mutant.new))
        if mutant.path.startswith("csrc/"):
            failure = build_extension(copy)
            if failure is not None:
                return f"STALE (the mutant does not build: {failure})"
        # The copy's root goes first on the path, ahead of an editable install of the original.
        env = {**os.environ, "PYTHONPATH": str(copy)}
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.targets]
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
        if result.returncode == 1:
            return "killed"
        if result.returncode < 0:  # the tests crashed (a mutant that reads out of bounds): CI fails as surely
            return f"killed (the tests died of signal {-result.returncode})"
        if result.returncode == 0 and "passed" not in summary:
            return f"not checked ({summary})"
        if result.returncode == 0:
            return f"SURVIVED ({summary})"
        return f"STALE (pytest exit {result.returncode}: {summary})"


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    outcomes = {}
    for mutant in chosen:
        outcomes[mutant.name] = run(mutant)
        print(f"{outcomes[mutant.name]:>10}  {mutant.name}", flush=True)
    bad = [name for name, outcome in outcomes.items() if outcome.startswith(("SURVIVED", "STALE"))]
    print(f"{len(chosen) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
