// The recurrent part of a sequence on CUDA, forward and backward (DESIGN.md, "How a sequence runs", level A):
// per time step one cuBLAS GEMM through ATen (at::mm_out, h W_hh^T forward, dgates W_hh backward) and ONE fused
// step kernel for all the pointwise work, both on the current stream; the input projection before the loop and
// the weight gradients after it are the driver's (csrc/sequence.cpp). No atomics: results are bit-for-bit
// deterministic.
//
// The step kernels are thin wrappers: one thread per (active row, hidden unit) calls the step's body for its row
// and unit, which loads the operands, runs the shared math of csrc/cell_math.h (which the CPU kernel runs too) and
// stores the results. On CPU tensors the same loop runs each body in a host loop over rows and units instead of a
// launch (the op sequence_*_step_loop), so the CPU tests run this driver and these bodies, and only the launch
// configuration is left for a GPU to test. Storage is fp16/bf16/fp32/fp64; the math runs in fp32
// (fp64 for fp64). What is carried from step to step beyond h stays in that math dtype, as in the Triton driver
// (fused_rnn/backends/triton/sequence.py): the LSTM's c and dc, and the GRU's gradient through h' = z * h + ....
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

#include "../cell_math.h"
#include "../sequence.h"

namespace fused_rnn {
namespace {

using at::Tensor;

constexpr int kThreadsPerBlock = 256;

template <CellKind C>
constexpr int gate_count() {
    return C == CellKind::lstm ? 4 : C == CellKind::gru ? 3 : 1;
}

// Blocks of H activations saved per row for the backward, as fused_rnn/cells.py.
template <CellKind C>
constexpr int saved_width() {
    return C == CellKind::lstm ? 5 : C == CellKind::gru ? 4 : 0;
}

// One step's operands, rows already offset to the step's first row (state buffers [B, ·] start at row 0).
// T: storage type; M: math type.
template <typename T, typename M>
struct ForwardStep {
    const T* input_gates;   // [active, G*H] x W_ih^T + b_ih + b_hh (GRU: without b_hn)
    const T* hidden_gates;  // [active, G*H] h W_hh^T
    const T* bias_hn;       // [H] the GRU's b_hn, or null
    T* h;                   // [B, H] hidden state: GRU reads h from it; h' is written when write_h
    M* c;                   // [B, H] LSTM cell state: c read, c' written
    T* out;                 // [active, H] h' (before the projection when the layer has one)
    M* saved;               // [active, saved_width * H] activations for the backward, or null
    // [active, zoneout_width] zoneout's keep weights (LSTM: h's, then c's; GRU: h's), or null. A projected LSTM's h
    // is zoned after the W_hr GEMM, outside this kernel.
    const M* zoneout;
    int64_t zoneout_width;
    int64_t active, hidden;
    bool write_h;
};

// Row b (of the step's active rows), hidden unit u.
template <typename T, typename M, CellKind C>
__host__ __device__ inline void forward_step_at(const ForwardStep<T, M>& step, int64_t b, int64_t u) {
    const int64_t H = step.hidden;
    constexpr int G = gate_count<C>();
    const T* xg = step.input_gates + b * G * H + u;
    const T* hg = step.hidden_gates + b * G * H + u;
    const auto pre = [&](int gate) { return static_cast<M>(xg[gate * H]) + static_cast<M>(hg[gate * H]); };
    M* saved = step.saved ? step.saved + b * saved_width<C>() * H + u : nullptr;
    const M* keep = step.zoneout ? step.zoneout + b * step.zoneout_width + u : nullptr;
    M h_new;
    if constexpr (C == CellKind::lstm) {  // saved: i, f, g, o, c_prev
        const M c_prev = step.c[b * H + u];
        const LstmForward<M> s = lstm_forward<M>(pre(0), pre(1), pre(2), pre(3), c_prev);
        // c's keep weights are the last H columns (after the projection's P ones when the layer has one).
        step.c[b * H + u] = keep ? zoneout_forward<M>(keep[step.zoneout_width - H], c_prev, s.c) : s.c;
        if (saved) {
            saved[0] = s.i;
            saved[H] = s.f;
            saved[2 * H] = s.g;
            saved[3 * H] = s.o;
            saved[4 * H] = c_prev;
        }
        h_new = keep && step.write_h ? zoneout_forward<M>(keep[0], static_cast<M>(step.h[b * H + u]), s.h) : s.h;
    } else if constexpr (C == CellKind::gru) {  // saved: r, z, n, h W_hn^T + b_hn
        M h_n = static_cast<M>(hg[2 * H]);
        if (step.bias_hn) h_n += static_cast<M>(step.bias_hn[u]);
        const M h_prev = static_cast<M>(step.h[b * H + u]);
        const GruForward<M> s = gru_forward<M>(pre(0), pre(1), static_cast<M>(xg[2 * H]), h_n, h_prev);
        if (saved) {
            saved[0] = s.r;
            saved[H] = s.z;
            saved[2 * H] = s.n;
            saved[3 * H] = h_n;
        }
        h_new = keep ? zoneout_forward<M>(keep[0], h_prev, s.h) : s.h;
    } else {
        h_new = rnn_forward<M>(pre(0), C == CellKind::rnn_relu);
    }
    const T h_stored = static_cast<T>(h_new);
    step.out[b * H + u] = h_stored;
    if (step.write_h) step.h[b * H + u] = h_stored;
}

template <typename T, typename M, CellKind C>
__global__ void forward_step_kernel(const ForwardStep<T, M> step) {
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index < step.active * step.hidden) forward_step_at<T, M, C>(step, index / step.hidden, index % step.hidden);
}

template <typename T, typename M>
struct BackwardStep {
    const T* grad_h;       // [B, H] gradient reaching h' through W_hh (through W_hr when projected)
    const T* grad_output;  // [active, H] gradient of this step's output, added to grad_h; null when projected
    M* carry;              // [B, H] LSTM: dc; GRU: the gradient reaching h' directly (z * dh); read, then replaced
    const M* saved;        // [active, saved_width * H]
    const T* h_prev;       // [active, H] h this step started from (GRU)
    const T* out;          // [active, H] h' (RNN)
    T* grad_input_gates;   // [active, G*H]
    T* grad_hidden_gates;  // [active, G*H] the GRU's; the same buffer as grad_input_gates otherwise
    const M* zoneout;      // keep weights as ForwardStep's, or null
    int64_t zoneout_width;
    // [B, H] LSTM without projection, with zoneout: the share d * dh' of h's gradient that goes straight to h,
    // carried like dc: read (added to dh), then replaced; null otherwise (a projected h is split outside).
    M* dh_kept;
    int64_t active, hidden;
};

template <typename T, typename M, CellKind C>
__host__ __device__ inline void backward_step_at(const BackwardStep<T, M>& step, int64_t b, int64_t u) {
    const int64_t H = step.hidden;
    constexpr int G = gate_count<C>();
    M dh = static_cast<M>(step.grad_h[b * H + u]);
    if (step.grad_output) dh += static_cast<M>(step.grad_output[b * H + u]);
    T* dgx = step.grad_input_gates + b * G * H + u;
    // With zoneout the gradients of the zoned states are split: the kept shares go straight to the previous states,
    // the rest through the cell math.
    const M* keep = step.zoneout ? step.zoneout + b * step.zoneout_width + u : nullptr;
    if constexpr (C == CellKind::lstm) {
        const M* saved = step.saved + b * saved_width<C>() * H + u;
        M dc = step.carry[b * H + u], dc_kept(0);
        if (keep) {
            if (step.dh_kept) {
                const ZoneoutBackward<M> z = zoneout_backward<M>(keep[0], dh + step.dh_kept[b * H + u]);
                step.dh_kept[b * H + u] = z.kept;
                dh = z.fresh;
            }
            const ZoneoutBackward<M> z = zoneout_backward<M>(keep[step.zoneout_width - H], dc);
            dc = z.fresh;
            dc_kept = z.kept;
        }
        const LstmBackward<M> d = lstm_backward<M>(saved[0], saved[H], saved[2 * H], saved[3 * H], saved[4 * H], dh, dc);
        dgx[0] = static_cast<T>(d.pre_i);
        dgx[H] = static_cast<T>(d.pre_f);
        dgx[2 * H] = static_cast<T>(d.pre_g);
        dgx[3 * H] = static_cast<T>(d.pre_o);
        step.carry[b * H + u] = d.c_prev + dc_kept;
    } else if constexpr (C == CellKind::gru) {
        const M* saved = step.saved + b * saved_width<C>() * H + u;
        dh += step.carry[b * H + u];
        M dh_kept(0);
        if (keep) {
            const ZoneoutBackward<M> z = zoneout_backward<M>(keep[0], dh);
            dh = z.fresh;
            dh_kept = z.kept;
        }
        const GruBackward<M> d =
            gru_backward<M>(saved[0], saved[H], saved[2 * H], saved[3 * H], static_cast<M>(step.h_prev[b * H + u]), dh);
        T* dgh = step.grad_hidden_gates + b * G * H + u;
        dgx[0] = dgh[0] = static_cast<T>(d.pre_r);
        dgx[H] = dgh[H] = static_cast<T>(d.pre_z);
        dgx[2 * H] = static_cast<T>(d.x_n);
        dgh[2 * H] = static_cast<T>(d.h_n);
        step.carry[b * H + u] = d.h_prev + dh_kept;
    } else {
        dgx[0] = static_cast<T>(rnn_backward<M>(static_cast<M>(step.out[b * H + u]), dh, C == CellKind::rnn_relu));
    }
}

template <typename T, typename M, CellKind C>
__global__ void backward_step_kernel(const BackwardStep<T, M> step) {
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index < step.active * step.hidden) backward_step_at<T, M, C>(step, index / step.hidden, index % step.hidden);
}

