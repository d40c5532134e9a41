"""IndRNN's recurrence as ONE Triton kernel per direction: the time loop runs inside the kernel, forward and backward.

IndRNN's recurrent weight is a vector u (h' = act(x W^T + b + u * h)), so hidden unit j of batch row b depends
only on its own past. Each program owns a [BLOCK_B, BLOCK_H] block of (batch row, hidden unit) and walks all T
steps with its state in registers: no program waits for another, no per-step launch, no atomics.

Rows follow fused_rnn.packing: step t owns rows [offset_t, offset_t + batch_t) of the (N, H) tensors, and batch
row b is active at step t while b < batch_t. Inactive rows keep their state, so a packed reverse direction starts
each sequence from h0 at its own last step, as torch.nn does.
"""

import functools

import torch
import triton
import triton.language as tl

from fused_rnn.backends.triton.cell_math import tanh

# Rows and hidden units per program. Each program is one sequential walk over T steps, so small tiles give the
# GPU more walks to run side by side (B=1, H=512 makes 4 programs of 128 units); not yet tuned on a GPU.
MAX_BLOCK_B = 4
MAX_BLOCK_H = 128


@triton.jit
def _step_rows(p_offsets, p_batch_sizes, t, B, PACKED: tl.constexpr):
    """(first row, active batch) of step t: from the packed layout's tables, or t * B and B when padded."""
    if PACKED:
        return tl.load(p_offsets + t), tl.load(p_batch_sizes + t)
    else:
        return t * B, B


@triton.jit
def _activation(b_pre, RELU: tl.constexpr):
    if RELU:
        return tl.where(b_pre < 0.0, 0.0, b_pre)  # NaN stays NaN, as in torch.relu (tl.maximum drops it)
    else:
        return tanh(b_pre)


