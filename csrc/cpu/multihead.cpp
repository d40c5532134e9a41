// The multi-head cells' recurrence on CPU: sLSTM (Beck et al. 2024) and the LSTM and GRU with a block-diagonal
// recurrent weight of `heads` blocks (fused_rnn/multihead). The heads never see each other's state, so each thread
// walks every step for its own heads: no barrier and no atomics. Per step and row a head's gates are its input gates
// (one GEMM over all rows before, in Python) plus h_head W_head^T, then the cell math of csrc/cell_math.h.
// Ops: fused_rnn_native::multihead_recurrence_forward / multihead_recurrence_backward, which run the step loop of
// fused_rnn/multihead/sequence.py (kernel "cpu") with the layouts of its pointwise steps
// (fused_rnn/multihead/torch_steps.py): input gates and their gradients gate-major (gate g of unit j at g * H + j),
// the recurrent part's gradients head-major (head k's G * head_dim values together), saved activations as there.
// float32 and float64; the math runs in the storage type, on at::vec SIMD vectors of a head's units.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../cell_math.h"
#include "../multihead.h"
#include "../sequence.h"
#include "dot.h"
#include "vectorized_activations.h"

namespace fused_rnn {
namespace {

using at::Tensor;

HeadCell head_cell(std::string_view cell) {
    if (cell == "lstm") return HeadCell::lstm;
    if (cell == "gru") return HeadCell::gru;
    TORCH_CHECK(cell == "slstm", "cell must be 'lstm', 'gru' or 'slstm', got '", cell, "'");
    return HeadCell::slstm;
}

// The sizes and the steps of one call; heads * head_dim = hidden.
struct Shape {
    HeadCell cell;
    int64_t batch, hidden, heads, head_dim, gates;
    std::vector<Step> steps;
};

Shape shape_of(std::string_view cell, const Tensor& weight_hh, const Tensor& h0, int64_t rows,
               at::OptionalIntArrayRef batch_sizes, bool reverse) {
    Shape shape{head_cell(cell), h0.size(0), h0.size(1), weight_hh.size(0), weight_hh.size(2), 0, {}};
    shape.gates = gates_of(shape.cell);
    TORCH_CHECK(weight_hh.dim() == 3 && weight_hh.size(1) == shape.gates * shape.head_dim &&
                    shape.heads * shape.head_dim == shape.hidden,
                "weight_hh must be (heads, gates * head_dim, head_dim) with heads * head_dim = hidden");
    shape.steps = time_steps(rows, shape.batch, batch_sizes, reverse);
    return shape;
}

void check(const char* name, const Tensor& t, const Tensor& like, std::initializer_list<int64_t> sizes) {
    TORCH_CHECK(t.sizes() == at::IntArrayRef(sizes), name, " must have shape ", at::IntArrayRef(sizes), ", got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device() && t.is_contiguous(), name,
                " must be a contiguous tensor with the input gates' dtype and device");
}

// Threads take whole heads; below this many multiply-adds per head and step, one thread does all.
constexpr int64_t kHeadWorkPerThread = 1 << 14;

template <typename Body>
void for_each_head(const Shape& shape, const Body& body) {
    const int64_t work = shape.batch * shape.gates * shape.head_dim * shape.head_dim;
    at::parallel_for(0, shape.heads, std::max<int64_t>(1, kHeadWorkPerThread / std::max<int64_t>(1, work)), body);
}

template <typename T>
struct ForwardPointers {
    const T *input_gates, *weight_hh, *bias_hh;
    T *h, *c, *n, *m, *output, *saved;
};

// products[b][r] = sum_k h[b * H + k] W[r][k] for rows b < rows and r < R (W: [R][D]). Whole tiles of kTileRows
// rows read W^T packed as transposed[k][r] (null below kTileRows rows): a register tile of kTileRows rows by
// kTileVectors SIMD vectors of r, each weight vector loaded once per tile and k and each h value broadcast once, so
// that no sum needs a horizontal reduction. The other rows take one dot product per row of W, read in place.
constexpr int kTileRows = 4, kTileVectors = 2;

template <typename T>
void head_products(const T* weight, const T* transposed, const T* h, int64_t H, int64_t rows, int64_t D, int64_t R,
                   T* products) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t U = Vec::size();
    const int64_t tiled = transposed ? rows / kTileRows * kTileRows : 0;
    for (int64_t b0 = 0; b0 < tiled; b0 += kTileRows) {
        for (int64_t r0 = 0; r0 < R; r0 += kTileVectors * U) {
            int lanes[kTileVectors];
            for (int j = 0; j < kTileVectors; ++j) {
                lanes[j] = static_cast<int>(std::clamp<int64_t>(R - r0 - j * U, 0, U));
            }
            Vec sums[kTileRows][kTileVectors];
            for (auto& row : sums) {
                for (Vec& sum : row) sum = Vec(T(0));
            }
            for (int64_t k = 0; k < D; ++k) {
                Vec w[kTileVectors];
                for (int j = 0; j < kTileVectors; ++j) w[j] = Vec::loadu(transposed + k * R + r0 + j * U, lanes[j]);
                for (int i = 0; i < kTileRows; ++i) {
                    const Vec x(h[(b0 + i) * H + k]);
                    for (int j = 0; j < kTileVectors; ++j) sums[i][j] = at::vec::fmadd(x, w[j], sums[i][j]);
                }
            }
            for (int i = 0; i < kTileRows; ++i) {
                for (int j = 0; j < kTileVectors; ++j) {
                    if (lanes[j] > 0) sums[i][j].store(products + (b0 + i) * R + r0 + j * U, lanes[j]);
                }
            }
        }
    }
    for (int64_t b = tiled; b < rows; ++b) {
        for (int64_t r = 0; r < R; ++r) products[b * R + r] = dot(weight + r * D, h + b * H, D);
    }
}

template <typename T>
void forward(const Shape& shape, const ForwardPointers<T>& p, bool exp_forget) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t W = Vec::size();
    const int64_t H = shape.hidden, D = shape.head_dim, G = shape.gates, SW = saved_width(shape.cell);
    for_each_head(shape, [&](int64_t first, int64_t end) {
        std::vector<T> products(shape.batch * G * D);  // h_head W_head^T of each active row, gate-blocked
        // The head's W^T, packed once per call where some step has a whole tile of rows.
        std::vector<T> transposed(shape.batch >= kTileRows ? D * G * D : 0);
        for (int64_t head = first; head < end; ++head) {
            const T* weight = p.weight_hh + head * G * D * D;
            for (int64_t r = 0; r < G * D && !transposed.empty(); ++r) {
                for (int64_t k = 0; k < D; ++k) transposed[k * G * D + r] = weight[r * D + k];
            }
            for (const Step step : shape.steps) {
                // Every active row's product before any row's h changes below.
                head_products(weight, transposed.empty() ? nullptr : transposed.data(), p.h + head * D, H,
                              step.active, D, G * D, products.data());
                for (int64_t b = 0; b < step.active; ++b) {
                    const int64_t row = step.offset + b;
                    T* h = p.h + b * H + head * D;  // this head's units of row b, updated in place
                    const T* recurrent = products.data() + b * G * D;
                    T* out = p.output + row * H + head * D;
                    // One SIMD vector of the head's units at a time: units j = head * D + u, u in [u0, u0 + count).
                    for (int64_t u0 = 0; u0 < D; u0 += W) {
                        const int count = static_cast<int>(std::min<int64_t>(W, D - u0));
                        const int64_t j = head * D + u0, state = b * H + j;
                        const auto load = [&](const T* at) { return Vec::loadu(at, count); };
                        const T* xg = p.input_gates + row * G * H + j;
                        Vec pre[4];
                        for (int64_t g = 0; g < G; ++g) {
                            pre[g] = load(&recurrent[g * D + u0]);
                            if (p.bias_hh) pre[g] = pre[g] + load(p.bias_hh + g * H + j);
                        }
                        T* saved = p.saved ? p.saved + row * SW * H + j : nullptr;
                        const auto save = [&](std::initializer_list<Vec> values) {
                            int k = 0;
                            for (const Vec& value : values) value.store(saved + (k++) * H, count);
                        };
                        if (shape.cell == HeadCell::lstm) {
                            const Vec c_prev = load(p.c + state);
                            const auto s = lstm_forward<Vec>(load(xg) + pre[0], load(xg + H) + pre[1],
                                                             load(xg + 2 * H) + pre[2], load(xg + 3 * H) + pre[3], c_prev);
                            if (saved) save({s.i, s.f, s.g, s.o, c_prev});
                            s.c.store(p.c + state, count);
                            s.h.store(out + u0, count);
                        } else if (shape.cell == HeadCell::gru) {
                            const auto s = gru_forward<Vec>(load(xg) + pre[0], load(xg + H) + pre[1], load(xg + 2 * H),
                                                            pre[2], load(h + u0));
                            if (saved) save({s.r, s.z, s.n, pre[2]});
                            s.h.store(out + u0, count);
                        } else {
                            const Vec pre_i = load(xg) + pre[0], pre_f = load(xg + H) + pre[1];
                            const Vec pre_z = load(xg + 2 * H) + pre[2], pre_o = load(xg + 3 * H) + pre[3];
                            const Vec c_prev = load(p.c + state), n_prev = load(p.n + state), m_prev = load(p.m + state);
                            if (saved) save({pre_i, pre_f, pre_z, pre_o, c_prev, n_prev, m_prev});
                            const auto s = slstm_forward<Vec>(pre_i, pre_f, pre_z, pre_o, c_prev, n_prev, m_prev,
                                                              exp_forget);
                            s.c.store(p.c + state, count);
                            s.n.store(p.n + state, count);
                            s.m.store(p.m + state, count);
                            s.h.store(out + u0, count);
                        }
                    }
                    // After every unit's gates: they read the old h.
                    std::copy(out, out + D, h);
                }
            }
        }
    });
}

