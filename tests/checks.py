"""Assertions shared by the tests."""

import torch

# Where the tests run the Triton backend: compiled on a GPU when there is one, else on CPU under the
# Triton interpreter (tests/conftest.py turns it on).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Absolute and relative tolerance per dtype when comparing with a reference in the same dtype.
TOLERANCE = {torch.float64: (1e-10, 1e-8), torch.float32: (2e-5, 1e-4)}


def assert_close(name: str, expected: torch.Tensor | None, actual: torch.Tensor | None, atol: float, rtol: float):
    """Like torch.testing.assert_close, with the tensor's name, the errors and a NaN check in the message."""
    if expected is None or actual is None:
        assert expected is None and actual is None, f"{name}: one is None ({expected is None}, {actual is None})"
        return
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not actual.isnan().any(), f"{name}: NaN in result"
    diff = (actual.double() - expected.double()).abs()
    bound = atol + rtol * expected.double().abs()
    worst = (diff - bound).argmax() if diff.numel() else None
    assert bool((diff <= bound).all()), (
        f"{name}: max abs error {diff.max().item():.3e}, at worst element {diff.flatten()[worst].item():.3e} "
        f"vs allowed {bound.flatten()[worst].item():.3e}"
    )


def assert_within_twice_torch_error(name: str, exact, ours, torch_same_dtype, floor: float):
    """flash-attention's rule for fp16/bf16: our error against an exact reference is at most twice
    the error of PyTorch's own computation in the same dtype (plus a small floor for near-zero cases)."""
    ours_error = (ours.double() - exact.double()).abs().max().item()
    torch_error = (torch_same_dtype.double() - exact.double()).abs().max().item()
    assert ours_error <= 2 * torch_error + floor, f"{name}: our error {ours_error:.3e} vs torch's {torch_error:.3e}"


def gradients(outputs, inputs, seed: int = 1):
    """Gradients of a random weighted sum of `outputs` w.r.t. those `inputs` that are not None."""
    generator = torch.Generator().manual_seed(seed)
    loss = sum(
        (o * torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o)).sum()
        for o in outputs
        if o is not None
    )
    present = [i for i in inputs if i is not None]
    found = iter(torch.autograd.grad(loss, present))
    return [next(found) if i is not None else None for i in inputs]
