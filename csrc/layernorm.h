// One time step of a LayerNorm LSTM or GRU (fused_rnn/layernorm/reference.py), row by row, written once for the CPU
// kernel and the CUDA kernel (csrc/cpu/layernorm.cpp, csrc/cuda/layernorm.cu). The driver runs h W_hh^T as one GEMM
// per step; a row's step then normalizes that row, applies the cell (csrc/cell_math.h), normalizes c' (LSTM) and
// writes h' and what the backward needs, the same layout as the Triton kernels (fused_rnn/backends/triton/layernorm.py).
//
// A normalization needs its whole row, so a row's columns are walked by a team, and the team sums over them:
//   Team::Value    a scalar M (one column per member) or an at::vec::Vectorized<M> (a SIMD vector of columns)
//   Team::Math     M, the math type: fp32 for fp16/bf16/fp32 storage, fp64 for fp64
//   first(), stride()  the first column offset this member takes and how far it then moves
//   lanes(n)       how many of the next n columns a Value covers
//   load(p, lanes), store(p, value, lanes), valid(value, lanes): columns past `lanes` are never read nor written,
//                  and valid() zeroes them before a sum
//   sum(value)     the total over the whole team, which every member calls (a CUDA block synchronizes in it)
//   leader()       the one member that stores the row's scalars
// A CUDA block is a team of threads; on CPU one thread walks a row with SIMD vectors (VectorTeam) or one column at a
// time (SerialTeam below: the CUDA kernel's arithmetic, run on the host for the CPU tests of that path). Every member
// only reads back the columns it wrote itself, so a block needs no barrier besides those in sum().
#pragma once

#include <stdint.h>

#include "cell_math.h"

