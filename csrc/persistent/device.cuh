// What the persistent forward and backward kernels share: the cells' shapes, storage-type conversions, the warp
// reduction and the cooperative launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "partition.h"

namespace fused_rnn {
namespace persistent {

constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;

struct Lstm {
    static constexpr int kGates = 4;
    static constexpr int kSavedWidth = 5;  // i, f, g, o, c_prev
    static constexpr bool kHasCellState = true;
};

struct Gru {
    static constexpr int kGates = 3;
    static constexpr int kSavedWidth = 4;  // r, z, n, h W_hn^T + b_hn
    static constexpr bool kHasCellState = false;
};

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ inline T from_float(float x);
template <>
__device__ inline float from_float<float>(float x) { return x; }
template <>
__device__ inline __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// The CTA's dynamic shared memory (the layouts of partition.h). Outside nvcc only the CPU emulation of the tests
// (tests/persistent_emulation/) compiles these kernels, and it defines this per emulated CTA.
#ifdef __CUDACC__
__device__ inline unsigned char* dynamic_shared_memory() {
    extern __shared__ __align__(kAlignment) unsigned char smem[];
    return smem;
}
#else
unsigned char* dynamic_shared_memory();
#endif

// The sum over the warp's lanes, in every lane; a fixed butterfly order, so results are bit-for-bit repeatable.
__device__ inline float warp_sum(float x) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Gives `kernel` the shared memory it needs, checks that its `ctas` CTAs can all be resident at once (the grid
// barrier waits for every one of them) and launches it cooperatively on `stream`.
template <typename Kernel>
cudaError_t launch_cooperative(Kernel kernel, int ctas, size_t smem_bytes, void** kernel_args, int multiprocessors,
                               cudaStream_t stream) {
    cudaError_t error =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
    // All of the SM's unified L1/shared memory as shared memory: the partition assumes the opt-in maximum.
    if (error == cudaSuccess) {
        error = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     cudaSharedmemCarveoutMaxShared);
    }
    int blocks_per_sm = 0;
    if (error == cudaSuccess) {
        error = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kThreads, smem_bytes);
    }
    if (error != cudaSuccess) return error;
    if (blocks_per_sm * multiprocessors < ctas) return cudaErrorCooperativeLaunchTooLarge;
    return cudaLaunchCooperativeKernel(kernel, dim3(ctas), dim3(kThreads), kernel_args, smem_bytes, stream);
}

}  // namespace persistent
}  // namespace fused_rnn
