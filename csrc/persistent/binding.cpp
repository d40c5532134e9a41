// The persistent kernels as torch ops (fused_rnn_native::persistent_forward, persistent_backward,
// persistent_device_limits): argument checks and raw pointers around the plain-CUDA launchers of launch.h. The
// Python driver (fused_rnn/backends/persistent.py) does the GEMMs and allocates the outputs; these only launch.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <string_view>
#include <vector>

#include "launch.h"

namespace fused_rnn {
namespace persistent {
namespace {

using at::Tensor;

const void* data_or_null(const std::optional<Tensor>& t) {
    return t.has_value() && t->numel() ? t->data_ptr() : nullptr;
}

Dtype dtype_of(const Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat: return Dtype::kFloat32;
        case at::kHalf: return Dtype::kFloat16;
        case at::kBFloat16: return Dtype::kBFloat16;
        default: TORCH_CHECK(false, "the persistent kernels run float32, float16 and bfloat16, got ", t.scalar_type());
    }
}

void check_tensor(const char* name, const Tensor& t, const Tensor& like, at::IntArrayRef shape,
                  std::optional<at::ScalarType> dtype = std::nullopt) {
    TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == dtype.value_or(like.scalar_type()) && t.device() == like.device(), name,
                " must have dtype ", dtype.value_or(like.scalar_type()), " and the device of input_gates");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Writes output, h_n, c_n (LSTM) and saved (when it has rows) of one direction of one layer; h_exchange is
// scratch. step_rows: int32 [steps, 2] (row offset, active batch) of packed input, absent for padded input; its
// contents are not checked here (that would copy them to the host): the Python driver builds them from batch_sizes
// that fused_rnn.functional validated.
void persistent_forward(std::string_view cell, const Tensor& input_gates, const Tensor& weight_hh,
                        const std::optional<Tensor>& bias_hh, const Tensor& h0, const std::optional<Tensor>& c0,
                        const std::optional<Tensor>& step_rows, bool reverse, const Tensor& output, const Tensor& h_n,
                        const Tensor& c_n, const Tensor& saved, const Tensor& h_exchange) {
    const bool lstm = cell == "lstm";
    TORCH_CHECK(lstm || cell == "gru", "the persistent kernels run 'lstm' and 'gru', got '", cell, "'");
    const int64_t gates = lstm ? 4 : 3, saved_width = lstm ? 5 : 4;
    TORCH_CHECK(input_gates.is_cuda() && input_gates.dim() == 2 && h0.dim() == 2,
                "input_gates and h0 must be 2-D CUDA tensors");
    const int64_t rows = input_gates.size(0), batch = h0.size(0), hidden = h0.size(1);
    TORCH_CHECK(batch > 0 && hidden > 0, "batch and hidden must be positive");
    int64_t steps = rows / batch;
    if (step_rows.has_value()) {
        steps = step_rows->size(0);
        check_tensor("step_rows", *step_rows, input_gates, {steps, 2}, at::kInt);
    } else {
        TORCH_CHECK(rows % batch == 0, "input_gates rows must be steps * batch");
    }
    dtype_of(input_gates);
    check_tensor("input_gates", input_gates, input_gates, {rows, gates * hidden});
    check_tensor("weight_hh", weight_hh, input_gates, {gates * hidden, hidden});
    if (bias_hh.has_value()) check_tensor("bias_hh", *bias_hh, input_gates, {gates * hidden});
    check_tensor("h0", h0, input_gates, {batch, hidden});
    TORCH_CHECK(c0.has_value() == lstm, "c0 must be given for the LSTM and only for it");
    if (lstm) {
        check_tensor("c0", *c0, input_gates, {batch, hidden});
        check_tensor("c_n", c_n, input_gates, {batch, hidden});
    }
    check_tensor("output", output, input_gates, {rows, hidden});
    check_tensor("h_n", h_n, input_gates, {batch, hidden});
    check_tensor("h_exchange", h_exchange, input_gates, {2, batch, hidden});
    if (saved.numel()) check_tensor("saved", saved, input_gates, {rows, saved_width * hidden}, at::kFloat);
    TORCH_CHECK(rows < (int64_t{1} << 31), "input_gates has too many rows for the kernel's 32-bit row offsets");

    const c10::cuda::CUDAGuard guard(input_gates.device());
    ForwardArgs args{};
    args.input_gates = input_gates.data_ptr();
    args.weight_hh = weight_hh.data_ptr();
    args.bias_hh = data_or_null(bias_hh);
    args.h0 = h0.data_ptr();
    args.c0 = data_or_null(c0);
    args.step_rows = step_rows.has_value() ? step_rows->data_ptr<int>() : nullptr;
    args.h_exchange = h_exchange.data_ptr();
    args.output = output.data_ptr();
    args.h_n = h_n.data_ptr();
    args.c_n = lstm ? c_n.data_ptr() : nullptr;
    args.saved = saved.numel() ? saved.data_ptr<float>() : nullptr;
    args.steps = static_cast<int>(steps);
    args.batch = static_cast<int>(batch);
    args.hidden = static_cast<int>(hidden);
    args.reverse = reverse;
    const cudaError_t error = forward(lstm ? CellKind::kLstm : CellKind::kGru, dtype_of(input_gates), args,
                                      c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(error == cudaSuccess, "the persistent forward did not launch: ", cudaGetErrorString(error),
                " (fused_rnn.backends.persistent.plan says whether a configuration fits)");
}

// Writes the gate gradients of every row (grad_hidden_gates only for the GRU: the LSTM's are grad_input_gates) and
// the gradients of h0 and c0 (LSTM); grad_exchange is scratch. h_prev: the h each row's step started from (GRU).
void persistent_backward(std::string_view cell, const Tensor& saved, const Tensor& grad_output, const Tensor& grad_h_n,
                         const std::optional<Tensor>& grad_c_n, const std::optional<Tensor>& h_prev,
                         const Tensor& weight_hh, const std::optional<Tensor>& step_rows, bool reverse,
                         const Tensor& grad_input_gates, const Tensor& grad_hidden_gates, const Tensor& grad_h0,
                         const Tensor& grad_c0, const Tensor& grad_exchange) {
    const bool lstm = cell == "lstm";
    TORCH_CHECK(lstm || cell == "gru", "the persistent kernels run 'lstm' and 'gru', got '", cell, "'");
    const int64_t gates = lstm ? 4 : 3, saved_width = lstm ? 5 : 4;
    TORCH_CHECK(grad_output.is_cuda() && grad_output.dim() == 2 && grad_h_n.dim() == 2,
                "grad_output and grad_h_n must be 2-D CUDA tensors");
    const int64_t rows = grad_output.size(0), batch = grad_h_n.size(0), hidden = grad_h_n.size(1);
    TORCH_CHECK(batch > 0 && hidden > 0, "batch and hidden must be positive");
    TORCH_CHECK(rows < (int64_t{1} << 31), "grad_output has too many rows for the kernel's 32-bit row offsets");
    int64_t steps = rows / batch;
    if (step_rows.has_value()) {
        steps = step_rows->size(0);
        check_tensor("step_rows", *step_rows, grad_output, {steps, 2}, at::kInt);
    } else {
        TORCH_CHECK(rows % batch == 0, "grad_output rows must be steps * batch");
    }
    dtype_of(grad_output);
    check_tensor("grad_output", grad_output, grad_output, {rows, hidden});
    check_tensor("grad_h_n", grad_h_n, grad_output, {batch, hidden});
    check_tensor("saved", saved, grad_output, {rows, saved_width * hidden}, at::kFloat);
    check_tensor("weight_hh", weight_hh, grad_output, {gates * hidden, hidden});
    check_tensor("grad_input_gates", grad_input_gates, grad_output, {rows, gates * hidden});
    check_tensor("grad_h0", grad_h0, grad_output, {batch, hidden});
    check_tensor("grad_exchange", grad_exchange, grad_output, {2, batch, gates * hidden}, at::kFloat);
    TORCH_CHECK(grad_c_n.has_value() == lstm, "grad_c_n must be given for the LSTM and only for it");
    TORCH_CHECK(h_prev.has_value() == !lstm, "h_prev must be given for the GRU and only for it");
    if (lstm) {
        check_tensor("grad_c_n", *grad_c_n, grad_output, {batch, hidden});
        check_tensor("grad_c0", grad_c0, grad_output, {batch, hidden});
    } else {
        check_tensor("h_prev", *h_prev, grad_output, {rows, hidden});
        check_tensor("grad_hidden_gates", grad_hidden_gates, grad_output, {rows, gates * hidden});
    }

    const c10::cuda::CUDAGuard guard(grad_output.device());
    BackwardArgs args{};
    args.saved = saved.data_ptr<float>();
    args.grad_output = grad_output.data_ptr();
    args.grad_h_n = grad_h_n.data_ptr();
    args.grad_c_n = data_or_null(grad_c_n);
    args.h_prev = data_or_null(h_prev);
    args.weight_hh = weight_hh.data_ptr();
    args.step_rows = step_rows.has_value() ? step_rows->data_ptr<int>() : nullptr;
    args.grad_exchange = grad_exchange.data_ptr<float>();
    args.grad_input_gates = grad_input_gates.data_ptr();
    args.grad_hidden_gates = lstm ? nullptr : grad_hidden_gates.data_ptr();
    args.grad_h0 = grad_h0.data_ptr();
    args.grad_c0 = lstm ? grad_c0.data_ptr() : nullptr;
    args.steps = static_cast<int>(steps);
    args.batch = static_cast<int>(batch);
    args.hidden = static_cast<int>(hidden);
    args.reverse = reverse;
    const cudaError_t error = backward(lstm ? CellKind::kLstm : CellKind::kGru, dtype_of(grad_output), args,
                                       c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(error == cudaSuccess, "the persistent backward did not launch: ", cudaGetErrorString(error),
                " (fused_rnn.backends.persistent.plan_backward says whether a configuration fits)");
}

// [multiprocessors, shared memory per block opt-in, registers per multiprocessor, max threads per block] of CUDA
// device `device`: what the capacity model takes, read as the launcher reads it.
std::vector<int64_t> persistent_device_limits(int64_t device) {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    DeviceLimits limits{};
    const cudaError_t error = current_device_limits(&limits);
    TORCH_CHECK(error == cudaSuccess, "cannot read the limits of CUDA device ", device, ": ",
                cudaGetErrorString(error));
    return {limits.multiprocessors, limits.shared_memory_per_block_optin, limits.registers_per_multiprocessor,
            limits.max_threads_per_block};
}

}  // namespace
}  // namespace persistent
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn_native, m) {
    m.def(
        "persistent_forward(str cell, Tensor input_gates, Tensor weight_hh, Tensor? bias_hh, Tensor h0, Tensor? c0, "
        "Tensor? step_rows, bool reverse, Tensor(a!) output, Tensor(b!) h_n, Tensor(c!) c_n, Tensor(d!) saved, "
        "Tensor(e!) h_exchange) -> ()");
    m.def(
        "persistent_backward(str cell, Tensor saved, Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, "
        "Tensor? h_prev, Tensor weight_hh, Tensor? step_rows, bool reverse, Tensor(a!) grad_input_gates, "
        "Tensor(b!) grad_hidden_gates, Tensor(c!) grad_h0, Tensor(d!) grad_c0, Tensor(e!) grad_exchange) -> ()");
    m.def("persistent_device_limits(int device) -> int[]", &fused_rnn::persistent::persistent_device_limits);
}

TORCH_LIBRARY_IMPL(fused_rnn_native, CUDA, m) {
    m.impl("persistent_forward", &fused_rnn::persistent::persistent_forward);
    m.impl("persistent_backward", &fused_rnn::persistent::persistent_backward);
}
