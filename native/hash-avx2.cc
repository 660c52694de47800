// XXH3 compiled for AVX2 (see hash.cc): called only when the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2")
#define XXH_VECTOR XXH_AVX2
#define FXR_XXH3_UNIT Avx2
#include "hash-unit.h"
#endif
