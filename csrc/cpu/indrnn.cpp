// IndRNN's recurrence on CPU (Li et al. 2018): h' = act(pre + u * h), where pre = x W^T + b is one GEMM over all
// rows before (fused_rnn/indrnn/autograd.py). Every hidden unit only sees its own past, so the lanes (one row of
// the batch, one SIMD vector of units) are independent for the whole sequence: each thread runs every step for its
// own contiguous range of lanes, with no barrier and no atomics. Per step a thread reads and writes contiguous
// memory once; the pointwise math is the Elman RNN's (rnn_forward / rnn_backward of csrc/cell_math.h).
// Ops: fused_rnn_native::indrnn_recurrence_forward / indrnn_recurrence_backward, the same contract as
// fused_rnn/indrnn/torch_loop.py's recurrence_forward / recurrence_backward (float32 and float64 on CPU). Builds with
// the CUDA kernels (FUSED_RNN_WITH_CUDA) register the same ops for CUDA tensors, which csrc/cuda/indrnn.cu runs
// (float16 and bfloat16 too), and the ops indrnn_recurrence_*_lane_loop, which run that file's lane bodies on CPU
// tensors for the CPU tests of the CUDA path.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <string>
#include <tuple>
#include <vector>

#include "../cell_math.h"
#include "../sequence.h"
#include "vectorized_activations.h"
#ifdef FUSED_RNN_WITH_CUDA
#include "../cuda/indrnn.h"
#endif

namespace fused_rnn {
namespace {

using at::Tensor;

// Lanes of at least this many steps' worth of work go to one thread; below it the fork costs more than it saves.
constexpr int64_t kLaneStepsPerThread = 1 << 14;

struct Lanes {
    int64_t batch, hidden, blocks, width;
    int64_t count() const { return batch * blocks; }
};

template <typename T>
Lanes lanes_of(const Tensor& h0) {
    const int64_t width = at::vec::Vectorized<T>::size();
    return {h0.size(0), h0.size(1), (h0.size(1) + width - 1) / width, width};
}

// Runs body(b, unit offset, unit count, step, previous step) for every lane of every step its row is active in, in
// visiting order (or the reverse of it), each thread over its own lanes for all steps.
template <typename Body>
void for_each_lane_step(const Lanes& lanes, const std::vector<Step>& steps, bool backwards, const Body& body) {
    const int64_t grain = std::max<int64_t>(1, kLaneStepsPerThread / static_cast<int64_t>(steps.size()));
    at::parallel_for(0, lanes.count(), grain, [&](int64_t begin, int64_t end) {
        const int64_t count = static_cast<int64_t>(steps.size());
        for (int64_t i = 0; i < count; ++i) {
            const int64_t s = backwards ? count - 1 - i : i;
            const Step step = steps[s];
            const Step previous = s > 0 ? steps[s - 1] : Step{0, 0};
            for (int64_t lane = begin; lane < end; ++lane) {
                const int64_t b = lane / lanes.blocks, u0 = (lane % lanes.blocks) * lanes.width;
                if (b >= step.active) continue;
                body(b, u0, static_cast<int>(std::min(lanes.width, lanes.hidden - u0)), step, previous);
            }
        }
    });
}

// Every tensor of an op has the first one's dtype and device.
void check_alike(const char* op, std::initializer_list<const Tensor*> tensors) {
    const Tensor& first = **tensors.begin();
    for (const Tensor* t : tensors) {
        TORCH_CHECK(t->scalar_type() == first.scalar_type() && t->device() == first.device(), op,
                    " takes tensors of one dtype on one device");
    }
}

// LaneLoop: run the CUDA path's lane bodies on CPU tensors too (the op indrnn_recurrence_forward_lane_loop, for the
// CPU tests of that path); CUDA tensors always take it.
template <bool LaneLoop>
std::tuple<Tensor, Tensor> indrnn_recurrence_forward(const Tensor& projection, const Tensor& weight_hh,
                                                     const Tensor& h0, at::OptionalIntArrayRef batch_sizes,
                                                     bool reverse, bool relu) {
    TORCH_CHECK(projection.is_contiguous() && weight_hh.is_contiguous() && h0.is_contiguous(),
                "indrnn_recurrence_forward takes contiguous tensors");
    check_alike("indrnn_recurrence_forward", {&projection, &weight_hh, &h0});
    TORCH_CHECK(projection.dim() == 2 && h0.dim() == 2 && projection.size(1) == h0.size(1) &&
                    weight_hh.numel() == h0.size(1),
                "projection (N, H), weight_hh (H,) and h0 (B, H) disagree");
    const auto steps = time_steps(projection.size(0), h0.size(0), batch_sizes, reverse);
#ifdef FUSED_RNN_WITH_CUDA
    if (LaneLoop || projection.is_cuda()) return indrnn_forward_lanes(projection, weight_hh, h0, steps, relu);
#endif
    Tensor output = at::empty_like(projection);
    Tensor h_n = at::empty_like(h0);
    AT_DISPATCH_FLOATING_TYPES(projection.scalar_type(), "fused_rnn indrnn_recurrence_forward", [&] {
        using Vec = at::vec::Vectorized<scalar_t>;
        const Lanes lanes = lanes_of<scalar_t>(h0);
        const int64_t H = lanes.hidden;
        const scalar_t *pre = projection.data_ptr<scalar_t>(), *u = weight_hh.data_ptr<scalar_t>(),
                       *first = h0.data_ptr<scalar_t>();
        scalar_t *out = output.data_ptr<scalar_t>(), *last = h_n.data_ptr<scalar_t>();
        for_each_lane_step(lanes, steps, false, [&](int64_t b, int64_t u0, int count, Step step, Step previous) {
            const scalar_t* h = b < previous.active ? out + (previous.offset + b) * H : first + b * H;
            const Vec h_new = rnn_forward<Vec>(
                Vec::loadu(pre + (step.offset + b) * H + u0, count) +
                    Vec::loadu(u + u0, count) * Vec::loadu(h + u0, count),
                relu);
            h_new.store(out + (step.offset + b) * H + u0, count);
            h_new.store(last + b * H + u0, count);  // the last visited step a row is active in leaves its h_n
        });
    });
    return {output, h_n};
}

template <bool LaneLoop>
std::tuple<Tensor, Tensor, Tensor> indrnn_recurrence_backward(const Tensor& grad_output, const Tensor& grad_h_n,
                                                              const Tensor& output, const Tensor& h0,
                                                              const Tensor& weight_hh,
                                                              at::OptionalIntArrayRef batch_sizes, bool reverse,
                                                              bool relu) {
    TORCH_CHECK(grad_output.is_contiguous() && grad_h_n.is_contiguous() && output.is_contiguous() &&
                    h0.is_contiguous() && weight_hh.is_contiguous(),
                "indrnn_recurrence_backward takes contiguous tensors");
    check_alike("indrnn_recurrence_backward", {&grad_output, &grad_h_n, &output, &h0, &weight_hh});
    TORCH_CHECK(grad_output.sizes() == output.sizes() && grad_h_n.sizes() == h0.sizes() &&
                    output.size(1) == h0.size(1) && weight_hh.numel() == h0.size(1),
                "grad_output, grad_h_n, output, h0 and weight_hh disagree");
    const auto steps = time_steps(output.size(0), h0.size(0), batch_sizes, reverse);
#ifdef FUSED_RNN_WITH_CUDA
    if (LaneLoop || output.is_cuda()) {
        return indrnn_backward_lanes(grad_output, grad_h_n, output, h0, weight_hh, steps, relu);
    }
#endif
    Tensor grad_pre = at::empty_like(output);
    Tensor grad_h = grad_h_n.clone();  // carried in place: the gradient of h_n on entry, of h0 on exit
    // Each lane's sum over its steps; the sum over rows is one reduction after, in a fixed order.
    Tensor grad_u_rows = at::zeros_like(h0);
    AT_DISPATCH_FLOATING_TYPES(output.scalar_type(), "fused_rnn indrnn_recurrence_backward", [&] {
        using Vec = at::vec::Vectorized<scalar_t>;
        const Lanes lanes = lanes_of<scalar_t>(h0);
        const int64_t H = lanes.hidden;
        const scalar_t *dout = grad_output.data_ptr<scalar_t>(), *out = output.data_ptr<scalar_t>(),
                       *first = h0.data_ptr<scalar_t>(), *u = weight_hh.data_ptr<scalar_t>();
        scalar_t *dpre = grad_pre.data_ptr<scalar_t>(), *dh = grad_h.data_ptr<scalar_t>(),
                 *du = grad_u_rows.data_ptr<scalar_t>();
        for_each_lane_step(lanes, steps, true, [&](int64_t b, int64_t u0, int count, Step step, Step previous) {
            const int64_t row = (step.offset + b) * H + u0, state = b * H + u0;
            const Vec carried = Vec::loadu(dh + state, count) + Vec::loadu(dout + row, count);
            const Vec d = rnn_backward<Vec>(Vec::loadu(out + row, count), carried, relu);
            d.store(dpre + row, count);
            const scalar_t* h = b < previous.active ? out + (previous.offset + b) * H : first + b * H;
            at::vec::fmadd(d, Vec::loadu(h + u0, count), Vec::loadu(du + state, count)).store(du + state, count);
            (d * Vec::loadu(u + u0, count)).store(dh + state, count);
        });
    });
    return {grad_pre, grad_h, grad_u_rows.sum(0)};
}

}  // namespace
}  // namespace fused_rnn

