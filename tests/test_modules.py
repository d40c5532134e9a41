"""fused_rnn.LSTM/GRU/RNN and the cells as drop-in replacements for torch.nn's, in float64 on CPU."""

import copy
import random

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fused_rnn

from checks import DEVICE, TOLERANCE, assert_close

ATOL, RTOL = TOLERANCE[torch.float64]
TORCH_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}


def random_config(seed: int) -> dict:
    """A reproducible random layer configuration and input form."""
    rng = random.Random(seed)
    cell = rng.choice(list(TORCH_MODULES))
    hidden = rng.choice([1, 3, 7])
    config = {
        "cell": cell,
        "num_layers": rng.randint(1, 3),
        "bidirectional": rng.random() < 0.5,
        "batch_first": rng.random() < 0.5,
        "bias": rng.random() < 0.75,
        "input_size": rng.choice([1, 4]),
        "hidden_size": hidden,
        "proj_size": rng.choice([0, 0, 1, 2]) if cell == "lstm" and hidden > 2 else 0,
        "form": rng.choice(["padded", "packed", "packed-unsorted", "unbatched"]),
        "with_hx": rng.random() < 0.5,
    }
    packed = config["form"].startswith("packed")  # at least two sequences of different lengths
    config["steps"] = rng.randint(2 if packed else 1, 5)
    config["batch"] = rng.randint(2 if packed else 1, 4)
    return config


def make_torch_module(config) -> nn.Module:
    kwargs = {k: config[k] for k in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional")}
    if config["cell"] == "lstm":
        kwargs["proj_size"] = config["proj_size"]
    if config["cell"].startswith("rnn"):
        kwargs["nonlinearity"] = config["cell"][4:]
    return TORCH_MODULES[config["cell"]](**kwargs, dtype=torch.float64)


def device_for(backend: str) -> torch.device:
    """The triton backend runs where the Triton tests run; the others are exercised on CPU."""
    return DEVICE if backend == "triton" else torch.device("cpu")


def make_inputs(config, generator, device):
    """(input, hx, leaves): the module input (tensor or PackedSequence), hx or None, and the leaves to differentiate."""
    steps, batch, form = config["steps"], config["batch"], config["form"]
    randn = lambda *shape: torch.randn(shape, generator=generator, dtype=torch.float64).to(device).requires_grad_()
    x = randn(steps, config["input_size"]) if form == "unbatched" else randn(steps, batch, config["input_size"])
    leaves = [x]
    module_input = x
    if form.startswith("packed"):
        # Ragged: the longest sequence, one strictly shorter, the rest anywhere in between.
        shorter = torch.randint(1, steps, (1,), generator=generator).item()
        rest = [torch.randint(1, steps + 1, (1,), generator=generator).item() for _ in range(batch - 2)]
        lengths = sorted([steps, shorter, *rest], reverse=True)
        if form == "packed-unsorted":  # the longest last, so sorting has to move it
            lengths = lengths[1:] + lengths[:1]
        module_input = pack_padded_sequence(x, lengths, enforce_sorted=form == "packed")
    elif config["batch_first"]:
        module_input = x.transpose(0, 1) if form != "unbatched" else x
    hx = None
    if config["with_hx"]:
        layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
        h_size = config["proj_size"] or config["hidden_size"]
        state_shape = lambda size: (layers, size) if form == "unbatched" else (layers, batch, size)
        h0 = randn(*state_shape(h_size))
        leaves.append(h0)
        hx = h0
        if config["cell"] == "lstm":
            c0 = randn(*state_shape(config["hidden_size"]))
            leaves.append(c0)
            hx = (h0, c0)
    return module_input, hx, leaves


def flatten_outputs(result):
    output, state = result
    if isinstance(output, PackedSequence):
        output = pad_packed_sequence(output)[0]
    return [output, *state] if isinstance(state, tuple) else [output, state]


def outputs_and_gradients(module, module_input, hx, leaves):
    module.zero_grad(set_to_none=True)
    outputs = flatten_outputs(module(module_input, hx))
    generator = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o)).sum() for o in outputs)
    parameters = list(module.parameters())
    grads = torch.autograd.grad(loss, leaves + parameters, retain_graph=True)  # the packing graph is shared
    return outputs, grads, [name for name, _ in module.named_parameters()]


def assert_parity(torch_module, fused_module, config, seed):
    device = next(fused_module.parameters()).device
    module_input, hx, leaves = make_inputs(config, torch.Generator().manual_seed(seed), device)
    expected, expected_grads, names = outputs_and_gradients(torch_module, module_input, hx, leaves)
    ours, our_grads, our_names = outputs_and_gradients(fused_module, module_input, hx, leaves)
    assert names == our_names
    assert len(expected) == len(ours)
    for name, e, o in zip(["output", "h_n", "c_n"], expected, ours):
        assert_close(f"{config}: {name}", e, o, ATOL, RTOL)
    leaf_names = ["input", "h_0", "c_0"][: len(leaves)]
    for name, e, o in zip(leaf_names + names, expected_grads, our_grads, strict=True):
        assert_close(f"{config}: grad {name}", e, o, ATOL, RTOL)


