// XXH3 compiled for AVX-512 (see hash.cc): called only when the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f")
// GCC 12 warns about its own _mm512_undefined_* inside the intrinsics headers
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define XXH_VECTOR XXH_AVX512
#define FXR_XXH3_UNIT Avx512
#include "hash-unit.h"
#endif
