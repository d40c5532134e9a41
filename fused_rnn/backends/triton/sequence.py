"""The fused sequence driver: GEMMs plus one fused Triton kernel per time step, forward and backward.

One driver serves every cell; the cell only changes the gate count and the step kernels.
Forward: the input projection of all steps is one GEMM; each step is one `h W_hh^T` GEMM and one
pointwise kernel (plus the `W_hr` GEMM for a projected LSTM). Backward walks the steps in reverse
with one pointwise kernel and one `W_hh` GEMM per step; the weight, bias and input gradients are
single GEMMs/reductions over all steps afterwards. No atomics, so results are deterministic.

Rows follow fused_rnn.packing: state buffers hold the whole batch and each step reads and writes
the prefix of rows it has active, so packed sequences need no special case.

Zoneout (LSTM and GRU): the keep weights of every row are one (N, ·) tensor drawn before the call, each step's
kernels read their rows of it. A projected LSTM's h is zoned after its W_hr GEMM, here in the driver, not in the
step kernel (which zones c only).
"""

import torch

from fused_rnn.backends import graphs
from fused_rnn.backends.triton.launch import backward_step, forward_step
from fused_rnn.bptt import gradients_after_the_loop
from fused_rnn.cells import CELLS
from fused_rnn.packing import previous_hidden, time_steps


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _projected_keep(zoneout, weight_hr):
    """(keep weights of h, of c) of a projected LSTM's (N, P + H) zoneout: h's zoned by the driver, c's (a contiguous
    copy) read by the step kernel; (None, zoneout) without a projection or without zoneout."""
    if zoneout is None or weight_hr is None:
        return None, zoneout
    projected = weight_hr.shape[0]
    return zoneout[:, :projected], zoneout[:, projected:].contiguous()


def forward_outputs(cell, input, h0, c0, weight_hh, weight_hr, save):
    """Empty (output, h_n, c_n, saved, projection_input) as sequence_forward returns them.

    saved and projection_input have no rows unless save; c_n has none for cells without one.
    """
    spec = CELLS[cell]
    hidden = weight_hh.shape[0] // spec.gates
    rows, acc = input.shape[0], accumulate_dtype(input.dtype)
    saved_rows = rows if save and spec.saved_width else 0
    projected_rows = rows if save and weight_hr is not None else 0
    return (
        input.new_empty(rows, h0.shape[1]),
        torch.empty_like(h0),
        torch.empty_like(c0) if spec.has_cell_state else input.new_empty(0),
        input.new_empty(saved_rows, spec.saved_width * hidden, dtype=acc),
        input.new_empty(projected_rows, hidden),
    )


def sequence_forward(
    cell, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse, save, zoneout=None
):
    """Run one direction of one layer; see fused_rnn.autograd.sequence_forward for the arguments."""
    spec = CELLS[cell]
    output, h, c_n, saved, projection_input = forward_outputs(cell, input, h0, c0, weight_hh, weight_hr, save)
    if bias_ih is None:
        input_gates = torch.mm(input, weight_ih.t())
    else:
        input_gates = torch.addmm(bias_ih, input, weight_ih.t())
    h.copy_(h0)
    c = c0.to(accumulate_dtype(input.dtype), copy=True) if spec.has_cell_state else None
    loop = ForwardLoop(cell, weight_hh, bias_hh, weight_hr, h, c, save, zoneout is not None)
    rows = (input_gates, output, saved, projection_input, *_projected_keep(zoneout, weight_hr))
    if graphs.replays(input.device, batch_sizes):
        graphs.forward(loop, rows, reverse)
    else:
        loop(time_steps(batch_sizes, input.shape[0], h0.shape[0], reverse), *rows)
    if spec.has_cell_state:
        c_n.copy_(c)
    return output, h, c_n, saved, projection_input