@pytest.mark.parametrize("backend", ["reference", "auto", "triton"])
@pytest.mark.parametrize("seed", range(16))
def test_randomized_parity_with_torch_nn(seed, backend):
    config = random_config(seed)
    torch.manual_seed(seed)
    torch_module = make_torch_module(config).to(device_for(backend))
    fused_module = fused_rnn.from_torch(torch_module, backend=backend)
    assert_parity(torch_module, fused_module, config, seed)


PINNED_CONFIGS = [  # combinations the random seeds above happen not to reach
    {
        "cell": "lstm",
        "num_layers": 2,
        "bidirectional": True,
        "batch_first": True,
        "bias": True,
        "input_size": 4,
        "hidden_size": 7,
        "proj_size": 3,
        "form": "packed-unsorted",
        "with_hx": True,
        "steps": 5,
        "batch": 4,
    },
    {
        "cell": "gru",
        "num_layers": 1,
        "bidirectional": True,
        "batch_first": False,
        "bias": False,
        "input_size": 3,
        "hidden_size": 5,
        "proj_size": 0,
        "form": "packed",
        "with_hx": True,
        "steps": 4,
        "batch": 3,
    },
    {
        "cell": "lstm",
        "num_layers": 2,
        "bidirectional": False,
        "batch_first": True,
        "bias": True,
        "input_size": 2,
        "hidden_size": 6,
        "proj_size": 2,
        "form": "unbatched",
        "with_hx": True,
        "steps": 3,
        "batch": 1,
    },
    {
        "cell": "rnn_relu",
        "num_layers": 3,
        "bidirectional": True,
        "batch_first": True,
        "bias": True,
        "input_size": 3,
        "hidden_size": 4,
        "proj_size": 0,
        "form": "packed-unsorted",
        "with_hx": False,
        "steps": 4,
        "batch": 3,
    },
]


@pytest.mark.parametrize("backend", ["reference", "auto", "triton"])
@pytest.mark.parametrize("index", range(len(PINNED_CONFIGS)))
def test_pinned_parity_with_torch_nn(index, backend):
    config = PINNED_CONFIGS[index]
    torch_module = make_torch_module(config).to(device_for(backend))
    fused_module = fused_rnn.from_torch(torch_module, backend=backend)
    assert_parity(torch_module, fused_module, config, index)


def _general_path_refused(*args, **kwargs):
    raise AssertionError("the call went through the general path, not the remembered torch.nn route")


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("seed", range(16))
def test_a_call_the_module_ran_on_torch_nn_before_goes_straight_to_it_and_still_matches(seed, backend, monkeypatch):
    """A module that ran a batched call (padded or packed) on torch.nn's op runs the next such call (same shape and
    weights) straight on it, without the general input handling: outputs and every gradient still equal torch.nn's
    over random configurations (batch_first, bidirectional, layers, bias, proj_size, packed sorted or not, a given hx
    or none)."""
    config = random_config(seed)
    if config["form"] == "unbatched":  # always the general path
        config["form"] = "padded"
    torch.manual_seed(seed)
    torch_module = make_torch_module(config)
    fused_module = fused_rnn.from_torch(torch_module, backend=backend)
    assert_parity(torch_module, fused_module, config, seed)
    remembered = any(fused_module.__dict__["_torch_nn_verdicts"].values())
    assert remembered or backend == "auto", config  # "auto" runs "cpu" where it was measured faster
    if remembered:
        monkeypatch.setattr(fused_rnn.modules, "layer_input", _general_path_refused)
    assert_parity(torch_module, fused_module, config, seed + 100)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_remembered_torch_nn_route_keeps_inference_dropout_and_the_checks(cell, monkeypatch):
    """On the remembered route: inference (no_grad, eval) equals torch.nn's; dropout between layers draws torch.nn's
    masks in training and none in eval; a wrong hx still raises its named error."""
    torch_module = TORCH_MODULES[cell](3, 6, num_layers=2, dropout=0.5, batch_first=True, dtype=torch.float64)
    fused = fused_rnn.from_torch(torch_module, backend="torch")
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    for training in (True, False):
        fused.train(training)
        torch_module.train(training)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                fused(x)
                with monkeypatch.context() as patch:
                    patch.setattr(fused_rnn.modules, "layer_input", _general_path_refused)
                    torch.manual_seed(3)
                    ours = fused(x)[0]
                torch.manual_seed(3)
                expected = torch_module(x)[0]
            assert_close(f"output, training={training}, grad={grad}", expected, ours, ATOL, RTOL)
            assert ours.requires_grad == grad
    monkeypatch.setattr(fused_rnn.modules, "layer_input", _general_path_refused)
    bad_h0 = torch.zeros(2, 3, 6, dtype=torch.float64)
    hx = (bad_h0, bad_h0) if cell == "lstm" else bad_h0
    name = "h_0" if cell == "lstm" else "hx"
    with pytest.raises(ValueError, match=f"Expected {name} size \\(2, 2, 6\\), got \\(2, 3, 6\\)"):
        fused(x, hx)


