"""LayerNorm LSTM and GRU layers and cells as torch.nn-style modules.

The equations (Ba et al. 2016 in haste's form: the input and recurrent pre-activations each normalized over their
whole 4H/3H row, the LSTM's cell state over H) are in fused_rnn.layernorm.reference's docstring.

Parameters per layer k, with `_reverse` for the second direction, named as torch.nn.LSTM/GRU's where they have the
same role:
- weight_ih_l{k} (G * hidden_size, input size of the layer) and weight_hh_l{k} (G * hidden_size, hidden_size),
  G = 4 (i, f, g, o) or 3 (r, z, n), in torch.nn's gate order.
- LSTM: bias_ih_l{k} (4 * hidden_size,), the one bias b added after both normalizations (a second would only add
  to it; as IndRNN's one bias, it keeps torch.nn's name for the input side). GRU: bias_ih_l{k} and bias_hh_l{k}
  (3 * hidden_size,), since the reset gate scales the recurrent n-part with its bias.
- norm_ih_weight_l{k}, norm_hh_weight_l{k} (G * hidden_size,): the gains of the input and recurrent normalizations.
- LSTM: norm_c_weight_l{k}, norm_c_bias_l{k} (hidden_size,): gain and shift of the cell-state normalization.
Initialisation: weights and biases uniform in (-1/sqrt(hidden_size), 1/sqrt(hidden_size)) as torch.nn's recurrent
layers; gains 1 and shifts 0 as torch.nn.LayerNorm.
"""

import math

import torch
from torch import nn

from fused_rnn.layer_input import cell_input, checked_size, layer_input
from fused_rnn.layernorm import functional
from fused_rnn.layernorm.functional import checked_backend
from fused_rnn.layernorm.reference import GATES


def _parameter_shapes(cell: str, input_size: int, hidden_size: int, bias: bool) -> dict[str, tuple[int, ...]]:
    """Name (without the layer suffix) -> shape of one direction's parameters, in registration order."""
    width = GATES[cell] * hidden_size
    shapes = {"weight_ih": (width, input_size), "weight_hh": (width, hidden_size)}
    if bias:
        shapes.update({"bias_ih": (width,)} if cell == "lstm" else {"bias_ih": (width,), "bias_hh": (width,)})
    shapes.update({"norm_ih_weight": (width,), "norm_hh_weight": (width,)})
    if cell == "lstm":
        shapes.update({"norm_c_weight": (hidden_size,), "norm_c_bias": (hidden_size,)})
    return shapes


def _init_parameters(module: nn.Module, hidden_size: int):
    bound = 1.0 / math.sqrt(hidden_size)
    for name, parameter in module.named_parameters(recurse=False):
        if name.startswith("norm_") and "_weight" in name:
            nn.init.ones_(parameter)
        elif name.startswith("norm_"):
            nn.init.zeros_(parameter)
        else:
            nn.init.uniform_(parameter, -bound, bound)


class _LayerNormRNN(nn.Module):
    CELL = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = checked_size("input_size", input_size)
        self.hidden_size = checked_size("hidden_size", hidden_size)
        self.num_layers = checked_size("num_layers", num_layers)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = float(dropout)
        self.backend = checked_backend(backend)
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for suffix in ("", "_reverse")[:directions]:
                for name, shape in _parameter_shapes(self.CELL, layer_input, hidden_size, self.bias).items():
                    self.register_parameter(f"{name}_l{layer}{suffix}", nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def reset_parameters(self):
        _init_parameters(self, self.hidden_size)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0, "bidirectional": False}
        for name, default in {**defaults, "backend": "auto"}.items():
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        return text

    def _run_direction(self, x, state, layer, reverse, batch_sizes):
        suffix = f"_l{layer}{'_reverse' if reverse else ''}"
        weights = [getattr(self, f"{name}{suffix}", None) for name in _parameter_shapes(self.CELL, 1, 1, True)]
        run = functional.layernorm_lstm if self.CELL == "lstm" else functional.layernorm_gru
        return run(x, state, *weights, batch_sizes=batch_sizes, reverse=reverse, backend=self.backend)

    def forward(self, input, hx=None):
        layout = layer_input(type(self).__name__, input, self.input_size, self.batch_first, hx)
        x, batch_sizes = layout.x, layout.batch_sizes
        states = layout.sorted_states(self._initial_states(hx, x, layout.batch, layout.unbatched))

        directions = 2 if self.bidirectional else 1
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                state = tuple(s[index] for s in states) if self.CELL == "lstm" else states[0][index]
                output, final = self._run_direction(x, state, layer, direction == 1, batch_sizes)
                outputs.append(output)
                finals.append(final if self.CELL == "lstm" else (final,))
            x = torch.cat(outputs, -1) if directions == 2 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        output, finals = layout.output(x, [torch.stack(parts) for parts in zip(*finals)])
        return output, (tuple(finals) if self.CELL == "lstm" else finals[0])

    def _initial_states(self, hx, x, batch, unbatched) -> list:
        """[h0] or [h0, c0], each (num_layers * num_directions, B, hidden_size)."""
        shape = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        names = ("h0", "c0") if self.CELL == "lstm" else ("hx",)
        if hx is None:
            return [x.new_zeros(shape) for _ in names]
        if self.CELL == "lstm":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx must be a tuple (h0, c0) for {type(self).__name__}, got {type(hx).__name__}")
            given = list(hx)
        else:
            given = [hx]
        expected = (shape[0], shape[2]) if unbatched else shape
        states = []
        for name, state in zip(names, given):
            if not isinstance(state, torch.Tensor):
                raise TypeError(f"{name} must be a Tensor, got {type(state).__name__}")
            if tuple(state.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(state.shape)}")
            states.append(state.unsqueeze(1) if unbatched else state)
        return states


