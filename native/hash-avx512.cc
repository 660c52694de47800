// XXH3 compiled for AVX512 (see hash.cc): called only when the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f")
// GCC 12 warns about its own _mm512_undefined_* inside the intrinsics headers
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define XXH_VECTOR XXH_AVX512
#include <immintrin.h>

#include "hash.h"

namespace fixedram {

uint64_t Xxh3HashAvx512(const void* data, size_t len) { return XXH3_64bits(data, len); }
void Xxh3UpdateAvx512(XXH3_state_t* state, const void* data, size_t len) { (void)XXH3_64bits_update(state, data, len); }

}  // namespace fixedram
#endif
