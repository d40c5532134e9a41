"""Multi-head recurrent layers as torch.nn-style modules: sLSTM, MultiHeadLSTM, MultiHeadGRU, and the one-step
sLSTMCell.

FlashRNN's multi-head recurrence: the hidden state is split into num_heads heads of head_dim = hidden_size /
num_heads units and each head's units feed only that head's gates, so the recurrent weight is block-diagonal.

Parameters per layer k (and `_reverse` for the second direction), G the number of gates (4 for the LSTM and sLSTM,
3 for the GRU), H = hidden_size:
- weight_ih_l{k} (G * H, input size of the layer): the input projection, gate-major as torch.nn's.
- weight_hh_l{k} (num_heads, G * head_dim, head_dim): each head's block of the recurrent weight; with num_heads=1,
  weight_hh_l{k}[0] is torch.nn's weight_hh_l{k}.
- bias_ih_l{k} (G * H,), and for MultiHeadLSTM/MultiHeadGRU bias_hh_l{k} (G * H,) as torch.nn's (the GRU's b_hn
  sits inside r * (...)); the sLSTM has one bias, since a second would only add to it.

Initialisation: every weight uniform in (-1/sqrt(H), 1/sqrt(H)), torch.nn's rule, so MultiHeadLSTM/MultiHeadGRU with
num_heads=1 are initialised as torch.nn.LSTM/GRU. The sLSTM's bias is zero except the forget gate's, which spans 3
to 6 linearly over each head's units (forget gates sigmoid(3) = 0.95 to sigmoid(6) = 0.998): the xLSTM paper and
FlashRNN initialise forget-gate biases positive and spread over a range per head, so that units start remembering
over a range of time scales; the exact range here is our choice.
"""

import math

import torch
from torch import nn

from fused_rnn.layer_input import cell_input, checked_size, layer_input
from fused_rnn.multihead import functional
from fused_rnn.multihead.functional import checked_backend, checked_forget_gate
from fused_rnn.multihead.reference import GATES, STATES

SLSTM_FORGET_BIAS_RANGE = (3.0, 6.0)


def _init_parameters(module: nn.Module, cell: str):
    """torch.nn's uniform init for every weight (and the headed LSTM/GRU's biases); the sLSTM's bias as the module
    docstring says."""
    bound = 1.0 / math.sqrt(module.hidden_size)
    for name, parameter in module.named_parameters(recurse=False):
        if cell == "slstm" and name.startswith("bias"):
            _init_slstm_bias(parameter, module.num_heads, module.head_dim)
        else:
            nn.init.uniform_(parameter, -bound, bound)


@torch.no_grad()
def _init_slstm_bias(bias: torch.Tensor, num_heads: int, head_dim: int):
    bias.zero_()
    low, high = SLSTM_FORGET_BIAS_RANGE
    per_head = torch.linspace(low, high, head_dim) if head_dim > 1 else torch.tensor([high])
    bias.view(4, num_heads, head_dim)[1] = per_head.to(bias)


def _checked_heads(hidden_size: int, num_heads) -> int:
    """hidden_size // num_heads once num_heads is a positive int dividing hidden_size; ValueError otherwise."""
    checked_size("num_heads", num_heads)
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size must be divisible by num_heads, got hidden_size={hidden_size}, num_heads={num_heads}"
        )
    return hidden_size // num_heads


def _checked_hx(owner: str, cell: str, hx, expected: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """hx once it is a tuple of tensors, one per state STATES[cell] names, each of shape `expected`; TypeError or
    ValueError naming the state otherwise. owner: the module's class name, for the errors."""
    names = STATES[cell]
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"hx must be a tuple ({', '.join(names)}) for {owner}, got {type(hx).__name__}")
    if len(hx) != len(names):
        raise ValueError(f"hx must be a tuple ({', '.join(names)}) for {owner}, got {len(hx)}")
    for name, s in zip(names, hx):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"hx's {name} must be a Tensor, got {type(s).__name__}")
        if tuple(s.shape) != expected:
            raise ValueError(f"hx's {name} must have shape {expected}, got {tuple(s.shape)}")
    return tuple(hx)