@pytest.mark.parametrize("leaf", ["hx", "packed input"])
def test_the_remembered_torch_nn_route_differentiates_a_state_or_an_input_alone(leaf, monkeypatch):
    """Frozen weights in eval mode: an hx, or a packed input, that requires grad alone makes the call a training one
    (cuDNN's backward needs its forward in training mode); the remembered route sees it, and its gradients equal
    torch.nn's."""
    torch_module = nn.LSTM(3, 5, num_layers=2, dtype=torch.float64).eval().requires_grad_(False)
    fused = fused_rnn.from_torch(torch_module, backend="torch")
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=leaf != "hx")
    hx = [torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=leaf == "hx") for _ in range(2)]
    module_input = x if leaf == "hx" else pack_padded_sequence(x, [2, 4], enforce_sorted=False)
    leaves = hx if leaf == "hx" else [x]
    fused(module_input, hx)
    monkeypatch.setattr(fused_rnn.modules, "layer_input", _general_path_refused)
    output = lambda module: flatten_outputs(module(module_input, hx))[0]
    ours = torch.autograd.grad(output(fused).sum(), leaves, retain_graph=True)  # the packing graph is shared
    expected = torch.autograd.grad(output(torch_module).sum(), leaves)
    for index, (e, o) in enumerate(zip(expected, ours, strict=True)):
        assert_close(f"grad of {leaf} {index}", e, o, ATOL, RTOL)


@pytest.mark.parametrize("index", [i for i, c in enumerate(PINNED_CONFIGS) if c["form"] != "unbatched"])
def test_pinned_configs_on_the_remembered_torch_nn_route(index, monkeypatch):
    """The pinned configurations (packed unsorted with hx, 2 layers, bidirectional, proj_size...), a second call on
    the remembered route: outputs and every gradient equal torch.nn's."""
    config = PINNED_CONFIGS[index]
    torch_module = make_torch_module(config)
    fused_module = fused_rnn.from_torch(torch_module, backend="torch")
    assert_parity(torch_module, fused_module, config, index)
    monkeypatch.setattr(fused_rnn.modules, "layer_input", _general_path_refused)
    assert_parity(torch_module, fused_module, config, index + 100)


def test_randomized_configs_cover_every_feature():
    """The seeds above are not all alike: each option and input form appears."""
    configs = [random_config(seed) for seed in range(16)]
    assert {c["cell"] for c in configs} == set(TORCH_MODULES)
    assert {c["form"] for c in configs} == {"padded", "packed", "packed-unsorted", "unbatched"}
    assert {c["num_layers"] for c in configs} == {1, 2, 3}
    for key in ("bidirectional", "batch_first", "bias", "with_hx"):
        assert {c[key] for c in configs} == {True, False}, key
    assert any(c["proj_size"] for c in configs)
    for seed, config in enumerate(configs):
        if config["form"].startswith("packed"):
            packed, _, _ = make_inputs(config, torch.Generator().manual_seed(seed), "cpu")
            assert len(set(packed.batch_sizes.tolist())) > 1, f"seed {seed}: every sequence has the same length"
            unsorted = config["form"] == "packed-unsorted"
            order = packed.sorted_indices
            identity = order is None or torch.equal(order, torch.arange(config["batch"]))
            assert identity != unsorted, f"seed {seed}: sorted_indices {order}"