template <typename T>
struct BackwardPointers {
    const T *grad_output, *output, *saved, *previous_hidden, *weight_hh;
    T *dh, *dc, *dn, *dm;  // carried: dh (B, H) in and out; dc/dn/dm the sLSTM's and LSTM's (dc), GRU's direct part
    T *grad_input_gates, *grad_hidden_gates;
};

template <typename T>
void backward(const Shape& shape, const BackwardPointers<T>& p, bool exp_forget) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t W = Vec::size();
    const int64_t H = shape.hidden, D = shape.head_dim, G = shape.gates, SW = saved_width(shape.cell);
    for_each_head(shape, [&](int64_t first, int64_t end) {
        for (int64_t head = first; head < end; ++head) {
            const T* weight = p.weight_hh + head * G * D * D;
            for (auto step = shape.steps.rbegin(); step != shape.steps.rend(); ++step) {
                for (int64_t b = 0; b < step->active; ++b) {
                    const int64_t row = step->offset + b;
                    T* dgh = p.grad_hidden_gates + row * G * H + head * G * D;  // head-major
                    T* dh = p.dh + b * H + head * D;
                    for (int64_t u0 = 0; u0 < D; u0 += W) {
                        const int count = static_cast<int>(std::min<int64_t>(W, D - u0));
                        const int64_t j = head * D + u0, state = b * H + j;
                        const auto load = [&](const T* at) { return Vec::loadu(at, count); };
                        const T* saved = p.saved + row * SW * H + j;
                        const auto at = [&](int k) { return load(saved + k * H); };
                        const Vec d_out = load(dh + u0) + load(p.grad_output + row * H + j);
                        Vec grads[4], hidden_n;
                        if (shape.cell == HeadCell::lstm) {
                            const auto d = lstm_backward<Vec>(at(0), at(1), at(2), at(3), at(4), d_out,
                                                              load(p.dc + state));
                            grads[0] = d.pre_i, grads[1] = d.pre_f, grads[2] = d.pre_g, grads[3] = d.pre_o;
                            d.c_prev.store(p.dc + state, count);
                        } else if (shape.cell == HeadCell::gru) {
                            // dc holds the part of h's gradient that skipped W_hh at the later step.
                            const auto d = gru_backward<Vec>(at(0), at(1), at(2), at(3),
                                                             load(p.previous_hidden + row * H + j),
                                                             d_out + load(p.dc + state));
                            grads[0] = d.pre_r, grads[1] = d.pre_z, grads[2] = d.x_n;
                            hidden_n = d.h_n;
                            d.h_prev.store(p.dc + state, count);
                        } else {
                            const auto d = slstm_backward<Vec>(at(0), at(1), at(2), at(3), at(4), at(5), at(6), d_out,
                                                               load(p.dc + state), load(p.dn + state),
                                                               load(p.dm + state), exp_forget);
                            grads[0] = d.pre_i, grads[1] = d.pre_f, grads[2] = d.pre_z, grads[3] = d.pre_o;
                            d.c_prev.store(p.dc + state, count);
                            d.n_prev.store(p.dn + state, count);
                            d.m_prev.store(p.dm + state, count);
                        }
                        for (int64_t g = 0; g < G; ++g) {
                            grads[g].store(p.grad_input_gates + row * G * H + g * H + j, count);
                            const bool gru_n = shape.cell == HeadCell::gru && g == 2;  // r times the input one
                            (gru_n ? hidden_n : grads[g]).store(dgh + g * D + u0, count);
                        }
                    }
                    // The gradient reaching this head's h at the step before: dgh_head W_head, after every unit
                    // above has read dh.
                    std::fill(dh, dh + D, T(0));
                    for (int64_t r = 0; r < G * D; ++r) {
                        const T d = dgh[r];
                        const T* w = weight + r * D;
                        for (int64_t k = 0; k < D; ++k) dh[k] += d * w[k];
                    }
                }
            }
        }
    });
}

