// The C++ sequence driver for one direction of one layer, for CPU and CUDA tensors, and its registration as torch
// ops.
//
// Same algorithm, inputs, outputs and saved layout as the Python driver (fused_rnn/backends/triton/sequence.py),
// so fused_rnn/autograd.py's custom ops can call either and share one autograd formula:
// - forward: the input projection of all steps as one GEMM (both biases folded in, except the GRU's b_hn),
//   then the device's recurrent loop;
// - backward: the device's loop walks the steps in reverse and writes the gate gradients of every row; the
//   input, weight and bias gradients are then single GEMMs / sums over all rows. No atomics.
// Only the recurrent loop differs by device: on CPU one parallel region for all steps (csrc/cpu/recurrence.cpp),
// on CUDA a GEMM and a fused kernel per step (csrc/cuda/recurrence.cu, compiled when FUSED_RNN_WITH_CUDA is set).
// The ops are fused_rnn_native::sequence_forward / sequence_backward; Python checks the arguments first
// (fused_rnn/functional.py), the checks here only keep a direct call from reading out of bounds.
#include <ATen/core/List.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <functional>
#include <string>
#include <string_view>
#include <tuple>

#include "sequence.h"

namespace fused_rnn {

std::vector<Step> time_steps(int64_t rows, int64_t batch, at::OptionalIntArrayRef batch_sizes,
                             bool reverse) {
    std::vector<Step> steps;
    int64_t offset = 0;
    if (batch_sizes.has_value()) {
        for (const int64_t active : *batch_sizes) {
            TORCH_CHECK(active >= 1 && active <= batch, "batch_sizes must lie in [1, batch]");
            TORCH_CHECK(steps.empty() || active <= steps.back().active, "batch_sizes must not increase");
            steps.push_back({offset, active});
            offset += active;
        }
    } else {
        TORCH_CHECK(rows % batch == 0, "input rows must be steps * batch");
        for (; offset < rows; offset += batch) steps.push_back({offset, batch});
    }
    TORCH_CHECK(offset == rows, "batch_sizes sum to ", offset, " but input has ", rows, " rows");
    TORCH_CHECK(!steps.empty(), "input must have at least one time step");
    if (reverse) std::reverse(steps.begin(), steps.end());
    return steps;
}

namespace {

using at::Tensor;

// The sequence's large GEMMs. float32 on x86-64 CPUs goes through oneDNN's matmul (torch's
// mkldnn::_linear_pointwise, the op inductor uses for linear layers on CPU, and the library torch.nn's CPU LSTM runs
// on): MKL's sgemm behind at::mm runs its AVX2 code on AMD CPUs where oneDNN runs AVX-512. Measured on the
// benchmark machine (AMD EPYC, 1 thread), 6400x512 by 512x2048: 81 ms instead of 150, as accurate against
// float64. Below ~2M multiply-adds oneDNN's per-call cost outweighs that, and elsewhere (float64, CUDA, torch
// without oneDNN) at::addmm / at::mm run.
using OneDnnLinear = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, std::string_view,
                            c10::List<std::optional<at::Scalar>>, std::optional<std::string_view>);

const c10::TypedOperatorHandle<OneDnnLinear>* onednn_linear(const Tensor& a, const Tensor& b) {
#if defined(__x86_64__) || defined(_M_X64)
    static const auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    static const std::optional<c10::TypedOperatorHandle<OneDnnLinear>> linear =
        handle ? std::make_optional(handle->typed<OneDnnLinear>()) : std::nullopt;
    if (linear && a.device().is_cpu() && a.scalar_type() == at::kFloat && a.size(0) * a.size(1) * b.size(0) >= (1 << 21)) {
        return &*linear;
    }
#endif
    return nullptr;
}

}  // namespace

