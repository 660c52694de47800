// The body of hash-avx2.cc and hash-avx512.cc: XXH3 compiled for the unit that file's target
// pragma names, as Xxh3Hash<UNIT> and Xxh3Update<UNIT> (see hash.cc). Included once per unit.
#include <immintrin.h>

#include "hash.h"

#define FXR_CONCAT2(a, b) a##b
#define FXR_CONCAT(a, b) FXR_CONCAT2(a, b)

namespace fixedram {

uint64_t FXR_CONCAT(Xxh3Hash, FXR_XXH3_UNIT)(const void* data, size_t len) { return XXH3_64bits(data, len); }
void FXR_CONCAT(Xxh3Update, FXR_XXH3_UNIT)(XXH3_state_t* state, const void* data, size_t len) {
  (void)XXH3_64bits_update(state, data, len);
}

}  // namespace fixedram
