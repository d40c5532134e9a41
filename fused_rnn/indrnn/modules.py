"""IndRNN layers and cells as torch.nn-style modules.

Li et al. 2018 ("Independently Recurrent Neural Network (IndRNN): Building A Longer and Deeper RNN") define
h_t = act(W x_t + u ⊙ h_{t-1} + b). Here W is `weight_ih_l{k}` (hidden_size, input_size), u is `weight_hh_l{k}`, a
vector of hidden_size (so each hidden unit only sees its own past), and b is `bias_ih_l{k}` (there is one bias:
a second one would only add to it). Parameter names follow torch.nn.RNN's, with `_reverse` for the second
direction.

Initialisation: W and b uniform in (-1/sqrt(hidden_size), 1/sqrt(hidden_size)) as torch.nn's recurrent layers;
u uniform in (0, 1). The paper bounds |u| so that gradients neither explode nor vanish over T steps (with ReLU,
|u| <= gamma**(1/T) for a chosen gradient range gamma) and initialises it inside that range for each task; (0, 1)
starts every unit non-negative (no sign flip from step to step) and contracting, which is safe for any T. For
long sequences where memory matters, re-initialise u closer to 1, or clamp it to the paper's bound during
training, e.g. `with torch.no_grad(): layer.weight_hh_l0.clamp_(0, 2 ** (1 / T))`.
"""

import math

import torch
from torch import nn

from fused_rnn.indrnn import functional
from fused_rnn.indrnn.functional import checked_backend, checked_nonlinearity
from fused_rnn.layer_input import cell_input, checked_size, layer_input


def _init_indrnn_weights(module: nn.Module, hidden_size: int):
    bound = 1.0 / math.sqrt(hidden_size)
    for name, parameter in module.named_parameters(recurse=False):
        if name.startswith("weight_hh"):
            nn.init.uniform_(parameter, 0.0, 1.0)
        else:
            nn.init.uniform_(parameter, -bound, bound)


class IndRNN(nn.Module):
    """Multi-layer IndRNN, h' = act(x W_ih^T + b_ih + u * h), with torch.nn.RNN's arguments and conventions.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as torch.nn.RNN.
        nonlinearity: "relu" (the paper's) or "tanh".
        backend: "auto", "triton", "cuda", "cpu", "torch" or "reference" (see fused_rnn.indrnn.functional.indrnn).

    Parameters per layer k (and `_reverse` for the second direction): weight_ih_l{k} (hidden_size, input size of
    the layer), weight_hh_l{k} (hidden_size,), the elementwise recurrent weight u, and bias_ih_l{k} (hidden_size,).

    Inputs: input (T, B, I), (B, T, I) when batch_first, unbatched (T, I), or a PackedSequence; hx
    (num_layers * num_directions, B, hidden_size), or (num_layers * num_directions, hidden_size) when unbatched;
    zeros when None.

    Outputs: output (T, B, num_directions * hidden_size) (batch_first, unbatched or packed like the input) and
    h_n shaped like hx.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "relu",
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
        self.nonlinearity = checked_nonlinearity(nonlinearity)
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
                self.register_parameter(
                    f"weight_ih_l{layer}{suffix}", nn.Parameter(torch.empty(hidden_size, layer_input, **factory))
                )
                self.register_parameter(
                    f"weight_hh_l{layer}{suffix}", nn.Parameter(torch.empty(hidden_size, **factory))
                )
                if bias:
                    self.register_parameter(
                        f"bias_ih_l{layer}{suffix}", nn.Parameter(torch.empty(hidden_size, **factory))
                    )
        self.reset_parameters()

    def reset_parameters(self):
        _init_indrnn_weights(self, self.hidden_size)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("nonlinearity", "relu"), ("bias", True), ("batch_first", False)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        for name, default in (("dropout", 0.0), ("bidirectional", False), ("backend", "auto")):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        return text

    def _layer_weights(self, layer: int, reverse: bool):
        suffix = f"_l{layer}{'_reverse' if reverse else ''}"
        return (
            getattr(self, f"weight_ih{suffix}"),
            getattr(self, f"weight_hh{suffix}"),
            getattr(self, f"bias_ih{suffix}", None),
        )

    def forward(self, input, hx=None):
        layout = layer_input("IndRNN", input, self.input_size, self.batch_first, hx)
        x, batch_sizes = layout.x, layout.batch_sizes
        (h0,) = layout.sorted_states([self._initial_state(hx, x, layout.batch, layout.unbatched)])

        directions = 2 if self.bidirectional else 1
        h_n = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                output, h = functional.indrnn(
                    x,
                    h0[layer * directions + direction],
                    *self._layer_weights(layer, direction == 1),
                    nonlinearity=self.nonlinearity,
                    batch_sizes=batch_sizes,
                    reverse=direction == 1,
                    backend=self.backend,
                )
                outputs.append(output)
                h_n.append(h)
            x = torch.cat(outputs, -1) if directions == 2 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        output, (h_n,) = layout.output(x, [torch.stack(h_n)])
        return output, h_n

    def _initial_state(self, hx, x, batch, unbatched):
        shape = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        if hx is None:
            return x.new_zeros(shape)
        if not isinstance(hx, torch.Tensor):
            raise TypeError(f"hx must be a Tensor, got {type(hx).__name__}")
        expected_dim = 2 if unbatched else 3
        if hx.dim() != expected_dim:
            raise ValueError(
                f"hx must be {expected_dim}-D for {'unbatched' if unbatched else 'batched'} input, got {hx.dim()}-D"
            )
        expected = (shape[0], shape[2]) if unbatched else shape
        if tuple(hx.shape) != expected:
            raise ValueError(f"hx must have shape {expected}, got {tuple(hx.shape)}")
        return hx.unsqueeze(1) if unbatched else hx


class IndRNNCell(nn.Module):
    """One IndRNN step, h' = act(x W_ih^T + b_ih + u * h); parameters weight_ih (H, I), weight_hh (H,), bias_ih (H,).

    Initialised as IndRNN (see the module docstring). Inputs: input (B, I) or unbatched (I,), hx (B, H) or (H,),
    zeros when None. Returns h' shaped like hx.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "relu",
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = checked_size("input_size", input_size)
        self.hidden_size = checked_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.nonlinearity = checked_nonlinearity(nonlinearity)
        self.backend = checked_backend(backend)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        _init_indrnn_weights(self, self.hidden_size)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, bias={self.bias}, nonlinearity={self.nonlinearity!r}"
        return text if self.backend == "auto" else f"{text}, backend={self.backend!r}"

    def forward(self, input, hx=None):
        x, unbatched = cell_input("IndRNNCell", input, self.input_size)
        if hx is not None:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"hx must be a Tensor, got {type(hx).__name__}")
            if hx.dim() != input.dim():
                raise ValueError(f"hx must be {input.dim()}-D like input, got {hx.dim()}-D")
            hx = hx.unsqueeze(0) if unbatched else hx
        h = functional.indrnn_cell(
            x, hx, self.weight_ih, self.weight_hh, self.bias_ih, nonlinearity=self.nonlinearity, backend=self.backend
        )
        return h.squeeze(0) if unbatched else h
