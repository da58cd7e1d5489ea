// Philox4x32-10 (see philox.h for the reference).
//
// Thread-safety: pure functions.
#include "kernels/sampling/philox.h"

namespace fp::kernels {
namespace {

PhiloxCounter Round(const PhiloxCounter& x, const PhiloxKey& key) {
  const uint64_t product0 = uint64_t{kPhiloxMultiplier0} * x[0];
  const uint64_t product1 = uint64_t{kPhiloxMultiplier1} * x[2];
  const auto hi0 = static_cast<uint32_t>(product0 >> 32);
  const auto lo0 = static_cast<uint32_t>(product0);
  const auto hi1 = static_cast<uint32_t>(product1 >> 32);
  const auto lo1 = static_cast<uint32_t>(product1);
  return {hi1 ^ x[1] ^ key[0], lo1, hi0 ^ x[3] ^ key[1], lo0};
}

}  // namespace

PhiloxCounter Philox4x32(const PhiloxCounter& counter, const PhiloxKey& key) {
  PhiloxCounter x = counter;
  PhiloxKey k = key;
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k[0] += kPhiloxWeyl0;
      k[1] += kPhiloxWeyl1;
    }
    x = Round(x, k);
  }
  return x;
}

double PhiloxUniform(uint64_t seed, uint64_t step) {
  const PhiloxKey key = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  const PhiloxCounter counter = {static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), 0u,
                                 0u};
  const PhiloxCounter out = Philox4x32(counter, key);
  const uint64_t bits = (uint64_t{out[0]} << 32) | out[1];
  return static_cast<double>(bits >> 11) * 0x1p-53;
}

}  // namespace fp::kernels
