// One time step of the multi-head cells (fused_rnn/multihead: the sLSTM, and the LSTM and GRU with a block-diagonal
// recurrent weight of `heads` blocks of head_dim units) for one (row, hidden unit): the pointwise body of the CUDA
// step kernel (csrc/cuda/multihead.cu), which a CUDA thread runs per step after the driver's bmm over heads
// (csrc/cpu/multihead.cpp), and which the step-loop ops run on the host for the CPU tests of that path. Layouts as
// fused_rnn/multihead/torch_steps.py: input gates and their gradients gate-major (gate g of unit j at g * H + j), the
// recurrent products and their gradients head-major (head k's G * head_dim values together), the saved activations
// in the math type: LSTM i, f, g, o, c; GRU r, z, n, h W_hn^T + b_hn; sLSTM the four pre-activations, c, n, m.
#pragma once

#include <stdint.h>

#include "cell_math.h"

namespace fused_rnn {

enum class HeadCell { lstm, gru, slstm };

__host__ __device__ constexpr int gates_of(HeadCell cell) { return cell == HeadCell::gru ? 3 : 4; }
__host__ __device__ constexpr int saved_width(HeadCell cell) {
    return cell == HeadCell::lstm ? 5 : cell == HeadCell::gru ? 4 : 7;
}

// Pointers at a step's first row (the [B, H] state buffers at row 0). T: storage type; M: math type.
template <typename T, typename M>
struct MultiheadForwardStep {
    const T* input_gates;   // [active, G*H] x W_ih^T + b_ih, gate-major
    const T* hidden_gates;  // [active, G*H] h_head W_head^T, head-major
    const T* bias_hh;       // [G*H] gate-major, or null
    T* h;                   // [B, H]: the GRU reads h from it; h' replaces rows < active
    M *c, *n, *m;           // [B, H] the states the cell carries besides h (LSTM c; sLSTM c, n, m), or null
    T* output;              // [active, H]
    M* saved;               // [active, saved_width * H], or null
    int64_t active, hidden, head_dim;
    bool exp_forget;        // the sLSTM's forget gate: exp rather than sigmoid
};

template <typename T, typename M, HeadCell C>
__host__ __device__ inline void multihead_forward_at(const MultiheadForwardStep<T, M>& s, int64_t b, int64_t j) {
    constexpr int G = gates_of(C);
    const int64_t H = s.hidden, D = s.head_dim, state = b * H + j;
    const T* xg = s.input_gates + b * G * H + j;
    const T* hg = s.hidden_gates + b * G * H + (j / D) * G * D + j % D;
    const auto recurrent = [&](int g) {
        return static_cast<M>(hg[g * D]) + (s.bias_hh ? static_cast<M>(s.bias_hh[g * H + j]) : M(0));
    };
    const auto pre = [&](int g) { return static_cast<M>(xg[g * H]) + recurrent(g); };
    M* saved = s.saved ? s.saved + b * saved_width(C) * H + j : nullptr;
    M h_new;
    if constexpr (C == HeadCell::lstm) {
        const M c_prev = s.c[state];
        const LstmForward<M> next = lstm_forward<M>(pre(0), pre(1), pre(2), pre(3), c_prev);
        if (saved) {
            const M values[5] = {next.i, next.f, next.g, next.o, c_prev};
            for (int k = 0; k < 5; ++k) saved[k * H] = values[k];
        }
        s.c[state] = next.c;
        h_new = next.h;
    } else if constexpr (C == HeadCell::gru) {
        const M h_n = recurrent(2);
        const GruForward<M> next =
            gru_forward<M>(pre(0), pre(1), static_cast<M>(xg[2 * H]), h_n, static_cast<M>(s.h[state]));
        if (saved) {
            const M values[4] = {next.r, next.z, next.n, h_n};
            for (int k = 0; k < 4; ++k) saved[k * H] = values[k];
        }
        h_new = next.h;
    } else {
        const M pre_i = pre(0), pre_f = pre(1), pre_z = pre(2), pre_o = pre(3);
        const M c_prev = s.c[state], n_prev = s.n[state], m_prev = s.m[state];
        if (saved) {
            const M values[7] = {pre_i, pre_f, pre_z, pre_o, c_prev, n_prev, m_prev};
            for (int k = 0; k < 7; ++k) saved[k * H] = values[k];
        }
        const SlstmForward<M> next =
            slstm_forward<M>(pre_i, pre_f, pre_z, pre_o, c_prev, n_prev, m_prev, s.exp_forget);
        s.c[state] = next.c;
        s.n[state] = next.n;
        s.m[state] = next.m;
        h_new = next.h;
    }
    // Only this (row, unit) reads h[state] in this step (the bmm read h before), so it is replaced in place.
    s.output[b * H + j] = static_cast<T>(h_new);
    s.h[state] = static_cast<T>(h_new);
}

template <typename T, typename M>
struct MultiheadBackwardStep {
    const T* grad_h;         // [B, H] the gradient reaching h' through W_hh from the later step (rows < active)
    const T* grad_output;    // [active, H]
    // [B, H] carried gradients, read then replaced: LSTM dc; GRU the part of h's gradient that skips W_hh (z * dh');
    // sLSTM dc, dn, dm. null where the cell has none.
    M *dc, *dn, *dm;
    const M* saved;            // [active, saved_width * H]
    const T* previous_hidden;  // [active, H] the h this step started from (the GRU's)
    T* grad_input_gates;       // [active, G*H] gate-major
    T* grad_hidden_gates;      // [active, G*H] head-major; the GRU's n block is r times the input side's
    int64_t active, hidden, head_dim;
    bool exp_forget;
};

template <typename T, typename M, HeadCell C>
__host__ __device__ inline void multihead_backward_at(const MultiheadBackwardStep<T, M>& s, int64_t b, int64_t j) {
    constexpr int G = gates_of(C);
    const int64_t H = s.hidden, D = s.head_dim, state = b * H + j;
    const M* saved = s.saved + b * saved_width(C) * H + j;
    const auto at = [&](int k) { return saved[k * H]; };
    const M d_out = static_cast<M>(s.grad_h[state]) + static_cast<M>(s.grad_output[b * H + j]);
    M grads[4], hidden_n(0);
    if constexpr (C == HeadCell::lstm) {
        const LstmBackward<M> d = lstm_backward<M>(at(0), at(1), at(2), at(3), at(4), d_out, s.dc[state]);
        grads[0] = d.pre_i, grads[1] = d.pre_f, grads[2] = d.pre_g, grads[3] = d.pre_o;
        s.dc[state] = d.c_prev;
    } else if constexpr (C == HeadCell::gru) {
        const GruBackward<M> d = gru_backward<M>(at(0), at(1), at(2), at(3),
                                                 static_cast<M>(s.previous_hidden[b * H + j]), d_out + s.dc[state]);
        grads[0] = d.pre_r, grads[1] = d.pre_z, grads[2] = d.x_n;
        hidden_n = d.h_n;
        s.dc[state] = d.h_prev;
    } else {
        const SlstmBackward<M> d = slstm_backward<M>(at(0), at(1), at(2), at(3), at(4), at(5), at(6), d_out,
                                                     s.dc[state], s.dn[state], s.dm[state], s.exp_forget);
        grads[0] = d.pre_i, grads[1] = d.pre_f, grads[2] = d.pre_z, grads[3] = d.pre_o;
        s.dc[state] = d.c_prev;
        s.dn[state] = d.n_prev;
        s.dm[state] = d.m_prev;
    }
    T* dgx = s.grad_input_gates + b * G * H + j;
    T* dgh = s.grad_hidden_gates + b * G * H + (j / D) * G * D + j % D;
    for (int g = 0; g < G; ++g) {
        dgx[g * H] = static_cast<T>(grads[g]);
        dgh[g * D] = static_cast<T>(C == HeadCell::gru && g == 2 ? hidden_n : grads[g]);
    }
}

#ifdef FUSED_RNN_WITH_CUDA
// A step's bodies on the current CUDA stream, a thread per (active row, hidden unit) (csrc/cuda/multihead.cu).
template <typename T, typename M>
void multihead_forward_step_cuda(HeadCell cell, const MultiheadForwardStep<T, M>& step);
template <typename T, typename M>
void multihead_backward_step_cuda(HeadCell cell, const MultiheadBackwardStep<T, M>& step);
#endif

}  // namespace fused_rnn
