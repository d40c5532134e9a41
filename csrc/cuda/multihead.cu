// The multi-head cells' step on CUDA: a thread per (active row, hidden unit) runs csrc/multihead.h's body, after the
// driver's bmm over heads (csrc/cpu/multihead.cpp's step loop, which runs the same bodies on the host for the CPU
// tests). No atomics: results are bit-for-bit deterministic.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../multihead.h"

namespace fused_rnn {
namespace {

constexpr int kThreadsPerBlock = 256;

template <typename T, typename M, HeadCell C>
__global__ void __launch_bounds__(kThreadsPerBlock) forward_kernel(const MultiheadForwardStep<T, M> step) {
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index < step.active * step.hidden) {
        multihead_forward_at<T, M, C>(step, index / step.hidden, index % step.hidden);
    }
}

template <typename T, typename M, HeadCell C>
__global__ void __launch_bounds__(kThreadsPerBlock) backward_kernel(const MultiheadBackwardStep<T, M> step) {
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index < step.active * step.hidden) {
        multihead_backward_at<T, M, C>(step, index / step.hidden, index % step.hidden);
    }
}

unsigned int blocks_for(int64_t threads) {
    return static_cast<unsigned int>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

template <template <typename, typename, HeadCell> class Launch, typename T, typename M, typename Step>
void launch(HeadCell cell, const Step& step) {
    if (step.active * step.hidden == 0) return;
    switch (cell) {
        case HeadCell::lstm: return Launch<T, M, HeadCell::lstm>::run(step);
        case HeadCell::gru: return Launch<T, M, HeadCell::gru>::run(step);
        case HeadCell::slstm: return Launch<T, M, HeadCell::slstm>::run(step);
    }
}

template <typename T, typename M, HeadCell C>
struct LaunchForward {
    static void run(const MultiheadForwardStep<T, M>& step) {
        const auto stream = c10::cuda::getCurrentCUDAStream();
        forward_kernel<T, M, C><<<blocks_for(step.active * step.hidden), kThreadsPerBlock, 0, stream>>>(step);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
};

template <typename T, typename M, HeadCell C>
struct LaunchBackward {
    static void run(const MultiheadBackwardStep<T, M>& step) {
        const auto stream = c10::cuda::getCurrentCUDAStream();
        backward_kernel<T, M, C><<<blocks_for(step.active * step.hidden), kThreadsPerBlock, 0, stream>>>(step);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
};

}  // namespace

template <typename T, typename M>
void multihead_forward_step_cuda(HeadCell cell, const MultiheadForwardStep<T, M>& step) {
    launch<LaunchForward, T, M>(cell, step);
}

template <typename T, typename M>
void multihead_backward_step_cuda(HeadCell cell, const MultiheadBackwardStep<T, M>& step) {
    launch<LaunchBackward, T, M>(cell, step);
}

#define FUSED_RNN_INSTANTIATE(T)                                                                                    \
    template void multihead_forward_step_cuda<T, at::opmath_type<T>>(                                              \
        HeadCell, const MultiheadForwardStep<T, at::opmath_type<T>>&);                                             \
    template void multihead_backward_step_cuda<T, at::opmath_type<T>>(                                             \
        HeadCell, const MultiheadBackwardStep<T, at::opmath_type<T>>&);
FUSED_RNN_INSTANTIATE(c10::Half)
FUSED_RNN_INSTANTIATE(c10::BFloat16)
FUSED_RNN_INSTANTIATE(float)
FUSED_RNN_INSTANTIATE(double)
#undef FUSED_RNN_INSTANTIATE

}  // namespace fused_rnn
