// How the persistent whole-sequence kernel splits one layer's recurrence over the GPU, and where things live.
//
// One cooperative launch runs every time step. CTA k owns hidden units [k * units, (k + 1) * units) for all gates
// and keeps those rows of W_hh in shared memory for the whole sequence; h goes through global memory (two
// buffers, by step parity) and a grid barrier separates the steps. This header is the single source of the
// partition, the shared-memory layout and the row/column index math: the launcher sizes the launch from it, the
// kernel indexes with it, and the CPU tests compile it with g++ and compare it with fused_rnn/backends/persistent.py.
#pragma once

#if !defined(__CUDACC__) && !defined(__host__)  // plain g++ without the CUDA headers
#define __host__
#define __device__
#endif

#include <stddef.h>

namespace fused_rnn {
namespace persistent {

constexpr int kThreads = 256;  // per CTA: 8 warps share the CTA's W_hh rows
// The kernel is compiled with __launch_bounds__(kThreads, kRegisterCapBlocks): that caps registers per thread at
// registers_per_sm / (kThreads * kRegisterCapBlocks) = 128 on sm_80/sm_90, which the capacity model then assumes.
constexpr int kRegisterCapBlocks = 2;
constexpr int kMaxRegistersPerThread = 128;
// Batch rows whose h is staged in shared memory (as fp32) at a time: one accumulator per row per thread, so the
// dot products stay in registers for any batch, and the staging buffer does not grow with the batch.
constexpr int kBatchTile = 8;
// The backward stages gate gradients, gates times wider than h: a smaller tile keeps fp32 LSTM H=1024 on chip.
constexpr int kBackwardBatchTile = 4;
constexpr int kAlignment = 16;  // bytes; every shared-memory region starts on a 16-byte boundary

// What decides whether the kernel can run: a verdict, first reason found.
enum class Verdict : int {
    kFits = 0,
    kTooManyThreads = 1,    // kThreads exceeds the device's threads per block
    kTooFewRegisters = 2,   // kThreads * kMaxRegistersPerThread exceeds the registers of one SM
    kSharedMemory = 3,      // the CTA's W_hh slice and buffers exceed the shared memory one block may opt into
    kEmptyProblem = 4,      // hidden or batch is not positive
};

struct DeviceLimits {
    int multiprocessors;
    int shared_memory_per_block_optin;  // bytes (cudaDevAttrMaxSharedMemoryPerBlockOptin)
    int registers_per_multiprocessor;
    int max_threads_per_block;
};

// Shared-memory layout of one CTA, in bytes from the start of its dynamic shared memory.
struct SharedLayout {
    size_t weight_offset, weight_bytes;  // [gates * units, hidden] elements of the storage dtype
    size_t h_tile_offset, h_tile_bytes;  // [kBatchTile, hidden] fp32: the staged rows of h
    size_t preact_offset, preact_bytes;  // [kBatchTile, gates * units] fp32: h W_hh^T of the tile's rows
    size_t cell_offset, cell_bytes;      // [batch, units] fp32: the LSTM cell state of the CTA's units (else 0)
    size_t total_bytes;
};

struct Partition {
    Verdict verdict;
    int ctas;           // one per SM at most, so all are co-resident for the grid barrier
    int units_per_cta;  // hidden units per CTA (the last CTA may own fewer)
    SharedLayout smem;
};

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

__host__ __device__ inline size_t align_up(size_t bytes) {
    return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

__host__ __device__ inline SharedLayout shared_layout(int gates, bool has_cell_state, int hidden, int batch,
                                                      int element_bytes, int units) {
    SharedLayout s;
    s.weight_offset = 0;
    s.weight_bytes = static_cast<size_t>(gates) * units * hidden * element_bytes;
    s.h_tile_offset = align_up(s.weight_offset + s.weight_bytes);
    s.h_tile_bytes = static_cast<size_t>(kBatchTile) * hidden * sizeof(float);
    s.preact_offset = align_up(s.h_tile_offset + s.h_tile_bytes);
    s.preact_bytes = static_cast<size_t>(kBatchTile) * gates * units * sizeof(float);
    s.cell_offset = align_up(s.preact_offset + s.preact_bytes);
    s.cell_bytes = has_cell_state ? static_cast<size_t>(batch) * units * sizeof(float) : 0;
    s.total_bytes = align_up(s.cell_offset + s.cell_bytes);
    return s;
}

// The fewest units per CTA that keep to one CTA per SM: more CTAs share the weights and the work, and a larger
// slice only needs more shared memory, so if this partition does not fit, none does.
__host__ __device__ inline int units_per_cta_of(int hidden, DeviceLimits device) {
    return hidden > 0 ? ceil_div(hidden, device.multiprocessors) : 0;
}

__host__ __device__ inline Verdict verdict_of(int hidden, int batch, size_t smem_bytes, DeviceLimits device) {
    if (hidden <= 0 || batch <= 0) return Verdict::kEmptyProblem;
    if (kThreads > device.max_threads_per_block) return Verdict::kTooManyThreads;
    if (static_cast<long long>(kThreads) * kMaxRegistersPerThread > device.registers_per_multiprocessor) {
        return Verdict::kTooFewRegisters;
    }
    if (smem_bytes > static_cast<size_t>(device.shared_memory_per_block_optin)) return Verdict::kSharedMemory;
    return Verdict::kFits;
}

__host__ __device__ inline Partition plan(int gates, bool has_cell_state, int hidden, int batch, int element_bytes,
                                          DeviceLimits device) {
    Partition p;
    p.units_per_cta = units_per_cta_of(hidden, device);
    p.ctas = hidden > 0 ? ceil_div(hidden, p.units_per_cta) : 0;
    p.smem = shared_layout(gates, has_cell_state, hidden, batch, element_bytes, p.units_per_cta);
    p.verdict = verdict_of(hidden, batch, p.smem.total_bytes, device);
    return p;
}

// The backward walks the steps in reverse with the same CTAs and units. Per step a CTA first turns the gate
// gradients of the step before (all units, [batch, gates * hidden] fp32, exchanged through global memory) into
// dh of its own units with its columns of W_hh, then runs the cell's backward math for its units. The gradients
// reaching h and c (the GRU's z * dh) stay in shared memory: no other CTA reads them.
struct BackwardLayout {
    size_t weight_offset, weight_bytes;        // [units, gates * hidden]: W_hh's columns of the CTA's units
    size_t grad_tile_offset, grad_tile_bytes;  // [kBackwardBatchTile, gates * hidden] fp32 staged gate gradients
    size_t dh_offset, dh_bytes;                // [batch, units] fp32: gradient reaching h through W_hh
    size_t dc_offset, dc_bytes;                // [batch, units] fp32: LSTM dc; GRU the part of dh that skips W_hh
    size_t total_bytes;
};

struct BackwardPartition {
    Verdict verdict;
    int ctas, units_per_cta;
    BackwardLayout smem;
};

__host__ __device__ inline BackwardLayout backward_layout(int gates, int hidden, int batch, int element_bytes,
                                                          int units) {
    BackwardLayout s;
    s.weight_offset = 0;
    s.weight_bytes = static_cast<size_t>(gates) * units * hidden * element_bytes;
    s.grad_tile_offset = align_up(s.weight_offset + s.weight_bytes);
    s.grad_tile_bytes = static_cast<size_t>(kBackwardBatchTile) * gates * hidden * sizeof(float);
    s.dh_offset = align_up(s.grad_tile_offset + s.grad_tile_bytes);
    s.dh_bytes = static_cast<size_t>(batch) * units * sizeof(float);
    s.dc_offset = align_up(s.dh_offset + s.dh_bytes);
    s.dc_bytes = static_cast<size_t>(batch) * units * sizeof(float);
    s.total_bytes = align_up(s.dc_offset + s.dc_bytes);
    return s;
}

__host__ __device__ inline BackwardPartition plan_backward(int gates, int hidden, int batch, int element_bytes,
                                                           DeviceLimits device) {
    BackwardPartition p;
    p.units_per_cta = units_per_cta_of(hidden, device);
    p.ctas = hidden > 0 ? ceil_div(hidden, p.units_per_cta) : 0;
    p.smem = backward_layout(gates, hidden, batch, element_bytes, p.units_per_cta);
    p.verdict = verdict_of(hidden, batch, p.smem.total_bytes, device);
    return p;
}

// ------------------------------------------------------------------------------------------- index math

// Hidden units owned by `cta`: [first, first + count); the last CTA's count may be smaller.
__host__ __device__ inline int first_unit(int cta, int units_per_cta) { return cta * units_per_cta; }

__host__ __device__ inline int units_of_cta(int cta, int units_per_cta, int hidden) {
    const int rest = hidden - first_unit(cta, units_per_cta);
    return rest < units_per_cta ? rest : units_per_cta;
}

// A CTA's local weight row r holds gate r / units of its unit r % units: gate-major, so one gate's rows of the
// CTA are contiguous, as in W_hh.
__host__ __device__ inline int local_gate(int local_row, int units_per_cta) { return local_row / units_per_cta; }
__host__ __device__ inline int local_unit(int local_row, int units_per_cta) { return local_row % units_per_cta; }

// Row of W_hh (torch.nn layout [gates * hidden, hidden]) and column of a [rows, gates * hidden] gate block.
__host__ __device__ inline int gate_column(int gate, int unit, int hidden) { return gate * hidden + unit; }

// Element of the saved activations: [rows, width * hidden] fp32, slot k of unit j at k * hidden + j, as
// fused_rnn/cells.py lays them out (LSTM i, f, g, o, c_prev; GRU r, z, n, h W_hn^T + b_hn).
__host__ __device__ inline size_t saved_index(size_t row, int slot, int unit, int hidden, int width) {
    return row * static_cast<size_t>(width) * hidden + static_cast<size_t>(slot) * hidden + unit;
}

// Rows of time step t: [offset, offset + active). Padded input (step_rows null) has batch rows every step;
// packed input passes step_rows = [steps, 2] (offset, active batch), the active rows a prefix of the batch.
struct StepRows {
    int offset, active;
};

__host__ __device__ inline StepRows step_rows_of(const int* step_rows, int t, int batch) {
    if (step_rows == nullptr) return StepRows{t * batch, batch};
    return StepRows{step_rows[2 * t], step_rows[2 * t + 1]};
}

// The step visited at position s of the walk, and the h exchange buffer (0 or 1) that step reads; it writes the
// other. Buffer 0 holds h0 at launch.
__host__ __device__ inline int step_at(int s, int steps, bool reverse) { return reverse ? steps - 1 - s : s; }
__host__ __device__ inline int read_buffer(int s) { return s & 1; }

// The backward visits the forward's steps in reverse: position s of its walk is the forward's position
// steps - 1 - s. It writes the gate gradients of position s to buffer s & 1 and reads those of s - 1 from the other.
__host__ __device__ inline int backward_step_at(int s, int steps, bool reverse) {
    return step_at(steps - 1 - s, steps, reverse);
}

}  // namespace persistent
}  // namespace fused_rnn