class ForwardLoop:
    """The forward step loop of one direction of one layer over rows given per call: the weights and the carried
    state (h, and the LSTM's c in the accumulation dtype) are fixed, so that graphs.forward can replay it on fixed
    buffers, chunk by chunk."""

    INPUTS = (0, 4, 5)  # of the rows a call takes: input_gates and the keep weights; the others are written

    def __init__(self, cell, weight_hh, bias_hh, weight_hr, h, c, save, zoned):
        self.cell, self.weight_hh, self.bias_hh, self.weight_hr = cell, weight_hh, bias_hh, weight_hr
        self.h, self.c, self.save, self.zoned = h, c, save, zoned
        batch = h.shape[0]
        self.hidden_gates = h.new_empty(batch, weight_hh.shape[0])
        projected = weight_hr is not None and not save
        self.projection_scratch = h.new_empty(batch, weight_hr.shape[1]) if projected else None

    @property
    def weights(self):
        return (self.weight_hh, self.bias_hh, self.weight_hr)

    @property
    def carried(self):
        """The state carried from step to step."""
        return [t for t in (self.h, self.c) if t is not None]

    @property
    def device(self):
        return self.h.device

    def on_own_state(self):
        """The same loop with carried state and scratch of its own."""
        c = self.c.clone() if self.c is not None else None
        return ForwardLoop(self.cell, *self.weights, self.h.clone(), c, self.save, self.zoned)

    def __call__(self, steps, input_gates, output, saved, projection_input, keep_h, keep_kernel):
        """Run `steps` ((row offset, active batch) in visiting order) over these rows: input_gates in, output,
        saved (no rows unless saving) and projection_input (no rows unless saving with a projection) out; keep_h
        and keep_kernel: zoneout's keep weights of the projected h and of the kernel's states, or None."""
        h, weight_hr = self.h, self.weight_hr
        for offset, active in steps:
            rows = slice(offset, offset + active)
            torch.mm(h[:active], self.weight_hh.t(), out=self.hidden_gates[:active])
            if weight_hr is None:
                step_output = output[rows]
            else:
                step_output = projection_input[rows] if self.save else self.projection_scratch[:active]
            forward_step(
                self.cell,
                xg=input_gates[rows],
                hg=self.hidden_gates[:active],
                bias=self.bias_hh,
                h=h,
                c=self.c,
                out=step_output,
                saved=saved[rows] if saved.shape[0] else None,
                write_h=weight_hr is None,
                zoneout=keep_kernel[rows] if keep_kernel is not None else None,
            )
            if weight_hr is not None:
                torch.mm(step_output, weight_hr.t(), out=output[rows])
                if keep_h is not None:
                    # d * h + (1 - d) * h~ in the keep weights' dtype (fp32 for fp16/bf16), as the reference; lerp is
                    # one launch per step where that form takes four, and exact for masks of 0 and 1
                    keep = keep_h[rows]
                    output[rows] = torch.lerp(output[rows].to(keep.dtype), h[:active].to(keep.dtype), keep)
                h[:active] = output[rows]


def backward_outputs(input, h0, c0, weight_ih, weight_hh, weight_hr, needs_grad):
    """Empty gradients as sequence_backward returns them; those not needed have no elements."""
    bias = input.new_empty(weight_hh.shape[0])
    like = [input, h0, c0, weight_ih, weight_hh, bias, bias, weight_hr]
    return tuple(
        torch.empty_like(t) if needed else input.new_empty(0) for t, needed in zip(like, needs_grad, strict=True)
    )


def sequence_backward(
    cell,
    grad_output,
    grad_h_n,
    grad_c_n,
    input,
    h0,
    c0,
    weight_ih,
    weight_hh,
    weight_hr,
    output,
    saved,
    projection_input,
    batch_sizes,
    reverse,
    needs_grad,
    zoneout=None,
):
    """Backpropagation through time for one direction of one layer.

    needs_grad says which of (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) want a
    gradient: the GEMMs for the others are skipped (frozen weights when fine-tuning).
    """
    spec = CELLS[cell]
    rows_total, batch = input.shape[0], h0.shape[0]
    h_prev = previous_hidden(output, h0, batch_sizes, reverse)
    grad_input_gates = input.new_empty(rows_total, weight_hh.shape[0])
    # Only the GRU's gradients w.r.t. the input and hidden projections differ (n = tanh(x_n + r * h_n)).
    grad_hidden_gates = torch.empty_like(grad_input_gates) if spec.is_gru else grad_input_gates
    # dh holds what reaches h through W_hh, one GEMM's output. What is carried from step to step stays in fp32
    # for fp16/bf16 (dc): the LSTM's cell-state gradient, and the GRU's gradient through h' = z * h + ...
    acc = accumulate_dtype(input.dtype)
    if spec.is_gru:
        dh, dc = torch.zeros_like(grad_h_n), grad_h_n.to(acc, copy=True)
    else:
        dh = grad_h_n.clone()
        dc = grad_c_n.to(acc, copy=True) if spec.has_cell_state else None
    # With zoneout the LSTM's h' = d * h + ... also passes d * dh' to h directly, carried like dc.
    dh_kept = torch.zeros_like(dh, dtype=acc) if zoneout is not None and spec.has_cell_state else None
    keep_h, keep_kernel = _projected_keep(zoneout, weight_hr)
    grad_projected = input.new_empty(rows_total if weight_hr is not None else 0, weight_hh.shape[1])
    loop = BackwardLoop(cell, weight_hh, weight_hr, dh, dc, dh_kept)
    rows = (
        grad_output,
        saved,
        h_prev,
        output,
        grad_input_gates,
        grad_hidden_gates,
        grad_projected,
        keep_h,
        keep_kernel,
    )
    if graphs.replays(input.device, batch_sizes):
        graphs.backward(loop, rows, reverse)
    else:
        loop(reversed(time_steps(batch_sizes, rows_total, batch, reverse)), *rows)

    # What reaches h0 besides the W_hh GEMM: the GRU's z * dh' (and zoneout's share), the zoned LSTM's d * dh'.
    kept = dc if spec.is_gru else dh_kept
    return gradients_after_the_loop(
        needs_grad,
        input,
        h_prev,
        weight_ih,
        grad_input_gates,
        grad_hidden_gates,
        grad_h0=lambda: dh if kept is None else (dh + kept).to(input.dtype),
        grad_c0=lambda: dc.to(input.dtype),
        grad_weight_hr=lambda: torch.mm(grad_projected.t(), projection_input),
    )


