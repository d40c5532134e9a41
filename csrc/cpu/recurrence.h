// The recurrent part of a sequence on CPU, forward and backward: the CPU image of the persistent design
// (DESIGN.md, "On CPU"). Compiled once per instruction set: the including file picks at::vec's CPU_CAPABILITY
// (recurrence_avx2.cpp, recurrence_avx512.cpp), and recurrence.cpp chooses one at run time. A loop of ATen calls per step is slower than torch.nn here (MKL repacks W_hh and pays
// dispatch and an OpenMP fork on every small GEMM), so instead:
// - ONE parallel region runs all T steps; the hidden units are cut into blocks of one SIMD vector's width and
//   each thread owns a contiguous range of blocks for the whole sequence;
// - each thread packs its blocks' weights once into panels ([K][gate][unit], unit fastest) so that the
//   per-step product is a register-tiled GEMM over rows of h with unit-stride panel loads;
// - the GEMM's accumulators feed the shared cell math (csrc/cell_math.h) in registers, vectorized with
//   at::vec::Vectorized, and h' goes straight into the output rows;
// - one barrier per step (two with an LSTM projection, whose GEMM needs every unit of h' first);
// - zoneout (LSTM, GRU) blends each new state with the previous one in the same epilogue (a projected h in the W_hr
//   product's), and its backward splits the carried gradients there: no extra pass over memory.
// No atomics, and every sum runs in a fixed order: results do not depend on the thread count's timing.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../cell_math.h"
#include "../sequence.h"
#include "dot.h"
#include "vectorized_activations.h"