@pytest.mark.parametrize("backend", ["reference", "auto", "triton"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_cells_match_torch_nn(cell, backend):
    torch_class = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(cell, nn.RNNCell)
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    device = device_for(backend)
    torch_cell = torch_class(4, 7, dtype=torch.float64, device=device, **extra)
    fused_cell = fused_rnn.from_torch(torch_cell, backend=backend)
    assert type(fused_cell).__name__ == torch_class.__name__
    for batched, with_hx in [(True, True), (True, False), (False, True)]:
        batch = (3,) if batched else ()
        x = torch.randn(*batch, 4, dtype=torch.float64, device=device, requires_grad=True)
        state = lambda size=(*batch, 7): torch.randn(size, dtype=torch.float64, device=device, requires_grad=True)
        hx = ((state(), state()) if cell == "lstm" else state()) if with_hx else None
        results = []
        for module in (torch_cell, fused_cell):
            out = module(x, hx)
            out = list(out) if isinstance(out, tuple) else [out]
            leaves = [x, *([hx] if isinstance(hx, torch.Tensor) else hx or []), *module.parameters()]
            loss = sum((o * torch.arange(o.numel()).to(o).reshape(o.shape).cos()).sum() for o in out)
            results.append((out, torch.autograd.grad(loss, leaves)))
        (expected, expected_grads), (ours, our_grads) = results
        for e, o in zip(expected, ours, strict=True):
            assert_close(f"{cell} batched={batched} hx={with_hx} output", e, o, ATOL, RTOL)
        for i, (e, o) in enumerate(zip(expected_grads, our_grads, strict=True)):
            assert_close(f"{cell} batched={batched} hx={with_hx} grad {i}", e, o, ATOL, RTOL)


def _cell_pair(cell, bias=True, **kwargs):
    torch_class = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(cell, nn.RNNCell)
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    torch_cell = torch_class(4, 7, bias=bias, dtype=torch.float64, **extra, **kwargs)
    return torch_cell, fused_rnn.from_torch(torch_cell)


def _cell_general_path_refused(*args, **kwargs):
    raise AssertionError("the step went through the general path, not the remembered torch.nn route")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_a_cell_step_on_the_remembered_torch_nn_route_matches_torch_nn(cell, bias, monkeypatch):
    """A cell on "auto" runs a CPU step on torch.nn's own cell op, and once it has, the next batched step (same
    shape and weights) goes straight to that op: outputs and every gradient equal torch.nn's, with and without hx, at
    batch 1 and 3, with frozen weights (the state alone then asks for a backward) and without grad."""
    torch_cell, fused_cell = _cell_pair(cell, bias)
    for batch, with_hx, frozen, grad in [
        (3, True, False, True),
        (3, False, False, True),
        (1, True, False, True),
        (1, True, True, True),
        (3, True, False, False),
    ]:
        for module in (torch_cell, fused_cell):
            module.requires_grad_(not frozen)
        x = torch.randn(batch, 4, dtype=torch.float64, requires_grad=not frozen)
        state = lambda batch=batch: torch.randn(batch, 7, dtype=torch.float64, requires_grad=True)
        hx = ((state(), state()) if cell == "lstm" else state()) if with_hx else None
        leaves = [t for t in (x, *([hx] if isinstance(hx, torch.Tensor) else hx or [])) if t.requires_grad]
        leaves += [p for p in torch_cell.parameters() if p.requires_grad]
        with torch.set_grad_enabled(grad):
            fused_cell(x, hx)  # the general path records the verdict
            with monkeypatch.context() as patch:
                patch.setattr(fused_rnn.modules, "cell_input", _cell_general_path_refused)
                ours = fused_cell(x, hx)
            expected = torch_cell(x, hx)
        ours, expected = (list(o) if isinstance(o, tuple) else [o] for o in (ours, expected))
        where = f"{cell} bias={bias} B={batch} hx={with_hx} frozen={frozen} grad={grad}"
        for e, o in zip(expected, ours, strict=True):
            assert_close(f"{where} output", e, o, ATOL, RTOL)
            assert o.requires_grad == grad
        if not grad:
            continue
        our_leaves = leaves[: len(leaves) - sum(p.requires_grad for p in torch_cell.parameters())]
        our_leaves += [p for p in fused_cell.parameters() if p.requires_grad]
        weights = [torch.randn_like(e) for e in expected]
        expected_grads = torch.autograd.grad(sum((e * w).sum() for e, w in zip(expected, weights)), leaves)
        our_grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ours, weights)), our_leaves)
        for i, (e, o) in enumerate(zip(expected_grads, our_grads, strict=True)):
            assert_close(f"{where} grad {i}", e, o, ATOL, RTOL)


@pytest.mark.parametrize("replaced", ["weight_hh", "bias_hh"])
def test_a_remembered_cell_runs_on_the_tensors_put_in_place_of_its_weights(replaced):
    """After remembered steps, a step runs on what replaces a parameter, as torch.nn's cell does: the plain tensor
    torch.func.functional_call (WeightDrop's way) puts in `_parameters`, and a parametrization's computed tensor."""
    torch_cell, fused_cell = _cell_pair("lstm")
    x = torch.randn(3, 4, dtype=torch.float64)
    fused_cell(x)
    fused_cell(x)
    swapped = {replaced: getattr(torch_cell, replaced).detach() * 3}
    for e, o in zip(
        torch.func.functional_call(torch_cell, swapped, (x,)),
        torch.func.functional_call(fused_cell, swapped, (x,)),
        strict=True,
    ):
        assert_close(f"{replaced} swapped by functional_call", e, o, ATOL, RTOL)
    nn.utils.parametrize.register_parametrization(fused_cell, replaced, Doubled())
    with torch.no_grad():
        getattr(torch_cell, replaced).mul_(2)
    for e, o in zip(torch_cell(x), fused_cell(x), strict=True):
        assert_close(f"{replaced} parametrized", e, o, ATOL, RTOL)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_cell_on_the_remembered_route_still_refuses_bad_states_and_checks_new_weights(cell):
    """After a remembered step, a bad hx (a None inside the LSTM's pair included) and an empty batch still raise the
    general path's named errors, copies do not carry the verdicts, and weights with new storage are checked again."""
    _, fused_cell = _cell_pair(cell)
    x = torch.randn(3, 4, dtype=torch.float64)
    state = torch.zeros(3, 7, dtype=torch.float64)
    fused_cell(x, (state, state) if cell == "lstm" else state)
    bad_shape = torch.zeros(2, 7, dtype=torch.float64)
    bad_dtype = state.float()
    if cell == "lstm":
        with pytest.raises(TypeError, match="hx must be a tuple \\(h, c\\) for an LSTMCell, got Tensor"):
            fused_cell(x, torch.zeros(2, 3, 7, dtype=torch.float64))
        cases = [
            ((bad_shape, state), ValueError, "hx\\[0\\] must have shape"),
            ((state, bad_dtype), TypeError, "hx\\[1\\] has dtype"),
        ]
    else:
        cases = [(bad_shape, ValueError, "hx must have shape"), (bad_dtype, TypeError, "hx has dtype")]
    for hx, error, message in cases:
        with pytest.raises(error, match=message):
            fused_cell(x, hx)
    if cell == "lstm":  # a None inside hx is not the zero state
        for hx, name in [((state, None), "hx\\[1\\]"), ((None, state), "hx\\[0\\]")]:
            with pytest.raises(TypeError, match=f"{name} must be a Tensor, got NoneType"):
                fused_cell(x, hx)
    with pytest.raises(ValueError, match="at least one time step and one batch entry"):
        fused_cell(x[:0])
    assert "_torch_nn_verdicts" not in copy.deepcopy(fused_cell).__dict__
    assert "_torch_nn_verdicts" not in fused_cell.__getstate__()
    fused_cell.weight_hh.data = torch.zeros(5, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="weight_hh"):
        fused_cell(x)