unsigned int blocks_for(int64_t threads) {
    return static_cast<unsigned int>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

// Calls run(std::integral_constant<CellKind, cell>{}), so that the cell becomes a template argument.
template <typename Run>
void with_cell(CellKind cell, const Run& run) {
    switch (cell) {
        case CellKind::lstm: return run(std::integral_constant<CellKind, CellKind::lstm>{});
        case CellKind::gru: return run(std::integral_constant<CellKind, CellKind::gru>{});
        case CellKind::rnn_tanh: return run(std::integral_constant<CellKind, CellKind::rnn_tanh>{});
        case CellKind::rnn_relu: return run(std::integral_constant<CellKind, CellKind::rnn_relu>{});
    }
}

// One step's pointwise work: a kernel launch on the current stream, or on CPU the same bodies in a host loop.
template <typename T, typename M>
void forward_step(CellKind cell, const ForwardStep<T, M>& step, bool on_gpu) {
    with_cell(cell, [&](auto kind) {
        constexpr CellKind C = decltype(kind)::value;
        if (on_gpu) {
            const auto stream = c10::cuda::getCurrentCUDAStream();
            forward_step_kernel<T, M, C><<<blocks_for(step.active * step.hidden), kThreadsPerBlock, 0, stream>>>(step);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
            for (int64_t b = 0; b < step.active; ++b) {
                for (int64_t u = 0; u < step.hidden; ++u) forward_step_at<T, M, C>(step, b, u);
            }
        }
    });
}

template <typename T, typename M>
void backward_step(CellKind cell, const BackwardStep<T, M>& step, bool on_gpu) {
    with_cell(cell, [&](auto kind) {
        constexpr CellKind C = decltype(kind)::value;
        if (on_gpu) {
            const auto stream = c10::cuda::getCurrentCUDAStream();
            backward_step_kernel<T, M, C><<<blocks_for(step.active * step.hidden), kThreadsPerBlock, 0, stream>>>(step);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
            for (int64_t b = 0; b < step.active; ++b) {
                for (int64_t u = 0; u < step.hidden; ++u) backward_step_at<T, M, C>(step, b, u);
            }
        }
    });
}

template <typename P>
P* pointer_or_null(const Tensor& t) {
    return t.defined() && t.numel() ? t.data_ptr<P>() : nullptr;
}

}  // namespace