namespace fused_rnn {

namespace {

// ------------------------------------------------------------------------------------ threads

int thread_count() {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

int thread_index() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// Below this many multiply-adds per step, waking a second thread and a barrier per step cost more than they save.
constexpr int64_t kParallelMinStepWork = 1 << 15;

struct Range {
    int64_t begin, end;
};

// The contiguous share of `count` blocks that thread `index` of `threads` owns.
Range owned(int64_t count, int index, int threads) {
    return {count * index / threads, count * (index + 1) / threads};
}

int64_t blocks_of(int64_t units, int64_t width) { return (units + width - 1) / width; }

// ------------------------------------------------------------------------------------ panels

// Packs the panel of column block `block` of a logical matrix M (K x gates*cols) into dst[k][gate][unit]
// (unit fastest, UNITS per gate, zero past the last valid column), where
// M[k][gate * gate_stride + col] = src[col * col_stride + k * k_stride].
template <typename T, int UNITS>
void pack_panel(T* dst, const T* src, int64_t K, int gates, int64_t gate_stride, int64_t cols, int64_t block,
                int64_t col_stride, int64_t k_stride) {
    const int64_t col0 = block * UNITS;
    const int64_t valid = std::min<int64_t>(UNITS, cols - col0);
    for (int64_t k = 0; k < K; ++k) {
        for (int g = 0; g < gates; ++g) {
            T* out = dst + (k * gates + g) * UNITS;
            for (int64_t u = 0; u < UNITS; ++u) {
                out[u] = u < valid ? src[(g * gate_stride + col0 + u) * col_stride + k * k_stride] : T(0);
            }
        }
    }
}

// Register tiles: R rows x NV vectors of accumulators, leaving registers for the NV weight vectors and a
// broadcast: 16 vector registers on AVX2, 32 on AVX-512.
template <typename T, int NV>
constexpr int tile_rows() {
    if constexpr (at::vec::Vectorized<T>::size() * sizeof(T) >= 64) {
        return NV >= 4 ? 6 : NV == 3 ? 8 : 12;
    }
    return NV >= 4 ? 3 : NV == 3 ? 4 : 8;
}

// acc[r][v] += rows[r][k] * panel[k][v] for one k.
template <typename T, int NV, int R>
inline void multiply_add(at::vec::Vectorized<T> (&acc)[R][NV], const T* const (&rows)[R], const T* panel, int64_t k) {
    using Vec = at::vec::Vectorized<T>;
    Vec weights[NV];
    for (int v = 0; v < NV; ++v) weights[v] = Vec::loadu(panel + (k * NV + v) * Vec::size());
    for (int r = 0; r < R; ++r) {
        const Vec x(rows[r][k]);
        for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(x, weights[v], acc[r][v]);
    }
}

// acc[r][v] = sum_k rows[r][k] * panel[k][v] for R rows; then epilogue(row index, acc[r]).
// With few rows (B = 1) R * NV accumulators are too few to hide the FMA latency, so the k loop keeps SPLITS
// independent partial sums, added in a fixed order at the end.
template <typename T, int NV, int R, typename RowOf, typename Epilogue>
inline void tile(int64_t first_row, int64_t K, const T* panel, const RowOf& row_of, const Epilogue& epilogue) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int SPLITS = std::max(1, std::min(4, 12 / (R * NV)));
    const T* rows[R];
    Vec acc[SPLITS][R][NV];
    for (int r = 0; r < R; ++r) rows[r] = row_of(first_row + r);
    for (int split = 0; split < SPLITS; ++split) {
        for (int r = 0; r < R; ++r) {
            for (int v = 0; v < NV; ++v) acc[split][r][v] = Vec(T(0));
        }
    }
    int64_t k = 0;
    for (; k + SPLITS <= K; k += SPLITS) {
        for (int split = 0; split < SPLITS; ++split) multiply_add<T, NV, R>(acc[split], rows, panel, k + split);
    }
    for (; k < K; ++k) multiply_add<T, NV, R>(acc[0], rows, panel, k);
    for (int split = 1; split < SPLITS; ++split) {
        for (int r = 0; r < R; ++r) {
            for (int v = 0; v < NV; ++v) acc[0][r][v] = acc[0][r][v] + acc[split][r][v];
        }
    }
    for (int r = 0; r < R; ++r) epilogue(first_row + r, acc[0][r]);
}

// The rows left after the full tiles: one tile of exactly `left` (< R) rows, chosen at compile time.
template <typename T, int NV, int R, typename RowOf, typename Epilogue>
inline void tile_remainder(int64_t first_row, int64_t left, int64_t K, const T* panel, const RowOf& row_of,
                           const Epilogue& epilogue) {
    if constexpr (R > 1) {
        if (left == R - 1) {
            tile<T, NV, R - 1>(first_row, K, panel, row_of, epilogue);
        } else {
            tile_remainder<T, NV, R - 1>(first_row, left, K, panel, row_of, epilogue);
        }
    }
}

// The product of `rows` rows (row_of(b) -> pointer to K values) with one packed panel, in register tiles.
template <typename T, int NV, typename RowOf, typename Epilogue>
inline void panel_product(int64_t rows, int64_t K, const T* panel, const RowOf& row_of, const Epilogue& epilogue) {
    constexpr int R = tile_rows<T, NV>();
    int64_t b = 0;
    for (; b + R <= rows; b += R) tile<T, NV, R>(b, K, panel, row_of, epilogue);
    tile_remainder<T, NV, R>(b, rows - b, K, panel, row_of, epilogue);
}

// For one row x (B = 1): acc[g] lane u = W[g * gate_rows + first + u] . x for u < count, W row-major with K
// columns, read in place. One row cannot amortise packing W into panels: the copy would cost as much as a step
// and a whole W_hh of memory (4 MiB per LSTM layer at H = 512).
template <typename T, int G>
inline void row_products(const T* weight, int64_t gate_rows, int64_t K, int64_t first, int count, const T* x,
                         at::vec::Vectorized<T> (&acc)[G]) {
    using Vec = at::vec::Vectorized<T>;
    for (int g = 0; g < G; ++g) {
        T sums[Vec::size()] = {};
        for (int u = 0; u < count; ++u) sums[u] = dot(weight + (g * gate_rows + first + u) * K, x, K);
        acc[g] = Vec::loadu(sums);
    }
}

// Whether a forward reads W_hh (and W_hr) in place rather than from packed panels: one row of batch, and weights
// too large for a core's L2 cache, so that every step streams them from memory either way. Smaller ones pack: the
// panels' register tiles need no horizontal sums. (The backward packs always: read in place, its column blocks are
// one cache line per row of W_hh, and its steps ran 2.5x slower at B = 1, H = 512.)
template <typename T>
bool weights_in_place(const SequenceShape& shape) {
    return shape.batch == 1 && shape.gates * shape.hidden * shape.hidden_out * int64_t{sizeof(T)} >= (512 << 10);
}

template <CellKind C>
constexpr int gate_count() {
    return C == CellKind::lstm ? 4 : C == CellKind::gru ? 3 : 1;
}

// ------------------------------------------------------------------------------------ forward

template <typename T, CellKind C>
void forward(const SequenceShape& shape, const ForwardBuffers<T>& buf) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int U = Vec::size();
    constexpr int G = gate_count<C>();
    const int64_t B = shape.batch, H = shape.hidden, H_out = shape.hidden_out, SW = shape.saved_width;
    const int64_t unit_blocks = blocks_of(H, U), out_blocks = blocks_of(H_out, U);
    const int64_t steps = static_cast<int64_t>(shape.steps.size());
    const bool in_place = weights_in_place<T>(shape);
    const int64_t zoneout_width = C == CellKind::lstm ? H_out + H : H;
    std::vector<T> hh_panels(in_place ? 0 : unit_blocks * H_out * G * U);
    std::vector<T> hr_panels(shape.projected && !in_place ? out_blocks * H * U : 0);
    const bool parallel = B * G * H * H_out >= kParallelMinStepWork;