@pytest.mark.parametrize("fused_class", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.RNN])
def test_state_dict_round_trips_with_torch_nn(fused_class):
    torch_class = getattr(nn, fused_class.__name__)
    kwargs = {"num_layers": 2, "bidirectional": True}
    if fused_class is fused_rnn.LSTM:
        kwargs["proj_size"] = 3
    fused = fused_class(5, 6, **kwargs)
    reference = torch_class(5, 6, **kwargs)
    assert list(fused.state_dict()) == list(reference.state_dict())
    assert [p.shape for p in fused.parameters()] == [p.shape for p in reference.parameters()]
    reference.load_state_dict(fused.state_dict())
    fused_again = fused_class(5, 6, **kwargs)
    fused_again.load_state_dict(reference.state_dict())
    for (name, a), b in zip(fused.state_dict().items(), fused_again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_class_hierarchy():
    """Layers are torch.nn.RNNBase (not torch.nn.LSTM: torch.compile refuses to trace that); cells are torch.nn's."""
    assert isinstance(fused_rnn.LSTM(2, 3), nn.RNNBase) and not isinstance(fused_rnn.LSTM(2, 3), nn.LSTM)
    assert fused_rnn.RNN(2, 3, 1, "relu").mode == "RNN_RELU" and fused_rnn.GRU(2, 3).mode == "GRU"
    assert isinstance(fused_rnn.LSTMCell(2, 3), nn.LSTMCell) and isinstance(fused_rnn.GRUCell(2, 3), nn.GRUCell)


def test_same_initialisation_as_torch_nn():
    """Same constructor, same random stream, same parameters: torch.nn's own init runs."""
    torch.manual_seed(3)
    expected = nn.LSTM(4, 8, num_layers=2)
    torch.manual_seed(3)
    ours = fused_rnn.LSTM(4, 8, num_layers=2)
    for (name, e), o in zip(expected.named_parameters(), ours.parameters(), strict=True):
        assert torch.equal(e, o), name


def test_from_torch_converts_a_whole_model_and_back():
    model = nn.Sequential(nn.Linear(3, 4), nn.GRU(4, 5, batch_first=True), nn.ModuleList([nn.LSTMCell(5, 2)]))
    model.train(False)
    state = copy.deepcopy(model.state_dict())
    converted = fused_rnn.from_torch(model, backend="reference")
    assert converted is model
    assert type(model[1]) is fused_rnn.GRU and model[1].backend == "reference" and model[1].batch_first
    assert type(model[2][0]) is fused_rnn.LSTMCell
    assert not model[1].training
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    back = model[1].to_torch()
    assert type(back) is nn.GRU and back.batch_first
    assert "backend='reference'" in repr(model[1])
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_rnn.from_torch(nn.LSTM(2, 3), backend="fast")


def test_from_torch_does_not_draw_from_the_random_stream():
    module = nn.LSTM(3, 4)
    torch.manual_seed(11)
    fused_rnn.from_torch(module)
    after = torch.rand(1)
    torch.manual_seed(11)
    assert torch.equal(after, torch.rand(1))


CUDNN_DROPOUT = pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a GPU torch.nn draws cuDNN's dropout masks, which F.dropout cannot reproduce"
)


