// The persistent whole-sequence forward of the LSTM and the GRU: one cooperative launch runs all steps of one
// direction of one layer. Partition and shared-memory layout: partition.h; the cell math: cell_math.h.
//
// Per step each CTA: stages up to kBatchTile rows of h (fp32) in shared memory, computes h W_hh^T for its rows of
// W_hh (one warp per row, lanes split the hidden dimension), runs the cell math for its units, writes h' to the
// output and to the other h buffer, then waits at the grid barrier; the next step reads that buffer.
#include <cooperative_groups.h>

#include "../cell_math.h"
#include "device.cuh"
#include "launch.h"

namespace fused_rnn {
namespace persistent {
namespace {

namespace cg = cooperative_groups;

template <typename T>
struct ForwardParams {
    const T* input_gates;
    const T* weight_hh;
    const T* bias_hh;
    const T* c0;
    const int* step_rows;
    T* h_exchange;  // written by other CTAs during the launch: read through L2 (__ldcg), never the L1 or __ldg
    T* output;
    T* h_n;
    T* c_n;
    float* saved;
    int steps, batch, hidden;
    bool reverse;
};

template <typename T>
__device__ inline float bias_of(const T* bias, int column) {
    return bias == nullptr ? 0.0f : to_float(bias[column]);
}

// The cell math of batch row b, unit `unit` (local index j) at one step; `preact` holds the tile's h W_hh^T.
template <typename T>
__device__ inline void lstm_point(const ForwardParams<T>& p, size_t row, int b, int unit, int j, int units_per_cta,
                                  const float* preact, float* cell, T* h_write) {
    const int hidden = p.hidden;
    const T* xg = p.input_gates + row * Lstm::kGates * hidden;
    float pre[Lstm::kGates];
#pragma unroll
    for (int g = 0; g < Lstm::kGates; ++g) {
        const int column = gate_column(g, unit, hidden);
        pre[g] = to_float(xg[column]) + bias_of(p.bias_hh, column) + preact[g * units_per_cta + j];
    }
    const float c_prev = cell[b * units_per_cta + j];
    const LstmForward<float> s = lstm_forward<float>(pre[0], pre[1], pre[2], pre[3], c_prev);
    if (p.saved != nullptr) {
        const float slots[Lstm::kSavedWidth] = {s.i, s.f, s.g, s.o, c_prev};
#pragma unroll
        for (int k = 0; k < Lstm::kSavedWidth; ++k) {
            p.saved[saved_index(row, k, unit, hidden, Lstm::kSavedWidth)] = slots[k];
        }
    }
    cell[b * units_per_cta + j] = s.c;
    const T h = from_float<T>(s.h);
    p.output[row * hidden + unit] = h;
    h_write[static_cast<size_t>(b) * hidden + unit] = h;
}

template <typename T>
__device__ inline void gru_point(const ForwardParams<T>& p, size_t row, int b, int unit, int j, int units_per_cta,
                                 const float* preact, const T* h_read, T* h_write) {
    const int hidden = p.hidden;
    const T* xg = p.input_gates + row * Gru::kGates * hidden;
    const int r_col = gate_column(0, unit, hidden), z_col = gate_column(1, unit, hidden);
    const int n_col = gate_column(2, unit, hidden);
    const float pre_r = to_float(xg[r_col]) + bias_of(p.bias_hh, r_col) + preact[0 * units_per_cta + j];
    const float pre_z = to_float(xg[z_col]) + bias_of(p.bias_hh, z_col) + preact[1 * units_per_cta + j];
    const float h_n = preact[2 * units_per_cta + j] + bias_of(p.bias_hh, n_col);
    const size_t state = static_cast<size_t>(b) * hidden + unit;
    const float h_prev = to_float(__ldcg(h_read + state));
    const GruForward<float> s = gru_forward<float>(pre_r, pre_z, to_float(xg[n_col]), h_n, h_prev);
    if (p.saved != nullptr) {
        const float slots[Gru::kSavedWidth] = {s.r, s.z, s.n, h_n};
#pragma unroll
        for (int k = 0; k < Gru::kSavedWidth; ++k) {
            p.saved[saved_index(row, k, unit, hidden, Gru::kSavedWidth)] = slots[k];
        }
    }
    const T h = from_float<T>(s.h);
    p.output[row * hidden + unit] = h;
    h_write[state] = h;
}

template <typename Cell, typename T>
__global__ void __launch_bounds__(kThreads, kRegisterCapBlocks)
    forward_kernel(const ForwardParams<T> p, const int units_per_cta, const SharedLayout layout) {
    cg::grid_group grid = cg::this_grid();
    unsigned char* smem = dynamic_shared_memory();
    T* weight = reinterpret_cast<T*>(smem + layout.weight_offset);              // [gates * units_per_cta, hidden]
    float* h_tile = reinterpret_cast<float*>(smem + layout.h_tile_offset);      // [kBatchTile, hidden]
    float* preact = reinterpret_cast<float*>(smem + layout.preact_offset);      // [kBatchTile, gates * units_per_cta]
    float* cell = reinterpret_cast<float*>(smem + layout.cell_offset);          // [batch, units_per_cta] (LSTM)

    const int hidden = p.hidden, batch = p.batch;
    const int unit0 = first_unit(blockIdx.x, units_per_cta);
    const int units = units_of_cta(blockIdx.x, units_per_cta, hidden);
    const int rows = Cell::kGates * units_per_cta;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;

    for (int i = threadIdx.x; i < rows * hidden; i += kThreads) {
        const int r = i / hidden, k = i % hidden;
        const int j = local_unit(r, units_per_cta);
        if (j < units) {
            const int w_row = gate_column(local_gate(r, units_per_cta), unit0 + j, hidden);
            weight[i] = p.weight_hh[static_cast<size_t>(w_row) * hidden + k];
        }
    }
    if constexpr (Cell::kHasCellState) {
        for (int i = threadIdx.x; i < batch * units; i += kThreads) {
            const int b = i / units, j = i % units;
            cell[b * units_per_cta + j] = to_float(p.c0[static_cast<size_t>(b) * hidden + unit0 + j]);
        }
    }
    __syncthreads();

    for (int s = 0; s < p.steps; ++s) {
        const StepRows step = step_rows_of(p.step_rows, step_at(s, p.steps, p.reverse), batch);
        const T* h_read = p.h_exchange + static_cast<size_t>(read_buffer(s)) * batch * hidden;
        T* h_write = p.h_exchange + static_cast<size_t>(read_buffer(s) ^ 1) * batch * hidden;

        for (int b0 = 0; b0 < step.active; b0 += kBatchTile) {
            const int tile_rows = min(kBatchTile, step.active - b0);
            const T* h_tile_source = h_read + static_cast<size_t>(b0) * hidden;
            // Rows past the tile's end are zeros, so the unrolled accumulators below never read unset memory.
            for (int i = threadIdx.x; i < kBatchTile * hidden; i += kThreads) {
                h_tile[i] = i / hidden < tile_rows ? to_float(__ldcg(h_tile_source + i)) : 0.0f;
            }
            __syncthreads();

            for (int r = warp; r < rows; r += kWarps) {
                if (local_unit(r, units_per_cta) >= units) continue;  // same r for the whole warp
                const T* w = weight + static_cast<size_t>(r) * hidden;
                float acc[kBatchTile];
#pragma unroll
                for (int bt = 0; bt < kBatchTile; ++bt) acc[bt] = 0.0f;
                for (int k = lane; k < hidden; k += kWarpSize) {
                    const float wk = to_float(w[k]);
#pragma unroll
                    for (int bt = 0; bt < kBatchTile; ++bt) acc[bt] += wk * h_tile[bt * hidden + k];
                }
                // Only the tile's rows are reduced: at batch 1 that is one reduction instead of kBatchTile.
#pragma unroll
                for (int bt = 0; bt < kBatchTile; ++bt) {
                    if (bt < tile_rows) acc[bt] = warp_sum(acc[bt]);
                }
                if (lane == 0) {
#pragma unroll
                    for (int bt = 0; bt < kBatchTile; ++bt) {
                        if (bt < tile_rows) preact[bt * rows + r] = acc[bt];
                    }
                }
            }
            __syncthreads();

            for (int i = threadIdx.x; i < tile_rows * units; i += kThreads) {
                const int bt = i / units, j = i % units, b = b0 + bt;
                const size_t row = static_cast<size_t>(step.offset) + b;
                if constexpr (Cell::kHasCellState) {
                    lstm_point(p, row, b, unit0 + j, j, units_per_cta, preact + bt * rows, cell, h_write);
                } else {
                    gru_point(p, row, b, unit0 + j, j, units_per_cta, preact + bt * rows, h_read, h_write);
                }
            }
            __syncthreads();  // the next tile restages h_tile and rewrites preact
        }
        // Rows inactive at this step (packed input) keep their h for the steps where they are active again.
        for (int i = threadIdx.x; i < (batch - step.active) * units; i += kThreads) {
            const size_t state = static_cast<size_t>(step.active + i / units) * hidden + unit0 + i % units;
            h_write[state] = __ldcg(h_read + state);
        }
        grid.sync();
    }

    // This CTA wrote its units of the final buffer itself (or the launcher did: h0 when there are no steps).
    const T* h_final = p.h_exchange + static_cast<size_t>(read_buffer(p.steps)) * batch * hidden;
    for (int i = threadIdx.x; i < batch * units; i += kThreads) {
        const int b = i / units, j = i % units;
        const size_t state = static_cast<size_t>(b) * hidden + unit0 + j;
        p.h_n[state] = __ldcg(h_final + state);
        if constexpr (Cell::kHasCellState) p.c_n[state] = from_float<T>(cell[b * units_per_cta + j]);
    }
}

template <typename Cell, typename T>
cudaError_t launch(const ForwardArgs& a, cudaStream_t stream) {
    DeviceLimits limits;
    cudaError_t error = current_device_limits(&limits);
    if (error != cudaSuccess) return error;
    const Partition part = plan(Cell::kGates, Cell::kHasCellState, a.hidden, a.batch, sizeof(T), limits);
    if (part.verdict != Verdict::kFits) return cudaErrorInvalidConfiguration;

    const size_t state_bytes = static_cast<size_t>(a.batch) * a.hidden * sizeof(T);
    error = cudaMemcpyAsync(a.h_exchange, a.h0, state_bytes, cudaMemcpyDeviceToDevice, stream);
    if (error != cudaSuccess) return error;

    ForwardParams<T> params{static_cast<const T*>(a.input_gates),
                            static_cast<const T*>(a.weight_hh),
                            static_cast<const T*>(a.bias_hh),
                            static_cast<const T*>(a.c0),
                            a.step_rows,
                            static_cast<T*>(a.h_exchange),
                            static_cast<T*>(a.output),
                            static_cast<T*>(a.h_n),
                            static_cast<T*>(a.c_n),
                            a.saved,
                            a.steps,
                            a.batch,
                            a.hidden,
                            a.reverse};
    int units_per_cta = part.units_per_cta;
    SharedLayout layout = part.smem;
    void* kernel_args[] = {&params, &units_per_cta, &layout};
    return launch_cooperative(forward_kernel<Cell, T>, part.ctas, part.smem.total_bytes, kernel_args,
                              limits.multiprocessors, stream);
}

template <typename Cell>
cudaError_t launch_for_dtype(Dtype dtype, const ForwardArgs& args, cudaStream_t stream) {
    switch (dtype) {
        case Dtype::kFloat32: return launch<Cell, float>(args, stream);
        case Dtype::kFloat16: return launch<Cell, __half>(args, stream);
        case Dtype::kBFloat16: return launch<Cell, __nv_bfloat16>(args, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t current_device_limits(DeviceLimits* limits) {
    int device = 0, cooperative = 0;
    cudaError_t error = cudaGetDevice(&device);
    if (error == cudaSuccess) error = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
    if (error == cudaSuccess && !cooperative) return cudaErrorNotSupported;
    if (error == cudaSuccess) {
        error = cudaDeviceGetAttribute(&limits->multiprocessors, cudaDevAttrMultiProcessorCount, device);
    }
    if (error == cudaSuccess) {
        error = cudaDeviceGetAttribute(&limits->shared_memory_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                       device);
    }
    if (error == cudaSuccess) {
        error = cudaDeviceGetAttribute(&limits->registers_per_multiprocessor, cudaDevAttrMaxRegistersPerMultiprocessor,
                                       device);
    }
    if (error == cudaSuccess) {
        error = cudaDeviceGetAttribute(&limits->max_threads_per_block, cudaDevAttrMaxThreadsPerBlock, device);
    }
    return error;
}

cudaError_t forward(CellKind cell, Dtype dtype, const ForwardArgs& args, cudaStream_t stream) {
    switch (cell) {
        case CellKind::kLstm: return launch_for_dtype<Lstm>(dtype, args, stream);
        case CellKind::kGru: return launch_for_dtype<Gru>(dtype, args, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace persistent
}  // namespace fused_rnn
