// LayerNorm LSTM/GRU's recurrence (fused_rnn/layernorm): the step loop of one direction of one layer, for CPU tensors
// and, in builds with the CUDA kernels, CUDA tensors. Per step, h W_hh^T is one GEMM (csrc/sequence.cpp's product:
// oneDNN for large float32 products on x86-64 CPUs, else at::mm; cuBLAS on CUDA) and the rows' pointwise work one
// call of csrc/layernorm.h's row bodies: on CPU each thread takes whole rows and walks their columns in SIMD vectors;
// on CUDA a block per row (csrc/cuda/layernorm.cu).
// Ops: fused_rnn_native::layernorm_recurrence_forward / layernorm_recurrence_backward (CPU: float32 and float64; CUDA
// also float16 and bfloat16, with fp32 math and carried state), the contract of the Triton step loop
// (fused_rnn/backends/triton/layernorm.py); and layernorm_recurrence_*_row_loop, which run the rows one column at a
// time on CPU tensors, as a CUDA thread does, for the CPU tests of the CUDA kernel's arithmetic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../layernorm.h"
#include "../sequence.h"
#include "vectorized_activations.h"

namespace fused_rnn {
namespace {

using at::Tensor;

// A CPU thread walking one row in SIMD vectors of columns.
template <typename M>
struct VectorTeam {
    using Value = at::vec::Vectorized<M>;
    using Math = M;
    static int64_t first() { return 0; }
    static int64_t stride() { return Value::size(); }
    static int lanes(int64_t remaining) { return static_cast<int>(std::min<int64_t>(Value::size(), remaining)); }
    static Value load(const M* p, int lanes) { return Value::loadu(p, lanes); }
    static void store(M* p, const Value& value, int lanes) { value.store(p, lanes); }
    static Value valid(const Value& value, int lanes) { return Value::set(Value(0), value, lanes); }
    static M sum(const Value& value) {
        return at::vec::vec_reduce_all<M>([](const Value& a, const Value& b) { return a + b; }, value);
    }
    static bool leader() { return true; }
};

// Where a step's rows run: SIMD on CPU threads, one column at a time on the host (the CUDA kernel's arithmetic), or
// the CUDA kernel.
enum class Rows { vectorized, serial, cuda };

// Rows of at least this many values go to a thread of their own; below it the fork costs more than it saves.
constexpr int64_t kValuesPerThread = 1 << 13;

template <typename Body>
void for_each_row(int64_t active, int64_t row_values, bool parallel, const Body& body) {
    if (!parallel) {
        for (int64_t b = 0; b < active; ++b) body(b);
        return;
    }
    at::parallel_for(0, active, std::max<int64_t>(1, kValuesPerThread / row_values), [&](int64_t first, int64_t end) {
        for (int64_t b = first; b < end; ++b) body(b);
    });
}

// row(team, b) for rows b < active on the host: whole rows per thread with SIMD vectors (VectorTeam), or one column
// at a time on one thread (SerialTeam, the CUDA kernel's arithmetic).
template <typename T, typename M, typename Row>
void host_rows(Rows rows, int64_t active, int64_t row_values, const Row& row) {
    if constexpr (std::is_same_v<T, M>) {
        if (rows == Rows::vectorized) {
            for_each_row(active, row_values, true, [&](int64_t b) { row(VectorTeam<M>{}, b); });
            return;
        }
    }
    for_each_row(active, row_values, false, [&](int64_t b) { row(SerialTeam<M>{}, b); });
}

template <typename T, typename M>
void forward_rows(Rows rows, bool lstm, const LayerNormForwardStep<T, M>& step) {
    if (rows == Rows::cuda) {
#ifdef FUSED_RNN_WITH_CUDA
        layernorm_forward_rows_cuda<T, M>(lstm, step);
#endif
        return;
    }
    host_rows<T, M>(rows, step.active, (lstm ? 4 : 3) * step.hidden, [&](const auto& team, int64_t b) {
        lstm ? layernorm_lstm_forward_row(team, step, b) : layernorm_gru_forward_row(team, step, b);
    });
}

template <typename T, typename M>
void backward_rows(Rows rows, bool lstm, const LayerNormBackwardStep<T, M>& step) {
    if (rows == Rows::cuda) {
#ifdef FUSED_RNN_WITH_CUDA
        layernorm_backward_rows_cuda<T, M>(lstm, step);
#endif
        return;
    }
    host_rows<T, M>(rows, step.active, (lstm ? 4 : 3) * step.hidden, [&](const auto& team, int64_t b) {
        lstm ? layernorm_lstm_backward_row(team, step, b) : layernorm_gru_backward_row(team, step, b);
    });
}

bool is_lstm(std::string_view cell) {
    TORCH_CHECK(cell == "lstm" || cell == "gru", "cell must be 'lstm' or 'gru', got '", cell, "'");
    return cell == "lstm";
}

Rows rows_for(const Tensor& t, bool serial) {
    if (t.is_cuda()) {
        TORCH_CHECK(!serial, "the row loop runs CPU tensors only");
        return Rows::cuda;
    }
    return serial ? Rows::serial : Rows::vectorized;
}

void check(const char* name, const Tensor& t, const Tensor& like, at::ScalarType dtype, at::IntArrayRef sizes) {
    TORCH_CHECK(t.sizes() == sizes, name, " must have shape ", sizes, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == dtype && t.device() == like.device() && t.is_contiguous(), name,
                " must be a contiguous ", dtype, " tensor on ", like.device());
}

// run(scalar_t{}) for the storage types each path runs: the CPU kernel's SIMD math is in the storage type, so it
// takes float32 and float64 only.
template <typename Run>
void dispatch(Rows rows, at::ScalarType dtype, const Run& run) {
    if (rows == Rows::vectorized) {
        AT_DISPATCH_FLOATING_TYPES(dtype, "fused_rnn layernorm_recurrence", [&] { run(scalar_t{}); });
    } else {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_rnn layernorm_recurrence", [&] { run(scalar_t{}); });
    }
}

// Returns output (N, H), h_n, c_n (empty for the GRU) and the saved tensors (no rows unless save): activations
// (N, 4H), hidden_normalized (N, G*H), cell (N, 2H or H), rstd (N, 2 or 1), in the math dtype.
template <bool kSerial>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layernorm_recurrence_forward(
    std::string_view cell, const Tensor& input_normalized, const Tensor& weight_hh, const Tensor& norm_hh_weight,
    const std::optional<Tensor>& bias_hh, const std::optional<Tensor>& norm_c_weight,
    const std::optional<Tensor>& norm_c_bias, const Tensor& h0, const std::optional<Tensor>& c0,
    at::OptionalIntArrayRef batch_sizes, bool reverse, bool save) {
    const c10::DeviceGuard device_guard(h0.device());
    const bool lstm = is_lstm(cell);
    const int64_t G = lstm ? 4 : 3, N = input_normalized.size(0), B = h0.size(0), H = h0.size(1);
    const auto dtype = h0.scalar_type(), math = at::toOpMathType(dtype);
    check("input_normalized", input_normalized, h0, math, {N, G * H});
    check("weight_hh", weight_hh, h0, dtype, {G * H, H});
    check("norm_hh_weight", norm_hh_weight, h0, dtype, {G * H});
    TORCH_CHECK(h0.is_contiguous(), "h0 must be contiguous");
    TORCH_CHECK(c0.has_value() == lstm && norm_c_weight.has_value() == lstm && norm_c_bias.has_value() == lstm &&
                    (!lstm || !bias_hh.has_value()),
                "give c0, norm_c_weight and norm_c_bias for the LSTM (and no bias_hh), bias_hh or nothing for the GRU");
    if (lstm) {
        check("c0", *c0, h0, dtype, {B, H});
        check("norm_c_weight", *norm_c_weight, h0, dtype, {H});
        check("norm_c_bias", *norm_c_bias, h0, dtype, {H});
    } else if (bias_hh) {
        check("bias_hh", *bias_hh, h0, dtype, {G * H});
    }
    const Rows rows = rows_for(h0, kSerial);
    const std::vector<Step> steps = time_steps(N, B, batch_sizes, reverse);
    const auto math_options = h0.options().dtype(math);
    Tensor output = at::empty({N, H}, h0.options());
    Tensor h = h0.clone();
    Tensor state = (lstm ? *c0 : h0).to(math, false, true);
    const int64_t saved_rows = save ? N : 0;
    Tensor activations = at::empty({saved_rows, 4 * H}, math_options);
    Tensor hidden_normalized = at::empty({saved_rows, G * H}, math_options);
    Tensor cell_saved = at::empty({saved_rows, (lstm ? 2 : 1) * H}, math_options);
    Tensor rstd = at::empty({saved_rows, lstm ? 2 : 1}, math_options);
    dispatch(rows, dtype, [&](auto storage) {
        using scalar_t = decltype(storage);
        using M = at::opmath_type<scalar_t>;
        LayerNormForwardStep<scalar_t, M> step{};
        step.gain_hh = norm_hh_weight.data_ptr<scalar_t>();
        step.bias_hh = data_or_null<scalar_t>(bias_hh);
        step.gain_c = data_or_null<scalar_t>(norm_c_weight);
        step.bias_c = data_or_null<scalar_t>(norm_c_bias);
        step.state = state.data_ptr<M>();
        step.h = h.data_ptr<scalar_t>();
        step.hidden = H;
        for (const Step s : steps) {
            const Tensor gates = product(h.narrow(0, 0, s.active), weight_hh);
            step.input = input_normalized.data_ptr<M>() + s.offset * G * H;
            step.hidden_gates = gates.data_ptr<scalar_t>();
            step.output = output.data_ptr<scalar_t>() + s.offset * H;
            if (save) {
                step.activations = activations.data_ptr<M>() + s.offset * 4 * H;
                step.hidden_normalized = hidden_normalized.data_ptr<M>() + s.offset * G * H;
                step.cell = cell_saved.data_ptr<M>() + s.offset * cell_saved.size(1);
                step.rstd = rstd.data_ptr<M>() + s.offset * rstd.size(1);
            }
            step.active = s.active;
            forward_rows(rows, lstm, step);
        }
    });
    Tensor c_n = lstm ? state.to(dtype) : at::empty({0}, h0.options());
    return {output, h, c_n, activations, hidden_normalized, cell_saved, rstd};
}

// Returns the gradients of the gates' input part LN(x W_ih^T) * gain_ih + bias_ih (N, G*H, math dtype), of h W_hh^T
// (N, G*H), the LSTM's of LN(c') * gain_c + bias_c (N, H) or the GRU's of LN(h W_hh^T) * gain_hh + bias_hh (N, G*H),
// both in the math dtype, then those of h0 and c0 (empty for the GRU).
template <bool kSerial>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layernorm_recurrence_backward(
    std::string_view cell, const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_c_n,
    const Tensor& weight_hh, const Tensor& norm_hh_weight, const std::optional<Tensor>& norm_c_weight,
    const std::optional<Tensor>& norm_c_bias, const Tensor& activations, const Tensor& hidden_normalized,
    const Tensor& cell_saved, const Tensor& rstd, at::OptionalIntArrayRef batch_sizes, bool reverse) {
    const c10::DeviceGuard device_guard(grad_output.device());
    const bool lstm = is_lstm(cell);
    const int64_t G = lstm ? 4 : 3, N = grad_output.size(0), B = grad_h_n.size(0), H = grad_h_n.size(1);
    const auto dtype = grad_output.scalar_type(), math = at::toOpMathType(dtype);
    check("grad_output", grad_output, grad_output, dtype, {N, H});
    check("grad_h_n", grad_h_n, grad_output, dtype, {B, H});
    check("weight_hh", weight_hh, grad_output, dtype, {G * H, H});
    check("norm_hh_weight", norm_hh_weight, grad_output, dtype, {G * H});
    check("activations", activations, grad_output, math, {N, 4 * H});
    check("hidden_normalized", hidden_normalized, grad_output, math, {N, G * H});
    check("cell", cell_saved, grad_output, math, {N, (lstm ? 2 : 1) * H});
    check("rstd", rstd, grad_output, math, {N, lstm ? 2 : 1});
    TORCH_CHECK(grad_c_n.has_value() == lstm && norm_c_weight.has_value() == lstm && norm_c_bias.has_value() == lstm,
                "give grad_c_n, norm_c_weight and norm_c_bias for the LSTM and not for the GRU");
    if (lstm) {
        check("grad_c_n", *grad_c_n, grad_output, dtype, {B, H});
        check("norm_c_weight", *norm_c_weight, grad_output, dtype, {H});
        check("norm_c_bias", *norm_c_bias, grad_output, dtype, {H});
    }
    const Rows rows = rows_for(grad_output, kSerial);
    const std::vector<Step> steps = time_steps(N, B, batch_sizes, reverse);
    const auto math_options = grad_output.options().dtype(math);
    Tensor grad_gates = at::empty({N, G * H}, math_options);
    Tensor grad_hidden_gates = at::empty({N, G * H}, grad_output.options());
    Tensor grad_cell_side = at::empty({N, (lstm ? 1 : G) * H}, math_options);
    // dh: what reaches h through W_hh, one GEMM's output per step. The carry holds the LSTM's dc, or the GRU's
    // gradient through h' = z * h + ..., which starts as the whole gradient of h_n.
    Tensor dh = lstm ? grad_h_n.clone() : at::zeros_like(grad_h_n);
    Tensor carry = (lstm ? *grad_c_n : grad_h_n).to(math, false, true);
    const Tensor weight_hh_transposed = weight_hh.t().contiguous();  // product(g, W^T) = g W
    dispatch(rows, dtype, [&](auto storage) {
        using scalar_t = decltype(storage);
        using M = at::opmath_type<scalar_t>;
        LayerNormBackwardStep<scalar_t, M> step{};
        step.grad_h = dh.data_ptr<scalar_t>();
        step.carry = carry.data_ptr<M>();
        step.gain_hh = norm_hh_weight.data_ptr<scalar_t>();
        step.gain_c = data_or_null<scalar_t>(norm_c_weight);
        step.bias_c = data_or_null<scalar_t>(norm_c_bias);
        step.hidden = H;
        for (auto s = steps.rbegin(); s != steps.rend(); ++s) {
            step.grad_output = grad_output.data_ptr<scalar_t>() + s->offset * H;
            step.activations = activations.data_ptr<M>() + s->offset * 4 * H;
            step.hidden_normalized = hidden_normalized.data_ptr<M>() + s->offset * G * H;
            step.cell = cell_saved.data_ptr<M>() + s->offset * cell_saved.size(1);
            step.rstd = rstd.data_ptr<M>() + s->offset * rstd.size(1);
            step.grad_gates = grad_gates.data_ptr<M>() + s->offset * G * H;
            M* cell_side = grad_cell_side.data_ptr<M>() + s->offset * grad_cell_side.size(1);
            step.grad_cell_output = lstm ? cell_side : nullptr;
            step.grad_recurrent = lstm ? nullptr : cell_side;
            Tensor step_grad_hidden_gates = grad_hidden_gates.narrow(0, s->offset, s->active);
            step.grad_hidden_gates = step_grad_hidden_gates.data_ptr<scalar_t>();
            step.active = s->active;
            backward_rows(rows, lstm, step);
            dh.narrow(0, 0, s->active).copy_(product(step_grad_hidden_gates, weight_hh_transposed));
        }
    });
    if (lstm) return {grad_gates, grad_hidden_gates, grad_cell_side, dh, carry.to(dtype)};
    return {grad_gates, grad_hidden_gates, grad_cell_side, dh.add(carry).to(dtype), at::empty({0}, dh.options())};
}

}  // namespace
}  // namespace fused_rnn