// Returns output (N, H), the final h, c, n, m (those the cell has; others empty) and the saved activations.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> multihead_recurrence_forward(
    std::string_view cell, const Tensor& input_gates, const Tensor& weight_hh, const std::optional<Tensor>& bias_hh,
    const Tensor& h0, const std::optional<Tensor>& c0, const std::optional<Tensor>& n0,
    const std::optional<Tensor>& m0, at::OptionalIntArrayRef batch_sizes, bool reverse, bool save, bool exp_forget) {
    const int64_t N = input_gates.size(0);
    const Shape shape = shape_of(cell, weight_hh, h0, N, batch_sizes, reverse);
    const int64_t B = shape.batch, H = shape.hidden;
    check("input_gates", input_gates, input_gates, {N, shape.gates * H});
    check("weight_hh", weight_hh, input_gates, {shape.heads, shape.gates * shape.head_dim, shape.head_dim});
    check("h0", h0, input_gates, {B, H});
    if (bias_hh) check("bias_hh", *bias_hh, input_gates, {shape.gates * H});
    const bool has_c = shape.cell != HeadCell::gru, has_nm = shape.cell == HeadCell::slstm;
    TORCH_CHECK(c0.has_value() == has_c && n0.has_value() == has_nm && m0.has_value() == has_nm,
                "give c0 for the LSTM and the sLSTM, n0 and m0 for the sLSTM, and nothing else");
    const auto carried = [&](const std::optional<Tensor>& s, const char* name) {
        if (!s) return at::empty({0}, input_gates.options());
        check(name, *s, input_gates, {B, H});
        return s->clone();
    };
    Tensor h = h0.clone(), c = carried(c0, "c0"), n = carried(n0, "n0"), m = carried(m0, "m0");
    Tensor output = at::empty({N, H}, input_gates.options());
    Tensor saved = at::empty({save ? N : 0, saved_width(shape.cell) * H}, input_gates.options());
    AT_DISPATCH_FLOATING_TYPES(input_gates.scalar_type(), "multihead_recurrence_forward", [&] {
        const ForwardPointers<scalar_t> pointers{
            input_gates.data_ptr<scalar_t>(), weight_hh.data_ptr<scalar_t>(), data_or_null<scalar_t>(bias_hh),
            h.data_ptr<scalar_t>(), data_or_null<scalar_t>(c), data_or_null<scalar_t>(n), data_or_null<scalar_t>(m),
            output.data_ptr<scalar_t>(), save ? saved.data_ptr<scalar_t>() : nullptr};
        forward<scalar_t>(shape, pointers, exp_forget);
    });
    return {output, h, c, n, m, saved};
}

