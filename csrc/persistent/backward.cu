// The persistent backward of the LSTM and the GRU: one cooperative launch walks all steps of one direction of one
// layer in reverse. Same CTAs and units as the forward (partition.h, plan_backward); each CTA keeps W_hh's
// columns of its units in shared memory (W_hh^T's rows), and the cell math comes from cell_math.h.
//
// Per step each CTA: turns the gate gradients of the step before (all units, read from global memory) into dh of
// its units (the W_hh^T product), runs the cell's backward for its units on the saved activations, writes the gate
// gradients to the output and to the other exchange buffer, then waits at the grid barrier. dh and dc (the GRU's
// z * dh) of its units stay in shared memory. The weight, bias and input gradients are GEMMs afterwards.
#include <cooperative_groups.h>

#include "../cell_math.h"
#include "device.cuh"
#include "launch.h"

namespace fused_rnn {
namespace persistent {
namespace {

namespace cg = cooperative_groups;

template <typename T>
struct BackwardParams {
    const float* saved;
    const T* grad_output;
    const T* grad_h_n;
    const T* grad_c_n;
    const T* h_prev;
    const T* weight_hh;
    const int* step_rows;
    float* grad_exchange;  // written by other CTAs during the launch: read through L2 (__ldcg)
    T* grad_input_gates;
    T* grad_hidden_gates;
    T* grad_h0;
    T* grad_c0;
    int steps, batch, hidden;
    bool reverse;
};

// dh[b][j] = sum over the gate rows r of grad[b][r] * W_hh[r][unit0 + j], for the rows b < rows_to_update; `grad`
// is one exchange buffer [batch, gate_rows]. Starts and ends with the CTA's threads in step.
template <typename T>
__device__ inline void recurrent_gradient(const T* weight, const float* grad, int rows_to_update, int gate_rows,
                                          int units, int units_per_cta, float* grad_tile, float* dh) {
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    for (int b0 = 0; b0 < rows_to_update; b0 += kBackwardBatchTile) {
        const int tile_rows = min(kBackwardBatchTile, rows_to_update - b0);
        const float* grad_tile_source = grad + static_cast<size_t>(b0) * gate_rows;
        // Rows past the tile's end are zeros, so the unrolled accumulators below never read unset memory.
        for (int i = threadIdx.x; i < kBackwardBatchTile * gate_rows; i += kThreads) {
            grad_tile[i] = i / gate_rows < tile_rows ? __ldcg(grad_tile_source + i) : 0.0f;
        }
        __syncthreads();
        for (int j = warp; j < units; j += kWarps) {
            const T* w = weight + static_cast<size_t>(j) * gate_rows;
            float acc[kBackwardBatchTile];
#pragma unroll
            for (int bt = 0; bt < kBackwardBatchTile; ++bt) acc[bt] = 0.0f;
            for (int r = lane; r < gate_rows; r += kWarpSize) {
                const float wr = to_float(w[r]);
#pragma unroll
                for (int bt = 0; bt < kBackwardBatchTile; ++bt) acc[bt] += wr * grad_tile[bt * gate_rows + r];
            }
            // Only the tile's rows are reduced: at batch 1 that is one reduction instead of kBackwardBatchTile.
#pragma unroll
            for (int bt = 0; bt < kBackwardBatchTile; ++bt) {
                if (bt < tile_rows) acc[bt] = warp_sum(acc[bt]);
            }
            if (lane == 0) {
#pragma unroll
                for (int bt = 0; bt < kBackwardBatchTile; ++bt) {
                    if (bt < tile_rows) dh[(b0 + bt) * units_per_cta + j] = acc[bt];
                }
            }
        }
        __syncthreads();  // dh is read next, and the next tile restages grad_tile
    }
}

// The cell's backward for row `row` (batch entry b) and unit `unit` (local j); writes the gate gradients to the
// outputs and to this step's exchange buffer `grad_write`, and updates dc.
template <typename T>
__device__ inline void lstm_point(const BackwardParams<T>& p, size_t row, int b, int unit, int j, int units_per_cta,
                                  const float* dh, float* dc, float* grad_write) {
    const int hidden = p.hidden, gate_rows = Lstm::kGates * hidden;
    float s[Lstm::kSavedWidth];
#pragma unroll
    for (int k = 0; k < Lstm::kSavedWidth; ++k) s[k] = p.saved[saved_index(row, k, unit, hidden, Lstm::kSavedWidth)];
    const int state = b * units_per_cta + j;
    const float dh_total = dh[state] + to_float(p.grad_output[row * hidden + unit]);
    const LstmBackward<float> d = lstm_backward<float>(s[0], s[1], s[2], s[3], s[4], dh_total, dc[state]);
    dc[state] = d.c_prev;
    const float grads[Lstm::kGates] = {d.pre_i, d.pre_f, d.pre_g, d.pre_o};
#pragma unroll
    for (int g = 0; g < Lstm::kGates; ++g) {
        const int column = gate_column(g, unit, hidden);
        p.grad_input_gates[row * gate_rows + column] = from_float<T>(grads[g]);
        grad_write[static_cast<size_t>(b) * gate_rows + column] = grads[g];
    }
}

template <typename T>
__device__ inline void gru_point(const BackwardParams<T>& p, size_t row, int b, int unit, int j, int units_per_cta,
                                 const float* dh, float* dc, float* grad_write) {
    const int hidden = p.hidden, gate_rows = Gru::kGates * hidden;
    float s[Gru::kSavedWidth];
#pragma unroll
    for (int k = 0; k < Gru::kSavedWidth; ++k) s[k] = p.saved[saved_index(row, k, unit, hidden, Gru::kSavedWidth)];
    const int state = b * units_per_cta + j;
    // The gradient reaching h' through W_hh, directly (h' = z * h + ...) and from this step's output.
    const float dh_total = dh[state] + dc[state] + to_float(p.grad_output[row * hidden + unit]);
    const float h_prev = to_float(p.h_prev[row * hidden + unit]);
    const GruBackward<float> d = gru_backward<float>(s[0], s[1], s[2], s[3], h_prev, dh_total);
    dc[state] = d.h_prev;
    const float input_side[Gru::kGates] = {d.pre_r, d.pre_z, d.x_n};
    const float hidden_side[Gru::kGates] = {d.pre_r, d.pre_z, d.h_n};
#pragma unroll
    for (int g = 0; g < Gru::kGates; ++g) {
        const int column = gate_column(g, unit, hidden);
        p.grad_input_gates[row * gate_rows + column] = from_float<T>(input_side[g]);
        p.grad_hidden_gates[row * gate_rows + column] = from_float<T>(hidden_side[g]);
        grad_write[static_cast<size_t>(b) * gate_rows + column] = hidden_side[g];
    }
}

template <typename Cell, typename T>
__global__ void __launch_bounds__(kThreads, kRegisterCapBlocks)
    backward_kernel(const BackwardParams<T> p, const int units_per_cta, const BackwardLayout layout) {
    cg::grid_group grid = cg::this_grid();
    unsigned char* smem = dynamic_shared_memory();
    T* weight = reinterpret_cast<T*>(smem + layout.weight_offset);                // [units_per_cta, gate_rows]
    float* grad_tile = reinterpret_cast<float*>(smem + layout.grad_tile_offset);  // [kBackwardBatchTile, gate_rows]
    float* dh = reinterpret_cast<float*>(smem + layout.dh_offset);                // [batch, units_per_cta]
    float* dc = reinterpret_cast<float*>(smem + layout.dc_offset);                // [batch, units_per_cta]

    const int hidden = p.hidden, batch = p.batch, gate_rows = Cell::kGates * hidden;
    const int unit0 = first_unit(blockIdx.x, units_per_cta);
    const int units = units_of_cta(blockIdx.x, units_per_cta, hidden);

    for (int i = threadIdx.x; i < units * gate_rows; i += kThreads) {
        const int j = i / gate_rows, r = i % gate_rows;
        weight[i] = p.weight_hh[static_cast<size_t>(r) * hidden + unit0 + j];
    }
    for (int i = threadIdx.x; i < batch * units; i += kThreads) {
        const int b = i / units, j = i % units;
        const size_t state = static_cast<size_t>(b) * hidden + unit0 + j;
        // The final states' gradients enter as the LSTM's dh and dc, and as the GRU's direct part of dh.
        dh[b * units_per_cta + j] = Cell::kHasCellState ? to_float(p.grad_h_n[state]) : 0.0f;
        dc[b * units_per_cta + j] = to_float(Cell::kHasCellState ? p.grad_c_n[state] : p.grad_h_n[state]);
    }
    __syncthreads();

    int previous_active = 0;
    for (int s = 0; s < p.steps; ++s) {
        const StepRows step = step_rows_of(p.step_rows, backward_step_at(s, p.steps, p.reverse), batch);
        if (s > 0) {
            const float* grad_read = p.grad_exchange + static_cast<size_t>(read_buffer(s - 1)) * batch * gate_rows;
            recurrent_gradient(weight, grad_read, previous_active, gate_rows, units, units_per_cta, grad_tile, dh);
        }
        float* grad_write = p.grad_exchange + static_cast<size_t>(read_buffer(s)) * batch * gate_rows;
        for (int i = threadIdx.x; i < step.active * units; i += kThreads) {
            const int b = i / units, j = i % units;
            const size_t row = static_cast<size_t>(step.offset) + b;
            if constexpr (Cell::kHasCellState) {
                lstm_point(p, row, b, unit0 + j, j, units_per_cta, dh, dc, grad_write);
            } else {
                gru_point(p, row, b, unit0 + j, j, units_per_cta, dh, dc, grad_write);
            }
        }
        previous_active = step.active;
        grid.sync();
    }
    // The first step's gate gradients reach h0 through W_hh too.
    if (p.steps > 0) {
        const float* grad_read = p.grad_exchange + static_cast<size_t>(read_buffer(p.steps - 1)) * batch * gate_rows;
        recurrent_gradient(weight, grad_read, previous_active, gate_rows, units, units_per_cta, grad_tile, dh);
    }
    for (int i = threadIdx.x; i < batch * units; i += kThreads) {
        const int b = i / units, j = i % units;
        const size_t state = static_cast<size_t>(b) * hidden + unit0 + j;
        const int local = b * units_per_cta + j;
        if constexpr (Cell::kHasCellState) {
            p.grad_h0[state] = from_float<T>(dh[local]);
            p.grad_c0[state] = from_float<T>(dc[local]);
        } else {
            p.grad_h0[state] = from_float<T>(dh[local] + dc[local]);
        }
    }
}

template <typename Cell, typename T>
cudaError_t launch(const BackwardArgs& a, cudaStream_t stream) {
    DeviceLimits limits;
    const cudaError_t error = current_device_limits(&limits);
    if (error != cudaSuccess) return error;
    const BackwardPartition part = plan_backward(Cell::kGates, a.hidden, a.batch, sizeof(T), limits);
    if (part.verdict != Verdict::kFits) return cudaErrorInvalidConfiguration;

    BackwardParams<T> params{a.saved,
                             static_cast<const T*>(a.grad_output),
                             static_cast<const T*>(a.grad_h_n),
                             static_cast<const T*>(a.grad_c_n),
                             static_cast<const T*>(a.h_prev),
                             static_cast<const T*>(a.weight_hh),
                             a.step_rows,
                             a.grad_exchange,
                             static_cast<T*>(a.grad_input_gates),
                             static_cast<T*>(a.grad_hidden_gates),
                             static_cast<T*>(a.grad_h0),
                             static_cast<T*>(a.grad_c0),
                             a.steps,
                             a.batch,
                             a.hidden,
                             a.reverse};
    int units_per_cta = part.units_per_cta;
    BackwardLayout layout = part.smem;
    void* kernel_args[] = {&params, &units_per_cta, &layout};
    return launch_cooperative(backward_kernel<Cell, T>, part.ctas, part.smem.total_bytes, kernel_args,
                              limits.multiprocessors, stream);
}

template <typename Cell>
cudaError_t launch_for_dtype(Dtype dtype, const BackwardArgs& args, cudaStream_t stream) {
    switch (dtype) {
        case Dtype::kFloat32: return launch<Cell, float>(args, stream);
        case Dtype::kFloat16: return launch<Cell, __half>(args, stream);
        case Dtype::kBFloat16: return launch<Cell, __nv_bfloat16>(args, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t backward(CellKind cell, Dtype dtype, const BackwardArgs& args, cudaStream_t stream) {
    switch (cell) {
        case CellKind::kLstm: return launch_for_dtype<Lstm>(dtype, args, stream);
        case CellKind::kGru: return launch_for_dtype<Gru>(dtype, args, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace persistent
}  // namespace fused_rnn