class _MultiHeadRNN(nn.Module):
    cell = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        num_heads: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
        *,
        forget_gate: str = "sigmoid",
    ):
        super().__init__()
        self.input_size = checked_size("input_size", input_size)
        self.hidden_size = checked_size("hidden_size", hidden_size)
        self.num_layers = checked_size("num_layers", num_layers)
        self.head_dim = _checked_heads(hidden_size, num_heads)
        self.num_heads = num_heads
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = float(dropout)
        self.backend = checked_backend(backend)
        self.forget_gate = checked_forget_gate(forget_gate)
        if self.cell != "slstm" and self.forget_gate != "sigmoid":
            raise ValueError(f"forget_gate is the sLSTM's; {type(self).__name__} has torch.nn's sigmoid forget gate")
        factory = {"device": device, "dtype": dtype}
        gates = GATES[self.cell] * hidden_size
        directions = 2 if bidirectional else 1
        biases = ("bias_ih",) if self.cell == "slstm" else ("bias_ih", "bias_hh")
        for layer in range(num_layers):
            in_features = input_size if layer == 0 else hidden_size * directions
            for suffix in ("", "_reverse")[:directions]:
                shapes = {
                    "weight_ih": (gates, in_features),
                    "weight_hh": (num_heads, GATES[self.cell] * self.head_dim, self.head_dim),
                }
                if bias:
                    shapes.update((name, (gates,)) for name in biases)
                for name, shape in shapes.items():
                    self.register_parameter(f"{name}_l{layer}{suffix}", nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def reset_parameters(self):
        _init_parameters(self, self.cell)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = (
            ("num_layers", 1),
            ("num_heads", 1),
            ("bias", True),
            ("batch_first", False),
            ("dropout", 0.0),
            ("bidirectional", False),
            ("backend", "auto"),
        )
        if self.cell == "slstm":
            defaults += (("forget_gate", "sigmoid"),)
        for name, default in defaults:
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        return text

    def _layer_weights(self, layer: int, reverse: bool):
        suffix = f"_l{layer}{'_reverse' if reverse else ''}"
        return tuple(
            getattr(self, f"{name}{suffix}", None) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )

    def _run(self, input, state):
        """(output, final state tuple of (layers * directions, B, H) tensors) for a state tuple or None."""
        layout = layer_input(type(self).__name__, input, self.input_size, self.batch_first, state)
        x, batch_sizes = layout.x, layout.batch_sizes
        state = tuple(layout.sorted_states(self._initial_state(state, x, layout.batch, layout.unbatched)))

        directions = 2 if self.bidirectional else 1
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                output, final = functional.run(
                    self.cell,
                    x,
                    tuple(s[index] for s in state),
                    *self._layer_weights(layer, direction == 1),
                    forget_gate=self.forget_gate,
                    batch_sizes=batch_sizes,
                    reverse=direction == 1,
                    backend=self.backend,
                )
                outputs.append(output)
                finals.append(final)
            x = torch.cat(outputs, -1) if directions == 2 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        output, final = layout.output(x, [torch.stack(f) for f in zip(*finals)])
        return output, tuple(final)

    def _initial_state(self, state, x, batch, unbatched):
        shape = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        if state is None:
            return tuple(x.new_zeros(shape) for _ in STATES[self.cell])
        expected = (shape[0], shape[2]) if unbatched else shape
        checked = _checked_hx(type(self).__name__, self.cell, state, expected)
        return tuple(s.unsqueeze(1) if unbatched else s for s in checked)


class sLSTM(_MultiHeadRNN):  # noqa: N801 (the paper's name)
    """Multi-layer sLSTM (Beck et al. 2024, xLSTM), with torch.nn.LSTM's arguments and conventions.

    Per step, with pre-activations i~, f~, z~, o~ = x W_ih^T + b + (per head) h R^T:
    m' = max(log f + m, i~), c' = f' c + i' tanh(z~), n' = f' n + i', h' = sigmoid(o~) c' / n', where
    i' = exp(i~ - m'), f' = exp(log f + m - m') and log f = log sigmoid(f~) (or f~ with forget_gate="exp"). An empty
    state (n = 0) takes m' = i~. See fused_rnn.multihead.reference.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as torch.nn.LSTM.
        num_heads: heads of the block-diagonal recurrent weight; hidden_size must be divisible by it.
        forget_gate: "sigmoid" (the paper's default) or "exp".
        backend: "auto", "triton", "cuda", "cpu", "torch" or "reference" (see fused_rnn.multihead.functional.slstm).

    Inputs: input (T, B, I), (B, T, I) when batch_first, unbatched (T, I), or a PackedSequence; hx = (h0, c0, n0, m0),
    each (num_layers * num_directions, B, hidden_size) (without B when unbatched), or None for the zero state, which
    FlashRNN also starts from.

    Outputs: output (T, B, num_directions * hidden_size) (batch_first, unbatched or packed like the input) and
    (h_n, c_n, n_n, m_n) shaped like hx: pass them back as hx to continue the sequence.
    """

    cell = "slstm"

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        num_heads=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        forget_gate="sigmoid",
        backend="auto",
        device=None,
        dtype=None,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            num_heads,
            bias,
            batch_first,
            dropout,
            bidirectional,
            backend,
            device,
            dtype,
            forget_gate=forget_gate,
        )

    def forward(self, input, hx=None):
        return self._run(input, hx)