// Returns the gradients of the input gates (N, G * H) gate-major, of the recurrent part (N, G * H) head-major, and
// of h0, c0, n0, m0 (those the cell has; others empty). The GRU's recurrent n block is r times the input one.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> multihead_recurrence_backward(
    std::string_view cell, const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_c_n,
    const std::optional<Tensor>& grad_n_n, const std::optional<Tensor>& grad_m_n, const Tensor& output,
    const Tensor& saved, const Tensor& previous_hidden, const Tensor& weight_hh, at::OptionalIntArrayRef batch_sizes,
    bool reverse, bool exp_forget) {
    const int64_t N = output.size(0);
    const Shape shape = shape_of(cell, weight_hh, grad_h_n, N, batch_sizes, reverse);
    const int64_t B = shape.batch, H = shape.hidden, G = shape.gates;
    check("grad_output", grad_output, output, {N, H});
    check("grad_h_n", grad_h_n, output, {B, H});
    check("saved", saved, output, {N, saved_width(shape.cell) * H});
    check("previous_hidden", previous_hidden, output, {N, H});
    check("weight_hh", weight_hh, output, {shape.heads, G * shape.head_dim, shape.head_dim});
    const bool has_c = shape.cell != HeadCell::gru, has_nm = shape.cell == HeadCell::slstm;
    TORCH_CHECK(grad_c_n.has_value() == has_c && grad_n_n.has_value() == has_nm && grad_m_n.has_value() == has_nm,
                "give grad_c_n for the LSTM and the sLSTM, grad_n_n and grad_m_n for the sLSTM, and nothing else");
    const auto carried = [&](const std::optional<Tensor>& g, const char* name) {
        if (!g) return at::empty({0}, output.options());
        check(name, *g, output, {B, H});
        return g->clone();
    };
    Tensor dh = grad_h_n.clone();
    // The GRU carries the part of h's gradient that skips W_hh (z * dh) where the others carry dc; it starts at 0,
    // grad_h_n being in dh.
    Tensor dc = shape.cell == HeadCell::gru ? at::zeros({B, H}, output.options()) : carried(grad_c_n, "grad_c_n");
    Tensor dn = carried(grad_n_n, "grad_n_n"), dm = carried(grad_m_n, "grad_m_n");
    Tensor grad_input_gates = at::empty({N, G * H}, output.options());
    Tensor grad_hidden_gates = at::empty({N, G * H}, output.options());
    AT_DISPATCH_FLOATING_TYPES(output.scalar_type(), "multihead_recurrence_backward", [&] {
        const BackwardPointers<scalar_t> pointers{
            grad_output.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(),
            previous_hidden.data_ptr<scalar_t>(), weight_hh.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
            dc.data_ptr<scalar_t>(), data_or_null<scalar_t>(dn), data_or_null<scalar_t>(dm),
            grad_input_gates.data_ptr<scalar_t>(), grad_hidden_gates.data_ptr<scalar_t>()};
        backward<scalar_t>(shape, pointers, exp_forget);
    });
    if (shape.cell == HeadCell::gru) {
        return {grad_input_gates, grad_hidden_gates, dh.add(dc), carried(std::nullopt, ""), dn, dm};
    }
    return {grad_input_gates, grad_hidden_gates, dh, dc, dn, dm};
}