class BackwardLoop:
    """The backward step loop of one direction of one layer over rows given per call: the weights and the carried
    gradients (dh; dc: the LSTM's cell-state gradient, the GRU's through z, in the accumulation dtype; dh_kept: the
    zoned LSTM's gradient through its kept h, or None) are fixed, so that graphs.backward can replay it chunk by
    chunk."""

    # Of the rows a call takes: the output's gradient, saved activations, previous h, output and the keep weights; the
    # gate gradients and the projection's gradient are written.
    INPUTS = (0, 1, 2, 3, 7, 8)

    def __init__(self, cell, weight_hh, weight_hr, dh, dc, dh_kept):
        self.cell, self.weight_hh, self.weight_hr = cell, weight_hh, weight_hr
        self.dh, self.dc, self.dh_kept = dh, dc, dh_kept
        self.grad_projection_input = dh.new_empty(dh.shape[0], weight_hr.shape[1]) if weight_hr is not None else None

    @property
    def weights(self):
        return (self.weight_hh, self.weight_hr)

    @property
    def carried(self):
        """The gradients carried from step to step."""
        return [t for t in (self.dh, self.dc, self.dh_kept) if t is not None]

    @property
    def device(self):
        return self.dh.device

    def on_own_state(self):
        """The same loop with carried gradients and scratch of its own."""
        dc, dh_kept = (t.clone() if t is not None else None for t in (self.dc, self.dh_kept))
        return BackwardLoop(self.cell, *self.weights, self.dh.clone(), dc, dh_kept)

    def __call__(
        self,
        steps,
        grad_output,
        saved,
        h_prev,
        output,
        grad_input_gates,
        grad_hidden_gates,
        grad_projected,
        keep_h,
        keep_kernel,
    ):
        """Run `steps` (in the backward's visiting order) over these rows: the output's gradient, the saved
        activations, each row's previous h and output in; the gate gradients (and a projected LSTM's gradient of its
        projection's output) out; keep weights as in ForwardLoop."""
        spec, dh, weight_hr = CELLS[self.cell], self.dh, self.weight_hr
        acc = accumulate_dtype(dh.dtype)
        for offset, active in steps:
            rows = slice(offset, offset + active)
            if weight_hr is not None:
                torch.add(dh[:active], grad_output[rows], out=grad_projected[rows])
                if keep_h is not None:
                    # Of the gradient of the zoned h', d goes straight to h, 1 - d to the projection.
                    keep = keep_h[rows]
                    grad_h = grad_projected[rows].to(acc) + self.dh_kept[:active]
                    torch.mul(grad_h, keep, out=self.dh_kept[:active])
                    grad_projected[rows] = grad_h * (1 - keep)
                torch.mm(grad_projected[rows], weight_hr, out=self.grad_projection_input[:active])
            backward_step(
                self.cell,
                dh=self.grad_projection_input if weight_hr is not None else dh,
                dout=None if weight_hr is not None else grad_output[rows],
                dc=self.dc,
                saved=saved[rows] if spec.saved_width else None,
                hprev=h_prev[rows],
                out=output[rows],
                dgx=grad_input_gates[rows],
                dgh=grad_hidden_gates[rows],
                zoneout=keep_kernel[rows] if keep_kernel is not None else None,
                dh_kept=self.dh_kept if keep_h is None else None,
            )
            torch.mm(grad_hidden_gates[rows], self.weight_hh, out=dh[:active])