namespace fused_rnn {

constexpr double kLayerNormEps = 1e-5;  // the reference's (torch's layer_norm default)

// Pointers at a step's first row (the [B, ·] state buffers at row 0). T: storage type; M: math type.
template <typename T, typename M>
struct LayerNormForwardStep {
    const M* input;              // [active, G*H] LN(x W_ih^T) * gain_ih + bias_ih
    const T* hidden_gates;       // [active, G*H] h W_hh^T
    const T *gain_hh, *bias_hh;  // [G*H]; bias_hh: the GRU's, or null
    const T *gain_c, *bias_c;    // [H] the LSTM's cell-state normalization
    M* state;                    // [B, H] the LSTM's c or the GRU's h, in M: rows < active read, then replaced
    T* h;                        // [B, H] the next step's GEMM operand: rows < active replaced by h'
    T* output;                   // [active, H] h'
    // Saved for the backward, or all null: gate activations [4H] (LSTM i, f, g, o; GRU r, z, n and its normalized
    // recurrent n-part with gain and bias), the normalized h W_hh^T before its gain [G*H], the LSTM's c and LN(c')
    // before its gain [2H] or the GRU's h [H], and 1 / std of h W_hh^T (and of c') [2 or 1].
    M *activations, *hidden_normalized, *cell, *rstd;
    int64_t active, hidden;
};

template <typename T, typename M>
struct LayerNormBackwardStep {
    const T* grad_h;       // [B, H] the gradient reaching h' through W_hh from the later step (rows < active)
    const T* grad_output;  // [active, H]
    M* carry;              // [B, H] LSTM: dc; GRU: the gradient reaching h' directly (z * dh'); read, then replaced
    const M *activations, *hidden_normalized, *cell, *rstd;  // as LayerNormForwardStep saved them
    const T *gain_hh, *gain_c, *bias_c;
    M* grad_gates;          // [active, G*H] gradient of LN(x W_ih^T) * gain_ih + bias_ih
    M* grad_recurrent;      // [active, G*H] the GRU's gradient of LN(h W_hh^T) * gain_hh + bias_hh; null for the LSTM
    T* grad_hidden_gates;   // [active, G*H] gradient of h W_hh^T
    M* grad_cell_output;    // [active, H] the LSTM's gradient of LN(c') * gain_c + bias_c; null for the GRU
    int64_t active, hidden;
};

template <typename M>
struct RowStatistics {
    M mean, rstd;
};

// Mean and 1 / sqrt(variance + eps) of x[0, width), the variance from centred values (no cancellation when the mean
// is large), as the Triton kernels and torch's layer_norm.
template <typename Team, typename P>
__host__ __device__ inline RowStatistics<typename Team::Math> row_statistics(const Team& team, const P* x,
                                                                              int64_t width) {
    using V = typename Team::Value;
    using M = typename Team::Math;
    V total(0);
    for (int64_t j = team.first(); j < width; j += team.stride()) {
        const int n = team.lanes(width - j);
        total = total + team.valid(team.load(x + j, n), n);
    }
    const M mean = team.sum(total) / static_cast<M>(width);
    V squares(0);
    for (int64_t j = team.first(); j < width; j += team.stride()) {
        const int n = team.lanes(width - j);
        const V centred = team.valid(team.load(x + j, n) - V(mean), n);
        squares = squares + centred * centred;
    }
    return {mean, M(1) / sqrt(team.sum(squares) / static_cast<M>(width) + static_cast<M>(kLayerNormEps))};
}

template <typename Team, typename T, typename M>
__host__ __device__ inline void layernorm_lstm_forward_row(const Team& team, const LayerNormForwardStep<T, M>& s,
                                                           int64_t b) {
    using V = typename Team::Value;
    const int64_t H = s.hidden, W = 4 * H;
    const M* x = s.input + b * W;
    const T* hg = s.hidden_gates + b * W;
    M* c = s.state + b * H;
    const bool save = s.activations != nullptr;
    M* act = save ? s.activations + b * W : nullptr;
    M* hn = save ? s.hidden_normalized + b * W : nullptr;
    M* cell = save ? s.cell + b * 2 * H : nullptr;
    const RowStatistics<M> hs = row_statistics(team, hg, W);
    const V mean(hs.mean), rstd(hs.rstd);
    for (int64_t u = team.first(); u < H; u += team.stride()) {
        const int n = team.lanes(H - u);
        V normalized[3], pre[3];
        for (int k = 0; k < 3; ++k) {
            normalized[k] = layer_normalized(team.load(hg + k * H + u, n), mean, rstd);
            pre[k] = team.load(x + k * H + u, n) + normalized[k] * team.load(s.gain_hh + k * H + u, n);
        }
        const V c_prev = team.load(c + u, n);
        const LayerNormLstmCell<V> next = layernorm_lstm_cell<V>(pre[0], pre[1], pre[2], c_prev);
        team.store(c + u, next.c, n);
        if (save) {
            team.store(act + u, next.i, n);
            team.store(act + H + u, next.f, n);
            team.store(act + 2 * H + u, next.g, n);
            for (int k = 0; k < 3; ++k) team.store(hn + k * H + u, normalized[k], n);
            team.store(cell + u, c_prev, n);
        }
    }
    const RowStatistics<M> cs = row_statistics(team, c, H);
    const V mean_c(cs.mean), rstd_c(cs.rstd);
    T* h = s.h + b * H;
    T* out = s.output + b * H;
    for (int64_t u = team.first(); u < H; u += team.stride()) {
        const int n = team.lanes(H - u);
        const V normalized_o = layer_normalized(team.load(hg + 3 * H + u, n), mean, rstd);
        const V pre_o = team.load(x + 3 * H + u, n) + normalized_o * team.load(s.gain_hh + 3 * H + u, n);
        const V c_normalized = layer_normalized(team.load(c + u, n), mean_c, rstd_c);
        const LayerNormLstmOutput<V> o =
            layernorm_lstm_output<V>(pre_o, c_normalized, team.load(s.gain_c + u, n), team.load(s.bias_c + u, n));
        team.store(out + u, o.h, n);
        team.store(h + u, o.h, n);
        if (save) {
            team.store(act + 3 * H + u, o.o, n);
            team.store(hn + 3 * H + u, normalized_o, n);
            team.store(cell + H + u, c_normalized, n);
        }
    }
    if (save && team.leader()) {
        s.rstd[b * 2] = hs.rstd;
        s.rstd[b * 2 + 1] = cs.rstd;
    }
}

template <typename Team, typename T, typename M>
__host__ __device__ inline void layernorm_gru_forward_row(const Team& team, const LayerNormForwardStep<T, M>& s,
                                                          int64_t b) {
    using V = typename Team::Value;
    const int64_t H = s.hidden, W = 3 * H;
    const M* x = s.input + b * W;
    const T* hg = s.hidden_gates + b * W;
    M* state = s.state + b * H;
    T* h = s.h + b * H;
    T* out = s.output + b * H;
    const bool save = s.activations != nullptr;
    M* act = save ? s.activations + b * 4 * H : nullptr;
    M* hn = save ? s.hidden_normalized + b * W : nullptr;
    M* h_saved = save ? s.cell + b * H : nullptr;
    const RowStatistics<M> hs = row_statistics(team, hg, W);
    const V mean(hs.mean), rstd(hs.rstd);
    for (int64_t u = team.first(); u < H; u += team.stride()) {
        const int n = team.lanes(H - u);
        V normalized[3], recurrent[3];
        for (int k = 0; k < 3; ++k) {
            normalized[k] = layer_normalized(team.load(hg + k * H + u, n), mean, rstd);
            recurrent[k] = normalized[k] * team.load(s.gain_hh + k * H + u, n);
            if (s.bias_hh) recurrent[k] = recurrent[k] + team.load(s.bias_hh + k * H + u, n);
        }
        const V h_prev = team.load(state + u, n);
        const GruForward<V> next = gru_forward<V>(team.load(x + u, n) + recurrent[0],
                                                  team.load(x + H + u, n) + recurrent[1],
                                                  team.load(x + 2 * H + u, n), recurrent[2], h_prev);
        team.store(state + u, next.h, n);
        team.store(h + u, next.h, n);
        team.store(out + u, next.h, n);
        if (save) {
            team.store(act + u, next.r, n);
            team.store(act + H + u, next.z, n);
            team.store(act + 2 * H + u, next.n, n);
            team.store(act + 3 * H + u, recurrent[2], n);
            for (int k = 0; k < 3; ++k) team.store(hn + k * H + u, normalized[k], n);
            team.store(h_saved + u, h_prev, n);
        }
    }
    if (save && team.leader()) s.rstd[b] = hs.rstd;
}

// d(h W_hh^T) of one row from the gradient of LN(h W_hh^T) * gain (+ bias) in `grad_normed_out` [G*H]; the sums
// over the row of d(normalized) and of d(normalized) * normalized are the caller's, already totalled by the team.
template <typename Team, typename T, typename M>
__host__ __device__ inline void recurrent_norm_backward_row(const Team& team, const M* grad_normed_out,
                                                            const M* normalized, const T* gain, T* grad_hidden_gates,
                                                            int64_t H, int G, M sum_d, M sum_d_normalized, M rstd) {
    using V = typename Team::Value;
    const V mean_d(sum_d / static_cast<M>(G * H)), mean_d_normalized(sum_d_normalized / static_cast<M>(G * H));
    for (int64_t u = team.first(); u < H; u += team.stride()) {
        const int n = team.lanes(H - u);
        for (int k = 0; k < G; ++k) {
            const int64_t j = k * H + u;
            const V d = team.load(grad_normed_out + j, n) * team.load(gain + j, n);
            team.store(grad_hidden_gates + j,
                       layer_norm_backward(d, team.load(normalized + j, n), mean_d, mean_d_normalized, V(rstd)), n);
        }
    }
}

template <typename Team, typename T, typename M>
__host__ __device__ inline void layernorm_lstm_backward_row(const Team& team, const LayerNormBackwardStep<T, M>& s,
                                                            int64_t b) {
    using V = typename Team::Value;
    const int64_t H = s.hidden, W = 4 * H;
    const M* act = s.activations + b * W;
    const M* hn = s.hidden_normalized + b * W;
    const M* cell = s.cell + b * 2 * H;
    const M rstd_h = s.rstd[b * 2], rstd_c = s.rstd[b * 2 + 1];
    M* dc = s.carry + b * H;
    M* grad_gates = s.grad_gates + b * W;
    M* grad_y = s.grad_cell_output + b * H;
    // The output gate and d(LN(c') * gain_c + bias_c), with the row sums the c' normalization's backward needs.
    V sum_dcn(0), sum_dcn_cn(0);
    for (int64_t u = team.first(); u < H; u += team.stride()) {
        const int n = team.lanes(H - u);
        const V dh = team.load(s.grad_h + b * H + u, n) + team.load(s.grad_output + b * H + u, n);
        const V c_normalized = team.load(cell + H + u, n), gain_c = team.load(s.gain_c + u, n);
        const LayerNormLstmOutputBackward<V> d = layernorm_lstm_output_backward<V>(
            team.load(act + 3 * H + u, n), c_normalized, gain_c, team.load(s.bias_c + u, n), dh);
        team.store(grad_gates + 3 * H + u, d.pre_o, n);
        team.store(grad_y + u, d.y, n);
        const V dcn = team.valid(d.y * gain_c, n);
        sum_dcn = sum_dcn + dcn;
        sum_dcn_cn = sum_dcn_cn + dcn * c_normalized;
    }
    const V mean_dcn(team.sum(sum_dcn) / static_cast<M>(H)), mean_dcn_cn(team.sum(sum_dcn_cn) / static_cast<M>(H));
    // The other gates and the carried dc, with the row sums the recurrent normalization's backward needs.
    V sum_d(0), sum_d_normalized(0);
    for (int64_t u = team.first(); u < H; u += team.stride()) {
        const int n = team.lanes(H - u);
        const V c_normalized = team.load(cell + H + u, n);
        const V dcn = team.load(grad_y + u, n) * team.load(s.gain_c + u, n);
        const V dc_total = team.load(dc + u, n) + layer_norm_backward(dcn, c_normalized, mean_dcn, mean_dcn_cn, V(rstd_c));
        const LayerNormLstmCellBackward<V> d = layernorm_lstm_cell_backward<V>(
            team.load(act + u, n), team.load(act + H + u, n), team.load(act + 2 * H + u, n), team.load(cell + u, n),
            dc_total);
        team.store(dc + u, d.c_prev, n);
        team.store(grad_gates + u, d.pre_i, n);
        team.store(grad_gates + H + u, d.pre_f, n);
        team.store(grad_gates + 2 * H + u, d.pre_g, n);
        const V grads[4] = {d.pre_i, d.pre_f, d.pre_g, team.load(grad_gates + 3 * H + u, n)};
        for (int k = 0; k < 4; ++k) {
            const V d_normalized = team.valid(grads[k] * team.load(s.gain_hh + k * H + u, n), n);
            sum_d = sum_d + d_normalized;
            sum_d_normalized = sum_d_normalized + d_normalized * team.load(hn + k * H + u, n);
        }
    }
    // The LSTM's gate pre-activation gradient is also that of LN(h W_hh^T) * gain_hh.
    recurrent_norm_backward_row(team, grad_gates, hn, s.gain_hh, s.grad_hidden_gates + b * W, H, 4, team.sum(sum_d),
                                team.sum(sum_d_normalized), rstd_h);
}

template <typename Team, typename T, typename M>
__host__ __device__ inline void layernorm_gru_backward_row(const Team& team, const LayerNormBackwardStep<T, M>& s,
                                                           int64_t b) {
    using V = typename Team::Value;
    const int64_t H = s.hidden, W = 3 * H;
    const M* act = s.activations + b * 4 * H;
    const M* hn = s.hidden_normalized + b * W;
    const M* h_prev = s.cell + b * H;
    M* carry = s.carry + b * H;
    M* grad_gates = s.grad_gates + b * W;
    M* grad_recurrent = s.grad_recurrent + b * W;
    V sum_d(0), sum_d_normalized(0);
    for (int64_t u = team.first(); u < H; u += team.stride()) {
        const int n = team.lanes(H - u);
        const V dh = team.load(s.grad_h + b * H + u, n) + team.load(s.grad_output + b * H + u, n) +
                     team.load(carry + u, n);
        const GruBackward<V> d = gru_backward<V>(team.load(act + u, n), team.load(act + H + u, n),
                                                 team.load(act + 2 * H + u, n), team.load(act + 3 * H + u, n),
                                                 team.load(h_prev + u, n), dh);
        team.store(carry + u, d.h_prev, n);
        team.store(grad_gates + u, d.pre_r, n);
        team.store(grad_gates + H + u, d.pre_z, n);
        team.store(grad_gates + 2 * H + u, d.x_n, n);
        const V grads[3] = {d.pre_r, d.pre_z, d.h_n};
        for (int k = 0; k < 3; ++k) {
            team.store(grad_recurrent + k * H + u, grads[k], n);
            const V d_normalized = team.valid(grads[k] * team.load(s.gain_hh + k * H + u, n), n);
            sum_d = sum_d + d_normalized;
            sum_d_normalized = sum_d_normalized + d_normalized * team.load(hn + k * H + u, n);
        }
    }
    recurrent_norm_backward_row(team, grad_recurrent, hn, s.gain_hh, s.grad_hidden_gates + b * W, H, 3,
                                team.sum(sum_d), team.sum(sum_d_normalized), s.rstd[b]);
}

// One column at a time, one member: the CUDA kernel's arithmetic (csrc/cuda/layernorm.cu) on the host.
template <typename M>
struct SerialTeam {
    using Value = M;
    using Math = M;
    static int64_t first() { return 0; }
    static int64_t stride() { return 1; }
    static int lanes(int64_t) { return 1; }
    template <typename P>
    static M load(const P* p, int) { return static_cast<M>(*p); }
    template <typename P>
    static void store(P* p, M value, int) { *p = static_cast<P>(value); }
    static M valid(M value, int) { return value; }
    static M sum(M value) { return value; }
    static bool leader() { return true; }
};

#ifdef FUSED_RNN_WITH_CUDA
// The rows of one step on the current CUDA stream, a block per row (csrc/cuda/layernorm.cu).
template <typename T, typename M>
void layernorm_forward_rows_cuda(bool lstm, const LayerNormForwardStep<T, M>& step);
template <typename T, typename M>
void layernorm_backward_rows_cuda(bool lstm, const LayerNormBackwardStep<T, M>& step);
#endif

}  // namespace fused_rnn