@pytest.mark.parametrize("backend", ["auto", pytest.param("triton", marks=CUDNN_DROPOUT)])
def test_dropout_between_layers_matches_torch_nn(backend):
    """Dropout applies between layers in training only, drawing the same random masks as torch.nn on CPU."""
    torch_module = nn.LSTM(3, 6, num_layers=3, dropout=0.5, bidirectional=True, dtype=torch.float64)
    fused = fused_rnn.from_torch(torch_module, backend=backend)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    expected = torch_module(x)[0]
    torch.manual_seed(5)
    ours = fused(x)[0]
    assert_close("output with dropout", expected, ours, ATOL, RTOL)
    fused.eval()
    torch_module.eval()
    assert_close("output in eval", torch_module(x)[0], fused(x)[0], ATOL, RTOL)
    assert not torch.equal(ours, fused(x)[0])


@pytest.mark.parametrize(
    "torch_class, extra, op",
    [
        (nn.LSTM, {"proj_size": 4}, "aten::lstm"),
        (nn.GRU, {}, "aten::gru"),
        (nn.RNN, {"nonlinearity": "relu"}, "aten::rnn_relu"),
    ],
    ids=["lstm-proj", "gru", "rnn_relu"],
)
def test_torch_backend_runs_the_whole_stack_in_one_call_as_torch_nn(torch_class, extra, op):
    """backend="torch" makes ONE call of torch.nn's op for every layer and direction (as torch.nn does), not one per
    layer and direction; in eval mode with dropout set, outputs and gradients still equal torch.nn's in float64."""
    torch_module = torch_class(3, 6, num_layers=2, bidirectional=True, dropout=0.3, dtype=torch.float64, **extra)
    fused = fused_rnn.from_torch(torch_module, backend="torch").eval()
    torch_module.eval()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    with torch.profiler.profile() as profile:
        ours = fused(x)[0]
    assert sum(event.count for event in profile.key_averages() if event.key == op) == 1
    expected = torch_module(x)[0]
    assert_close("output", expected, ours, ATOL, RTOL)
    names = ["input", *(name for name, _ in fused.named_parameters())]
    weights = torch.randn_like(expected)
    for name, e, o in zip(
        names,
        torch.autograd.grad((expected * weights).sum(), [x, *torch_module.parameters()]),
        torch.autograd.grad((ours * weights).sum(), [x, *fused.parameters()]),
        strict=True,
    ):
        assert_close(f"grad {name}", e, o, ATOL, RTOL)


def test_unchanged_training_loop():
    """A training loop written for torch.nn.LSTM runs as is with fused_rnn.LSTM, with the same losses."""

    class Tagger(nn.Module):
        def __init__(self, recurrent):
            super().__init__()
            self.embedding = nn.Embedding(10, 4)
            self.recurrent = recurrent(4, 8, num_layers=2, batch_first=True, bidirectional=True)
            self.head = nn.Linear(16, 3)

        def forward(self, tokens):
            return self.head(self.recurrent(self.embedding(tokens))[0])

    def train(recurrent):
        torch.manual_seed(0)
        model = Tagger(recurrent).double()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(5):
            tokens = torch.randint(0, 10, (3, 6))
            loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), (tokens % 3).flatten())
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
        return losses

    expected, ours = train(nn.LSTM), train(fused_rnn.LSTM)
    assert expected[-1] < expected[0]
    assert ours == pytest.approx(expected, rel=1e-10)


def valid_lstm():
    return fused_rnn.LSTM(3, 5, num_layers=2, dtype=torch.float64)


DOUBLE = torch.float64
BAD_FORWARDS = [
    pytest.param("not a tensor", None, TypeError, "input must be a Tensor or PackedSequence", id="input-type"),
    pytest.param(
        torch.ones(2, 3, 4, 3, dtype=DOUBLE), None, ValueError, "Expected input to be 2D or 3D", id="input-4d"
    ),
    pytest.param(torch.ones(4, 2, 7, dtype=DOUBLE), None, ValueError, "input_size. Expected 3, got 7", id="input-size"),
    pytest.param(
        torch.ones(4, 2, 3, dtype=DOUBLE),
        torch.zeros(2, 2, 5, dtype=DOUBLE),
        TypeError,
        "hx must be a tuple",
        id="hx-not-pair",
    ),
    pytest.param(
        torch.ones(4, 2, 3, dtype=DOUBLE),
        (torch.zeros(1, 2, 5, dtype=DOUBLE),) * 2,
        ValueError,
        r"Expected h_0 size \(2, 2, 5\)",
        id="h0-layers",
    ),
    pytest.param(
        torch.ones(4, 2, 3, dtype=DOUBLE),
        (torch.zeros(2, 2, 5, dtype=DOUBLE), torch.zeros(2, 2, 4, dtype=DOUBLE)),
        ValueError,
        "Expected c_0 size",
        id="c0-size",
    ),
    pytest.param(
        torch.ones(4, 2, 3, dtype=DOUBLE),
        (torch.zeros(2, 5, dtype=DOUBLE),) * 2,
        ValueError,
        "should also be 3-D",
        id="h0-dim",
    ),
    pytest.param(
        torch.ones(4, 3, dtype=DOUBLE),
        (torch.zeros(2, 2, 5, dtype=DOUBLE),) * 2,
        ValueError,
        "should also be 2-D",
        id="unbatched-h0-dim",
    ),
    pytest.param(
        torch.ones(4, 2, 3, dtype=DOUBLE),
        (torch.zeros(2, 2, 5), torch.zeros(2, 2, 5, dtype=DOUBLE)),
        TypeError,
        "h_0 has dtype",
        id="h0-dtype",
    ),
    pytest.param(
        torch.ones(4, 2, 3, dtype=DOUBLE),
        (torch.zeros(2, 2, 5, dtype=DOUBLE), torch.zeros(2, 2, 5, dtype=DOUBLE, device="meta")),
        ValueError,
        "c_0 is on meta",
        id="c0-device",
    ),
    pytest.param(
        torch.ones(4, 2, 3),
        None,
        TypeError,
        "weight_ih has dtype torch.float64 but input has torch.float32",
        id="input-dtype",
    ),
]


