"""Drop-in replacements for torch.nn.LSTM, GRU, RNN and their cells.

The layers subclass torch.nn.RNNBase and the cells their torch.nn cell, so the constructor,
parameter names, shapes, initialisation and state_dict are torch.nn's own; only forward runs on
fused_rnn's backends, chosen by the extra `backend` argument ("auto" by default). The layers are
deliberately not subclasses of torch.nn.LSTM/GRU/RNN: torch.compile refuses to trace any instance of
those (it breaks the graph), which is one of the things these layers exist to fix.

The LSTM and GRU layers and cells also take `zoneout` (Krueger et al. 2016), which torch.nn lacks.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from fused_rnn import functional
from fused_rnn.backends import checked_name, torch_rnn
from fused_rnn.layer_input import cell_input, layer_input


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs recurrent layers in on this device (as torch.nn's), or None when it is off."""
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _autocast(tensor, dtype: torch.dtype | None):
    """`tensor` as autocast would hand it to a lower-precision op: floating types but float64 cast to `dtype`."""
    if dtype is None or tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float64:
        return tensor
    return tensor.to(dtype)


ZONEOUT_DOC = """
    zoneout (Krueger et al. 2016, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations"): in
    training each unit of each state keeps its previous value with probability p at every step, per (step, batch
    row, unit): s_t = d * s_{t-1} + (1 - d) * s~_t with d ~ Bernoulli(p), s~_t the cell's usual update; in eval mode
    the expectation, s_t = p * s_{t-1} + (1 - p) * s~_t. The output at step t is the zoned h_t. The LSTM zones h and
    c, with `zoneout=p` for both or `zoneout=(p_hidden, p_cell)` (Krueger et al. use different rates, e.g. 0.05 for
    h and 0.5 for c); its h~_t = o * tanh(c~_t) is computed from the unzoned c~_t, as in the paper, and with proj_size
    h~_t is the projected one, so h's masks have proj_size units. The masks are
    drawn once per forward call for all steps, one torch.bernoulli per layer and direction on the input's device
    from torch's default generator (torch.manual_seed reproduces them; torch.compile's inductor may draw its own
    random numbers; torch._inductor.config.fallback_random = True keeps eager's); packed input gets one mask row per
    packed row. Runs on backend "triton" (the kernels read the masks; with proj_size h is zoned after the W_hr GEMM,
    which runs outside the kernels), "cpu" and "cuda" (the compiled kernels zone in their cell math, with proj_size h
    after their W_hr product) and "reference"; "auto" picks Triton on CUDA and "cpu" on CPU (the reference where those
    cannot run, e.g. float16 on CPU or without the compiled extension); "torch" and "persistent" refuse it. zoneout=0
    (the default) runs exactly what the layer runs without it.

    haste's `zoneout` (haste_pytorch.LSTM/GRU) takes one rate and applies it to h only, with masks drawn as
    Bernoulli(1 - p) over (T, B, H) (1 = update) and, in eval mode, the same expectation as here; its LSTM equals
    ours with zoneout=(p, 0.0) up to the random draws. torch.nn has no zoneout, so to_torch refuses a layer with it.
"""


def _checked_zoneout(zoneout, cell: str):
    """`zoneout` once valid for `cell` (named TypeError/ValueError otherwise), as the user gave it."""
    functional.checked_zoneout(zoneout, cell)
    return tuple(zoneout) if isinstance(zoneout, list) else zoneout


def _repr_options(module) -> str:
    """The constructor arguments beyond torch.nn's that differ from their defaults, for extra_repr."""
    options = "" if module.backend == "auto" else f", backend={module.backend!r}"
    if any(functional.checked_zoneout(module.zoneout, module._cell())):
        options += f", zoneout={module.zoneout}"
    return options


# The module attribute in which functional.layers_on_torch_nn and step_on_torch_nn remember their verdicts.
_VERDICTS = "_torch_nn_verdicts"