// ------------------------------------------------------------------------------------------ the step loop
// The CUDA path: per step one bmm over heads (cuBLAS on CUDA) and one launch of the step's bodies (csrc/multihead.h,
// a thread per (row, unit)); on CPU tensors the same loop with the bodies run in a host loop (the *_step_loop ops, for
// the CPU tests of that path). Storage fp16/bf16/fp32/fp64; math, the saved activations and the carried states
// besides h in fp32 (fp64 for fp64), as the Triton steps keep them.

template <typename Run>
void with_head_cell(HeadCell cell, const Run& run) {
    switch (cell) {
        case HeadCell::lstm: return run(std::integral_constant<HeadCell, HeadCell::lstm>{});
        case HeadCell::gru: return run(std::integral_constant<HeadCell, HeadCell::gru>{});
        case HeadCell::slstm: return run(std::integral_constant<HeadCell, HeadCell::slstm>{});
    }
}

template <typename T, typename M>
void forward_step(HeadCell cell, const MultiheadForwardStep<T, M>& step, bool on_gpu) {
    if (on_gpu) {
#ifdef FUSED_RNN_WITH_CUDA
        multihead_forward_step_cuda<T, M>(cell, step);
#endif
        return;
    }
    with_head_cell(cell, [&](auto kind) {
        for (int64_t b = 0; b < step.active; ++b) {
            for (int64_t j = 0; j < step.hidden; ++j) multihead_forward_at<T, M, decltype(kind)::value>(step, b, j);
        }
    });
}

