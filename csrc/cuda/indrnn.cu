// IndRNN's recurrence on CUDA, forward and backward, each ONE kernel with the time loop inside it (issue 18): h' =
// act(pre + u * h), where pre = x W^T + b is one GEMM over all rows before (fused_rnn/indrnn/autograd.py). u is a
// vector, so hidden unit j of row b depends only on its own past: one thread per (row, unit) lane walks every step
// with its state in registers, with no barrier, no per-step launch and no atomics. Threads of a warp take
// consecutive units of one row, so each step's loads and stores are coalesced.
//
// The lane bodies are __host__ __device__ and run the shared math of csrc/cell_math.h (rnn_forward / rnn_backward,
// which the CPU kernel csrc/cpu/indrnn.cpp runs too). On CPU tensors the same bodies run in a host loop over lanes
// instead of a launch (the ops indrnn_recurrence_*_lane_loop), so the CPU tests execute this code, and only the
// launch configuration is left for a GPU to test. Storage fp16/bf16/fp32/fp64; the math, the carried state h and
// its gradient in fp32 (fp64 for fp64), as in the Triton kernel (fused_rnn/backends/triton/indrnn.py).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "../cell_math.h"
#include "indrnn.h"

namespace fused_rnn {
namespace {

using at::Tensor;

// Not tuned on a GPU. Each lane is one sequential walk, so small blocks spread few lanes (B=1) over more SMs.
constexpr int kThreadsPerBlock = 128;

// Where each visited step's rows are: a table (packed input), or an arithmetic progression when every step has
// all rows (padded input), which needs no copy to the GPU.
struct StepTable {
    const int64_t* rows;  // [count, 2] (first row, active rows) of each step in visiting order, or null
    int64_t count;
    int64_t first_offset, offset_stride;  // without the table: step s starts at row first_offset + s * offset_stride
    int64_t batch;

    __host__ __device__ Step operator[](int64_t s) const {
        if (rows != nullptr) return {rows[2 * s], rows[2 * s + 1]};
        return {first_offset + s * offset_stride, batch};
    }
};

// T: storage type; M: math type.
template <typename T, typename M>
struct ForwardLanes {
    const T* projection;  // [N, H] x W^T + b of every row
    const T* weight_hh;   // [H] u
    const T* h0;          // [B, H]
    T* output;            // [N, H] h' of every row
    T* h_n;               // [B, H]
    StepTable steps;
    int64_t batch, hidden;
    bool relu;
};

// Row b, hidden unit u, every step.
template <typename T, typename M>
__host__ __device__ inline void forward_lane(const ForwardLanes<T, M>& lanes, int64_t b, int64_t u) {
    const int64_t H = lanes.hidden;
    const M weight = static_cast<M>(lanes.weight_hh[u]);
    M h = static_cast<M>(lanes.h0[b * H + u]);
    for (int64_t s = 0; s < lanes.steps.count; ++s) {
        const Step step = lanes.steps[s];
        // The row's sequence has ended (or, visited in reverse, not begun): its state waits unchanged.
        if (b >= step.active) continue;
        const int64_t row = (step.offset + b) * H + u;
        h = rnn_forward<M>(static_cast<M>(lanes.projection[row]) + weight * h, lanes.relu);
        lanes.output[row] = static_cast<T>(h);
    }
    lanes.h_n[b * H + u] = static_cast<T>(h);
}

template <typename T, typename M>
__global__ void __launch_bounds__(kThreadsPerBlock) indrnn_forward_kernel(const ForwardLanes<T, M> lanes) {
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index < lanes.batch * lanes.hidden) forward_lane<T, M>(lanes, index / lanes.hidden, index % lanes.hidden);
}

template <typename T, typename M>
struct BackwardLanes {
    const T* grad_output;    // [N, H]
    const T* grad_h_n;       // [B, H]
    const T* output;         // [N, H] h' from the forward
    const T* h0;             // [B, H]
    const T* weight_hh;      // [H] u
    T* grad_projection;      // [N, H] gradient of the pre-activation of every row
    T* grad_h0;              // [B, H]
    M* grad_weight_hh_rows;  // [B, H] each lane's sum over its steps of d pre * h; summed over rows after
    StepTable steps;
    int64_t batch, hidden;
    bool relu;
};

template <typename T, typename M>
__host__ __device__ inline void backward_lane(const BackwardLanes<T, M>& lanes, int64_t b, int64_t u) {
    const int64_t H = lanes.hidden, state = b * H + u;
    const M weight = static_cast<M>(lanes.weight_hh[u]);
    M dh = static_cast<M>(lanes.grad_h_n[state]);  // what reaches h' from the later steps
    M dweight(0);
    for (int64_t s = lanes.steps.count - 1; s >= 0; --s) {
        const Step step = lanes.steps[s];
        if (b >= step.active) continue;
        const int64_t row = (step.offset + b) * H + u;
        const M dpre = rnn_backward<M>(static_cast<M>(lanes.output[row]),
                                       dh + static_cast<M>(lanes.grad_output[row]), lanes.relu);
        lanes.grad_projection[row] = static_cast<T>(dpre);
        // h this step started from: the previous visited step's output while the row was active there, else h0.
        const Step previous = s > 0 ? lanes.steps[s - 1] : Step{0, 0};
        const T h = b < previous.active ? lanes.output[(previous.offset + b) * H + u] : lanes.h0[state];
        dweight += dpre * static_cast<M>(h);
        dh = dpre * weight;
    }
    lanes.grad_h0[state] = static_cast<T>(dh);
    lanes.grad_weight_hh_rows[state] = dweight;
}

template <typename T, typename M>
__global__ void __launch_bounds__(kThreadsPerBlock) indrnn_backward_kernel(const BackwardLanes<T, M> lanes) {
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index < lanes.batch * lanes.hidden) backward_lane<T, M>(lanes, index / lanes.hidden, index % lanes.hidden);
}