Tensor recurrent_forward_steps(const SequenceShape& shape, const ForwardTensors& tensors) {
    const c10::DeviceGuard device_guard(tensors.output.device());
    const bool on_gpu = tensors.output.is_cuda();
    const int64_t B = shape.batch, H = shape.hidden, G = shape.gates, SW = shape.saved_width;
    const bool save = tensors.saved.numel() > 0;
    const bool projection_per_row = shape.projected && tensors.projection_input.size(0) != B;
    // The running hidden state: each step's GEMM reads the prefix of rows it has active. At the end it is h_n.
    Tensor h = tensors.h0.clone();
    Tensor hidden_gates = at::empty({B, G * H}, tensors.output.options());
    const int64_t zoneout_width = tensors.zoneout.defined() ? tensors.zoneout.size(1) : 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tensors.output.scalar_type(), "fused_rnn forward_cuda",
                                    [&] {
        using M = at::opmath_type<scalar_t>;
        for (const Step s : shape.steps) {
            Tensor gates = hidden_gates.narrow(0, 0, s.active);
            at::mm_out(gates, h.narrow(0, 0, s.active), tensors.weight_hh.t());
            Tensor step_output = !shape.projected  ? tensors.output.narrow(0, s.offset, s.active)
                                 : projection_per_row ? tensors.projection_input.narrow(0, s.offset, s.active)
                                                      : tensors.projection_input.narrow(0, 0, s.active);
            ForwardStep<scalar_t, M> step{};
            step.input_gates = tensors.input_gates.data_ptr<scalar_t>() + s.offset * G * H;
            step.hidden_gates = gates.data_ptr<scalar_t>();
            step.bias_hn = pointer_or_null<scalar_t>(tensors.bias_hn);
            step.h = h.data_ptr<scalar_t>();
            step.c = pointer_or_null<M>(tensors.cell_state);
            step.out = step_output.data_ptr<scalar_t>();
            step.saved = save ? tensors.saved.data_ptr<M>() + s.offset * SW * H : nullptr;
            step.active = s.active;
            step.hidden = H;
            step.write_h = !shape.projected;
            step.zoneout = zoneout_width ? tensors.zoneout.data_ptr<M>() + s.offset * zoneout_width : nullptr;
            step.zoneout_width = zoneout_width;
            forward_step(shape.cell, step, on_gpu);
            if (shape.projected) {
                Tensor projected = tensors.output.narrow(0, s.offset, s.active);
                at::mm_out(projected, step_output, tensors.weight_hr.t());
                Tensor previous = h.narrow(0, 0, s.active);
                if (zoneout_width) {
                    // d * h + (1 - d) * h~ in the math dtype, as the Triton driver: one lerp (exact for masks of 0
                    // and 1) where that form takes four operations per step.
                    const Tensor keep = tensors.zoneout.narrow(0, s.offset, s.active).narrow(1, 0, shape.hidden_out);
                    projected.copy_(projected.to(keep.scalar_type()).lerp(previous.to(keep.scalar_type()), keep));
                }
                previous.copy_(projected);
            }
        }
    });
    return h;
}

