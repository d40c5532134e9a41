"""Eager calls of fused_rnn's registered ops without the cost of their registration.

Each fused layer family registers its forward and backward as torch.library custom ops, so that torch.compile,
torch.export and dispatch modes (fake tensors, FLOP counters) see them. In plain eager mode nothing needs that, and
on CPU the ops' dispatch and autograd wrapping cost about 15 us per call without gradients and over 100 us per
training call (measured on a fused LSTM at B=8, T=32, H=64): as much as a small layer's whole recurrence. So an eager
call runs the op's implementation directly, under an autograd.Function with the op's own formula when a gradient is
recorded; anything else goes through the registered op.
"""

from collections.abc import Callable

import torch


def plain_eager(tensor: torch.Tensor) -> bool:
    """Whether a call on `tensor` may skip the registered ops: a plain tensor, not being traced, no dispatch mode."""
    # Fake and functional tensors are subclasses; vmap/grad wrap plain tensors, so ask functorch too.
    return (
        type(tensor) is torch.Tensor
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._are_functorch_transforms_active()
    )


class Op:
    """Runs a registered op, or in plain eager mode its implementation directly: under an autograd.Function with the
    op's own formula (`setup_context`, `backward`, as given to register_autograd) when the call is differentiable."""

    def __init__(
        self,
        registered,
        implementation: Callable,
        setup_context: Callable | None = None,
        backward: Callable | None = None,
    ):
        self.registered, self.implementation = registered, implementation
        self.function = _autograd_function(implementation, setup_context, backward) if backward else None

    def __call__(self, tensor: torch.Tensor, *arguments, differentiable: bool = False):
        """The op's outputs for `arguments`; `tensor`, one of them, says whether the call is plain eager."""
        if not plain_eager(tensor):
            return self.registered(*arguments)
        return self.function.apply(*arguments) if differentiable else self.implementation(*arguments)


def _autograd_function(
    implementation: Callable, setup_context: Callable, backward: Callable
) -> type[torch.autograd.Function]:
    class Eager(torch.autograd.Function):
        # forward(ctx, ...) rather than a separate setup_context: with one, apply binds the arguments to forward's
        # signature through inspect on every call.
        @staticmethod
        def forward(ctx, *arguments):
            output = implementation(*arguments)
            setup_context(ctx, arguments, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Eager.__name__ = Eager.__qualname__ = f"Eager_{implementation.__name__.lstrip('_')}"
    return Eager
