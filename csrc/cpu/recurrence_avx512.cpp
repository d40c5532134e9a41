// The CPU recurrence (recurrence.h) for AVX-512, chosen at run time on CPUs that have it (recurrence.cpp). A target
// pragma, not a command-line flag, because torch.utils.cpp_extension compiles every C++ source with the same flags.
// It comes before any include but the standard library's (below) so that at::vec's AVX-512 code and everything it inlines are compiled for it; g++
// does not define the ISA macros for a pragma in C++, and SLEEF declares its 512-bit functions only under them.
// The C++ standard library comes first, outside the pragma: g++ gives implicitly defined members (std::vector's
// destructor, say) the command line's target rather than the pragma's, and from g++ 13 on they call libstdc++'s
// always_inline allocator members, which inline only into a function of the same target ("inlining failed ...:
// target specific option mismatch"). Declared before the pragma, those members have the command line's target too.
#if defined(__x86_64__) || defined(_M_X64)
#if __has_include(<bits/stdc++.h>)
#include <bits/stdc++.h>
#endif
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#undef CPU_CAPABILITY
#undef CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "recurrence.h"
#endif