Tensor product(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias) {
    if (const auto* linear = onednn_linear(a, b)) {
        return linear->call(a, b, bias, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
    }
    return bias ? at::addmm(*bias, a, b.t()) : at::mm(a, b.t());
}

// oneDNN copies a transposed left operand to make it contiguous, so it gets (x^T g)^T, whose left operand x^T is the
// narrower one: 68 ms instead of 95 at the shape above.
Tensor weight_gradient(const Tensor& g, const Tensor& x) {
    if (onednn_linear(g.t(), x.t())) return product(x.t().contiguous(), g.t()).t().contiguous();
    return at::mm(g.t(), x);
}

namespace {

// g^T x from x^T, as weight_gradient computes it (oneDNN's transposed left operand is this x^T).
Tensor weight_gradient_transposed(const Tensor& g, const Tensor& x_transposed) {
    if (onednn_linear(g.t(), x_transposed)) return product(x_transposed, g.t()).t().contiguous();
    return at::mm(g.t(), x_transposed.t());
}

struct CellSpec {
    CellKind kind;
    int64_t gates;
    int64_t saved_width;  // as fused_rnn/cells.py
};

CellSpec cell_spec(std::string_view cell) {
    if (cell == "lstm") return {CellKind::lstm, 4, 5};
    if (cell == "gru") return {CellKind::gru, 3, 4};
    if (cell == "rnn_tanh") return {CellKind::rnn_tanh, 1, 0};
    TORCH_CHECK(cell == "rnn_relu", "cell must be 'lstm', 'gru', 'rnn_tanh' or 'rnn_relu', got '", cell, "'");
    return {CellKind::rnn_relu, 1, 0};
}

void check_tensor(const char* name, const Tensor& t, const Tensor& input, at::IntArrayRef shape,
                  std::optional<at::ScalarType> dtype = std::nullopt) {
    TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == dtype.value_or(input.scalar_type()) && t.device() == input.device(), name,
                " must have dtype ", dtype.value_or(input.scalar_type()), " and input's device");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// The dtype of the math and of what is carried or saved in it (the LSTM's cell state, the saved activations):
// float32 for float16/bfloat16/float32 storage, float64 for float64, as the Triton driver's.
at::ScalarType math_dtype(const Tensor& input) {
    return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fused_rnn math_dtype",
                                           [] { return c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value; });
}

SequenceShape sequence_shape(std::string_view cell, const Tensor& input, const Tensor& h0, const Tensor& weight_hh,
                             const std::optional<Tensor>& weight_hr, at::OptionalIntArrayRef batch_sizes,
                             bool reverse) {
    const CellSpec spec = cell_spec(cell);
    TORCH_CHECK(input.dim() == 2 && h0.dim() == 2 && weight_hh.dim() == 2,
                "input, h0 and weight_hh must be 2-D (rows, features)");
    const bool cpu_dtype = input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble;
    const bool cuda_dtype = cpu_dtype || input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
    TORCH_CHECK(input.is_cuda() ? cuda_dtype : cpu_dtype, "the native kernels run float32 and float64 (and on CUDA ",
                "float16 and bfloat16), got ", input.scalar_type(), " on ", input.device().type());
    SequenceShape shape;
    shape.cell = spec.kind;
    shape.gates = spec.gates;
    shape.saved_width = spec.saved_width;
    shape.batch = h0.size(0);
    shape.hidden = weight_hh.size(0) / spec.gates;
    shape.hidden_out = h0.size(1);
    shape.projected = weight_hr.has_value();
    TORCH_CHECK(weight_hh.size(0) == spec.gates * shape.hidden && weight_hh.size(1) == shape.hidden_out,
                "weight_hh must be (", spec.gates, " * hidden, hidden_out)");
    TORCH_CHECK(shape.projected ? spec.kind == CellKind::lstm : shape.hidden_out == shape.hidden,
                "h0 must have hidden_size columns (proj_size for a projected LSTM)");
    shape.steps = time_steps(input.size(0), shape.batch, batch_sizes, reverse);
    return shape;
}

// Zoneout's keep weights: (N, H_out + H) for the LSTM (h's, then c's), (N, H) for the GRU, in the math dtype.
void check_zoneout(const SequenceShape& shape, const std::optional<Tensor>& zoneout, const Tensor& input) {
    if (!zoneout) return;
    TORCH_CHECK(shape.cell == CellKind::lstm || shape.cell == CellKind::gru, "zoneout is supported for the LSTM and ",
                "GRU only");
    const int64_t width = shape.cell == CellKind::lstm ? shape.hidden_out + shape.hidden : shape.hidden;
    check_tensor("zoneout", *zoneout, input, {input.size(0), width}, math_dtype(input));
}

// Whether every step has all B rows (padded input): then the rows a step reads and writes are plain slices, and
// no row index has to be built on the host and copied to a GPU on every call.
bool every_step_full(const SequenceShape& shape) {
    return std::all_of(shape.steps.begin(), shape.steps.end(),
                       [&](const Step& step) { return step.active == shape.batch; });
}

// The hidden state each row's step started from, (N, H_out): the previous visited step's output row while the
// row was active there, else h0 (as fused_rnn.packing.previous_hidden).
Tensor previous_hidden(const SequenceShape& shape, const Tensor& output, const Tensor& h0) {
    const int64_t N = output.size(0), B = shape.batch;
    if (every_step_full(shape)) {
        const bool forward_in_time = shape.steps.front().offset == 0;
        return forward_in_time ? at::cat({h0, output.slice(0, 0, N - B)}) : at::cat({output.slice(0, B, N), h0});
    }
    std::vector<int64_t> index(N);
    for (size_t s = 0; s < shape.steps.size(); ++s) {
        const Step step = shape.steps[s];
        const Step previous = s > 0 ? shape.steps[s - 1] : Step{0, 0};
        for (int64_t b = 0; b < step.active; ++b) {
            index[step.offset + b] = b < previous.active ? previous.offset + b : N + b;
        }
    }
    return at::cat({output, h0}).index_select(0, at::tensor(index, output.options().dtype(at::kLong)));
}

// previous_hidden(...)^T, (H_out, N) contiguous, for W_hh's gradient: for padded input written straight from h0 and
// the output rows, without the (N, H_out) copy that would then be transposed into another.
Tensor previous_hidden_transposed(const SequenceShape& shape, const Tensor& output, const Tensor& h0) {
    if (!every_step_full(shape)) return previous_hidden(shape, output, h0).t().contiguous();
    const int64_t N = output.size(0), B = shape.batch;
    Tensor transposed = at::empty({output.size(1), N}, output.options());
    if (shape.steps.front().offset == 0) {  // forward in time: row r started from row r - B, the first B from h0
        transposed.slice(1, 0, B).copy_(h0.t());
        transposed.slice(1, B, N).copy_(output.slice(0, 0, N - B).t());
    } else {
        transposed.slice(1, 0, N - B).copy_(output.slice(0, B, N).t());
        transposed.slice(1, N - B, N).copy_(h0.t());
    }
    return transposed;
}

// h_n: for each b, the output row of the last step (in visiting order) that b was active in.
Tensor final_hidden(const SequenceShape& shape, const Tensor& output) {
    if (every_step_full(shape)) {
        const int64_t offset = shape.steps.back().offset;
        return output.slice(0, offset, offset + shape.batch).clone();  // a custom op's outputs must not alias
    }
    std::vector<int64_t> last_row(shape.batch);
    for (const Step step : shape.steps) {
        for (int64_t b = 0; b < step.active; ++b) last_row[b] = step.offset + b;
    }
    return output.index_select(0, at::tensor(last_row, output.options().dtype(at::kLong)));
}

// The input gates the CPU loop holds at once: up to this many bytes' worth of whole steps (at least one step). The
// whole sequence's would double an inference call's memory (torch.nn's oneDNN LSTM needs about half of that).
constexpr int64_t kInputGatesBytes = 8 << 20;

// The CPU loop's raw pointers to the driver's tensors; returns h_n. input_gates_of_rows(first, end): the input
// gates of rows [first, end), computed per batch of steps as the loop reaches them.
Tensor run_forward_cpu(const SequenceShape& shape, const ForwardTensors& tensors, bool save,
                       const std::function<Tensor(int64_t, int64_t)>& input_gates_of_rows) {
    AT_DISPATCH_FLOATING_TYPES(tensors.output.scalar_type(), "fused_rnn sequence_forward", [&] {
        const auto pointer = [](const Tensor& t) { return t.defined() && t.numel() ? t.data_ptr<scalar_t>() : nullptr; };
        ForwardBuffers<scalar_t> buffers{};
        const int64_t step_bytes = shape.batch * shape.gates * shape.hidden * int64_t{sizeof(scalar_t)};
        buffers.steps_per_projection = std::max<int64_t>(1, kInputGatesBytes / step_bytes);
        Tensor current;  // the batch of steps' input gates, kept alive until the next batch replaces it
        buffers.input_gates = [&](int64_t begin, int64_t end) {
            const Step first = shape.steps[begin], last = shape.steps[end - 1];  // in visiting order
            const int64_t first_row = std::min(first.offset, last.offset);
            const int64_t end_row = std::max(first.offset + first.active, last.offset + last.active);
            current = Tensor();  // freed before its successor is allocated
            current = input_gates_of_rows(first_row, end_row);
            return InputGates<scalar_t>{current.data_ptr<scalar_t>(), first_row};
        };
        buffers.bias_hn = pointer(tensors.bias_hn);
        buffers.weight_hh = pointer(tensors.weight_hh);
        buffers.weight_hr = pointer(tensors.weight_hr);
        buffers.h0 = pointer(tensors.h0);
        buffers.cell_state = pointer(tensors.cell_state);
        buffers.output = pointer(tensors.output);
        buffers.saved = pointer(tensors.saved);
        buffers.projection_input = pointer(tensors.projection_input);
        buffers.projection_input_per_row = save;
        buffers.zoneout = pointer(tensors.zoneout);
        recurrent_forward_cpu<scalar_t>(shape, buffers);
    });
    return final_hidden(shape, tensors.output);
}

std::tuple<Tensor, Tensor> run_backward_cpu(const SequenceShape& shape, const BackwardTensors& tensors,
                                            const Tensor& h0) {
    // The CPU loop carries the state gradients in place: grad_h_n / grad_c_n on entry, those of h0 / c0 on exit.
    Tensor grad_h = tensors.grad_h_n.clone();
    Tensor grad_c = tensors.grad_c_n.defined() ? tensors.grad_c_n.clone() : Tensor();
    AT_DISPATCH_FLOATING_TYPES(tensors.output.scalar_type(), "fused_rnn sequence_backward", [&] {
        const auto pointer = [](const Tensor& t) { return t.defined() && t.numel() ? t.data_ptr<scalar_t>() : nullptr; };
        BackwardBuffers<scalar_t> buffers{};
        buffers.grad_output = pointer(tensors.grad_output);
        buffers.grad_output_row_stride = tensors.grad_output.size(0) == 1 ? 0 : shape.hidden_out;
        buffers.grad_h = pointer(grad_h);
        buffers.grad_c = pointer(grad_c);
        buffers.h0 = pointer(h0);
        buffers.output = pointer(tensors.output);
        buffers.saved = pointer(tensors.saved);
        buffers.weight_hh = pointer(tensors.weight_hh);
        buffers.weight_hr = pointer(tensors.weight_hr);
        buffers.grad_input_gates = pointer(tensors.grad_input_gates);
        buffers.grad_hidden_gates = pointer(tensors.grad_hidden_gates);
        buffers.grad_projected = pointer(tensors.grad_projected);
        buffers.zoneout = pointer(tensors.zoneout);
        recurrent_backward_cpu<scalar_t>(shape, buffers);
    });
    return {grad_h, grad_c};
}

// StepLoop: run the CUDA path's per-step loop on CPU tensors too (the ops sequence_*_step_loop, for the CPU tests
// of that path); CUDA tensors always take it.
template <bool StepLoop>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sequence_forward(
    std::string_view cell, const Tensor& input, const Tensor& h0, const std::optional<Tensor>& c0,
    const Tensor& weight_ih, const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, const std::optional<Tensor>& weight_hr,
    at::OptionalIntArrayRef batch_sizes, bool reverse, bool save, const std::optional<Tensor>& zoneout) {
    const SequenceShape shape = sequence_shape(cell, input, h0, weight_hh, weight_hr, batch_sizes, reverse);
    const int64_t N = input.size(0), B = shape.batch, H = shape.hidden, H_out = shape.hidden_out;
    const int64_t G = shape.gates;
    const bool lstm = shape.cell == CellKind::lstm, gru = shape.cell == CellKind::gru;
    check_tensor("input", input, input, {N, weight_ih.size(1)});
    check_tensor("h0", h0, input, {B, H_out});
    check_tensor("weight_ih", weight_ih, input, {G * H, input.size(1)});
    check_tensor("weight_hh", weight_hh, input, {G * H, H_out});
    TORCH_CHECK(c0.has_value() == lstm, "c0 must be given for the LSTM and only for it");
    if (lstm) check_tensor("c0", *c0, input, {B, H});
    if (weight_hr) check_tensor("weight_hr", *weight_hr, input, {H_out, H});
    TORCH_CHECK(bias_ih.has_value() == bias_hh.has_value(), "bias_ih and bias_hh go together");
    check_zoneout(shape, zoneout, input);

    std::optional<Tensor> projection_bias;
    if (bias_ih) {
        check_tensor("bias_ih", *bias_ih, input, {G * H});
        check_tensor("bias_hh", *bias_hh, input, {G * H});
        // b_hh joins the input projection's bias, except the GRU's b_hn, which r multiplies.
        const Tensor folded_hh = gru ? at::cat({bias_hh->slice(0, 0, 2 * H), at::zeros({H}, input.options())})
                                     : *bias_hh;
        projection_bias = bias_ih->add(folded_hh);
    }
    const auto input_gates_of_rows = [&](int64_t first, int64_t end) {
        return product(input.slice(0, first, end), weight_ih, projection_bias);
    };

    const auto options = input.options();
    const auto math_options = options.dtype(math_dtype(input));
    ForwardTensors tensors;
    if (gru && bias_hh) tensors.bias_hn = bias_hh->slice(0, 2 * H);
    tensors.weight_hh = weight_hh;
    if (weight_hr) tensors.weight_hr = *weight_hr;
    tensors.h0 = h0;
    tensors.cell_state = lstm ? c0->to(math_options.dtype(), /*non_blocking=*/false, /*copy=*/true) : Tensor();
    tensors.output = at::empty({N, H_out}, options);
    tensors.saved = at::empty({save && shape.saved_width ? N : 0, shape.saved_width * H}, math_options);
    tensors.projection_input = at::empty({weight_hr ? (save ? N : B) : 0, H}, options);
    if (zoneout) tensors.zoneout = *zoneout;

#ifdef FUSED_RNN_WITH_CUDA
    const bool step_loop = StepLoop || input.is_cuda();
    if (step_loop) tensors.input_gates = input_gates_of_rows(0, N);
    const Tensor h_n = step_loop ? recurrent_forward_steps(shape, tensors)
                                 : run_forward_cpu(shape, tensors, save, input_gates_of_rows);
#else  // only the CPU kernels are registered: no CUDA tensor gets here
    const Tensor h_n = run_forward_cpu(shape, tensors, save, input_gates_of_rows);
#endif
    const Tensor c_n = lstm ? tensors.cell_state.to(input.scalar_type()) : at::empty({0}, options);
    // The projection's input is an output only when saved for the backward; otherwise it was scratch.
    const Tensor projection_input = save ? tensors.projection_input : at::empty({0, H}, options);
    return {tensors.output, h_n, c_n, tensors.saved, projection_input};
}

template <bool StepLoop>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sequence_backward(
    std::string_view cell, const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_c_n,
    const Tensor& input, const Tensor& h0, const std::optional<Tensor>& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& weight_hr, const Tensor& output, const Tensor& saved,
    const Tensor& projection_input, at::OptionalIntArrayRef batch_sizes, bool reverse, const c10::List<bool>& needs_grad,
    const std::optional<Tensor>& zoneout) {
    const SequenceShape shape = sequence_shape(cell, input, h0, weight_hh, weight_hr, batch_sizes, reverse);
    const int64_t N = input.size(0), B = shape.batch, H = shape.hidden, H_out = shape.hidden_out;
    const int64_t G = shape.gates;
    const bool lstm = shape.cell == CellKind::lstm, gru = shape.cell == CellKind::gru;
    TORCH_CHECK(needs_grad.size() == 8, "needs_grad must have 8 entries");
    // The CPU loop also takes one row for all when every row's gradient is the same (an expanded gradient), which
    // then need not be materialized.
    const bool step_loop = StepLoop || input.is_cuda();
    check_tensor("grad_output", grad_output, input, {step_loop || grad_output.size(0) != 1 ? N : 1, H_out});
    check_tensor("grad_h_n", grad_h_n, input, {B, H_out});
    check_tensor("output", output, input, {N, H_out});
    check_tensor("saved", saved, input, {shape.saved_width ? N : 0, shape.saved_width * H}, math_dtype(input));
    check_tensor("weight_hh", weight_hh, input, {G * H, H_out});
    check_tensor("h0", h0, input, {B, H_out});
    TORCH_CHECK(grad_c_n.has_value() == lstm, "grad_c_n must be given for the LSTM and only for it");
    if (lstm) check_tensor("grad_c_n", *grad_c_n, input, {B, H});
    if (weight_hr) {
        check_tensor("weight_hr", *weight_hr, input, {H_out, H});
        check_tensor("projection_input", projection_input, input, {N, H});
    }
    check_zoneout(shape, zoneout, input);

    const auto options = input.options();
    BackwardTensors tensors;
    tensors.grad_output = grad_output;
    tensors.grad_h_n = grad_h_n;
    if (lstm) tensors.grad_c_n = *grad_c_n;
    tensors.output = output;
    tensors.saved = saved;
    tensors.weight_hh = weight_hh;
    if (weight_hr) tensors.weight_hr = *weight_hr;
    // The step loop's W_hh gradient reads it, and its GRU kernel; the CPU loop finds h in place, and its W_hh gradient
    // gets it transposed after the loop (previous_hidden_transposed).
    if (step_loop && (needs_grad.get(4) || gru)) tensors.previous_hidden = previous_hidden(shape, output, h0);
    tensors.grad_input_gates = at::empty({N, G * H}, options);
    // Only the GRU's gradients of the input and hidden projections differ (n = tanh(x_n + r * h_n)); the CPU loop
    // keeps its hidden side's for two steps only (BackwardBuffers::grad_hidden_gates).
    tensors.grad_hidden_gates = !gru ? tensors.grad_input_gates : at::empty({step_loop ? N : 2 * B, G * H}, options);
    if (weight_hr) tensors.grad_projected = at::empty({N, H_out}, options);
    if (zoneout) tensors.zoneout = *zoneout;

#ifdef FUSED_RNN_WITH_CUDA
    const auto [grad_h0, grad_c0] =
        step_loop ? recurrent_backward_steps(shape, tensors) : run_backward_cpu(shape, tensors, h0);
#else
    const auto [grad_h0, grad_c0] = run_backward_cpu(shape, tensors, h0);
#endif

    // In needs_grad's order: input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr; only those asked for.
    // The input side's first: after them the CPU loop's GRU turns grad_input_gates into the hidden side's in place.
    const Tensor& grad_input_gates = tensors.grad_input_gates;
    const auto none = [&] { return at::empty({0}, options); };
    const auto wanted = [&](int i, auto compute) { return needs_grad.get(i) ? compute() : none(); };
    Tensor grad_input = wanted(0, [&] { return product(grad_input_gates, weight_ih.t()); });
    Tensor grad_weight_ih = wanted(3, [&] { return weight_gradient(grad_input_gates, input); });
    Tensor grad_bias_ih = wanted(5, [&] { return grad_input_gates.sum(0); });
    Tensor grad_hidden_gates = tensors.grad_hidden_gates;
    if (gru && !step_loop && (needs_grad.get(4) || needs_grad.get(6))) {
        grad_input_gates.slice(1, 2 * H, 3 * H).mul_(saved.slice(1, 0, H));  // the n block times r
        grad_hidden_gates = grad_input_gates;
    }
    Tensor grad_weight_hh = wanted(4, [&] {
        return step_loop ? weight_gradient(grad_hidden_gates, tensors.previous_hidden)
                         : weight_gradient_transposed(grad_hidden_gates, previous_hidden_transposed(shape, output, h0));
    });
    return {
        grad_input,
        wanted(1, [&] { return grad_h0; }),
        wanted(2, [&] { return grad_c0; }),
        grad_weight_ih,
        grad_weight_hh,
        grad_bias_ih,
        wanted(6, [&] { return grad_hidden_gates.sum(0); }),
        wanted(7, [&] { return weight_gradient(tensors.grad_projected, projection_input); }),
    };
}

}  // namespace
}  // namespace fused_rnn