@pytest.mark.parametrize("module_input, hx, error, message", BAD_FORWARDS)
def test_bad_forward_raises_named_error(module_input, hx, error, message):
    with pytest.raises(error, match=message):
        valid_lstm()(module_input, hx)


BAD_CONSTRUCTORS = [
    pytest.param(
        lambda: fused_rnn.LSTM(3, 5, proj_size=5),
        ValueError,
        "proj_size has to be smaller than hidden_size",
        id="proj-size",
    ),
    pytest.param(
        lambda: fused_rnn.LSTM(3, 5, dropout=1.5), ValueError, "dropout should be a number in range", id="dropout"
    ),
    pytest.param(lambda: fused_rnn.GRU(3, 0), ValueError, "hidden_size must be greater than zero", id="hidden-size"),
    pytest.param(
        lambda: fused_rnn.RNN(3, 5, nonlinearity="gelu"), ValueError, "Unknown nonlinearity 'gelu'", id="nonlinearity"
    ),
    pytest.param(
        lambda: fused_rnn.GRU(3, 5, proj_size=2),
        ValueError,
        "proj_size argument is only supported for LSTM",
        id="gru-proj",
    ),
    pytest.param(lambda: fused_rnn.LSTM(3, 5, backend="cudnn"), ValueError, "backend must be one of", id="backend"),
    pytest.param(lambda: fused_rnn.GRUCell(3, 5, backend="x"), ValueError, "backend must be one of", id="cell-backend"),
]