def _remembered_verdicts(module, input, dim: int) -> dict | None:
    """`module`'s torch.nn-route verdicts when its call with `input` may take the remembered route: eager, a plain
    tensor of `dim` dimensions, no zoneout, no autocast (the general path casts); None otherwise."""
    if torch.compiler.is_compiling():  # traced: the general path, whose every step torch.compile sees
        return None
    verdicts = module.__dict__.get(_VERDICTS)
    if (
        not verdicts
        or type(input) is not torch.Tensor
        or input.dim() != dim
        or module.zoneout
        or torch._C._is_any_autocast_enabled()  # as torch.nn's RNNBase asks
    ):
        return None
    return verdicts


class _RemembersVerdicts:
    """Drops the torch.nn-route verdicts from a copy or a pickle: they name the weights' storage by address, which a
    copy or another process does not share."""

    def __getstate__(self):
        state = super().__getstate__()
        state.pop(_VERDICTS, None)
        return state


class _FusedRNNBase(_RemembersVerdicts):
    """forward() for the multi-layer modules; mixed into subclasses of torch.nn.RNNBase."""

    zoneout = 0.0

    def _cell(self) -> str:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return super().extra_repr() + _repr_options(self)

    def _layer_weights(self, layer: int, reverse: bool):
        suffix = f"_l{layer}{'_reverse' if reverse else ''}"

        def get(name):
            # The parameter dict first: Module.__getattr__ is the slow way to it. What is not in it (a parametrization's
            # computed tensor) is an attribute.
            weight = self._parameters.get(name + suffix)
            return weight if weight is not None else getattr(self, name + suffix, None)

        weight_hr = get("weight_hr") if self.proj_size > 0 else None
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), weight_hr

    def forward(self, input, hx=None):
        result = self._forward_remembered_on_torch_nn(input, hx)
        if result is not None:
            return result
        layout = layer_input(type(self).__name__, input, self.input_size, self.batch_first, hx)
        # Under autocast the input and the states may arrive in different dtypes (an fp32 hx beside a bf16 input
        # from an autocast op); like torch.nn, cast them first and check that they agree after.
        cast = _autocast_dtype(layout.x.device.type)
        x = _autocast(layout.x, cast)
        states = [s for s in self._initial_state(hx, x, layout.batch, layout.unbatched, cast) if s is not None]
        if hx is not None:  # zeros need no sorting
            states = layout.sorted_states(states)
        h0, c0 = states[0], states[1] if len(states) == 2 else None

        if cast is None:
            output, h_n, c_n = self._run_layers(x, h0, c0, layout.batch_sizes, cast)
        else:
            with torch.autocast(x.device.type, enabled=False):
                output, h_n, c_n = self._run_layers(x, h0, c0, layout.batch_sizes, cast)

        output, finals = layout.output(output, [h_n] if c_n is None else [h_n, c_n])
        return output, tuple(finals) if c_n is not None else finals[0]

    def _forward_remembered_on_torch_nn(self, input, hx):
        """forward's result for a batched tensor or a PackedSequence, without autocast or zoneout, when this module's
        verdicts (recorded by the general path below) say that torch.nn's op runs it with these weights: the same call
        of that op, as torch.nn's layer makes it, without the general path's handling of every input form and its
        checks of the batch sizes. None otherwise.

        The general path costs Python time that torch.nn's layer does not spend, and right after a backward, with
        cold caches, Python time doubles: at B=1 T=32 H=64 it made a training step 1.05x torch.nn's; on packed
        bfloat16 input (B=8, T<=32, H=64) inference took 1.04x."""
        packed = isinstance(input, PackedSequence)
        rows = input.data if packed else input
        verdicts = _remembered_verdicts(self, rows, 2 if packed else 3)
        if verdicts is None or rows.numel() == 0:  # the general path names what is empty
            return None
        parameters = self._parameters
        weights = [parameters.get(name) for name in self._flat_weights_names]
        # A parametrized weight is computed by its attribute, not in _parameters: the general path. (functional_call
        # puts its tensors in _parameters; their new storage misses the verdicts.)
        if any(weight is None for weight in weights):
            return None
        if packed:
            batch = int(input.batch_sizes[0])
        else:
            batch = input.shape[0] if self.batch_first else input.shape[1]
        states = () if hx is None else hx if isinstance(hx, (tuple, list)) else (hx,)
        grads = torch.is_grad_enabled() and (
            rows.requires_grad
            or any(weight.requires_grad for weight in weights)
            or any(isinstance(state, torch.Tensor) and state.requires_grad for state in states)
        )
        if not functional.remembered_on_torch_nn(verdicts, self.backend, rows, batch, not packed, grads, weights):
            return None
        h0, c0 = self._initial_state(hx, rows, batch, False, None)
        if packed and hx is not None and input.sorted_indices is not None:  # the packed batch's order
            h0, c0 = (s.index_select(1, input.sorted_indices) if s is not None else None for s in (h0, c0))
        output, h_n, c_n = torch_rnn.layers(
            self._cell(),
            rows,
            h0,
            c0,
            weights,
            self.bias,
            self.num_layers,
            input.batch_sizes if packed else None,
            self.dropout if self.training else 0.0,
            self.training or grads,
            self.bidirectional,
            self.batch_first,
        )
        if packed:
            output = PackedSequence(output, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            if input.unsorted_indices is not None:  # the final states in the input's order
                h_n, c_n = (s.index_select(1, input.unsorted_indices) if s is not None else None for s in (h_n, c_n))
        return output, (h_n, c_n) if c_n is not None else h_n

    def _run_layers(self, x, h0, c0, batch_sizes, cast):
        directions = 2 if self.bidirectional else 1
        cell = self._cell()
        weights = [
            self._layer_weights(layer, direction == 1)
            for layer in range(self.num_layers)
            for direction in range(directions)
        ]
        if cast is not None:
            weights = [tuple(_autocast(w, cast) for w in layer_weights) for layer_weights in weights]
        on_torch_nn = functional.layers_on_torch_nn(
            cell,
            x,
            h0,
            c0,
            weights,
            batch_sizes,
            self.backend,
            self.zoneout,
            self.training,
            self.dropout,
            self.bidirectional,
            self.__dict__.setdefault(_VERDICTS, {}),
        )
        if on_torch_nn is not None:
            return on_torch_nn
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                output, h, c = functional.sequence(
                    cell,
                    x,
                    h0[index],
                    c0[index] if c0 is not None else None,
                    *weights[index],
                    batch_sizes,
                    direction == 1,
                    self.backend,
                    self.zoneout,
                    self.training,
                )
                outputs.append(output)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, -1) if directions == 2 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        # One layer and direction: a view (as stack would copy) of its final states, which nothing else holds.
        stack = (lambda states: states[0].unsqueeze(0)) if len(h_n) == 1 else torch.stack
        return x, stack(h_n), stack(c_n) if c0 is not None else None

    def _initial_state(self, hx, x, batch, unbatched, cast):
        directions = 2 if self.bidirectional else 1
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h_shape = (self.num_layers * directions, batch, h_size)
        c_shape = (self.num_layers * directions, batch, self.hidden_size)
        has_c = self._cell() == "lstm"
        if hx is None:
            zeros = lambda shape: x.new_zeros(shape)
            return zeros(h_shape), zeros(c_shape) if has_c else None
        if has_c:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx must be a tuple (h_0, c_0) for an LSTM, got {type(hx).__name__}")
            states = [("h_0", hx[0], h_shape), ("c_0", hx[1], c_shape)]
        else:
            states = [("hx", hx, h_shape)]
        checked = []
        for name, state, shape in states:
            if not isinstance(state, torch.Tensor):
                raise TypeError(f"{name} must be a Tensor, got {type(state).__name__}")
            expected_dim = 2 if unbatched else 3
            if state.dim() != expected_dim:
                raise ValueError(
                    f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} input, {name} should also be "
                    f"{expected_dim}-D but got {state.dim()}-D tensor"
                )
            if unbatched:
                state = state.unsqueeze(1)
            if tuple(state.shape) != shape:
                got = tuple(state.shape[:1] + state.shape[2:]) if unbatched else tuple(state.shape)
                want = (shape[0], shape[2]) if unbatched else shape
                raise ValueError(f"Expected {name} size {want}, got {got}")
            checked.append(functional.checked_state(name, _autocast(state, cast), x, shape))
        return checked[0], checked[1] if has_c else None

    def to_torch(self) -> nn.Module:
        """The same layer as a torch.nn module (cuDNN on GPU), with copies of the parameters."""
        return _copy_into(self, _TORCH_CLASS[type(self)])

    def __prepare_scriptable__(self):
        _refuse_torchscript(self)


