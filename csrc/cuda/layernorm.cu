// LayerNorm LSTM/GRU's step on CUDA: one block per active row runs csrc/layernorm.h's row body, its threads taking
// the row's columns in turn and summing over them with warp shuffles and one shared-memory pass (BlockTeam). The step
// loop and its cuBLAS GEMMs are csrc/cpu/layernorm.cpp's driver; the same row bodies run there on CPU threads (SIMD
// vectors), and one column at a time (SerialTeam, this kernel's arithmetic) in the CPU tests. No atomics: each sum
// is taken in a fixed order, so results are bit-for-bit deterministic.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "../layernorm.h"

namespace fused_rnn {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 256;

// The block's threads walking one row, a column each at a time.
template <typename M>
struct BlockTeam {
    using Value = M;
    using Math = M;
    M* partials;  // shared memory, one value per warp

    __device__ int64_t first() const { return threadIdx.x; }
    __device__ int64_t stride() const { return blockDim.x; }
    __device__ static int lanes(int64_t) { return 1; }
    template <typename P>
    __device__ static M load(const P* p, int) { return static_cast<M>(*p); }
    template <typename P>
    __device__ static void store(P* p, M value, int) { *p = static_cast<P>(value); }
    __device__ static M valid(M value, int) { return value; }
    __device__ bool leader() const { return threadIdx.x == 0; }

    // Every thread gets the same total: the warps' partials are added in the same order by all of them.
    __device__ M sum(M value) const {
        for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
        if (threadIdx.x % kWarp == 0) partials[threadIdx.x / kWarp] = value;
        __syncthreads();
        M total(0);
        for (int warp = 0; warp < static_cast<int>(blockDim.x) / kWarp; ++warp) total += partials[warp];
        __syncthreads();  // before a later sum overwrites the partials
        return total;
    }
};

template <typename T, typename M>
__global__ void __launch_bounds__(kMaxThreads) forward_kernel(const LayerNormForwardStep<T, M> step, bool lstm) {
    __shared__ M partials[kMaxThreads / kWarp];
    const BlockTeam<M> team{partials};
    if (lstm) {
        layernorm_lstm_forward_row(team, step, blockIdx.x);
    } else {
        layernorm_gru_forward_row(team, step, blockIdx.x);
    }
}

template <typename T, typename M>
__global__ void __launch_bounds__(kMaxThreads) backward_kernel(const LayerNormBackwardStep<T, M> step, bool lstm) {
    __shared__ M partials[kMaxThreads / kWarp];
    const BlockTeam<M> team{partials};
    if (lstm) {
        layernorm_lstm_backward_row(team, step, blockIdx.x);
    } else {
        layernorm_gru_backward_row(team, step, blockIdx.x);
    }
}

// A thread per hidden unit up to kMaxThreads, in whole warps (the shuffles take all 32 lanes).
unsigned int threads_for(int64_t hidden) {
    return static_cast<unsigned int>(std::clamp<int64_t>((hidden + kWarp - 1) / kWarp * kWarp, kWarp, kMaxThreads));
}

}  // namespace

template <typename T, typename M>
void layernorm_forward_rows_cuda(bool lstm, const LayerNormForwardStep<T, M>& step) {
    if (step.active == 0) return;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    forward_kernel<T, M><<<static_cast<unsigned int>(step.active), threads_for(step.hidden), 0, stream>>>(step, lstm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename M>
void layernorm_backward_rows_cuda(bool lstm, const LayerNormBackwardStep<T, M>& step) {
    if (step.active == 0) return;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    backward_kernel<T, M><<<static_cast<unsigned int>(step.active), threads_for(step.hidden), 0, stream>>>(step, lstm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define FUSED_RNN_INSTANTIATE(T)                                                                             \
    template void layernorm_forward_rows_cuda<T, at::opmath_type<T>>(bool,                                  \
                                                                      const LayerNormForwardStep<T, at::opmath_type<T>>&); \
    template void layernorm_backward_rows_cuda<T, at::opmath_type<T>>(                                      \
        bool, const LayerNormBackwardStep<T, at::opmath_type<T>>&);
FUSED_RNN_INSTANTIATE(c10::Half)
FUSED_RNN_INSTANTIATE(c10::BFloat16)
FUSED_RNN_INSTANTIATE(float)
FUSED_RNN_INSTANTIATE(double)
#undef FUSED_RNN_INSTANTIATE

}  // namespace fused_rnn
