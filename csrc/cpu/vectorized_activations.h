// Activations<V> (csrc/cell_math.h) for at::vec::Vectorized<float/double>, so the CPU kernels run the shared cell
// math on SIMD registers. Vectorized is a different type per instruction set (at::vec's CPU_CAPABILITY namespace),
// so each instruction set's translation unit gets its own specialization.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "../cell_math.h"

namespace fused_rnn {

template <typename T>
struct Activations<at::vec::Vectorized<T>> {
    using V = at::vec::Vectorized<T>;
    static V sigmoid(V x) { return (V(1) + x.neg().exp()).reciprocal(); }
    static V tanh(V x) { return x.tanh(); }  // SLEEF's u10 tanh: 1 ulp, so accurate in relative terms near 0
    static V relu(V x) { return V::blendv(x, V(0), x < V(0)); }  // NaN stays NaN, as in torch.relu
    static V relu_backward(V h, V dh) { return V::blendv(V(0), dh, h > V(0)); }
};

}  // namespace fused_rnn