// The step table of `steps` for tensors on `device`; a packed layout's table is kept alive by `storage`.
StepTable step_table(const std::vector<Step>& steps, int64_t batch, const at::Device device, Tensor& storage) {
    const int64_t count = static_cast<int64_t>(steps.size());
    StepTable table{nullptr, count, steps.front().offset, count > 1 ? steps[1].offset - steps[0].offset : 0, batch};
    bool every_step_full = true;
    for (const Step step : steps) every_step_full &= step.active == batch;
    if (every_step_full) return table;
    // Pinned, so that the copy to a GPU is asynchronous and does not wait for the input GEMM before it.
    storage = at::empty({count, 2}, at::TensorOptions().dtype(at::kLong).pinned_memory(device.is_cuda()));
    int64_t* rows = storage.data_ptr<int64_t>();
    for (int64_t s = 0; s < count; ++s) {
        rows[2 * s] = steps[s].offset;
        rows[2 * s + 1] = steps[s].active;
    }
    if (device.is_cuda()) {
        storage = storage.to(at::TensorOptions().dtype(at::kLong).device(device), /*non_blocking=*/true);
    }
    table.rows = storage.data_ptr<int64_t>();
    return table;
}

unsigned int blocks_for(int64_t threads) {
    return static_cast<unsigned int>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

}  // namespace

std::tuple<Tensor, Tensor> indrnn_forward_lanes(const Tensor& projection, const Tensor& weight_hh, const Tensor& h0,
                                                const std::vector<Step>& steps, bool relu) {
    const c10::DeviceGuard device_guard(projection.device());
    const int64_t B = h0.size(0), H = h0.size(1);
    Tensor output = at::empty_like(projection);
    Tensor h_n = at::empty_like(h0);
    Tensor table_storage;
    const StepTable table = step_table(steps, B, projection.device(), table_storage);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, projection.scalar_type(), "fused_rnn indrnn_forward",
                                    [&] {
        using M = at::opmath_type<scalar_t>;
        ForwardLanes<scalar_t, M> lanes;
        lanes.projection = projection.data_ptr<scalar_t>();
        lanes.weight_hh = weight_hh.data_ptr<scalar_t>();
        lanes.h0 = h0.data_ptr<scalar_t>();
        lanes.output = output.data_ptr<scalar_t>();
        lanes.h_n = h_n.data_ptr<scalar_t>();
        lanes.steps = table;
        lanes.batch = B;
        lanes.hidden = H;
        lanes.relu = relu;
        if (projection.is_cuda()) {
            if (B * H == 0) return;
            const auto stream = c10::cuda::getCurrentCUDAStream();
            indrnn_forward_kernel<scalar_t, M><<<blocks_for(B * H), kThreadsPerBlock, 0, stream>>>(lanes);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
            for (int64_t b = 0; b < B; ++b) {
                for (int64_t u = 0; u < H; ++u) forward_lane<scalar_t, M>(lanes, b, u);
            }
        }
    });
    return {output, h_n};
}

std::tuple<Tensor, Tensor, Tensor> indrnn_backward_lanes(const Tensor& grad_output, const Tensor& grad_h_n,
                                                         const Tensor& output, const Tensor& h0,
                                                         const Tensor& weight_hh, const std::vector<Step>& steps,
                                                         bool relu) {
    const c10::DeviceGuard device_guard(output.device());
    const int64_t B = h0.size(0), H = h0.size(1);
    Tensor grad_projection = at::empty_like(output);
    Tensor grad_h0 = at::empty_like(h0);
    Tensor grad_weight_hh_rows;
    Tensor table_storage;
    const StepTable table = step_table(steps, B, output.device(), table_storage);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "fused_rnn indrnn_backward", [&] {
        using M = at::opmath_type<scalar_t>;
        grad_weight_hh_rows = at::empty({B, H}, h0.options().dtype(c10::CppTypeToScalarType<M>::value));
        BackwardLanes<scalar_t, M> lanes;
        lanes.grad_output = grad_output.data_ptr<scalar_t>();
        lanes.grad_h_n = grad_h_n.data_ptr<scalar_t>();
        lanes.output = output.data_ptr<scalar_t>();
        lanes.h0 = h0.data_ptr<scalar_t>();
        lanes.weight_hh = weight_hh.data_ptr<scalar_t>();
        lanes.grad_projection = grad_projection.data_ptr<scalar_t>();
        lanes.grad_h0 = grad_h0.data_ptr<scalar_t>();
        lanes.grad_weight_hh_rows = grad_weight_hh_rows.data_ptr<M>();
        lanes.steps = table;
        lanes.batch = B;
        lanes.hidden = H;
        lanes.relu = relu;
        if (output.is_cuda()) {
            if (B * H == 0) return;
            const auto stream = c10::cuda::getCurrentCUDAStream();
            indrnn_backward_kernel<scalar_t, M><<<blocks_for(B * H), kThreadsPerBlock, 0, stream>>>(lanes);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
            for (int64_t b = 0; b < B; ++b) {
                for (int64_t u = 0; u < H; ++u) backward_lane<scalar_t, M>(lanes, b, u);
            }
        }
    });
    // The sum over rows in a fixed order, one reduction after the kernel (as the CPU kernel and the Triton one).
    return {grad_projection, grad_h0, grad_weight_hh_rows.sum(0).to(weight_hh.scalar_type())};
}

}  // namespace fused_rnn