namespace {
constexpr const char* kForwardSignature =
    "(str cell, Tensor input_normalized, Tensor weight_hh, Tensor norm_hh_weight, Tensor? bias_hh, "
    "Tensor? norm_c_weight, Tensor? norm_c_bias, Tensor h0, Tensor? c0, int[]? batch_sizes, bool reverse, bool save) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";
constexpr const char* kBackwardSignature =
    "(str cell, Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, Tensor weight_hh, Tensor norm_hh_weight, "
    "Tensor? norm_c_weight, Tensor? norm_c_bias, Tensor activations, Tensor hidden_normalized, Tensor cell, "
    "Tensor rstd, int[]? batch_sizes, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)";
}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_native, m) {
    m.def((std::string("layernorm_recurrence_forward") + kForwardSignature).c_str());
    m.def((std::string("layernorm_recurrence_backward") + kBackwardSignature).c_str());
    m.def((std::string("layernorm_recurrence_forward_row_loop") + kForwardSignature).c_str());
    m.def((std::string("layernorm_recurrence_backward_row_loop") + kBackwardSignature).c_str());
}

TORCH_LIBRARY_IMPL(fused_rnn_native, CPU, m) {
    m.impl("layernorm_recurrence_forward", &fused_rnn::layernorm_recurrence_forward<false>);
    m.impl("layernorm_recurrence_backward", &fused_rnn::layernorm_recurrence_backward<false>);
    m.impl("layernorm_recurrence_forward_row_loop", &fused_rnn::layernorm_recurrence_forward<true>);
    m.impl("layernorm_recurrence_backward_row_loop", &fused_rnn::layernorm_recurrence_backward<true>);
}

#ifdef FUSED_RNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fused_rnn_native, CUDA, m) {
    m.impl("layernorm_recurrence_forward", &fused_rnn::layernorm_recurrence_forward<false>);
    m.impl("layernorm_recurrence_backward", &fused_rnn::layernorm_recurrence_backward<false>);
}
#endif