class sLSTMCell(nn.Module):  # noqa: N801 (the paper's name)
    """One sLSTM step (the equations, gate order and weight layout of sLSTM), with torch.nn.LSTMCell's conventions.

    Args:
        input_size, hidden_size, bias, device, dtype: as torch.nn.LSTMCell.
        num_heads (keyword-only, as the two below): heads of the block-diagonal recurrent weight; hidden_size must
            be divisible by it.
        forget_gate: "sigmoid" (the paper's default) or "exp".
        backend: "auto", "triton", "cuda", "cpu", "torch" or "reference", as sLSTM's; each call runs the layer's
            fused op for one step ("auto": the Triton step kernel on CUDA; on CPU the compiled kernel for
            float32/float64, else the torch step path).

    Parameters: weight_ih (4H, I), weight_hh (num_heads, 4 * head_dim, head_dim), bias_ih (4H,): sLSTM's
    weight_ih_l0, weight_hh_l0, bias_ih_l0 without the suffix, initialised alike, so a one-layer sLSTM's state_dict
    loads with its keys' "_l0" removed (as torch.nn.LSTM's into torch.nn.LSTMCell).

    Inputs: input (B, I) or unbatched (I,); hx = (h, c, n, m), sLSTM's state in its order, each (B, H) or unbatched
    (H,), or None for the zero state.

    Outputs: the new state (h', c', n', m') shaped like hx; h' is the step's output. Pass it back as hx for the next
    step: T steps equal sLSTM over the T steps with that state.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        num_heads: int = 1,
        forget_gate: str = "sigmoid",
        backend: str = "auto",
    ):
        super().__init__()
        self.input_size = checked_size("input_size", input_size)
        self.hidden_size = checked_size("hidden_size", hidden_size)
        self.head_dim = _checked_heads(hidden_size, num_heads)
        self.num_heads = num_heads
        self.bias = bool(bias)
        self.forget_gate = checked_forget_gate(forget_gate)
        self.backend = checked_backend(backend)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(num_heads, 4 * self.head_dim, self.head_dim, **factory))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        _init_parameters(self, "slstm")

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("bias", True), ("num_heads", 1), ("forget_gate", "sigmoid"), ("backend", "auto")):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        return text

    def forward(self, input, hx=None):
        x, unbatched = cell_input(type(self).__name__, input, self.input_size)
        if hx is not None:
            expected = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
            hx = tuple(s.unsqueeze(0) if unbatched else s for s in _checked_hx("sLSTMCell", "slstm", hx, expected))
        state = functional.slstm_cell(
            x, hx, self.weight_ih, self.weight_hh, self.bias_ih, forget_gate=self.forget_gate, backend=self.backend
        )
        return tuple(s.squeeze(0) for s in state) if unbatched else state


class MultiHeadLSTM(_MultiHeadRNN):
    """torch.nn.LSTM with a block-diagonal recurrent weight of num_heads heads; num_heads=1 is torch.nn.LSTM.

    Args: torch.nn.LSTM's (no proj_size), and num_heads, backend. Inputs and outputs as torch.nn.LSTM's:
    input, (h0, c0) -> output, (h_n, c_n).
    """

    cell = "lstm"

    def forward(self, input, hx=None):
        return self._run(input, hx)


class MultiHeadGRU(_MultiHeadRNN):
    """torch.nn.GRU with a block-diagonal recurrent weight of num_heads heads; num_heads=1 is torch.nn.GRU.

    Args: torch.nn.GRU's, and num_heads, backend. Inputs and outputs as torch.nn.GRU's: input, h0 -> output, h_n.
    """

    cell = "gru"

    def forward(self, input, hx=None):
        if hx is not None and not isinstance(hx, torch.Tensor):
            raise TypeError(f"hx must be a Tensor for MultiHeadGRU, got {type(hx).__name__}")
        output, (h_n,) = self._run(input, None if hx is None else (hx,))
        return output, h_n