template <typename T, typename M>
void backward_step(HeadCell cell, const MultiheadBackwardStep<T, M>& step, bool on_gpu) {
    if (on_gpu) {
#ifdef FUSED_RNN_WITH_CUDA
        multihead_backward_step_cuda<T, M>(cell, step);
#endif
        return;
    }
    with_head_cell(cell, [&](auto kind) {
        for (int64_t b = 0; b < step.active; ++b) {
            for (int64_t j = 0; j < step.hidden; ++j) multihead_backward_at<T, M, decltype(kind)::value>(step, b, j);
        }
    });
}

// (rows, heads * width) as the (heads, rows, width) batch of a bmm over heads.
Tensor by_head(const Tensor& rows, int64_t heads) { return rows.view({rows.size(0), heads, -1}).transpose(0, 1); }

// As multihead_recurrence_forward.
template <bool kHost>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> multihead_steps_forward(
    std::string_view cell, const Tensor& input_gates, const Tensor& weight_hh, const std::optional<Tensor>& bias_hh,
    const Tensor& h0, const std::optional<Tensor>& c0, const std::optional<Tensor>& n0,
    const std::optional<Tensor>& m0, at::OptionalIntArrayRef batch_sizes, bool reverse, bool save, bool exp_forget) {
    const c10::DeviceGuard device_guard(input_gates.device());
    const bool on_gpu = input_gates.is_cuda();
    TORCH_CHECK(on_gpu != kHost, kHost ? "the step loop runs CPU tensors only" : "this path runs CUDA tensors only");
    const int64_t N = input_gates.size(0);
    const Shape shape = shape_of(cell, weight_hh, h0, N, batch_sizes, reverse);
    const int64_t B = shape.batch, H = shape.hidden, G = shape.gates;
    check("input_gates", input_gates, input_gates, {N, G * H});
    check("weight_hh", weight_hh, input_gates, {shape.heads, G * shape.head_dim, shape.head_dim});
    check("h0", h0, input_gates, {B, H});
    if (bias_hh) check("bias_hh", *bias_hh, input_gates, {G * H});
    const bool has_c = shape.cell != HeadCell::gru, has_nm = shape.cell == HeadCell::slstm;
    TORCH_CHECK(c0.has_value() == has_c && n0.has_value() == has_nm && m0.has_value() == has_nm,
                "give c0 for the LSTM and the sLSTM, n0 and m0 for the sLSTM, and nothing else");
    const auto dtype = input_gates.scalar_type();
    const auto math_options = input_gates.options().dtype(at::toOpMathType(dtype));
    const auto carried = [&](const std::optional<Tensor>& s, const char* name) {
        if (!s) return at::empty({0}, math_options);
        check(name, *s, input_gates, {B, H});
        return s->to(math_options.dtype(), false, true);
    };
    Tensor h = h0.clone(), c = carried(c0, "c0"), n = carried(n0, "n0"), m = carried(m0, "m0");
    Tensor output = at::empty({N, H}, input_gates.options());
    Tensor saved = at::empty({save ? N : 0, saved_width(shape.cell) * H}, math_options);
    Tensor hidden_gates = at::empty({B, G * H}, input_gates.options());  // head-major rows
    const Tensor recurrent = weight_hh.transpose(1, 2);                  // (heads, head_dim, G * head_dim)
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_rnn multihead_steps_forward", [&] {
        using M = at::opmath_type<scalar_t>;
        MultiheadForwardStep<scalar_t, M> step{};
        step.bias_hh = data_or_null<scalar_t>(bias_hh);
        step.h = h.data_ptr<scalar_t>();
        step.c = data_or_null<M>(c);
        step.n = data_or_null<M>(n);
        step.m = data_or_null<M>(m);
        step.hidden = H;
        step.head_dim = shape.head_dim;
        step.exp_forget = exp_forget;
        for (const Step s : shape.steps) {
            Tensor gates = hidden_gates.narrow(0, 0, s.active);
            Tensor gates_by_head = by_head(gates, shape.heads);
            at::bmm_out(gates_by_head, by_head(h.narrow(0, 0, s.active), shape.heads), recurrent);
            step.input_gates = input_gates.data_ptr<scalar_t>() + s.offset * G * H;
            step.hidden_gates = gates.data_ptr<scalar_t>();
            step.output = output.data_ptr<scalar_t>() + s.offset * H;
            step.saved = save ? saved.data_ptr<M>() + s.offset * saved_width(shape.cell) * H : nullptr;
            step.active = s.active;
            forward_step(shape.cell, step, on_gpu);
        }
    });
    const auto stored = [&](const Tensor& state) { return state.numel() ? state.to(dtype) : at::empty({0}, h.options()); };
    return {output, h, stored(c), stored(n), stored(m), saved};
}

