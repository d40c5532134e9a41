// A CPU emulation of the CUDA features the persistent kernels use, so that g++ compiles csrc/persistent/*.cu as
// they are and the tests run the kernels' own code on CPU tensors (tests/test_persistent_emulated.py).
//
// Every thread of the grid is a fiber (ucontext) on one OS thread; a barrier (__syncthreads, the warp's shuffle,
// grid.sync) parks the fiber until all its participants arrived. The schedule is round-robin, so the emulation
// finds wrong indices, missing writes, missed steps and barriers that not every thread reaches (reported as a
// deadlock), not timing-dependent races: that is compute-sanitizer's racecheck on a GPU (benchmarks/gpu_check.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __host__
#define __device__
#define __global__
#define __launch_bounds__(...)

// --------------------------------------------------------------------------------------------- runtime

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchFailure = 719,
    cudaErrorCooperativeLaunchTooLarge = 720,
    cudaErrorNotSupported = 801,
};
enum cudaMemcpyKind { cudaMemcpyDeviceToDevice = 3 };
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
enum cudaSharedCarveout { cudaSharedmemCarveoutMaxShared = 100 };
enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrCooperativeLaunch = 95,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
    cudaDevAttrMaxRegistersPerMultiprocessor = 82,
};
using cudaStream_t = void*;

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
const char* cudaGetErrorString(cudaError_t error);

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
    std::memcpy(dst, src, bytes);
    return cudaSuccess;
}

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) {
    return cudaSuccess;
}

namespace emulation {
int blocks_per_multiprocessor(size_t smem_bytes);
// Runs `body` as grid x block fibers, each with its own thread and block index, until all return; false when
// they deadlock (a barrier that some participants never reach).
bool run(void (*body)(void*), void* context, unsigned grid, unsigned block, size_t smem_bytes);
}  // namespace emulation

template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int, size_t smem_bytes) {
    *blocks = emulation::blocks_per_multiprocessor(smem_bytes);
    return cudaSuccess;
}

template <typename... Params>
cudaError_t cudaLaunchCooperativeKernel(void (*kernel)(Params...), dim3 grid, dim3 block, void** args, size_t smem,
                                        cudaStream_t) {
    struct Launch {
        void (*kernel)(Params...);
        void** args;
    } launch{kernel, args};
    auto body = [](void* context) {
        auto* l = static_cast<Launch*>(context);
        [&]<size_t... I>(std::index_sequence<I...>) {
            l->kernel(*static_cast<std::remove_cvref_t<Params>*>(l->args[I])...);
        }(std::index_sequence_for<Params...>{});
    };
    return emulation::run(body, &launch, grid.x, block.x, smem) ? cudaSuccess : cudaErrorLaunchFailure;
}

// ------------------------------------------------------------------------------------------ device side

namespace emulation {
struct Index {
    unsigned x, y, z;
};
const Index& thread_index();
const Index& block_index();
void sync_block();
void sync_grid();
float shuffle_xor(float value, int lane_mask);
}  // namespace emulation

#define threadIdx (::emulation::thread_index())
#define blockIdx (::emulation::block_index())

inline void __syncthreads() { emulation::sync_block(); }
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) { return emulation::shuffle_xor(value, lane_mask); }
template <typename T>
inline T __ldcg(const T* p) {
    return *p;
}
inline int min(int a, int b) { return a < b ? a : b; }

namespace cooperative_groups {
struct grid_group {
    void sync() { emulation::sync_grid(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

// ------------------------------------------------------------------------------------ half and bfloat16

struct __half {
    _Float16 value;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __half2float(__half x) { return static_cast<float>(x.value); }
inline __half __float2half_rn(float x) { return {static_cast<_Float16>(x)}; }
inline float __bfloat162float(__nv_bfloat16 x) {
    const uint32_t bits = static_cast<uint32_t>(x.bits) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float x) {  // round to nearest even, as torch and CUDA do (no NaN input)
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return {static_cast<uint16_t>(bits >> 16)};
}
