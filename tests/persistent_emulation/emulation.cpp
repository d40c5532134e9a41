// The CPU emulation's scheduler and runtime (see emulation.h), and the C entry points the tests call through ctypes:
// the persistent launchers of csrc/persistent/launch.h on CPU pointers, on an emulated device of chosen size.
#include <ucontext.h>

#include <memory>
#include <vector>

#include "emulation.h"
#include "launch.h"

namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;

struct Barrier {
    int participants = 0, arrived = 0;
    long generation = 0;
};

struct Fiber {
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    emulation::Index thread, block;
    bool done = false;
};

struct Grid {
    void (*body)(void*);
    void* body_context;
    std::vector<Fiber> fibers;
    std::vector<std::vector<unsigned char>> shared;  // per block
    std::vector<Barrier> block_barriers, warp_barriers;
    std::vector<float> warp_lanes;  // [warps][kWarp]: the values being shuffled
    Barrier grid_barrier;
    ucontext_t scheduler;
    size_t current = 0;
    long arrivals = 0;  // progress: barriers arrived at, and fibers finished
    unsigned block_size = 0;
};

Grid* grid = nullptr;

struct Device {
    int multiprocessors = 4;
    int shared_memory_per_block_optin = 227 * 1024;
} device;

Fiber& current() { return grid->fibers[grid->current]; }

void yield() { swapcontext(&current().context, &grid->scheduler); }

void arrive_and_wait(Barrier& barrier) {
    ++grid->arrivals;
    const long generation = barrier.generation;
    if (++barrier.arrived == barrier.participants) {
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    while (barrier.generation == generation) yield();
}

size_t warp_of_current() {
    const Fiber& f = current();
    return f.block.x * ((grid->block_size + kWarp - 1) / kWarp) + f.thread.x / kWarp;
}

void fiber_main() {
    grid->body(grid->body_context);
    current().done = true;
    ++grid->arrivals;
}

}  // namespace

cudaError_t cudaGetDevice(int* device_index) {
    *device_index = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
    switch (attribute) {
        case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
        case cudaDevAttrMultiProcessorCount: *value = device.multiprocessors; break;
        case cudaDevAttrCooperativeLaunch: *value = 1; break;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = device.shared_memory_per_block_optin; break;
        case cudaDevAttrMaxRegistersPerMultiprocessor: *value = 65536; break;
    }
    return cudaSuccess;
}

const char* cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "emulated error"; }

namespace emulation {

int blocks_per_multiprocessor(size_t smem_bytes) {
    return smem_bytes <= static_cast<size_t>(device.shared_memory_per_block_optin) ? 1 : 0;
}

const Index& thread_index() { return current().thread; }
const Index& block_index() { return current().block; }
void sync_block() { arrive_and_wait(grid->block_barriers[current().block.x]); }
void sync_grid() { arrive_and_wait(grid->grid_barrier); }

float shuffle_xor(float value, int lane_mask) {
    const size_t warp = warp_of_current();
    const unsigned lane = current().thread.x % kWarp;
    float* lanes = &grid->warp_lanes[warp * kWarp];
    lanes[lane] = value;
    arrive_and_wait(grid->warp_barriers[warp]);
    const float other = lanes[lane ^ lane_mask];
    arrive_and_wait(grid->warp_barriers[warp]);  // nobody overwrites a lane before all have read
    return other;
}

bool run(void (*body)(void*), void* context, unsigned blocks, unsigned block_size, size_t smem_bytes) {
    Grid g;
    g.body = body;
    g.body_context = context;
    g.block_size = block_size;
    const unsigned warps_per_block = (block_size + kWarp - 1) / kWarp;
    // Shared memory starts as 0xff bytes (NaN floats), so a read of what no thread wrote shows in the results.
    g.shared.assign(blocks, std::vector<unsigned char>(smem_bytes, 0xff));
    g.block_barriers.assign(blocks, Barrier{static_cast<int>(block_size)});
    g.warp_barriers.assign(static_cast<size_t>(blocks) * warps_per_block, Barrier{kWarp});
    g.warp_lanes.assign(static_cast<size_t>(blocks) * warps_per_block * kWarp, 0.0f);
    g.grid_barrier.participants = static_cast<int>(blocks * block_size);
    g.fibers.resize(static_cast<size_t>(blocks) * block_size);
    grid = &g;
    for (size_t i = 0; i < g.fibers.size(); ++i) {
        Fiber& f = g.fibers[i];
        f.thread = {static_cast<unsigned>(i % block_size), 0, 0};
        f.block = {static_cast<unsigned>(i / block_size), 0, 0};
        f.stack.reset(new char[kStackBytes]);
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.get();
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = &g.scheduler;
        makecontext(&f.context, fiber_main, 0);
    }
    bool finished = false, deadlocked = false;
    while (!finished && !deadlocked) {
        const long before = g.arrivals;
        finished = true;
        for (g.current = 0; g.current < g.fibers.size(); ++g.current) {
            if (g.fibers[g.current].done) continue;
            finished = false;
            swapcontext(&g.scheduler, &g.fibers[g.current].context);
        }
        // A round in which no fiber arrived anywhere or finished: the waiting ones wait for good.
        deadlocked = !finished && g.arrivals == before;
    }
    grid = nullptr;
    return finished;
}

}  // namespace emulation

namespace fused_rnn {
namespace persistent {
unsigned char* dynamic_shared_memory() { return grid->shared[current().block.x].data(); }
}  // namespace persistent
}  // namespace fused_rnn

// ------------------------------------------------------------------------------------ entry points for ctypes

using fused_rnn::persistent::BackwardArgs;
using fused_rnn::persistent::CellKind;
using fused_rnn::persistent::Dtype;
using fused_rnn::persistent::ForwardArgs;

extern "C" {

void emulation_set_device(int multiprocessors, int shared_memory_per_block_optin) {
    device.multiprocessors = multiprocessors;
    device.shared_memory_per_block_optin = shared_memory_per_block_optin;
}

int emulation_forward(int cell, int dtype, const ForwardArgs* args) {
    return fused_rnn::persistent::forward(static_cast<CellKind>(cell), static_cast<Dtype>(dtype), *args, nullptr);
}

int emulation_backward(int cell, int dtype, const BackwardArgs* args) {
    return fused_rnn::persistent::backward(static_cast<CellKind>(cell), static_cast<Dtype>(dtype), *args, nullptr);
}

// sizeof of the argument structs, so the tests can check their ctypes mirrors against the compiler's layout.
size_t emulation_forward_args_size() { return sizeof(ForwardArgs); }
size_t emulation_backward_args_size() { return sizeof(BackwardArgs); }
}