std::tuple<Tensor, Tensor> recurrent_backward_steps(const SequenceShape& shape, const BackwardTensors& tensors) {
    const c10::DeviceGuard device_guard(tensors.output.device());
    const bool on_gpu = tensors.output.is_cuda();
    const int64_t B = shape.batch, H = shape.hidden, G = shape.gates, SW = shape.saved_width;
    const bool lstm = shape.cell == CellKind::lstm, gru = shape.cell == CellKind::gru;
    const auto options = tensors.output.options();
    const auto math_options = options.dtype(tensors.saved.scalar_type());
    // dh: what reaches h through W_hh, one GEMM's output per step. The carry (math dtype) holds the LSTM's dc, or
    // the GRU's gradient through h' = z * h + ..., which starts as the whole gradient of h_n.
    Tensor dh = gru ? at::zeros_like(tensors.grad_h_n) : tensors.grad_h_n.clone();
    Tensor carry = lstm  ? tensors.grad_c_n.to(math_options.dtype(), false, true)
                   : gru ? tensors.grad_h_n.to(math_options.dtype(), false, true)
                         : Tensor();
    Tensor grad_projection_input = shape.projected ? at::empty({B, H}, options) : Tensor();
    const int64_t zoneout_width = tensors.zoneout.defined() ? tensors.zoneout.size(1) : 0;
    // The zoned LSTM's h' = d * h + ... passes d * dh' to h directly, carried like dc (its h was split by the kernel
    // without a projection, here with one).
    Tensor dh_kept = lstm && zoneout_width ? at::zeros({B, shape.hidden_out}, math_options) : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tensors.output.scalar_type(), "fused_rnn backward_cuda",
                                    [&] {
        using M = at::opmath_type<scalar_t>;
        for (auto s = shape.steps.rbegin(); s != shape.steps.rend(); ++s) {
            const auto rows = [&](const Tensor& t) { return t.narrow(0, s->offset, s->active); };
            BackwardStep<scalar_t, M> step{};
            if (shape.projected) {  // the projected output's gradient, then through W_hr to h' before it
                Tensor grad_projected = rows(tensors.grad_projected);
                at::add_out(grad_projected, dh.narrow(0, 0, s->active), rows(tensors.grad_output));
                if (zoneout_width) {  // of the zoned h's gradient, d goes straight to h, 1 - d to the projection
                    const Tensor keep = rows(tensors.zoneout).narrow(1, 0, shape.hidden_out);
                    Tensor kept = dh_kept.narrow(0, 0, s->active);
                    const Tensor total = grad_projected.to(kept.scalar_type()).add(kept);
                    kept.copy_(total.mul(keep));
                    grad_projected.copy_(total.mul(keep.neg().add(1)));
                }
                Tensor grad_step_input = grad_projection_input.narrow(0, 0, s->active);
                at::mm_out(grad_step_input, grad_projected, tensors.weight_hr);
                step.grad_h = grad_projection_input.data_ptr<scalar_t>();
            } else {
                step.grad_h = dh.data_ptr<scalar_t>();
                step.grad_output = rows(tensors.grad_output).data_ptr<scalar_t>();
            }
            step.carry = pointer_or_null<M>(carry);
            step.saved = SW ? tensors.saved.data_ptr<M>() + s->offset * SW * H : nullptr;
            step.h_prev = gru ? rows(tensors.previous_hidden).data_ptr<scalar_t>() : nullptr;
            step.out = rows(tensors.output).data_ptr<scalar_t>();
            step.grad_input_gates = rows(tensors.grad_input_gates).data_ptr<scalar_t>();
            step.grad_hidden_gates = rows(tensors.grad_hidden_gates).data_ptr<scalar_t>();
            step.zoneout = zoneout_width ? rows(tensors.zoneout).data_ptr<M>() : nullptr;
            step.zoneout_width = zoneout_width;
            step.dh_kept = dh_kept.defined() && !shape.projected ? dh_kept.data_ptr<M>() : nullptr;
            step.active = s->active;
            step.hidden = H;
            backward_step(shape.cell, step, on_gpu);
            Tensor dh_active = dh.narrow(0, 0, s->active);
            at::mm_out(dh_active, rows(tensors.grad_hidden_gates), tensors.weight_hh);
        }
    });
    const Tensor grad_h0 = gru                 ? dh.add(carry).to(tensors.output.scalar_type())
                           : dh_kept.defined() ? dh.add(dh_kept).to(tensors.output.scalar_type())
                                               : dh;
    const Tensor grad_c0 = lstm ? carry.to(tensors.output.scalar_type()) : Tensor();
    return {grad_h0, grad_c0};
}

}  // namespace fused_rnn