// As multihead_recurrence_backward.
template <bool kHost>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> multihead_steps_backward(
    std::string_view cell, const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_c_n,
    const std::optional<Tensor>& grad_n_n, const std::optional<Tensor>& grad_m_n, const Tensor& output,
    const Tensor& saved, const Tensor& previous_hidden, const Tensor& weight_hh, at::OptionalIntArrayRef batch_sizes,
    bool reverse, bool exp_forget) {
    const c10::DeviceGuard device_guard(output.device());
    const bool on_gpu = output.is_cuda();
    TORCH_CHECK(on_gpu != kHost, kHost ? "the step loop runs CPU tensors only" : "this path runs CUDA tensors only");
    const int64_t N = output.size(0);
    const Shape shape = shape_of(cell, weight_hh, grad_h_n, N, batch_sizes, reverse);
    const int64_t B = shape.batch, H = shape.hidden, G = shape.gates;
    const auto dtype = output.scalar_type();
    const auto math_options = output.options().dtype(at::toOpMathType(dtype));
    check("grad_output", grad_output, output, {N, H});
    check("grad_h_n", grad_h_n, output, {B, H});
    check("previous_hidden", previous_hidden, output, {N, H});
    check("weight_hh", weight_hh, output, {shape.heads, G * shape.head_dim, shape.head_dim});
    TORCH_CHECK(saved.sizes() == at::IntArrayRef({N, saved_width(shape.cell) * H}) &&
                    saved.scalar_type() == math_options.dtype() && saved.is_contiguous(),
                "saved must be the forward's saved activations");
    const bool has_c = shape.cell != HeadCell::gru, has_nm = shape.cell == HeadCell::slstm;
    TORCH_CHECK(grad_c_n.has_value() == has_c && grad_n_n.has_value() == has_nm && grad_m_n.has_value() == has_nm,
                "give grad_c_n for the LSTM and the sLSTM, grad_n_n and grad_m_n for the sLSTM, and nothing else");
    const auto carried = [&](const std::optional<Tensor>& g, const char* name) {
        if (!g) return at::empty({0}, math_options);
        check(name, *g, output, {B, H});
        return g->to(math_options.dtype(), false, true);
    };
    Tensor dh = grad_h_n.clone();
    // The GRU carries the part of h's gradient that skips W_hh (z * dh) where the others carry dc; it starts at 0,
    // grad_h_n being in dh.
    Tensor dc = shape.cell == HeadCell::gru ? at::zeros({B, H}, math_options) : carried(grad_c_n, "grad_c_n");
    Tensor dn = carried(grad_n_n, "grad_n_n"), dm = carried(grad_m_n, "grad_m_n");
    Tensor grad_input_gates = at::empty({N, G * H}, output.options());
    Tensor grad_hidden_gates = at::empty({N, G * H}, output.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_rnn multihead_steps_backward", [&] {
        using M = at::opmath_type<scalar_t>;
        MultiheadBackwardStep<scalar_t, M> step{};
        step.grad_h = dh.data_ptr<scalar_t>();
        step.dc = dc.data_ptr<M>();
        step.dn = data_or_null<M>(dn);
        step.dm = data_or_null<M>(dm);
        step.hidden = H;
        step.head_dim = shape.head_dim;
        step.exp_forget = exp_forget;
        for (auto s = shape.steps.rbegin(); s != shape.steps.rend(); ++s) {
            step.grad_output = grad_output.data_ptr<scalar_t>() + s->offset * H;
            step.saved = saved.data_ptr<M>() + s->offset * saved_width(shape.cell) * H;
            step.previous_hidden = previous_hidden.data_ptr<scalar_t>() + s->offset * H;
            step.grad_input_gates = grad_input_gates.data_ptr<scalar_t>() + s->offset * G * H;
            step.grad_hidden_gates = grad_hidden_gates.data_ptr<scalar_t>() + s->offset * G * H;
            step.active = s->active;
            backward_step(shape.cell, step, on_gpu);
            Tensor dh_by_head = by_head(dh.narrow(0, 0, s->active), shape.heads);
            at::bmm_out(dh_by_head, by_head(grad_hidden_gates.narrow(0, s->offset, s->active), shape.heads),
                        weight_hh);
        }
    });
    const auto stored = [&](const Tensor& state) { return state.numel() ? state.to(dtype) : at::empty({0}, dh.options()); };
    if (shape.cell == HeadCell::gru) {
        const Tensor none = at::empty({0}, dh.options());
        return {grad_input_gates, grad_hidden_gates, dh.add(dc).to(dtype), none, none.clone(), none.clone()};
    }
    return {grad_input_gates, grad_hidden_gates, dh, stored(dc), stored(dn), stored(dm)};
}

}  // namespace
}  // namespace fused_rnn

