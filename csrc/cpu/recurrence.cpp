// Chooses the CPU recurrence compiled for the widest instruction set this CPU has, as ATen's own kernels do
// (at::get_cpu_capability, which also honours ATEN_CPU_CAPABILITY=avx2 to force the narrower one).
#include <ATen/Version.h>

#include "../sequence.h"

namespace fused_rnn {

#define FUSED_RNN_DECLARE_RECURRENCE(ISA)                                                        \
    namespace ISA {                                                                              \
    template <typename scalar_t>                                                                 \
    void recurrent_forward(const SequenceShape& shape, const ForwardBuffers<scalar_t>& buffers);   \
    template <typename scalar_t>                                                                 \
    void recurrent_backward(const SequenceShape& shape, const BackwardBuffers<scalar_t>& buffers); \
    }
FUSED_RNN_DECLARE_RECURRENCE(CPU_CAPABILITY)
#if defined(__x86_64__) || defined(_M_X64)
FUSED_RNN_DECLARE_RECURRENCE(AVX512)
#endif
#undef FUSED_RNN_DECLARE_RECURRENCE

namespace {

bool use_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
    // Read once: the choice must not change between a forward and its backward.
    static const bool chosen = at::get_cpu_capability() == "AVX512";
    return chosen;
#else
    return false;
#endif
}

}  // namespace

const char* cpu_instruction_set() {
#if defined(__x86_64__) || defined(_M_X64)
    return use_avx512() ? "AVX512" : "AVX2";
#else
    return "DEFAULT";
#endif
}

template <typename scalar_t>
void recurrent_forward_cpu(const SequenceShape& shape, const ForwardBuffers<scalar_t>& buffers) {
#if defined(__x86_64__) || defined(_M_X64)
    if (use_avx512()) return AVX512::recurrent_forward<scalar_t>(shape, buffers);
#endif
    CPU_CAPABILITY::recurrent_forward<scalar_t>(shape, buffers);
}

template <typename scalar_t>
void recurrent_backward_cpu(const SequenceShape& shape, const BackwardBuffers<scalar_t>& buffers) {
#if defined(__x86_64__) || defined(_M_X64)
    if (use_avx512()) return AVX512::recurrent_backward<scalar_t>(shape, buffers);
#endif
    CPU_CAPABILITY::recurrent_backward<scalar_t>(shape, buffers);
}

template void recurrent_forward_cpu<float>(const SequenceShape&, const ForwardBuffers<float>&);
template void recurrent_forward_cpu<double>(const SequenceShape&, const ForwardBuffers<double>&);
template void recurrent_backward_cpu<float>(const SequenceShape&, const BackwardBuffers<float>&);
template void recurrent_backward_cpu<double>(const SequenceShape&, const BackwardBuffers<double>&);

}  // namespace fused_rnn