class LayerNormLSTM(_LayerNormRNN):
    """Multi-layer LayerNorm LSTM with torch.nn.LSTM's arguments and conventions (no proj_size).

    gates = LN(x W_ih^T; gain_ih) + LN(h W_hh^T; gain_hh) + b, each normalization over the whole 4H row as haste's
    LayerNormLSTM; c' = sigmoid(f) c + sigmoid(i) tanh(g); h' = sigmoid(o) tanh(LN(c'; gain_c, shift_c)). See the
    module docstring for the parameters.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as torch.nn.LSTM.
        proj_size: must be 0 (a projection is not supported).
        backend: "auto", "triton", "cuda", "cpu", "torch" or "reference"
            (see fused_rnn.layernorm.functional.layernorm_lstm).

    Inputs: input (T, B, I), (B, T, I) when batch_first, unbatched (T, I), or a PackedSequence; hx = (h0, c0), each
    (num_layers * num_directions, B, hidden_size) or (num_layers * num_directions, hidden_size) when unbatched;
    zeros when None.

    Outputs: output (T, B, num_directions * hidden_size) (batch_first, unbatched or packed like the input) and
    (h_n, c_n) shaped like hx.
    """

    CELL = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *args, proj_size: int = 0, **kwargs):
        if proj_size != 0:
            raise ValueError(f"proj_size is not supported by LayerNormLSTM (got {proj_size!r}); leave it 0")
        super().__init__(input_size, hidden_size, num_layers, *args, **kwargs)


class LayerNormGRU(_LayerNormRNN):
    """Multi-layer LayerNorm GRU with torch.nn.GRU's arguments and conventions.

    a = LN(x W_ih^T; gain_ih) + b_ih and u = LN(h W_hh^T; gain_hh) + b_hh, each over the whole 3H row as haste's
    LayerNormGRU; r = sigmoid(a_r + u_r), z = sigmoid(a_z + u_z), n = tanh(a_n + r * u_n), h' = (1 - z) n + z h.
    See the module docstring for the parameters.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as torch.nn.GRU.
        backend: "auto", "triton", "cuda", "cpu", "torch" or "reference"
            (see fused_rnn.layernorm.functional.layernorm_gru).

    Inputs: input as LayerNormLSTM's; hx (num_layers * num_directions, B, hidden_size), or
    (num_layers * num_directions, hidden_size) when unbatched; zeros when None.

    Outputs: output as LayerNormLSTM's and h_n shaped like hx.
    """

    CELL = "gru"


class _LayerNormCell(nn.Module):
    CELL = ""

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, backend: str = "auto", device=None, dtype=None
    ):
        super().__init__()
        self.input_size = checked_size("input_size", input_size)
        self.hidden_size = checked_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.backend = checked_backend(backend)
        factory = {"device": device, "dtype": dtype}
        for name, shape in _parameter_shapes(self.CELL, input_size, hidden_size, self.bias).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def reset_parameters(self):
        _init_parameters(self, self.hidden_size)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, bias={self.bias}"
        return text if self.backend == "auto" else f"{text}, backend={self.backend!r}"

    def forward(self, input, hx=None):
        x, unbatched = cell_input(type(self).__name__, input, self.input_size)
        if hx is not None:
            states = hx if self.CELL == "lstm" else (hx,)
            if self.CELL == "lstm" and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                raise TypeError(f"hx must be a tuple (h, c) for {type(self).__name__}, got {type(hx).__name__}")
            for state in states:
                if not isinstance(state, torch.Tensor):
                    raise TypeError(f"hx must be a Tensor, got {type(state).__name__}")
                if state.dim() != input.dim():
                    raise ValueError(f"hx must be {input.dim()}-D like input, got {state.dim()}-D")
            states = tuple(s.unsqueeze(0) if unbatched else s for s in states)
            hx = states if self.CELL == "lstm" else states[0]
        names = _parameter_shapes(self.CELL, 1, 1, True)
        weights = [getattr(self, name, None) for name in names]
        if self.CELL == "lstm":
            h, c = functional.layernorm_lstm_cell(x, hx, *weights, backend=self.backend)
            return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)
        h = functional.layernorm_gru_cell(x, hx, *weights, backend=self.backend)
        return h.squeeze(0) if unbatched else h


class LayerNormLSTMCell(_LayerNormCell):
    """One LayerNorm LSTM step (equations as LayerNormLSTM's), with torch.nn.LSTMCell's arguments and conventions.

    Parameters: weight_ih (4H, I), weight_hh (4H, H), bias_ih (4H,), norm_ih_weight, norm_hh_weight (4H,),
    norm_c_weight, norm_c_bias (H,). Inputs: input (B, I) or unbatched (I,), hx = (h, c) each (B, H) or (H,), zeros
    when None. Returns (h', c') shaped like hx.
    """

    CELL = "lstm"


class LayerNormGRUCell(_LayerNormCell):
    """One LayerNorm GRU step (equations as LayerNormGRU's), with torch.nn.GRUCell's arguments and conventions.

    Parameters: weight_ih (3H, I), weight_hh (3H, H), bias_ih, bias_hh, norm_ih_weight, norm_hh_weight (3H,).
    Inputs: input (B, I) or unbatched (I,), hx (B, H) or (H,), zeros when None. Returns h' shaped like hx.
    """

    CELL = "gru"
