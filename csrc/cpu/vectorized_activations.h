// Activations<V> (csrc/cell_math.h) for at::vec::Vectorized<float/double>, so the CPU kernels run the shared cell
// math on SIMD registers. Vectorized is a different type per instruction set (at::vec's CPU_CAPABILITY namespace),
// so each instruction set's translation unit gets its own specialization.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "../cell_math.h"

namespace fused_rnn {

// SLEEF's 3.5-ulp tanh rather than at::vec's tanh() (SLEEF's 1-ulp one): half the cost of an LSTM cell's forward math
// on AVX-512 (57 -> 27 ns for 16 cells, measured), and 3.5 ulp is still a relative bound, so values near 0 keep
// their precision. Other instruction sets (at::vec's default) keep tanh().
template <typename V>
inline V tanh_u35(V x) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) return V(Sleef_tanhf16_u35(x));
    if constexpr (std::is_same_v<V, at::vec::Vectorized<double>>) return V(Sleef_tanhd8_u35(x));
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) return V(Sleef_tanhf8_u35(x));
    if constexpr (std::is_same_v<V, at::vec::Vectorized<double>>) return V(Sleef_tanhd4_u35(x));
#endif
    return x.tanh();
}

template <typename T>
struct Activations<at::vec::Vectorized<T>> {
    using V = at::vec::Vectorized<T>;
    static V sigmoid(V x) { return (V(1) + x.neg().exp()).reciprocal(); }
    static V tanh(V x) { return tanh_u35(x); }
    static V relu(V x) { return V::blendv(x, V(0), x < V(0)); }  // NaN stays NaN, as in torch.relu
    static V relu_backward(V h, V dh) { return V::blendv(V(0), dh, h > V(0)); }
    static V exp(V x) { return x.exp(); }
    static V log_sigmoid(V x) { return at::vec::minimum(x, V(0)) - x.abs().neg().exp().log1p(); }
    // Conditions are lane masks (all bits set where true), as Vectorized's comparisons return them.
    static V either(V a, V b) { return a | b; }
    static V select(V condition, V a, V b) { return V::blendv(b, a, condition); }
};

}  // namespace fused_rnn