@triton.jit(do_not_specialize=["T"])
def indrnn_fwd_kernel(
    p_xg,  # [N, H] x W^T + b of every row
    p_u,  # [H] recurrent weight
    p_h0,  # [B, H] initial state
    p_offsets,  # [T] int32 first row of each step (packed only)
    p_batch_sizes,  # [T] int32 active rows of each step (packed only)
    p_out,  # [N, H] h' of every row
    p_hn,  # [B, H] final state
    T,
    B,
    H,
    PACKED: tl.constexpr,
    REVERSE: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    state_mask = (rows[:, None] < B) & (cols[None, :] < H)
    # Offsets within one step's [B, H] block fit 32 bits (the launcher checks); only the step's first row, N * H
    # in all, may pass 2**31, so it is one int64 scalar per step. (Per-element int64 offsets made ptxas spill.)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]
    b_u = tl.load(p_u + cols, mask=cols < H, other=0.0).to(ACC)[None, :]  # [1, BLOCK_H]
    # The state is carried in ACC (fp32 for fp16/bf16 storage); only the outputs are rounded to the storage dtype.
    b_h = tl.load(p_h0 + state, mask=state_mask, other=0.0).to(ACC)  # [BLOCK_B, BLOCK_H]
    for step in range(T):
        if REVERSE:
            t = T - 1 - step
        else:
            t = step
        offset, batch = _step_rows(p_offsets, p_batch_sizes, t, B, PACKED)
        active = (rows[:, None] < batch) & (cols[None, :] < H)
        first = offset.to(tl.int64) * H
        b_pre = tl.load(p_xg + first + state, mask=active, other=0.0).to(ACC) + b_u * b_h
        b_new = _activation(b_pre, RELU)
        tl.store(p_out + first + state, b_new.to(p_out.dtype.element_ty), mask=active)
        b_h = tl.where(active, b_new, b_h)
    tl.store(p_hn + state, b_h.to(p_hn.dtype.element_ty), mask=state_mask)


@triton.jit(do_not_specialize=["T"])
def indrnn_bwd_kernel(
    p_dout,  # [N, H] gradient of the output
    p_dhn,  # [B, H] gradient of the final state
    p_out,  # [N, H] h' from the forward
    p_h0,  # [B, H] initial state
    p_u,  # [H] recurrent weight
    p_offsets,  # [T] int32 (packed only)
    p_batch_sizes,  # [T] int32 (packed only)
    p_dpre,  # [N, H] gradient of the pre-activation (= of x W^T + b) of every row
    p_dh0,  # [B, H] gradient of h0
    p_du_rows,  # [B, H] ACC: sum over this row's steps of dpre * h_prev; summed over rows outside
    T,
    B,
    H,
    PACKED: tl.constexpr,
    REVERSE: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    state_mask = (rows[:, None] < B) & (cols[None, :] < H)
    state = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H]; per step as in the forward
    b_u = tl.load(p_u + cols, mask=cols < H, other=0.0).to(ACC)[None, :]  # [1, BLOCK_H]
    b_h0 = tl.load(p_h0 + state, mask=state_mask, other=0.0).to(ACC)
    b_dh = tl.load(p_dhn + state, mask=state_mask, other=0.0).to(ACC)  # carried in ACC, like the forward state
    b_du = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for step in range(T):
        # The recurrence visited t in the opposite order.
        if REVERSE:
            t = step
            prev = t + 1
        else:
            t = T - 1 - step
            prev = t - 1
        offset, batch = _step_rows(p_offsets, p_batch_sizes, t, B, PACKED)
        active = (rows[:, None] < batch) & (cols[None, :] < H)
        at = offset.to(tl.int64) * H + state
        b_dh += tl.load(p_dout + at, mask=active, other=0.0).to(ACC)
        b_h = tl.load(p_out + at, mask=active, other=0.0).to(ACC)
        if RELU:
            b_dpre = tl.where(b_h > 0.0, b_dh, 0.0)
        else:
            b_dpre = b_dh * (1.0 - b_h * b_h)
        b_dpre = tl.where(active, b_dpre, 0.0)
        tl.store(p_dpre + at, b_dpre.to(p_dpre.dtype.element_ty), mask=active)

        # The state this step started from: the previous visited step's output, or h0 where the row's sequence
        # starts here (the first step, or in a packed reverse walk the row's own last step).
        prev_in_range = tl.minimum(tl.maximum(prev, 0), T - 1)
        prev_offset, prev_batch = _step_rows(p_offsets, p_batch_sizes, prev_in_range, B, PACKED)
        from_output = active & (prev == prev_in_range) & (rows[:, None] < prev_batch)
        prev_at = prev_offset.to(tl.int64) * H + state
        b_hprev = tl.load(p_out + prev_at, mask=from_output, other=0.0).to(ACC)
        b_hprev = tl.where(from_output, b_hprev, b_h0)
        b_du += b_dpre * b_hprev
        b_dh = tl.where(active, b_dpre * b_u, b_dh)
    tl.store(p_dh0 + state, b_dh.to(p_dh0.dtype.element_ty), mask=state_mask)
    tl.store(p_du_rows + state, b_du, mask=state_mask)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 math for fp32/fp16/bf16 storage; float64 stays float64 so gradcheck can test the kernels."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch_config(batch: int, hidden: int, dtype: torch.dtype) -> tuple[dict, tuple[int, int]]:
    block_b = min(triton.next_power_of_2(batch), MAX_BLOCK_B)
    block_h = min(triton.next_power_of_2(hidden), MAX_BLOCK_H)
    constants = {
        "ACC": tl.float64 if dtype == torch.float64 else tl.float32,
        "BLOCK_B": block_b,
        "BLOCK_H": block_h,
    }
    return constants, (triton.cdiv(batch, block_b), triton.cdiv(hidden, block_h))


@functools.lru_cache(maxsize=64)
def step_tables(batch_sizes: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row, active batch) of every step of a packed layout as int32 tensors on `device`.

    Cached per layout and device, so a GPU gets them copied once, not on every call.
    """
    sizes = torch.tensor(batch_sizes, dtype=torch.int32)
    return (torch.cumsum(sizes, 0, dtype=torch.int32) - sizes).to(device), sizes.to(device)


def _layout(batch_sizes, num_rows, batch, device):
    if batch_sizes is None:
        return {"p_offsets": None, "p_batch_sizes": None, "T": num_rows // batch, "PACKED": False}
    offsets, sizes = step_tables(tuple(batch_sizes), device)
    return {"p_offsets": offsets, "p_batch_sizes": sizes, "T": len(batch_sizes), "PACKED": True}


def recurrence_forward(
    input_projection: torch.Tensor,
    weight_hh: torch.Tensor,
    h0: torch.Tensor,
    batch_sizes: list[int] | None,
    reverse: bool,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (N, H), h_n (B, H)) of h' = act(input_projection + u * h) over all rows; all inputs contiguous."""
    batch, hidden = h0.shape
    output = torch.empty_like(input_projection)
    h_n = torch.empty_like(h0)
    constants, grid = _launch_config(batch, hidden, input_projection.dtype)
    indrnn_fwd_kernel[grid](
        p_xg=input_projection,
        p_u=weight_hh,
        p_h0=h0,
        p_out=output,
        p_hn=h_n,
        B=batch,
        H=hidden,
        REVERSE=reverse,
        RELU=relu,
        **_layout(batch_sizes, input_projection.shape[0], batch, h0.device),
        **constants,
    )
    return output, h_n


def recurrence_backward(
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    output: torch.Tensor,
    h0: torch.Tensor,
    weight_hh: torch.Tensor,
    batch_sizes: list[int] | None,
    reverse: bool,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d pre-activation (N, H), d h0 (B, H), d u (H,)) of recurrence_forward; all inputs contiguous."""
    batch, hidden = h0.shape
    grad_pre = torch.empty_like(output)
    grad_h0 = torch.empty_like(h0)
    grad_u_rows = torch.empty(batch, hidden, dtype=accumulate_dtype(h0.dtype), device=h0.device)
    constants, grid = _launch_config(batch, hidden, output.dtype)
    indrnn_bwd_kernel[grid](
        p_dout=grad_output,
        p_dhn=grad_h_n,
        p_out=output,
        p_h0=h0,
        p_u=weight_hh,
        p_dpre=grad_pre,
        p_dh0=grad_h0,
        p_du_rows=grad_u_rows,
        B=batch,
        H=hidden,
        REVERSE=reverse,
        RELU=relu,
        **_layout(batch_sizes, output.shape[0], batch, h0.device),
        **constants,
    )
    # Each row's sum over its steps came from the kernel; the sum over rows is one deterministic reduction.
    return grad_pre, grad_h0, grad_u_rows.sum(0).to(weight_hh.dtype)
