// The CPU recurrence (recurrence.h) for AVX2 + FMA, the flags every C++ source is compiled with
// (fused_rnn/backends/native.py: cxx_flags); on other architectures, for at::vec's default there.
#include "recurrence.h"
