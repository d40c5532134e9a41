// x . y on at::vec SIMD vectors, for the CPU kernels' products that read a matrix's rows in place
// (recurrence.h at batch 1, multihead.cpp for rows outside its tiles). Included by each instruction set's
// translation unit, which picks at::vec's CPU_CAPABILITY, so the function is compiled once per instruction set.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace fused_rnn {
namespace {

// x . y over K values, in SIMD lanes with four partial sums, added in a fixed order.
template <typename T>
inline T dot(const T* x, const T* y, int64_t K) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t U = Vec::size();
    Vec sums[4] = {Vec(T(0)), Vec(T(0)), Vec(T(0)), Vec(T(0))};
    int64_t k = 0;
    for (; k + 4 * U <= K; k += 4 * U) {
        for (int i = 0; i < 4; ++i) {
            sums[i] = at::vec::fmadd(Vec::loadu(x + k + i * U), Vec::loadu(y + k + i * U), sums[i]);
        }
    }
    for (; k + U <= K; k += U) sums[0] = at::vec::fmadd(Vec::loadu(x + k), Vec::loadu(y + k), sums[0]);
    if (k < K) {  // the partial loads fill the lanes past K with zeros
        const int left = static_cast<int>(K - k);
        sums[1] = at::vec::fmadd(Vec::loadu(x + k, left), Vec::loadu(y + k, left), sums[1]);
    }
    return at::vec::vec_reduce_all<T>([](Vec a, Vec b) { return a + b; }, (sums[0] + sums[1]) + (sums[2] + sums[3]));
}

}  // namespace
}  // namespace fused_rnn
