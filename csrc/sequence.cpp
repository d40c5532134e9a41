// The C++ sequence driver for one direction of one layer, and its registration as torch ops.
//
// Same algorithm, inputs, outputs and saved layout as the Python driver (fused_rnn/backends/triton/sequence.py),
// so fused_rnn/autograd.py's custom ops can call either and share one autograd formula:
// - forward: the input projection of all steps as one GEMM (both biases folded in, except the GRU's b_hn),
//   then the device's recurrent loop;
// - backward: the device's loop walks the steps in reverse and writes the gate gradients of every row; the
//   input, weight and bias gradients are then single GEMMs / sums over all rows. No atomics.
// The ops are fused_rnn_native::sequence_forward / sequence_backward; Python checks the arguments first
// (fused_rnn/functional.py), the checks here only keep a direct call from reading out of bounds.
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <Python.h>
#include <torch/library.h>

#include <array>
#include <string_view>
#include <tuple>

#include "sequence.h"

namespace fused_rnn {
namespace {

using at::Tensor;

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

void check_tensor(const char* name, const Tensor& t, const Tensor& input, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(), name,
                " must have input's dtype and device");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

SequenceShape sequence_shape(std::string_view cell, const Tensor& input, const Tensor& h0, const Tensor& weight_hh,
                             const std::optional<Tensor>& weight_hr, at::OptionalIntArrayRef batch_sizes,
                             bool reverse) {
    const CellSpec spec = cell_spec(cell);
    TORCH_CHECK(input.dim() == 2 && h0.dim() == 2 && weight_hh.dim() == 2,
                "input, h0 and weight_hh must be 2-D (rows, features)");
    TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
                "the native kernels run float32 and float64, got ", input.scalar_type());
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
    const int64_t rows = input.size(0);
    int64_t offset = 0;
    if (batch_sizes.has_value()) {
        for (const int64_t active : *batch_sizes) {
            TORCH_CHECK(active >= 1 && active <= shape.batch, "batch_sizes must lie in [1, batch]");
            TORCH_CHECK(shape.steps.empty() || active <= shape.steps.back().active,
                        "batch_sizes must not increase");
            shape.steps.push_back({offset, active});
            offset += active;
        }
    } else {
        TORCH_CHECK(rows % shape.batch == 0, "input rows must be steps * batch");
        for (; offset < rows; offset += shape.batch) shape.steps.push_back({offset, shape.batch});
    }
    TORCH_CHECK(offset == rows, "batch_sizes sum to ", offset, " but input has ", rows, " rows");
    TORCH_CHECK(!shape.steps.empty(), "input must have at least one time step");
    if (reverse) std::reverse(shape.steps.begin(), shape.steps.end());
    return shape;
}

// The hidden state each row's step started from, (N, H_out): the previous visited step's output row while the
// row was active there, else h0 (as fused_rnn.packing.previous_hidden).
Tensor previous_hidden(const SequenceShape& shape, const Tensor& output, const Tensor& h0) {
    std::vector<int64_t> index(output.size(0));
    for (size_t s = 0; s < shape.steps.size(); ++s) {
        const Step step = shape.steps[s];
        const Step previous = s > 0 ? shape.steps[s - 1] : Step{0, 0};
        for (int64_t b = 0; b < step.active; ++b) {
            index[step.offset + b] = b < previous.active ? previous.offset + b : output.size(0) + b;
        }
    }
    return at::cat({output, h0}).index_select(0, at::tensor(index, output.options().dtype(at::kLong)));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sequence_forward(
    std::string_view cell, const Tensor& input, const Tensor& h0, const std::optional<Tensor>& c0,
    const Tensor& weight_ih, const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, const std::optional<Tensor>& weight_hr,
    at::OptionalIntArrayRef batch_sizes, bool reverse, bool save) {
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

    Tensor input_gates;
    if (bias_ih) {
        check_tensor("bias_ih", *bias_ih, input, {G * H});
        check_tensor("bias_hh", *bias_hh, input, {G * H});
        // b_hh joins the input projection's bias, except the GRU's b_hn, which r multiplies.
        const Tensor folded_hh = gru ? at::cat({bias_hh->slice(0, 0, 2 * H), at::zeros({H}, input.options())})
                                     : *bias_hh;
        input_gates = at::addmm(bias_ih->add(folded_hh), input, weight_ih.t());
    } else {
        input_gates = at::mm(input, weight_ih.t());
    }

    const auto options = input.options();
    Tensor output = at::empty({N, H_out}, options);
    Tensor c_n = lstm ? c0->clone() : at::empty({0}, options);
    Tensor saved = at::empty({save && shape.saved_width ? N : 0, shape.saved_width * H}, options);
    Tensor projection_input = at::empty({save && weight_hr ? N : 0, H}, options);
    Tensor projection_scratch = weight_hr && !save ? at::empty({B, H}, options) : Tensor();

    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fused_rnn sequence_forward", [&] {
        ForwardBuffers<scalar_t> buffers{};
        buffers.input_gates = input_gates.const_data_ptr<scalar_t>();
        buffers.bias_hn = gru && bias_hh ? bias_hh->const_data_ptr<scalar_t>() + 2 * H : nullptr;
        buffers.weight_hh = weight_hh.const_data_ptr<scalar_t>();
        buffers.weight_hr = weight_hr ? weight_hr->const_data_ptr<scalar_t>() : nullptr;
        buffers.h0 = h0.const_data_ptr<scalar_t>();
        buffers.cell_state = lstm ? c_n.mutable_data_ptr<scalar_t>() : nullptr;
        buffers.output = output.mutable_data_ptr<scalar_t>();
        buffers.saved = saved.size(0) ? saved.mutable_data_ptr<scalar_t>() : nullptr;
        if (weight_hr) {
            buffers.projection_input_per_row = save;
            buffers.projection_input = (save ? projection_input : projection_scratch).mutable_data_ptr<scalar_t>();
        }
        TORCH_CHECK(input.is_cpu(), "fused_rnn's native kernels for ", input.device().type(), " are not built");
        recurrent_forward_cpu<scalar_t>(shape, buffers);
    });