    // One parallel region per batch of steps whose input gates were computed together (the GEMM runs between).
    for (int64_t first = 0; first < steps; first += buf.steps_per_projection) {
        const int64_t end = std::min(steps, first + buf.steps_per_projection);
        const InputGates<T> gates = buf.input_gates(first, end);
#pragma omp parallel if (parallel)
        {
            const int threads = thread_count(), me = thread_index();
            const Range units = owned(unit_blocks, me, threads);
            const Range outs = owned(out_blocks, me, threads);
            // Each thread packs the panels it will read, so they sit in its own caches from the first step.
            for (int64_t j = units.begin; first == 0 && !in_place && j < units.end; ++j) {
                pack_panel<T, U>(&hh_panels[j * H_out * G * U], buf.weight_hh, H_out, G, H, H, j, H_out, 1);
            }
            for (int64_t j = outs.begin; first == 0 && !in_place && shape.projected && j < outs.end; ++j) {
                pack_panel<T, U>(&hr_panels[j * H * U], buf.weight_hr, H, 1, 0, H_out, j, H, 1);
            }

            for (int64_t s = first; s < end; ++s) {
                const Step step = shape.steps[s];
                const Step previous = s > 0 ? shape.steps[s - 1] : Step{0, 0};
                // Row b starts from the previous step's output while b was active there, else from h0 (packed rows
                // joining a reverse pass).
                const auto h_prev = [&](int64_t b) -> const T* {
                    return b < previous.active ? buf.output + (previous.offset + b) * H_out : buf.h0 + b * H_out;
                };
                const auto h_dest = [&](int64_t b) -> T* {
                    if (!shape.projected) return buf.output + (step.offset + b) * H_out;
                    return buf.projection_input + (buf.projection_input_per_row ? step.offset + b : b) * H;
                };
                for (int64_t j = units.begin; j < units.end; ++j) {
                    const int64_t u0 = j * U;
                    const int count = static_cast<int>(std::min<int64_t>(U, H - u0));
                    const auto cell = [&](int64_t b, const Vec* acc) {
                        const int64_t row = step.offset + b;
                        const T* xg = gates.data + (row - gates.first_row) * G * H + u0;
                        T* saved = buf.saved ? buf.saved + row * SW * H + u0 : nullptr;
                        const T* keep = buf.zoneout ? buf.zoneout + row * zoneout_width + u0 : nullptr;
                        if constexpr (C == CellKind::lstm) {
                            T* c = buf.cell_state + b * H + u0;
                            const Vec c_prev = Vec::loadu(c, count);
                            const auto s = lstm_forward<Vec>(
                                acc[0] + Vec::loadu(xg, count), acc[1] + Vec::loadu(xg + H, count),
                                acc[2] + Vec::loadu(xg + 2 * H, count), acc[3] + Vec::loadu(xg + 3 * H, count), c_prev);
                            Vec c_new = s.c, h_new = s.h;
                            if (keep) {
                                c_new = zoneout_forward<Vec>(Vec::loadu(keep + H_out, count), c_prev, c_new);
                                // A projected h is zoned after its GEMM, below; h_dest is then the GEMM's input.
                                if (!shape.projected) {
                                    h_new = zoneout_forward<Vec>(Vec::loadu(keep, count),
                                                                 Vec::loadu(h_prev(b) + u0, count), h_new);
                                }
                            }
                            c_new.store(c, count);
                            h_new.store(h_dest(b) + u0, count);
                            if (saved) {
                                s.i.store(saved, count);
                                s.f.store(saved + H, count);
                                s.g.store(saved + 2 * H, count);
                                s.o.store(saved + 3 * H, count);
                                c_prev.store(saved + 4 * H, count);
                            }
                        } else if constexpr (C == CellKind::gru) {
                            Vec h_n = acc[2];
                            if (buf.bias_hn) h_n = h_n + Vec::loadu(buf.bias_hn + u0, count);
                            const Vec previous_h = Vec::loadu(h_prev(b) + u0, count);
                            const auto s = gru_forward<Vec>(acc[0] + Vec::loadu(xg, count),
                                                            acc[1] + Vec::loadu(xg + H, count),
                                                            Vec::loadu(xg + 2 * H, count), h_n, previous_h);
                            const Vec h_new =
                                keep ? zoneout_forward<Vec>(Vec::loadu(keep, count), previous_h, s.h) : s.h;
                            h_new.store(h_dest(b) + u0, count);
                            if (saved) {
                                s.r.store(saved, count);
                                s.z.store(saved + H, count);
                                s.n.store(saved + 2 * H, count);
                                h_n.store(saved + 3 * H, count);
                            }
                        } else {
                            const Vec h = rnn_forward<Vec>(acc[0] + Vec::loadu(xg, count), C == CellKind::rnn_relu);
                            h.store(h_dest(b) + u0, count);
                        }
                    };
                    if (in_place) {
                        Vec acc[G];
                        row_products<T, G>(buf.weight_hh, H, H_out, u0, count, h_prev(0), acc);
                        cell(0, acc);
                    } else {
                        panel_product<T, G>(step.active, H_out, &hh_panels[j * H_out * G * U], h_prev, cell);
                    }
                }
                barrier();  // h' of every unit is written before anyone reads it (next step or the projection)
                if (shape.projected) {
                    for (int64_t j = outs.begin; j < outs.end; ++j) {
                        const int64_t p0 = j * U;
                        const int count = static_cast<int>(std::min<int64_t>(U, H_out - p0));
                        const auto store = [&](int64_t b, const Vec* acc) {
                            const int64_t row = step.offset + b;
                            Vec h_new = acc[0];
                            if (buf.zoneout) {
                                h_new = zoneout_forward<Vec>(Vec::loadu(buf.zoneout + row * zoneout_width + p0, count),
                                                             Vec::loadu(h_prev(b) + p0, count), h_new);
                            }
                            h_new.store(buf.output + row * H_out + p0, count);
                        };
                        if (in_place) {
                            Vec acc[1];
                            row_products<T, 1>(buf.weight_hr, 0, H, p0, count, h_dest(0), acc);
                            store(0, acc);
                            continue;
                        }
                        const auto projected_row = [&](int64_t b) -> const T* { return h_dest(b); };
                        panel_product<T, 1>(step.active, H, &hr_panels[j * H * U], projected_row, store);
                    }
                    barrier();
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------ backward

template <typename T, CellKind C>
void backward(const SequenceShape& shape, const BackwardBuffers<T>& buf) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int U = Vec::size();
    constexpr int G = gate_count<C>();
    const int64_t B = shape.batch, H = shape.hidden, H_out = shape.hidden_out, SW = shape.saved_width;
    const int64_t unit_blocks = blocks_of(H, U), out_blocks = blocks_of(H_out, U);
    const int64_t steps = static_cast<int64_t>(shape.steps.size());
    const int64_t zoneout_width = C == CellKind::lstm ? H_out + H : H;
    // dh = dgates W_hh: panels of W_hh's columns (hidden_out units) over all G*H gate rows.
    std::vector<T> hh_panels(out_blocks * G * H * U);
    // Projected LSTM: d(h' before projection) = d(projected) W_hr, panels of W_hr's columns over P rows.
    std::vector<T> hr_panels(shape.projected ? unit_blocks * H_out * U : 0);
    const bool parallel = B * G * H * H_out >= kParallelMinStepWork;

#pragma omp parallel if (parallel)
    {
        const int threads = thread_count(), me = thread_index();
        const Range units = owned(unit_blocks, me, threads);
        // Without a projection H_out == H and a thread owns the same blocks of dh as of the cell's units, so the
        // dh it computes at one step is the dh its cell math reads at the next: no barrier between them.
        const Range outs = owned(out_blocks, me, threads);
        for (int64_t j = outs.begin; j < outs.end; ++j) {
            pack_panel<T, U>(&hh_panels[j * G * H * U], buf.weight_hh, G * H, 1, 0, H_out, j, 1, H_out);
        }
        if (shape.projected) {
            for (int64_t j = units.begin; j < units.end; ++j) {
                pack_panel<T, U>(&hr_panels[j * H_out * U], buf.weight_hr, H_out, 1, 0, H, j, 1, H);
            }
        }

        for (int64_t s = steps - 1; s >= 0; --s) {
            const Step step = shape.steps[s];
            const Step previous = s > 0 ? shape.steps[s - 1] : Step{0, 0};
            const auto h_prev = [&](int64_t b) -> const T* {
                return b < previous.active ? buf.output + (previous.offset + b) * H_out : buf.h0 + b * H_out;
            };
            if (shape.projected) {  // the projected output's gradient: later steps' plus this step's output's
                for (int64_t j = outs.begin; j < outs.end; ++j) {
                    const int64_t p0 = j * U;
                    const int count = static_cast<int>(std::min<int64_t>(U, H_out - p0));
                    for (int64_t b = 0; b < step.active; ++b) {
                        const int64_t row = step.offset + b;
                        T* dh = buf.grad_h + b * H_out + p0;
                        const Vec d = Vec::loadu(dh, count) + Vec::loadu(buf.grad_output + row * buf.grad_output_row_stride + p0, count);
                        if (buf.zoneout) {
                            // The zoned h's kept share goes straight to h and waits in dh for W_hh's part.
                            const auto z = zoneout_backward<Vec>(
                                Vec::loadu(buf.zoneout + row * zoneout_width + p0, count), d);
                            z.fresh.store(buf.grad_projected + row * H_out + p0, count);
                            z.kept.store(dh, count);
                        } else {
                            d.store(buf.grad_projected + row * H_out + p0, count);
                        }
                    }
                }
                barrier();
            }
            for (int64_t j = units.begin; j < units.end; ++j) {
                const int64_t u0 = j * U;
                const int count = static_cast<int>(std::min<int64_t>(U, H - u0));
                // dh: gradient reaching h' (before the projection) of row b, for this block's units.
                // With zoneout the gradients of the zoned states are split: the kept shares go straight to the
                // previous states, the rest through the cell math.
                const auto cell = [&](int64_t b, Vec dh) {
                    const int64_t row = step.offset + b;
                    const T* saved = buf.saved + row * SW * H + u0;
                    T* dgx = buf.grad_input_gates + row * G * H + u0;
                    const T* keep = buf.zoneout ? buf.zoneout + row * zoneout_width + u0 : nullptr;
                    if constexpr (C == CellKind::lstm) {
                        T* dc = buf.grad_c + b * H + u0;
                        Vec dc_fresh = Vec::loadu(dc, count), dc_kept(T(0));
                        if (keep) {
                            if (!shape.projected) {  // a projected h was split before its GEMM
                                const auto z = zoneout_backward<Vec>(Vec::loadu(keep, count), dh);
                                z.kept.store(buf.grad_h + b * H + u0, count);  // W_hh's part is added below
                                dh = z.fresh;
                            }
                            const auto z = zoneout_backward<Vec>(Vec::loadu(keep + H_out, count), dc_fresh);
                            dc_fresh = z.fresh;
                            dc_kept = z.kept;
                        }
                        const auto d = lstm_backward<Vec>(
                            Vec::loadu(saved, count), Vec::loadu(saved + H, count), Vec::loadu(saved + 2 * H, count),
                            Vec::loadu(saved + 3 * H, count), Vec::loadu(saved + 4 * H, count), dh, dc_fresh);
                        d.pre_i.store(dgx, count);
                        d.pre_f.store(dgx + H, count);
                        d.pre_g.store(dgx + 2 * H, count);
                        d.pre_o.store(dgx + 3 * H, count);
                        (keep ? d.c_prev + dc_kept : d.c_prev).store(dc, count);
                    } else if constexpr (C == CellKind::gru) {
                        T* dgh = buf.grad_hidden_gates + ((s & 1) * B + b) * G * H + u0;
                        Vec dh_kept(T(0));
                        if (keep) {
                            const auto z = zoneout_backward<Vec>(Vec::loadu(keep, count), dh);
                            dh = z.fresh;
                            dh_kept = z.kept;
                        }
                        const auto d = gru_backward<Vec>(Vec::loadu(saved, count), Vec::loadu(saved + H, count),
                                                         Vec::loadu(saved + 2 * H, count),
                                                         Vec::loadu(saved + 3 * H, count),
                                                         Vec::loadu(h_prev(b) + u0, count), dh);
                        d.pre_r.store(dgx, count);
                        d.pre_z.store(dgx + H, count);
                        d.x_n.store(dgx + 2 * H, count);
                        d.pre_r.store(dgh, count);
                        d.pre_z.store(dgh + H, count);
                        d.h_n.store(dgh + 2 * H, count);
                        // W_hh's part is added below
                        (keep ? d.h_prev + dh_kept : d.h_prev).store(buf.grad_h + b * H + u0, count);
                    } else {
                        const Vec h = Vec::loadu(buf.output + row * H_out + u0, count);
                        rnn_backward<Vec>(h, dh, C == CellKind::rnn_relu).store(dgx, count);
                    }
                };
                if (shape.projected) {
                    const auto projected_row = [&](int64_t b) -> const T* {
                        return buf.grad_projected + (step.offset + b) * H_out;
                    };
                    const auto from_product = [&](int64_t b, const Vec* acc) { cell(b, acc[0]); };
                    panel_product<T, 1>(step.active, H_out, &hr_panels[j * H_out * U],
                                        projected_row, from_product);
                } else {
                    for (int64_t b = 0; b < step.active; ++b) {
                        cell(b, Vec::loadu(buf.grad_h + b * H_out + u0, count) +
                                    Vec::loadu(buf.grad_output + (step.offset + b) * buf.grad_output_row_stride + u0, count));
                    }
                }
            }
            barrier();  // every gate gradient of this step is written before the product over all of them
            for (int64_t j = outs.begin; j < outs.end; ++j) {
                const int64_t k0 = j * U;
                const int count = static_cast<int>(std::min<int64_t>(U, H_out - k0));
                const auto gate_row = [&](int64_t b) -> const T* {
                    if constexpr (C == CellKind::gru) return buf.grad_hidden_gates + ((s & 1) * B + b) * G * H;
                    return buf.grad_hidden_gates + (step.offset + b) * G * H;
                };
                const auto store = [&](int64_t b, const Vec* acc) {
                    T* dh = buf.grad_h + b * H_out + k0;
                    // The GRU's h' also depends on h directly (z * h), and a zoned h' too (d * h): the cell math
                    // (or the projected split) left those parts in dh.
                    const bool direct = C == CellKind::gru || (C == CellKind::lstm && buf.zoneout);
                    const Vec total = direct ? acc[0] + Vec::loadu(dh, count) : acc[0];
                    total.store(dh, count);
                };
                panel_product<T, 1>(step.active, G * H, &hh_panels[j * G * H * U],
                                    gate_row, store);
            }
            // No barrier here: the next step first reads only the blocks of dh this thread just wrote, and writes
            // rows of the gate gradients other than those the product above reads (the GRU's hidden side: the other
            // of its two steps' buffers; a thread reaches the step after next only past the next step's barrier).
        }
    }
}

}  // namespace

// The entry points, one set per instruction set (CPU_CAPABILITY is at::vec's namespace: AVX2, AVX512, ...).
namespace CPU_CAPABILITY {

template <typename scalar_t>
void recurrent_forward(const SequenceShape& shape, const ForwardBuffers<scalar_t>& buffers) {
    switch (shape.cell) {
        case CellKind::lstm: return forward<scalar_t, CellKind::lstm>(shape, buffers);
        case CellKind::gru: return forward<scalar_t, CellKind::gru>(shape, buffers);
        case CellKind::rnn_tanh: return forward<scalar_t, CellKind::rnn_tanh>(shape, buffers);
        case CellKind::rnn_relu: return forward<scalar_t, CellKind::rnn_relu>(shape, buffers);
    }
}

template <typename scalar_t>
void recurrent_backward(const SequenceShape& shape, const BackwardBuffers<scalar_t>& buffers) {
    switch (shape.cell) {
        case CellKind::lstm: return backward<scalar_t, CellKind::lstm>(shape, buffers);
        case CellKind::gru: return backward<scalar_t, CellKind::gru>(shape, buffers);
        case CellKind::rnn_tanh: return backward<scalar_t, CellKind::rnn_tanh>(shape, buffers);
        case CellKind::rnn_relu: return backward<scalar_t, CellKind::rnn_relu>(shape, buffers);
    }
}

// Instantiated here: each file including this one is one instruction set's translation unit.
template void recurrent_forward<float>(const SequenceShape&, const ForwardBuffers<float>&);
template void recurrent_forward<double>(const SequenceShape&, const ForwardBuffers<double>&);
template void recurrent_backward<float>(const SequenceShape&, const BackwardBuffers<float>&);
template void recurrent_backward<double>(const SequenceShape&, const BackwardBuffers<double>&);

}  // namespace CPU_CAPABILITY
}  // namespace fused_rnn