@pytest.mark.parametrize("build, error, message", BAD_CONSTRUCTORS)
def test_bad_constructor_raises_named_error(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize(
    "call, error, message",
    [
        pytest.param(lambda c: c(torch.ones(2, 3, 4)), ValueError, "Expected input to be 1D or 2D", id="input-3d"),
        pytest.param(lambda c: c(torch.ones(2, 4)), ValueError, "input_size. Expected 3, got 4", id="input-size"),
        pytest.param(
            lambda c: c(torch.ones(2, 3), torch.ones(2, 5)), TypeError, "hx must be a tuple", id="hx-not-pair"
        ),
        pytest.param(
            lambda c: c(torch.ones(2, 3), (torch.ones(2, 5), torch.ones(3, 5))),
            ValueError,
            r"hx\[1\] must have shape",
            id="c-shape",
        ),
        pytest.param(
            lambda c: c(torch.ones(3), (torch.ones(2, 5), torch.ones(2, 5))),
            ValueError,
            r"hx\[0\] must be 1-D",
            id="unbatched-h",
        ),
        pytest.param(
            lambda c: c(torch.ones(2, 3), (torch.ones(2, 5, dtype=DOUBLE),) * 2),
            TypeError,
            r"hx\[0\] has dtype",
            id="h-dtype",
        ),
    ],
)
def test_bad_cell_input_raises_named_error(call, error, message):
    with pytest.raises(error, match=message):
        call(fused_rnn.LSTMCell(3, 5))


def test_conversion_keeps_frozen_parameters_frozen():
    module = nn.LSTM(3, 4)
    module.weight_ih_l0.requires_grad_(False)
    fused = fused_rnn.from_torch(module)
    assert not fused.weight_ih_l0.requires_grad and fused.weight_hh_l0.requires_grad
    back = fused.to_torch()
    assert not back.weight_ih_l0.requires_grad and back.weight_hh_l0.requires_grad


class Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_parametrized_weights_are_used(backend):
    """A parametrization (torch.nn.utils.parametrize: weight norm, orthogonal, ...) replaces a parameter with a
    computed tensor; the layer runs on that tensor, as torch.nn's does."""
    torch_module = nn.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    fused = fused_rnn.from_torch(torch_module, backend=backend)
    nn.utils.parametrize.register_parametrization(fused, "weight_hh_l1", Doubled())
    with torch.no_grad():
        torch_module.weight_hh_l1.mul_(2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected_output, (expected_h, expected_c) = torch_module(x)
    output, (h_n, c_n) = fused(x)
    for name, expected, got in [
        ("output", expected_output, output),
        ("h_n", expected_h, h_n),
        ("c_n", expected_c, c_n),
    ]:
        assert_close(name, expected, got, ATOL, RTOL)


def test_the_torch_nn_route_checks_weights_again_when_their_storage_changes():
    """A module on "auto" remembers its verdict (torch.nn's op, weights fit) per input shape and weight storage; new
    storage, from .to() or .data =, is checked again, and copies do not carry the verdicts."""
    layer = fused_rnn.LSTM(3, 5)
    x = torch.randn(4, 2, 3)
    layer(x)
    layer(x)
    assert len(layer.__dict__["_torch_nn_verdicts"]) == 1
    layer.double()
    with pytest.raises(TypeError, match="weight_ih has dtype torch.float64 but input has torch.float32"):
        layer(x)
    reference = nn.LSTM(3, 5).double()
    reference.load_state_dict(layer.state_dict())
    assert_close("output", reference(x.double())[0], layer(x.double())[0], *TOLERANCE[torch.float64])
    layer.bias_hh_l0.data = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="bias_hh must be \\(20,\\), got shape \\(5,\\)"):
        layer(x.double())
    layer.bias_hh_l0.data = torch.zeros(20, dtype=torch.float64)
    layer(x.double())
    with pytest.raises(ValueError, match="at least one time step"):  # a remembered batch, no steps
        layer(x.double()[:0])
    assert "_torch_nn_verdicts" not in copy.deepcopy(layer).__dict__
    assert "_torch_nn_verdicts" not in layer.__getstate__()


@pytest.mark.parametrize(
    "make_module, x",
    [
        (lambda: fused_rnn.LSTM(4, 8), torch.randn(5, 2, 4)),
        (lambda: fused_rnn.GRU(4, 8, backend="torch"), pack_padded_sequence(torch.randn(5, 3, 4), [5, 3, 2])),
        (lambda: fused_rnn.LSTMCell(4, 8), torch.randn(2, 4)),
    ],
    ids=["lstm-padded", "gru-packed", "lstm-cell"],
)
def test_a_module_on_the_remembered_route_still_refuses_another_input_width(make_module, x):
    """After calls on the remembered torch.nn route, an input of another feature size raises the general path's named
    error: torch.nn's CPU op does not check the width, and would read past the weights' end."""
    module = make_module()
    module(x)
    module(x)
    assert any(module.__dict__["_torch_nn_verdicts"].values())
    for width in (6, 2):
        data = x.data if isinstance(x, PackedSequence) else x
        wrong = data.new_ones(*data.shape[:-1], width)
        wrong = x._replace(data=wrong) if isinstance(x, PackedSequence) else wrong
        with pytest.raises(ValueError, match=f"input_size. Expected 4, got {width}"):
            module(wrong)


def _recurrent_ops(module, x) -> set[str]:
    """The recurrent ops (torch.nn's or fused_rnn's compiled one) that one inference call of `module` runs."""
    with torch.no_grad(), torch.profiler.profile() as profile:
        module(x)
    recurrent = {"aten::lstm", "fused_rnn_native::sequence_forward"}
    return {event.key for event in profile.key_averages()} & recurrent


def test_a_packed_call_after_a_padded_one_runs_what_a_fresh_module_runs():
    """The remembered verdict is per input form: on "auto" on CPU a padded LSTM call at batch 2 runs on torch.nn's op
    and a packed one on the compiled kernels ("cpu": 0.35-0.40x torch.nn's time there); a module that ran padded input
    before must not run the packed call on the padded call's route."""
    if fused_rnn.backends.native_cpu_unavailable(torch.device("cpu"), torch.float32) is not None:
        pytest.skip("without the compiled kernels every call runs on torch.nn's op")
    padded = torch.randn(5, 2, 3)
    packed = pack_padded_sequence(padded, [5, 3])
    fresh_padded, fresh_packed = (_recurrent_ops(fused_rnn.LSTM(3, 4), x) for x in (padded, packed))
    assert fresh_padded == {"aten::lstm"} and fresh_packed == {"fused_rnn_native::sequence_forward"}
    layer = fused_rnn.LSTM(3, 4)
    # The second padded call runs on the remembered route.
    assert _recurrent_ops(layer, padded) == _recurrent_ops(layer, padded) == fresh_padded
    assert _recurrent_ops(layer, packed) == fresh_packed
    assert _recurrent_ops(layer, padded) == fresh_padded


def test_the_remembered_verdicts_stay_bounded():
    """A verdict per batch size: ragged inference over 40 batch sizes keeps at most 16 (the whole set is dropped when
    full), for the layers and the cells."""
    layer, cell = fused_rnn.GRU(2, 3, backend="torch"), fused_rnn.GRUCell(2, 3)
    for batch in range(1, 41):
        layer(torch.randn(1, batch, 2))
        cell(torch.randn(batch, 2))
    for module in (layer, cell):
        assert 0 < len(module.__dict__["_torch_nn_verdicts"]) <= 16
