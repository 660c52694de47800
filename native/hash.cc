// Run-time choice of the vector unit for XXH3 (see hash.h).
//
// Why by hand: xxHash's own dispatcher (xxh_x86dispatch.c) is not in Debian's libxxhash-dev (only
// its header is), and the addon is built with the compiler's default x86-64 target (SSE2), so
// that one binary runs on every x86-64 CPU. XXH3 with AVX2 or AVX-512 hashes a page two to four
// times faster; the same header is compiled again in hash-avx2.cc and hash-avx512.cc, each with
// its own target, and this file picks one once per process.
#include "hash.h"

#include <cstdlib>
#include <cstring>

namespace fixedram {

#if defined(__x86_64__) && defined(__GNUC__)
uint64_t Xxh3HashAvx2(const void* data, size_t len);
void Xxh3UpdateAvx2(XXH3_state_t* state, const void* data, size_t len);
uint64_t Xxh3HashAvx512(const void* data, size_t len);
void Xxh3UpdateAvx512(XXH3_state_t* state, const void* data, size_t len);
#endif

namespace {

uint64_t HashDefault(const void* data, size_t len) { return XXH3_64bits(data, len); }
void UpdateDefault(XXH3_state_t* state, const void* data, size_t len) { (void)XXH3_64bits_update(state, data, len); }

struct Unit {
  uint64_t (*hash)(const void*, size_t);
  void (*update)(XXH3_state_t*, const void*, size_t);
  const char* name;
};

Unit Choose() {
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports also checks that the kernel saves the wider registers (XGETBV).
  // FIXEDRAM_XXH3=sse2|avx2 caps the unit (the tests compare the units' digests).
  __builtin_cpu_init();
  const char* cap = getenv("FIXEDRAM_XXH3");
  const bool no512 = cap != nullptr && (strcmp(cap, "sse2") == 0 || strcmp(cap, "avx2") == 0);
  const bool no256 = cap != nullptr && strcmp(cap, "sse2") == 0;
  if (!no512 && __builtin_cpu_supports("avx512f")) return {Xxh3HashAvx512, Xxh3UpdateAvx512, "avx512"};
  if (!no256 && __builtin_cpu_supports("avx2")) return {Xxh3HashAvx2, Xxh3UpdateAvx2, "avx2"};
#endif
  return {HashDefault, UpdateDefault, "sse2"};
}

const Unit& TheUnit() {
  static const Unit unit = Choose();
  return unit;
}

}  // namespace

uint64_t Xxh3Hash(const void* data, size_t len) { return TheUnit().hash(data, len); }
void Xxh3Update(XXH3_state_t* state, const void* data, size_t len) { TheUnit().update(state, data, len); }
const char* Xxh3Unit() { return TheUnit().name; }

}  // namespace fixedram