namespace {
constexpr const char* kForwardSignature =
    "(Tensor projection, Tensor weight_hh, Tensor h0, int[]? batch_sizes, bool reverse, bool relu) -> (Tensor, Tensor)";
constexpr const char* kBackwardSignature =
    "(Tensor grad_output, Tensor grad_h_n, Tensor output, Tensor h0, Tensor weight_hh, int[]? batch_sizes, "
    "bool reverse, bool relu) -> (Tensor, Tensor, Tensor)";
}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_native, m) {
    m.def((std::string("indrnn_recurrence_forward") + kForwardSignature).c_str());
    m.def((std::string("indrnn_recurrence_backward") + kBackwardSignature).c_str());
#ifdef FUSED_RNN_WITH_CUDA
    m.def((std::string("indrnn_recurrence_forward_lane_loop") + kForwardSignature).c_str());
    m.def((std::string("indrnn_recurrence_backward_lane_loop") + kBackwardSignature).c_str());
#endif
}

TORCH_LIBRARY_IMPL(fused_rnn_native, CPU, m) {
    m.impl("indrnn_recurrence_forward", &fused_rnn::indrnn_recurrence_forward<false>);
    m.impl("indrnn_recurrence_backward", &fused_rnn::indrnn_recurrence_backward<false>);
#ifdef FUSED_RNN_WITH_CUDA
    m.impl("indrnn_recurrence_forward_lane_loop", &fused_rnn::indrnn_recurrence_forward<true>);
    m.impl("indrnn_recurrence_backward_lane_loop", &fused_rnn::indrnn_recurrence_backward<true>);
#endif
}

#ifdef FUSED_RNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fused_rnn_native, CUDA, m) {
    m.impl("indrnn_recurrence_forward", &fused_rnn::indrnn_recurrence_forward<false>);
    m.impl("indrnn_recurrence_backward", &fused_rnn::indrnn_recurrence_backward<false>);
}
#endif
