// XXH3-64 with the widest vector unit this CPU has (AVX-512, AVX2, else SSE2), chosen once at
// run time. The digests are the same bytes whatever unit computes them (xxHash guarantees it).
#pragma once

#include <cstddef>
#include <cstdint>

#include "xxhash.h"

namespace fixedram {

// One-shot XXH3-64 of [data, data + len).
uint64_t Xxh3Hash(const void* data, size_t len);
// XXH3_64bits_update with the same unit.
void Xxh3Update(XXH3_state_t* state, const void* data, size_t len);
// Which unit runs: "avx512", "avx2" or "sse2" (for the debug log and the tests).
const char* Xxh3Unit();

}  // namespace fixedram
