// The persistent whole-sequence forward and backward, as plain CUDA launchers over raw device pointers (no ATen),
// so that forward.cu and backward.cu compile standalone with nvcc and the torch binding stays a thin shim.
#pragma once

#include <cuda_runtime.h>

#include "partition.h"

namespace fused_rnn {
namespace persistent {

enum class CellKind : int { kLstm = 0, kGru = 1 };
enum class Dtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One direction of one layer. Element types: the storage dtype unless stated; every tensor contiguous.
struct ForwardArgs {
    const void* input_gates;  // [rows, gates * hidden]: x W_ih^T + b_ih of every step, one GEMM before the launch
    const void* weight_hh;    // [gates * hidden, hidden]
    const void* bias_hh;      // [gates * hidden], or null
    const void* h0;           // [batch, hidden]
    const void* c0;           // [batch, hidden] (LSTM), else null
    const int* step_rows;     // device [steps, 2] (row offset, active batch) of packed input, or null for padded
    void* h_exchange;         // [2, batch, hidden] scratch: h of the step before, by step parity
    void* output;             // [rows, hidden]
    void* h_n;                // [batch, hidden]
    void* c_n;                // [batch, hidden] (LSTM), else null
    float* saved;             // [rows, saved_width * hidden] activations for the backward, or null
    int steps, batch, hidden;
    bool reverse;
};

// One direction of one layer, backward, on the forward's saved activations. The weight, bias and input gradients
// are GEMMs over all rows afterwards (the caller's); this walks the steps and writes the gate gradients.
struct BackwardArgs {
    const float* saved;        // [rows, saved_width * hidden] from the forward (fused_rnn/cells.py's layout)
    const void* grad_output;   // [rows, hidden]
    const void* grad_h_n;      // [batch, hidden]
    const void* grad_c_n;      // [batch, hidden] (LSTM), else null
    const void* h_prev;        // [rows, hidden]: the h each row's step started from (GRU), else null
    const void* weight_hh;     // [gates * hidden, hidden]
    const int* step_rows;      // as ForwardArgs
    float* grad_exchange;      // [2, batch, gates * hidden] scratch: the gate gradients of the step before
    void* grad_input_gates;    // [rows, gates * hidden]: gradient of x W_ih^T + b_ih
    void* grad_hidden_gates;   // [rows, gates * hidden]: gradient of h W_hh^T + b_hh (GRU); the LSTM's are the above
    void* grad_h0;             // [batch, hidden]
    void* grad_c0;             // [batch, hidden] (LSTM), else null
    int steps, batch, hidden;
    bool reverse;
};

// The current device's limits as the capacity model takes them.
cudaError_t current_device_limits(DeviceLimits* limits);

// Launches the forward on `stream`. Returns cudaErrorInvalidConfiguration when the partition does not fit the
// device (see plan()) and cudaErrorCooperativeLaunchTooLarge when its CTAs cannot all be resident at once:
// callers check plan() first; these are the last guard against a grid barrier that would never complete.
cudaError_t forward(CellKind cell, Dtype dtype, const ForwardArgs& args, cudaStream_t stream);

// Launches the backward on `stream`; errors as forward's, against plan_backward().
cudaError_t backward(CellKind cell, Dtype dtype, const BackwardArgs& args, cudaStream_t stream);

}  // namespace persistent
}  // namespace fused_rnn
