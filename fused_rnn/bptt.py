"""What every backpropagation-through-time driver does once its step loop is done (the Triton driver, the persistent
one): the input, weight and bias gradients as single GEMMs and reductions over all rows."""

import torch


def gradients_after_the_loop(
    needs_grad, input, h_prev, weight_ih, grad_input_gates, grad_hidden_gates, grad_h0, grad_c0, grad_weight_hr
):
    """sequence_backward's outputs once the steps are done: the input, weight and bias gradients as single GEMMs and
    reductions over all rows, only those needs_grad asks for (the others empty). grad_h0, grad_c0 and grad_weight_hr
    are callables, run only when asked for; a driver's step loop decides what they return."""
    compute = (  # in needs_grad's order
        lambda: torch.mm(grad_input_gates, weight_ih),
        grad_h0,
        grad_c0,
        lambda: torch.mm(grad_input_gates.t(), input),
        lambda: torch.mm(grad_hidden_gates.t(), h_prev),
        lambda: grad_input_gates.sum(0),
        lambda: grad_hidden_gates.sum(0),  # the same gates as the input's, except for the GRU
        grad_weight_hr,
    )
    return tuple(
        gradient() if needed else input.new_empty(0) for gradient, needed in zip(compute, needs_grad, strict=True)
    )
