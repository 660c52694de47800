// XXH3 compiled for AVX2 (see hash.cc): called only when the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2")
#define XXH_VECTOR XXH_AVX2
#include <immintrin.h>

#include "hash.h"

namespace fixedram {

uint64_t Xxh3HashAvx2(const void* data, size_t len) { return XXH3_64bits(data, len); }
void Xxh3UpdateAvx2(XXH3_state_t* state, const void* data, size_t len) { (void)XXH3_64bits_update(state, data, len); }

}  // namespace fixedram
#endif