    // h_n[b]: the output row of the last step (in visiting order) that b was active in.
    std::vector<int64_t> last_row(B);
    for (const Step step : shape.steps) {
        for (int64_t b = 0; b < step.active; ++b) last_row[b] = step.offset + b;
    }
    Tensor h_n = output.index_select(0, at::tensor(last_row, options.dtype(at::kLong)));
    return {output, h_n, c_n, saved, projection_input};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sequence_backward(
    std::string_view cell, const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_c_n,
    const Tensor& input, const Tensor& h0, const std::optional<Tensor>& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& weight_hr, const Tensor& output, const Tensor& saved,
    const Tensor& projection_input, at::OptionalIntArrayRef batch_sizes, bool reverse, const c10::List<bool>& needs_grad) {
    const SequenceShape shape = sequence_shape(cell, input, h0, weight_hh, weight_hr, batch_sizes, reverse);
    const int64_t N = input.size(0), B = shape.batch, H = shape.hidden, H_out = shape.hidden_out;
    const int64_t G = shape.gates;
    const bool lstm = shape.cell == CellKind::lstm, gru = shape.cell == CellKind::gru;
    TORCH_CHECK(needs_grad.size() == 8, "needs_grad must have 8 entries");
    check_tensor("grad_output", grad_output, input, {N, H_out});
    check_tensor("grad_h_n", grad_h_n, input, {B, H_out});
    check_tensor("output", output, input, {N, H_out});
    check_tensor("saved", saved, input, {shape.saved_width ? N : 0, shape.saved_width * H});
    check_tensor("weight_hh", weight_hh, input, {G * H, H_out});
    check_tensor("h0", h0, input, {B, H_out});
    TORCH_CHECK(grad_c_n.has_value() == lstm, "grad_c_n must be given for the LSTM and only for it");
    if (lstm) check_tensor("grad_c_n", *grad_c_n, input, {B, H});
    if (weight_hr) {
        check_tensor("weight_hr", *weight_hr, input, {H_out, H});
        check_tensor("projection_input", projection_input, input, {N, H});
    }

    const auto options = input.options();
    Tensor grad_input_gates = at::empty({N, G * H}, options);
    // Only the GRU's gradients of the input and hidden projections differ (n = tanh(x_n + r * h_n)).
    Tensor grad_hidden_gates = gru ? at::empty({N, G * H}, options) : grad_input_gates;
    Tensor grad_h = grad_h_n.clone();
    Tensor grad_c = lstm ? grad_c_n->clone() : Tensor();
    Tensor grad_projected = weight_hr ? at::empty({N, H_out}, options) : Tensor();

    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fused_rnn sequence_backward", [&] {
        BackwardBuffers<scalar_t> buffers{};
        buffers.grad_output = grad_output.const_data_ptr<scalar_t>();
        buffers.grad_h = grad_h.mutable_data_ptr<scalar_t>();
        buffers.grad_c = lstm ? grad_c.mutable_data_ptr<scalar_t>() : nullptr;
        buffers.h0 = h0.const_data_ptr<scalar_t>();
        buffers.output = output.const_data_ptr<scalar_t>();
        buffers.saved = saved.const_data_ptr<scalar_t>();
        buffers.weight_hh = weight_hh.const_data_ptr<scalar_t>();
        buffers.weight_hr = weight_hr ? weight_hr->const_data_ptr<scalar_t>() : nullptr;
        buffers.grad_input_gates = grad_input_gates.mutable_data_ptr<scalar_t>();
        buffers.grad_hidden_gates = grad_hidden_gates.mutable_data_ptr<scalar_t>();
        buffers.grad_projected = weight_hr ? grad_projected.mutable_data_ptr<scalar_t>() : nullptr;
        TORCH_CHECK(input.is_cpu(), "fused_rnn's native kernels for ", input.device().type(), " are not built");
        recurrent_backward_cpu<scalar_t>(shape, buffers);
    });

    // In needs_grad's order: input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr; only those asked for.
    const auto none = [&] { return at::empty({0}, options); };
    const auto wanted = [&](int i, auto compute) { return needs_grad.get(i) ? compute() : none(); };
    return {
        wanted(0, [&] { return at::mm(grad_input_gates, weight_ih); }),
        wanted(1, [&] { return grad_h; }),
        wanted(2, [&] { return grad_c; }),
        wanted(3, [&] { return at::mm(grad_input_gates.t(), input); }),
        wanted(4, [&] { return at::mm(grad_hidden_gates.t(), previous_hidden(shape, output, h0)); }),
        wanted(5, [&] { return grad_input_gates.sum(0); }),
        wanted(6, [&] { return grad_hidden_gates.sum(0); }),
        wanted(7, [&] { return at::mm(grad_projected.t(), projection_input); }),
    };
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY(fused_rnn_native, m) {
    m.def(
        "sequence_forward(str cell, Tensor input, Tensor h0, Tensor? c0, Tensor weight_ih, Tensor weight_hh, "
        "Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_hr, int[]? batch_sizes, bool reverse, bool save) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def(
        "sequence_backward(str cell, Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, Tensor input, Tensor h0, "
        "Tensor? c0, Tensor weight_ih, Tensor weight_hh, Tensor? weight_hr, Tensor output, Tensor saved, "
        "Tensor projection_input, int[]? batch_sizes, bool reverse, bool[] needs_grad) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fused_rnn_native, CPU, m) {
    m.impl("sequence_forward", &fused_rnn::sequence_forward);
    m.impl("sequence_backward", &fused_rnn::sequence_backward);
}

// A Python module with nothing in it: importing it loads the library, whose static initialisers register the ops
// above (torch.ops.fused_rnn_native). Plain C API rather than pybind11, which would add a minute to the build.
#define FUSED_RNN_CONCAT(a, b) a##b
#define FUSED_RNN_MODULE_INIT(name) FUSED_RNN_CONCAT(PyInit_, name)
#define FUSED_RNN_STRING(name) #name
#define FUSED_RNN_NAME(name) FUSED_RNN_STRING(name)

static PyModuleDef fused_rnn_module = {
    PyModuleDef_HEAD_INIT, FUSED_RNN_NAME(TORCH_EXTENSION_NAME),
    "fused_rnn's compiled kernels; they are the torch ops torch.ops.fused_rnn_native.*", -1, nullptr};

PyMODINIT_FUNC FUSED_RNN_MODULE_INIT(TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&fused_rnn_module); }
