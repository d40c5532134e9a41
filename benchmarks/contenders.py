"""What a benchmark case runs: its input, and each contender's module holding the same weights.

Contenders: "fused_rnn.<backend>" (fused_rnn.LSTM/GRU/RNN on that backend), "torch.nn" (cuDNN on a
GPU) and "naive_cell_loop" (torch.nn.LSTMCell/GRUCell/RNNCell called once per step from Python).
"""

import copy
import itertools
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from benchmarks.configs import Config

TORCH = "torch.nn"
NAIVE = "naive_cell_loop"
FUSED_PREFIX = "fused_rnn."

TORCH_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}
FUSED_LAYERS = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "rnn_tanh": fused_rnn.RNN}
TORCH_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.RNNCell}

Input = torch.Tensor | PackedSequence


def fused_contender(backend: str) -> str:
    return f"{FUSED_PREFIX}{backend}"


def make_input(config: Config, dtype: torch.dtype, device: torch.device, seed: int) -> Input:
    """(T, B, I) random input, or a PackedSequence of random lengths when the config is packed."""
    generator = torch.Generator().manual_seed(seed)
    if not config.packed:
        shape = (config.steps, config.batch, config.input_size)
        return torch.randn(shape, generator=generator).to(device, dtype)
    lengths = torch.randint(config.min_steps, config.steps + 1, (config.batch,), generator=generator)
    padded = torch.randn(int(lengths.max()), config.batch, config.input_size, generator=generator)
    return pack_padded_sequence(padded.to(device, dtype), lengths, enforce_sorted=False)


def as_leaf(input: Input) -> Input:
    """The same values as a leaf that requires grad, so backward reaches the input."""
    if isinstance(input, PackedSequence):
        data = input.data.detach().requires_grad_()
        return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    return input.detach().requires_grad_()


def output_tensor(output: tuple) -> torch.Tensor:
    """The output sequence of a layer's (output, state) result, as one tensor."""
    sequence = output[0]
    return sequence.data if isinstance(sequence, PackedSequence) else sequence


def make_torch_layer(config: Config, cell: str, dtype: torch.dtype, device: torch.device) -> nn.RNNBase:
    """The torch.nn layer whose weights every contender copies; initialised from torch's random stream."""
    return TORCH_LAYERS[cell](**_layer_arguments(config, dtype, device))


def make_contender(name: str, source: nn.RNNBase, config: Config, cell: str) -> nn.Module:
    """Contender `name`'s module with a copy of `source`'s weights."""
    if name == TORCH:
        layer = copy.deepcopy(source)
        layer.flatten_parameters()
        return layer
    if name == NAIVE:
        return NaiveCellLoop(source, cell)
    if not name.startswith(FUSED_PREFIX):
        raise ValueError(f"unknown contender {name!r}")
    parameter = next(source.parameters())
    layer = FUSED_LAYERS[cell](
        **_layer_arguments(config, parameter.dtype, parameter.device), backend=name.removeprefix(FUSED_PREFIX)
    )
    layer.load_state_dict(source.state_dict())
    return layer


def _layer_arguments(config: Config, dtype: torch.dtype, device: torch.device) -> dict:
    return {
        "input_size": config.input_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "bidirectional": config.bidirectional,
        "dtype": dtype,
        "device": device,
    }


def workload(module: nn.Module, input: Input, mode: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """(run, reset): one forward ("fw", without grad) or training step ("fwbw"); reset drops its gradients.

    The training step is loss = output.sum() and backward to the weights and the input.
    """
    if mode == "fw":

        def forward():
            with torch.no_grad():
                module(input)

        return forward, lambda: None
    if mode != "fwbw":
        raise ValueError(f"mode must be 'fw' or 'fwbw', got {mode!r}")
    leaf = as_leaf(input)
    grad_holders = [*module.parameters(), leaf.data if isinstance(leaf, PackedSequence) else leaf]

    def training_step():
        output_tensor(module(leaf)).sum().backward()

    def reset():
        for tensor in grad_holders:
            tensor.grad = None

    return training_step, reset


class NaiveCellLoop(nn.Module):
    """A torch.nn recurrent layer computed by its cell module, called once per time step from Python.

    Handles stacked layers, both directions and packed input; returns (output, None) as torch.nn's
    layers return (output, state), without collecting the final state.
    """

    def __init__(self, layer: nn.RNNBase, cell: str):
        super().__init__()
        self.directions = 2 if layer.bidirectional else 1
        parameter = next(layer.parameters())
        self.steps = nn.ModuleList()
        for index in range(layer.num_layers):
            for direction in range(self.directions):
                suffix = f"_l{index}{'_reverse' if direction else ''}"
                weight_ih = getattr(layer, f"weight_ih{suffix}")
                step = TORCH_CELLS[cell](
                    weight_ih.shape[1], layer.hidden_size, device=parameter.device, dtype=parameter.dtype
                )
                step.load_state_dict({name: getattr(layer, f"{name}{suffix}") for name in step.state_dict()})
                self.steps.append(step)

    def forward(self, input: Input) -> tuple[Input, None]:
        if isinstance(input, PackedSequence):
            rows, batch_sizes = input.data, input.batch_sizes.tolist()
        else:
            rows, batch_sizes = input.reshape(-1, input.shape[-1]), [input.shape[1]] * input.shape[0]
        for first in range(0, len(self.steps), self.directions):
            directions = [
                _run_direction(self.steps[first + direction], rows, batch_sizes, reverse=direction == 1)
                for direction in range(self.directions)
            ]
            rows = torch.cat(directions, -1)
        if isinstance(input, PackedSequence):
            return PackedSequence(rows, input.batch_sizes, input.sorted_indices, input.unsorted_indices), None
        return rows.reshape(*input.shape[:2], -1), None


def _run_direction(step: nn.Module, rows: torch.Tensor, batch_sizes: list[int], reverse: bool) -> torch.Tensor:
    """Time-major rows (N, I) through one cell; `batch_sizes[t]` sequences are active at step t."""
    offsets = [0, *itertools.accumulate(batch_sizes)]
    outputs = [None] * len(batch_sizes)
    state = None
    for t in reversed(range(len(batch_sizes))) if reverse else range(len(batch_sizes)):
        state = step(rows[offsets[t] : offsets[t + 1]], _fit_state(state, batch_sizes[t]))
        outputs[t] = state[0] if isinstance(state, tuple) else state
    return torch.cat(outputs)


def _fit_state(state, batch: int):
    """The state of the first `batch` sequences. Packed batches shrink going forward and grow in
    reverse, where the sequences that join start from zeros."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(_fit_state(part, batch) for part in state)
    if state.shape[0] >= batch:
        return state[:batch]
    return torch.cat([state, state.new_zeros(batch - state.shape[0], state.shape[1])])