namespace {
constexpr const char* kForwardSignature =
    "(str cell, Tensor input_gates, Tensor weight_hh, Tensor? bias_hh, Tensor h0, Tensor? c0, Tensor? n0, Tensor? m0, "
    "int[]? batch_sizes, bool reverse, bool save, bool exp_forget) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";
constexpr const char* kBackwardSignature =
    "(str cell, Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, Tensor? grad_n_n, Tensor? grad_m_n, "
    "Tensor output, Tensor saved, Tensor previous_hidden, Tensor weight_hh, int[]? batch_sizes, bool reverse, "
    "bool exp_forget) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";
}  // namespace

// The *_step_loop ops run the CUDA path's step loop on CPU tensors, its bodies on the host: for the CPU tests.
TORCH_LIBRARY_FRAGMENT(fused_rnn_native, m) {
    m.def((std::string("multihead_recurrence_forward") + kForwardSignature).c_str());
    m.def((std::string("multihead_recurrence_backward") + kBackwardSignature).c_str());
    m.def((std::string("multihead_recurrence_forward_step_loop") + kForwardSignature).c_str());
    m.def((std::string("multihead_recurrence_backward_step_loop") + kBackwardSignature).c_str());
}

TORCH_LIBRARY_IMPL(fused_rnn_native, CPU, m) {
    m.impl("multihead_recurrence_forward", &fused_rnn::multihead_recurrence_forward);
    m.impl("multihead_recurrence_backward", &fused_rnn::multihead_recurrence_backward);
    m.impl("multihead_recurrence_forward_step_loop", &fused_rnn::multihead_steps_forward<true>);
    m.impl("multihead_recurrence_backward_step_loop", &fused_rnn::multihead_steps_backward<true>);
}

#ifdef FUSED_RNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fused_rnn_native, CUDA, m) {
    m.impl("multihead_recurrence_forward", &fused_rnn::multihead_steps_forward<false>);
    m.impl("multihead_recurrence_backward", &fused_rnn::multihead_steps_backward<false>);
}
#endif
