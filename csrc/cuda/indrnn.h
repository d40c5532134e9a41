// IndRNN's recurrence on CUDA (csrc/cuda/indrnn.cu), for the ops that csrc/cpu/indrnn.cpp registers.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "../sequence.h"

namespace fused_rnn {

// h' = act(projection + u * h) over the steps (in visiting order) of every lane: one CUDA thread per (row, unit)
// walks them all, or on CPU tensors the same lane bodies run in a host loop (for the CPU tests of this path).
// Storage fp16/bf16/fp32/fp64, math and the carried state in fp32 (fp64 for fp64). Returns output (N, H), h_n.
std::tuple<at::Tensor, at::Tensor> indrnn_forward_lanes(const at::Tensor& projection, const at::Tensor& weight_hh,
                                                        const at::Tensor& h0, const std::vector<Step>& steps,
                                                        bool relu);

// The reverse walk: gradients of the pre-activation (N, H), of h0 (B, H) and of u (H,).
std::tuple<at::Tensor, at::Tensor, at::Tensor> indrnn_backward_lanes(const at::Tensor& grad_output,
                                                                     const at::Tensor& grad_h_n,
                                                                     const at::Tensor& output, const at::Tensor& h0,
                                                                     const at::Tensor& weight_hh,
                                                                     const std::vector<Step>& steps, bool relu);

}  // namespace fused_rnn
