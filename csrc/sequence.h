// What the C++ sequence driver (csrc/sequence.cpp) hands to a device's recurrent loop: the shape of one
// direction of one layer, the order its time steps run in, and contiguous buffers laid out as in
// fused_rnn/cells.py (so the saved activations match the Triton driver's, and either backward reads them).
// The CPU loop takes raw pointers (it is one parallel region with no ATen call inside); the CUDA loop takes the
// tensors, since each of its steps runs ATen GEMMs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

namespace fused_rnn {

enum class CellKind { lstm, gru, rnn_tanh, rnn_relu };

// A time step owns rows [offset, offset + active) of the time-major (N, ·) tensors (fused_rnn/packing.py).
struct Step {
    int64_t offset;
    int64_t active;
};

// The steps of N time-major rows of `batch` sequences (padded when batch_sizes is absent, else packed with those
// non-increasing active counts), in the order a direction visits them: last to first when reverse. Checks the
// layout (TORCH_CHECK).
std::vector<Step> time_steps(int64_t rows, int64_t batch, at::OptionalIntArrayRef batch_sizes,
                             bool reverse);

struct SequenceShape {
    CellKind cell;
    int64_t batch;        // B
    int64_t hidden;       // H
    int64_t hidden_out;   // H_out: the projection size P for a projected LSTM, else H
    int64_t gates;        // gate blocks of H columns in the weights: 4, 3 or 1
    int64_t saved_width;  // blocks of H columns saved per row for the backward: 5, 4 or 0
    bool projected;       // LSTM with weight_hr
    std::vector<Step> steps;  // in the order the forward visits them (last to first when reverse)
};

// The data of an optional tensor the kernels may go without: null when it is absent or has no elements.
template <typename T>
T* data_or_null(const std::optional<at::Tensor>& t) {
    return t && t->defined() && t->numel() ? t->data_ptr<T>() : nullptr;
}

// x W_ih^T + b_ih + b_hh (GRU: without b_hh's n block) of the rows of some consecutive steps: row r's G*H values
// start at data + (r - first_row) * G*H.
template <typename scalar_t>
struct InputGates {
    const scalar_t* data;
    int64_t first_row;
};

template <typename scalar_t>
struct ForwardBuffers {
    // The input gates of the visited steps [begin, end), computed when the CPU loop reaches them (between two of
    // its parallel regions), valid until the next call: the whole sequence's [N, G*H] at once would double the
    // memory an inference call needs.
    std::function<InputGates<scalar_t>(int64_t begin, int64_t end)> input_gates;
    int64_t steps_per_projection;  // how many visited steps each input_gates call covers (the last may be fewer)
    const scalar_t* bias_hn;      // [H] GRU's b_hn, added to h W_hn^T before r multiplies it; null otherwise
    const scalar_t* weight_hh;    // [G*H, H_out]
    const scalar_t* weight_hr;    // [P, H] or null
    const scalar_t* h0;           // [B, H_out]
    scalar_t* cell_state;         // [B, H] LSTM: c0 on entry, c_n on exit; null otherwise
    scalar_t* output;             // [N, H_out]
    scalar_t* saved;              // [N, saved_width * H] or null when nothing is saved
    // Projected LSTM: h' before the projection, [N, H] when saved for the backward, else [B, H] scratch.
    scalar_t* projection_input;
    bool projection_input_per_row;
    // Zoneout's keep weights, [N, H_out + H] for the LSTM (h's, then c's), [N, H] for the GRU; null without zoneout.
    const scalar_t* zoneout;
};

template <typename scalar_t>
struct BackwardBuffers {
    const scalar_t* grad_output;  // [N, H_out], or [1, H_out] when every row's gradient is that one
    int64_t grad_output_row_stride;  // H_out, or 0 for the one row (an expanded gradient, such as output.sum()'s)
    scalar_t* grad_h;             // [B, H_out] gradient of h_n on entry, of h0 on exit
    scalar_t* grad_c;             // [B, H] LSTM: gradient of c_n on entry, of c0 on exit; null otherwise
    const scalar_t* h0;           // [B, H_out]
    const scalar_t* output;       // [N, H_out]
    const scalar_t* saved;        // [N, saved_width * H]
    const scalar_t* weight_hh;    // [G*H, H_out]
    const scalar_t* weight_hr;    // [P, H] or null
    scalar_t* grad_input_gates;   // [N, G*H] gradient of x W_ih^T + b_ih
    // Gradient of h W_hh^T + b_hh: grad_input_gates itself except for the GRU, whose n block differs (r times the
    // input side's); the GRU's are kept for two steps only, [2, B, G*H], step s's rows at index s % 2.
    scalar_t* grad_hidden_gates;
    scalar_t* grad_projected;     // [N, P] gradient of the projected output, or null
    const scalar_t* zoneout;      // as ForwardBuffers::zoneout
};

// The large GEMMs of the drivers: a b^T (+ bias), and a weight's gradient g^T x over all rows. float32 on x86-64 CPUs
// goes through oneDNN's matmul where the product is large enough to pay for its per-call cost (about twice MKL's
// speed on the AMD CPUs measured: csrc/sequence.cpp); elsewhere at::addmm / at::mm.
at::Tensor product(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias = std::nullopt);
at::Tensor weight_gradient(const at::Tensor& g, const at::Tensor& x);

// The CPU recurrence: one parallel region for all steps (csrc/cpu/recurrence.h), compiled for AVX2 and AVX-512;
// csrc/cpu/recurrence.cpp picks one per process, and cpu_instruction_set() says which: "AVX2" or "AVX512" on
// x86-64, "DEFAULT" (at::vec's build for the compiler's target) elsewhere.
const char* cpu_instruction_set();
template <typename scalar_t>
void recurrent_forward_cpu(const SequenceShape& shape, const ForwardBuffers<scalar_t>& buffers);
template <typename scalar_t>
void recurrent_backward_cpu(const SequenceShape& shape, const BackwardBuffers<scalar_t>& buffers);

// The same buffers as tensors, for the CUDA recurrence (csrc/cuda/recurrence.cu). Storage dtype is the input's
// (fp16/bf16/fp32/fp64); cell_state and saved are in the math dtype (fp32, or fp64 for fp64) as the Triton
// driver keeps them. An absent optional tensor is undefined.
struct ForwardTensors {
    at::Tensor input_gates, bias_hn, weight_hh, weight_hr, h0;
    at::Tensor cell_state;        // [B, H] math dtype: c0 on entry, c_n on exit (LSTM)
    at::Tensor output, saved;
    at::Tensor projection_input;  // [N, H] when saved for the backward, else [B, H] scratch (projected LSTM)
    at::Tensor zoneout;           // keep weights as ForwardBuffers::zoneout (math dtype), or undefined
};

struct BackwardTensors {
    at::Tensor grad_output, grad_h_n, grad_c_n, output, saved, weight_hh, weight_hr;
    at::Tensor previous_hidden;  // [N, H_out] the h each row's step started from (read by the GRU's gate math)
    at::Tensor grad_input_gates, grad_projected;  // written, as in BackwardBuffers
    at::Tensor grad_hidden_gates;  // [N, G*H]: every row (grad_input_gates itself except for the GRU)
    at::Tensor zoneout;  // keep weights as ForwardBuffers::zoneout (math dtype), or undefined
};

// The CUDA recurrence: per step one cuBLAS GEMM (at::mm_out) and one fused step kernel on the current stream; on
// CPU tensors the same loop with the kernels' bodies run on the host (for the CPU tests of this path).
// Forward returns h_n; backward returns the gradients of h0 and c0 (c0's undefined without a cell state).
at::Tensor recurrent_forward_steps(const SequenceShape& shape, const ForwardTensors& tensors);
std::tuple<at::Tensor, at::Tensor> recurrent_backward_steps(const SequenceShape& shape, const BackwardTensors& tensors);

}  // namespace fused_rnn