namespace {
constexpr const char* kForwardSignature =
    "(str cell, Tensor input, Tensor h0, Tensor? c0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
    "Tensor? bias_hh, Tensor? weight_hr, int[]? batch_sizes, bool reverse, bool save, Tensor? zoneout=None) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)";
constexpr const char* kBackwardSignature =
    "(str cell, Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, Tensor input, Tensor h0, Tensor? c0, "
    "Tensor weight_ih, Tensor weight_hh, Tensor? weight_hr, Tensor output, Tensor saved, Tensor projection_input, "
    "int[]? batch_sizes, bool reverse, bool[] needs_grad, Tensor? zoneout=None) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";
}  // namespace

TORCH_LIBRARY(fused_rnn_native, m) {
    m.def((std::string("sequence_forward") + kForwardSignature).c_str());
    m.def((std::string("sequence_backward") + kBackwardSignature).c_str());
    // The driver's GEMMs (oneDNN for large float32 on x86-64), for the other fused ops' CPU paths (IndRNN's).
    m.def("product(Tensor a, Tensor b, Tensor? bias) -> Tensor");  // a b^T (+ bias)
    m.def("weight_gradient(Tensor g, Tensor x) -> Tensor");         // g^T x
#ifdef FUSED_RNN_WITH_CUDA
    // The CUDA path's step loop on CPU tensors, its kernels' bodies run on the host: for the CPU tests of that path.
    m.def((std::string("sequence_forward_step_loop") + kForwardSignature).c_str());
    m.def((std::string("sequence_backward_step_loop") + kBackwardSignature).c_str());
#endif
}

