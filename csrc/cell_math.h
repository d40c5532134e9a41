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
    __host__ __device__ static float exp(float x) { return expf(x); }
    // log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): finite for every x, where log(sigmoid(x)) underflows.
    __host__ __device__ static float log_sigmoid(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }
    __host__ __device__ static bool either(bool a, bool b) { return a || b; }
    __host__ __device__ static float select(bool condition, float a, float b) { return condition ? a : b; }
};

template <>
struct Activations<double> {
    __host__ __device__ static double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
    __host__ __device__ static double tanh(double x) { return ::tanh(x); }
    __host__ __device__ static double relu(double x) { return x < 0.0 ? 0.0 : x; }
    __host__ __device__ static double relu_backward(double h, double dh) { return h > 0.0 ? dh : 0.0; }
    __host__ __device__ static double exp(double x) { return ::exp(x); }
    __host__ __device__ static double log_sigmoid(double x) { return fmin(x, 0.0) - log1p(::exp(-fabs(x))); }
    __host__ __device__ static bool either(bool a, bool b) { return a || b; }
    __host__ __device__ static double select(bool condition, double a, double b) { return condition ? a : b; }
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

// ------------------------------------------------------------------------------------ LayerNorm cells

// LayerNorm LSTM and GRU (Ba et al. 2016, as fused_rnn/layernorm/reference.py): the per-unit parts. A row's mean and
// 1 / std (and, backward, the means of the normalization's gradient terms) are the caller's reductions over the row
// (csrc/layernorm.h). The GRU's cell is gru_forward/gru_backward with h_n the normalized recurrent n-part.
template <typename V>
__host__ __device__ inline V layer_normalized(V x, V mean, V rstd) {
    return (x - mean) * rstd;
}

// The gradient of a normalization's input from that of its normalized output d (before any gain): rstd * (d -
// mean(d) - normalized * mean(d * normalized)), the two means over the row.
template <typename V>
__host__ __device__ inline V layer_norm_backward(V d, V normalized, V mean_d, V mean_d_normalized, V rstd) {
    return rstd * (d - mean_d - normalized * mean_d_normalized);
}

template <typename V>
struct LayerNormLstmCell {
    V i, f, g;  // gate activations (saved for the backward)
    V c;        // c' = f * c + i * g, which h' reads normalized
};

template <typename V>
__host__ __device__ inline LayerNormLstmCell<V> layernorm_lstm_cell(V pre_i, V pre_f, V pre_g, V c_prev) {
    using A = Activations<V>;
    LayerNormLstmCell<V> s;
    s.i = A::sigmoid(pre_i);
    s.f = A::sigmoid(pre_f);
    s.g = A::tanh(pre_g);
    s.c = s.f * c_prev + s.i * s.g;
    return s;
}

template <typename V>
struct LayerNormLstmOutput {
    V o;  // the output gate (saved for the backward)
    V h;  // h' = o * tanh(LN(c') * gain_c + bias_c)
};

template <typename V>
__host__ __device__ inline LayerNormLstmOutput<V> layernorm_lstm_output(V pre_o, V c_normalized, V gain_c, V bias_c) {
    using A = Activations<V>;
    const V o = A::sigmoid(pre_o);
    return {o, o * A::tanh(c_normalized * gain_c + bias_c)};
}

template <typename V>
struct LayerNormLstmOutputBackward {
    V pre_o;  // gradient of the output gate's pre-activation
    V y;      // gradient of y = LN(c') * gain_c + bias_c (that of bias_c; times LN(c'), of gain_c)
};

template <typename V>
__host__ __device__ inline LayerNormLstmOutputBackward<V> layernorm_lstm_output_backward(V o, V c_normalized, V gain_c,
                                                                                      V bias_c, V dh) {
    using A = Activations<V>;
    const V one(1);
    const V t = A::tanh(c_normalized * gain_c + bias_c);
    return {dh * t * o * (one - o), dh * o * (one - t * t)};
}

template <typename V>
struct LayerNormLstmCellBackward {
    V pre_i, pre_f, pre_g;  // gradients of those gates' pre-activations
    V c_prev;               // gradient of the cell state this step started from
};

// dc: the whole gradient of c' (through LN(c') and from the later steps).
template <typename V>
__host__ __device__ inline LayerNormLstmCellBackward<V> layernorm_lstm_cell_backward(V i, V f, V g, V c_prev, V dc) {
    const V one(1);
    return {dc * g * i * (one - i), dc * c_prev * f * (one - f), dc * i * (one - g * g), dc * f};
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

// --------------------------------------------------------------------------------------------- sLSTM

// The xLSTM paper's sLSTM (Beck et al. 2024) with its stabilizer m, as fused_rnn/multihead/reference.py. Gate order
// i, f, z, o; n == 0 marks an empty state, whose forget path is dropped (log f + m = -inf). Besides sigmoid and
// tanh it needs Activations<V>::exp, log_sigmoid, and for its conditions (a bool per scalar, a lane mask per SIMD
// vector) either(a, b) and select(condition, if_true, if_false).
template <typename V, typename Condition>
struct SlstmGates {
    V m;                   // the new stabilizer: max(i_pre, log f + m_prev)
    V i, f;                // the stabilized exponential gates exp(i_pre - m), exp(log f + m_prev - m)
    Condition from_input;  // whether m came from i_pre (ties included)
};

template <typename V>
__host__ __device__ inline auto slstm_gates(V pre_i, V pre_f, V n_prev, V m_prev, bool exp_forget) {
    using A = Activations<V>;
    const V log_f = exp_forget ? pre_f : A::log_sigmoid(pre_f);
    auto empty = n_prev == V(0);  // not const: SlstmGates holds a Condition of its type
    const V kept = log_f + m_prev;
    SlstmGates<V, decltype(empty)> s;
    s.from_input = A::either(empty, pre_i >= kept);
    s.m = A::select(s.from_input, pre_i, kept);
    s.i = A::exp(pre_i - s.m);
    s.f = A::select(empty, V(0), A::exp(kept - s.m));
    return s;
}

template <typename V>
struct SlstmForward {
    V c, n, m, h;
};

template <typename V>
__host__ __device__ inline SlstmForward<V> slstm_forward(V pre_i, V pre_f, V pre_z, V pre_o, V c_prev, V n_prev,
                                                         V m_prev, bool exp_forget) {
    using A = Activations<V>;
    const auto g = slstm_gates(pre_i, pre_f, n_prev, m_prev, exp_forget);
    SlstmForward<V> s;
    s.c = g.f * c_prev + g.i * A::tanh(pre_z);
    s.n = g.f * n_prev + g.i;
    s.m = g.m;
    s.h = A::sigmoid(pre_o) * s.c / s.n;
    return s;
}

template <typename V>
struct SlstmBackward {
    V pre_i, pre_f, pre_z, pre_o;  // gradients of the gate pre-activations
    V c_prev, n_prev, m_prev;      // gradients of the states this step started from
};

// dh: gradient reaching h'; dc, dn, dm: gradients reaching c', n', m' from the later steps.
template <typename V>
__host__ __device__ inline SlstmBackward<V> slstm_backward(V pre_i, V pre_f, V pre_z, V pre_o, V c_prev, V n_prev,
                                                           V m_prev, V dh, V dc, V dn, V dm, bool exp_forget) {
    using A = Activations<V>;
    const V one(1);
    const auto g = slstm_gates(pre_i, pre_f, n_prev, m_prev, exp_forget);
    const V z = A::tanh(pre_z), o = A::sigmoid(pre_o);
    const V c = g.f * c_prev + g.i * z, n = g.f * n_prev + g.i;
    const V dc_total = dc + dh * o / n;
    const V dn_total = dn - dh * o * c / (n * n);
    const V d_i = dc_total * z + dn_total, d_f = dc_total * c_prev + dn_total * n_prev;
    const V dm_total = dm - d_i * g.i - d_f * g.f;
    const V d_kept = d_f * g.f + A::select(g.from_input, V(0), dm_total);  // log f + m_prev, through f and m
    SlstmBackward<V> d;
    d.pre_i = d_i * g.i + A::select(g.from_input, dm_total, V(0));
    d.pre_f = exp_forget ? d_kept : d_kept * A::sigmoid(-pre_f);
    d.pre_z = dc_total * g.i * (one - z * z);
    d.pre_o = dh * c / n * o * (one - o);
    d.c_prev = dc_total * g.f;
    d.n_prev = dn_total * g.f;
    d.m_prev = d_kept;
    return d;
}

}  // namespace fused_rnn