class LSTM(_FusedRNNBase, nn.RNNBase):
    """torch.nn.LSTM on fused kernels; same arguments plus `backend` ("auto", "triton", "torch", "reference") and
    `zoneout` (a number in [0, 1), or a pair (p_hidden, p_cell); default 0.0).
    """

    __doc__ += ZONEOUT_DOC

    def __init__(self, *args, backend: str = "auto", zoneout: float | tuple[float, float] = 0.0, **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self.backend = checked_name(backend)
        self.zoneout = _checked_zoneout(zoneout, "lstm")

    def _cell(self):
        return "lstm"


class GRU(_FusedRNNBase, nn.RNNBase):
    """torch.nn.GRU on fused kernels; same arguments plus `backend` ("auto", "triton", "torch", "reference") and
    `zoneout` (a number in [0, 1); default 0.0).
    """

    __doc__ += ZONEOUT_DOC

    def __init__(self, *args, backend: str = "auto", zoneout: float = 0.0, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)
        self.backend = checked_name(backend)
        self.zoneout = _checked_zoneout(zoneout, "gru")

    def _cell(self):
        return "gru"


class RNN(_FusedRNNBase, nn.RNNBase):
    """torch.nn.RNN on fused kernels; same arguments plus `backend` ("auto", "triton", "torch", "reference")."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        # nonlinearity is the fourth positional argument of torch.nn.RNN, after num_layers.
        if len(args) > 3:
            self.nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(f"RNN_{self.nonlinearity.upper()}", *args, **kwargs)
        self.backend = checked_name(backend)

    def _cell(self):
        return f"rnn_{self.nonlinearity}"


class _FusedCellBase(_RemembersVerdicts):
    """forward() for the cells; mixed into subclasses of torch.nn.RNNCellBase."""

    zoneout = 0.0

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = checked_name(backend)

    def _cell(self) -> str:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return super().extra_repr() + _repr_options(self)

    def forward(self, input, hx=None):
        result = self._forward_remembered_on_torch_nn(input, hx)
        if result is not None:
            return result
        x, unbatched = cell_input(type(self).__name__, input, self.input_size)
        has_c = self._cell() == "lstm"
        cast = _autocast_dtype(x.device.type)  # cast before the dtype checks, as in the layers' forward
        x = _autocast(x, cast)
        if hx is None:
            h = c = None
        elif has_c:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx must be a tuple (h, c) for an LSTMCell, got {type(hx).__name__}")
            h, c = (self._check_state(n, s, x, unbatched, cast) for n, s in (("hx[0]", hx[0]), ("hx[1]", hx[1])))
        else:
            h, c = self._check_state("hx", hx, x, unbatched, cast), None

        weights = [_autocast(w, cast) for w in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)]
        with torch.autocast(x.device.type, enabled=False) if cast is not None else contextlib.nullcontext():
            stepped = functional.step_on_torch_nn(
                self._cell(), x, h, c, weights, self.backend, self.zoneout, self.__dict__.setdefault(_VERDICTS, {})
            )
            if stepped is not None:
                h, c = stepped
            else:
                _, h, c = functional.sequence(
                    self._cell(),
                    x.unsqueeze(0),
                    h,
                    c,
                    *weights,
                    None,
                    None,
                    False,
                    self.backend,
                    self.zoneout,
                    self.training,
                )
        if unbatched:
            h, c = h.squeeze(0), c.squeeze(0) if c is not None else None
        return (h, c) if has_c else h

    def _forward_remembered_on_torch_nn(self, input, hx):
        """forward's result for a batched (B, I) tensor without autocast or zoneout when this cell's verdicts (recorded
        by the general path) say that torch.nn's cell op runs it with these weights and states that pass the checks
        cheaply: the op's call as torch.nn's cell makes it. None otherwise (the general path, with its named errors).

        A step of a cell is one small op: at B=1 H=64 torch.nn's LSTMCell takes about 16 us, and every microsecond
        of argument handling shows."""
        verdicts = _remembered_verdicts(self, input, 2)
        if verdicts is None:
            return None
        parameters = self._parameters
        weights = (
            parameters.get("weight_ih"),
            parameters.get("weight_hh"),
            parameters.get("bias_ih"),
            parameters.get("bias_hh"),
        )
        # A parametrized weight is computed by its attribute, not in _parameters: the general path. (functional_call
        # puts its tensors in _parameters; their new storage misses the verdicts.)
        if weights[0] is None or weights[1] is None or (weights[2] is None or weights[3] is None) == self.bias:
            return None
        cell = self._cell()
        if hx is None:
            h = c = None
            given = ()
        elif cell != "lstm":
            h, c = hx, None
            given = (h,)
        elif isinstance(hx, (tuple, list)) and len(hx) == 2:
            h, c = given = hx
        else:
            return None
        if not functional.states_fit(given, input, self.hidden_size):
            return None
        flat = weights if self.bias else weights[:2]
        grads = torch.is_grad_enabled() and (
            input.requires_grad
            or weights[0].requires_grad
            or weights[1].requires_grad
            or (self.bias and (weights[2].requires_grad or weights[3].requires_grad))
            or (h is not None and h.requires_grad)
            or (c is not None and c.requires_grad)
        )
        if not functional.remembered_on_torch_nn(verdicts, self.backend, input, input.shape[0], True, grads, flat):
            return None
        h, c = torch_rnn.step(cell, input, h, c, *weights)
        return (h, c) if cell == "lstm" else h

    def _check_state(self, name, state, x, unbatched, cast):
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(state).__name__}")
        if state.dim() != x.dim() - unbatched:
            raise ValueError(f"{name} must be {x.dim() - unbatched}-D like input, got {state.dim()}-D")
        state = _autocast(state.unsqueeze(0) if unbatched else state, cast)
        return functional.checked_state(name, state, x, (x.shape[0], self.hidden_size))

    def to_torch(self) -> nn.Module:
        """The same cell as a torch.nn module, with copies of the parameters."""
        return _copy_into(self, _TORCH_CLASS[type(self)])

    def __prepare_scriptable__(self):
        _refuse_torchscript(self)


class LSTMCell(_FusedCellBase, nn.LSTMCell):
    """torch.nn.LSTMCell on fused kernels; same arguments plus `backend` and `zoneout` (as fused_rnn.LSTM's; each
    call is one step and draws its own masks)."""

    def __init__(self, *args, backend: str = "auto", zoneout: float | tuple[float, float] = 0.0, **kwargs):
        super().__init__(*args, backend=backend, **kwargs)
        self.zoneout = _checked_zoneout(zoneout, "lstm")

    def _cell(self):
        return "lstm"


class GRUCell(_FusedCellBase, nn.GRUCell):
    """torch.nn.GRUCell on fused kernels; same arguments plus `backend` and `zoneout` (as fused_rnn.GRU's; each
    call is one step and draws its own masks)."""

    def __init__(self, *args, backend: str = "auto", zoneout: float = 0.0, **kwargs):
        super().__init__(*args, backend=backend, **kwargs)
        self.zoneout = _checked_zoneout(zoneout, "gru")

    def _cell(self):
        return "gru"


class RNNCell(_FusedCellBase, nn.RNNCell):
    """torch.nn.RNNCell on fused kernels; same arguments plus `backend`."""

    def _cell(self):
        return f"rnn_{self.nonlinearity}"


_TORCH_CLASS = {
    LSTM: nn.LSTM,
    GRU: nn.GRU,
    RNN: nn.RNN,
    LSTMCell: nn.LSTMCell,
    GRUCell: nn.GRUCell,
    RNNCell: nn.RNNCell,
}
_FUSED_CLASS = {torch_class: fused for fused, torch_class in _TORCH_CLASS.items()}


def _refuse_torchscript(module: nn.Module):
    """What torch.jit.script meets: it calls __prepare_scriptable__ on every module before compiling it."""
    raise TypeError(
        f"torch.jit.script cannot compile fused_rnn.{type(module).__name__}: its forward is Python, not TorchScript. "
        "Script fused_rnn.to_torch(model) instead (torch.nn's layers, same weights), or use torch.export.export "
        "or torch.compile, which keep the fused kernels."
    )


def _copy_into(module: nn.Module, cls: type, **extra) -> nn.Module:
    """A new `cls` module with `module`'s configuration and a copy of its parameters and mode."""
    if cls in _FUSED_CLASS and any(functional.checked_zoneout(getattr(module, "zoneout", 0.0), module._cell())):
        raise ValueError(
            f"torch.nn.{cls.__name__} has no zoneout, so fused_rnn.{type(module).__name__}(zoneout={module.zoneout}) "
            "has no torch.nn equivalent (its eval mode computes the expectation over the masks)"
        )
    config = {"input_size": module.input_size, "hidden_size": module.hidden_size, "bias": module.bias}
    if isinstance(module, nn.RNNBase):
        config.update(
            num_layers=module.num_layers,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
    if getattr(module, "mode", None) == "LSTM":
        config["proj_size"] = module.proj_size
    if hasattr(module, "nonlinearity"):
        config["nonlinearity"] = module.nonlinearity
    parameter = next(module.parameters())
    with torch.device("meta"):  # no initialisation: it would draw from the user's random stream
        copy = cls(**config, dtype=parameter.dtype, **extra)
    copy = copy.to_empty(device=parameter.device)
    copy.load_state_dict(module.state_dict())
    for parameter, copied in zip(module.parameters(), copy.parameters(), strict=True):
        copied.requires_grad_(parameter.requires_grad)  # frozen layers stay frozen
    return copy.train(module.training)


def from_torch(module: nn.Module, backend: str = "auto") -> nn.Module:
    """fused_rnn's version of a torch.nn recurrent module, with a copy of its parameters.

    Given any other module, replaces every torch.nn.LSTM/GRU/RNN/LSTMCell/GRUCell/RNNCell inside it
    (in place) and returns it, so `model = fused_rnn.from_torch(model)` converts a whole model. A module
    reached through several attributes becomes one fused module, and a Parameter that several modules
    share stays one Parameter.
    """
    return _convert(module, _FUSED_CLASS, backend=checked_name(backend))


def to_torch(module: nn.Module) -> nn.Module:
    """torch.nn's version of a fused_rnn layer or cell, with a copy of its parameters: from_torch undone.

    Given any other module, replaces every fused_rnn layer and cell inside it (in place) and returns it,
    keeping weights, frozen flags, device, dtype, train/eval mode, shared modules and tied parameters.
    For what needs torch.nn's own classes: ONNX export, torch.jit.script, cuDNN.
    """
    return _convert(module, _TORCH_CLASS)


def _convert(module: nn.Module, classes: dict[type, type], **extra) -> nn.Module:
    """`module`, or in it every submodule whose class is a key of `classes`, replaced by a copy of that class's value.

    Each module object is converted once, so one reached through several attributes (or twice in a
    ModuleList) stays one module, and each Parameter is copied once, so one that several modules share,
    converted or not, stays one Parameter.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    # Keyed by id(); each entry holds its original, so that no id can be reused while converting.
    replacements: dict[int, tuple[nn.Module, nn.Module]] = {}
    parameter_copies: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}

    def convert(original: nn.Module) -> nn.Module:
        if id(original) in replacements:
            return replacements[id(original)][1]
        target = classes.get(type(original))
        if target is None:
            replacements[id(original)] = (original, original)
            for name, child in list(original._modules.items()):  # named_children() skips repeated children
                if child is not None:
                    setattr(original, name, convert(child))
            return original
        copy = _copy_into(original, target, **extra)
        for name, parameter in original._parameters.items():
            if parameter is None:
                continue
            if id(parameter) in parameter_copies:
                setattr(copy, name, parameter_copies[id(parameter)][1])
            else:
                parameter_copies[id(parameter)] = (parameter, copy._parameters[name])
        replacements[id(original)] = (original, copy)
        return copy

    converted = convert(module)
    for owner in converted.modules():  # modules left as they were that share a Parameter with a converted one
        for name, parameter in list(owner._parameters.items()):
            if parameter is not None and id(parameter) in parameter_copies:
                setattr(owner, name, parameter_copies[id(parameter)][1])
    return converted