TORCH_LIBRARY_IMPL(fused_rnn_native, CPU, m) {
    m.impl("sequence_forward", &fused_rnn::sequence_forward<false>);
    m.impl("sequence_backward", &fused_rnn::sequence_backward<false>);
    m.impl("product", [](const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
        return fused_rnn::product(a, b, bias);
    });
    m.impl("weight_gradient", &fused_rnn::weight_gradient);
#ifdef FUSED_RNN_WITH_CUDA
    m.impl("sequence_forward_step_loop", &fused_rnn::sequence_forward<true>);
    m.impl("sequence_backward_step_loop", &fused_rnn::sequence_backward<true>);
#endif
}

#ifdef FUSED_RNN_WITH_CUDA
// The same driver serves CUDA tensors: only its recurrent loop differs by device.
TORCH_LIBRARY_IMPL(fused_rnn_native, CUDA, m) {
    m.impl("sequence_forward", &fused_rnn::sequence_forward<false>);
    m.impl("sequence_backward", &fused_rnn::sequence_backward<false>);
}
#endif

// A Python module with nothing in it: importing it loads the library, whose static initialisers register the ops
// above (torch.ops.fused_rnn_native). Plain C API rather than pybind11, which would add a minute to the build.
#define FUSED_RNN_CONCAT(a, b) a##b
#define FUSED_RNN_MODULE_INIT(name) FUSED_RNN_CONCAT(PyInit_, name)
#define FUSED_RNN_STRING(name) #name
#define FUSED_RNN_NAME(name) FUSED_RNN_STRING(name)

static PyModuleDef fused_rnn_module = {
    PyModuleDef_HEAD_INIT, FUSED_RNN_NAME(TORCH_EXTENSION_NAME),
    "fused_rnn's compiled kernels; they are the torch ops torch.ops.fused_rnn_native.*", -1, nullptr};

// with_cuda tells Python whether this build has the CUDA kernels (fused_rnn.backends.native.built_with_cuda), and
// cpu_instruction_set which build of the CPU recurrence runs (fused_rnn.backends.native.cpu_instruction_set).
PyMODINIT_FUNC FUSED_RNN_MODULE_INIT(TORCH_EXTENSION_NAME)(void) {
    PyObject* module = PyModule_Create(&fused_rnn_module);
#ifdef FUSED_RNN_WITH_CUDA
    constexpr long with_cuda = 1;
#else
    constexpr long with_cuda = 0;
#endif
    if (module != nullptr && (PyModule_AddIntConstant(module, "with_cuda", with_cuda) != 0 ||
                              PyModule_AddStringConstant(module, "cpu_instruction_set",
                                                         fused_rnn::cpu_instruction_set()) != 0)) {
        Py_DECREF(module);
        return nullptr;
    }
    return module;
}
