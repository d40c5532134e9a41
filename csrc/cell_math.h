// The pointwise math of one time step of every cell, forward and backward, written once for the CPU kernel
// and the CUDA kernels. Gate order follows torch.nn (LSTM i, f, g, o; GRU r, z, n).
//
// Every function is a template over the value type V: a scalar (float for fp32/fp16/bf16 storage, double for
// fp64) on the GPU and in scalar CPU code, or an at::vec::Vectorized<float/double> in the vectorized CPU kernel.
// The only operations V needs besides + - * are those of Activations<V>; the scalar ones are defined here,
// the vectorized ones in csrc/cpu/vectorized_activations.h. So the CPU tests execute the very
// formulas the GPU runs.
//
// The pre-activations passed in already include both biases (GRU: except the n gate's b_hn, which must be
// multiplied by r; see gru_forward).
#pragma once

#if !defined(__CUDACC__) && !defined(__host__)  // plain g++ without the CUDA headers
#define __host__
#define __device__
#endif

#include <math.h>

namespace fused_rnn {

// sigmoid, tanh and relu (with its derivative) for a value type V.
template <typename V>
struct Activations;

template <>
struct Activations<float> {
    // expf/tanhf rather than tanh(x) = 2 sigmoid(2x) - 1: that form loses relative precision near 0,
    // where small-signal networks live (fp32 normwise error 1e-3 with weights x1e-4, measured).
    __host__ __device__ static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
    __host__ __device__ static float tanh(float x) { return tanhf(x); }
    // x < 0 rather than fmaxf(x, 0): NaN stays NaN, as in torch.relu.
    __host__ __device__ static float relu(float x) { return x < 0.0f ? 0.0f : x; }
    __host__ __device__ static float relu_backward(float h, float dh) { return h > 0.0f ? dh : 0.0f; }
};

template <>
struct Activations<double> {
    __host__ __device__ static double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
    __host__ __device__ static double tanh(double x) { return ::tanh(x); }
    __host__ __device__ static double relu(double x) { return x < 0.0 ? 0.0 : x; }
    __host__ __device__ static double relu_backward(double h, double dh) { return h > 0.0 ? dh : 0.0; }
};

// ---------------------------------------------------------------------------------------------- LSTM

template <typename V>
struct LstmForward {
    V i, f, g, o;  // gate activations (saved for the backward)
    V c;           // c' = f * c + i * g
    V h;           // h' = o * tanh(c'), before the projection when the layer has one
};

template <typename V>
__host__ __device__ inline LstmForward<V> lstm_forward(V pre_i, V pre_f, V pre_g, V pre_o, V c_prev) {
    using A = Activations<V>;
    LstmForward<V> s;
    s.i = A::sigmoid(pre_i);
    s.f = A::sigmoid(pre_f);
    s.g = A::tanh(pre_g);
    s.o = A::sigmoid(pre_o);
    s.c = s.f * c_prev + s.i * s.g;
    s.h = s.o * A::tanh(s.c);
    return s;
}

template <typename V>
struct LstmBackward {
    V pre_i, pre_f, pre_g, pre_o;  // gradients of the gate pre-activations (input and hidden side alike)
    V c_prev;                      // gradient of the cell state this step started from
};

// dh: gradient reaching h' (before the projection); dc: gradient reaching c' from the later steps.
template <typename V>
__host__ __device__ inline LstmBackward<V> lstm_backward(V i, V f, V g, V o, V c_prev, V dh, V dc) {
    using A = Activations<V>;
    const V one(1);
    // tanh(c') is recomputed from the saved gates rather than saved: one tanh is cheaper than a stored column.
    const V tanh_c = A::tanh(f * c_prev + i * g);
    const V dc_total = dc + dh * o * (one - tanh_c * tanh_c);
    LstmBackward<V> d;
    d.pre_i = dc_total * g * i * (one - i);
    d.pre_f = dc_total * c_prev * f * (one - f);
    d.pre_g = dc_total * i * (one - g * g);
    d.pre_o = dh * tanh_c * o * (one - o);
    d.c_prev = dc_total * f;
    return d;
}

// ----------------------------------------------------------------------------------------------- GRU

template <typename V>
struct GruForward {
    V r, z, n;  // gate activations (saved for the backward)
    V h;        // h' = (1 - z) * n + z * h
};

// pre_r, pre_z: x W^T + b_ih + h W^T + b_hh of the r and z gates; x_n: x W_in^T + b_in;
// h_n: h W_hn^T + b_hn (saved for the backward: r multiplies it).
template <typename V>
__host__ __device__ inline GruForward<V> gru_forward(V pre_r, V pre_z, V x_n, V h_n, V h_prev) {
    using A = Activations<V>;
    const V one(1);
    GruForward<V> s;
    s.r = A::sigmoid(pre_r);
    s.z = A::sigmoid(pre_z);
    s.n = A::tanh(x_n + s.r * h_n);
    s.h = (one - s.z) * s.n + s.z * h_prev;
    return s;
}

template <typename V>
struct GruBackward {
    V pre_r, pre_z, x_n;  // gradients of the r, z pre-activations and of x W_in^T + b_in
    V h_n;                // gradient of h W_hn^T + b_hn (= x_n's times r)
    V h_prev;             // the part of h's gradient that skips W_hh: z * dh
};

template <typename V>
__host__ __device__ inline GruBackward<V> gru_backward(V r, V z, V n, V h_n, V h_prev, V dh) {
    const V one(1);
    GruBackward<V> d;
    d.x_n = dh * (one - z) * (one - n * n);
    d.pre_z = dh * (h_prev - n) * z * (one - z);
    d.pre_r = d.x_n * h_n * r * (one - r);
    d.h_n = d.x_n * r;
    d.h_prev = dh * z;
    return d;
}

// ------------------------------------------------------------------------------------------- zoneout

// Zoneout (Krueger et al. 2016) blends a step's new state s~ with the previous one by keep weights d per row and
// unit (Bernoulli masks in training, the probability in evaluation): s' = d * s + (1 - d) * s~. The LSTM zones h
// and c apart, h~ = o * tanh(c~) still reads the unzoned c~ (fused_rnn/reference.py).
template <typename V>
__host__ __device__ inline V zoneout_forward(V keep, V previous, V fresh) {
    return keep * previous + (V(1) - keep) * fresh;
}

template <typename V>
struct ZoneoutBackward {
    V kept;   // d * ds': reaches the previous state directly
    V fresh;  // (1 - d) * ds': reaches the cell math's s~
};

template <typename V>
__host__ __device__ inline ZoneoutBackward<V> zoneout_backward(V keep, V grad) {
    return {keep * grad, (V(1) - keep) * grad};
}

// ----------------------------------------------------------------------------------------------- RNN

template <typename V>
__host__ __device__ inline V rnn_forward(V pre, bool relu) {
    using A = Activations<V>;
    return relu ? A::relu(pre) : A::tanh(pre);
}

// The derivative needs only the step's output h'.
template <typename V>
__host__ __device__ inline V rnn_backward(V h, V dh, bool relu) {
    using A = Activations<V>;
    return relu ? A::relu_backward(h, dh) : dh * (V(1) - h * h);
}

}  // namespace fused_rnn
