// Philox4x32-10, the counter-based random number generator of Salmon, Moraes, Dror and Shaw,
// "Parallel random numbers: as easy as 1, 2, 3" (SC 2011), as specified there and in Random123:
// ten rounds of two 32x32->64-bit multiplications (0xD2511F53, 0xCD9E8D57) with the key bumped by
// the Weyl constants (0x9E3779B9, 0xBB67AE85) between rounds. A counter-based generator needs no
// state: the random bits of step s of session seed k are a pure function of (k, s), so any
// replica can draw them in any order.
//
// Thread-safety: pure functions.
#pragma once

#include <array>
#include <cstdint>

namespace fp::kernels {

// The Philox4x32-10 constants, shared with the device generator (sampler.cu) so both draw the
// same stream.
inline constexpr uint32_t kPhiloxMultiplier0 = 0xD2511F53u;
inline constexpr uint32_t kPhiloxMultiplier1 = 0xCD9E8D57u;
inline constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u;  // golden ratio
inline constexpr uint32_t kPhiloxWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1
inline constexpr int kPhiloxRounds = 10;

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

// One Philox4x32-10 block: four 32-bit outputs for (counter, key).
PhiloxCounter Philox4x32(const PhiloxCounter& counter, const PhiloxKey& key);

// The sampler's draw for (seed, step): key = {low 32 bits of seed, high 32 bits of seed},
// counter = {low 32 bits of step, high 32 bits of step, 0, 0}; the result is
// (((uint64(out[0]) << 32) | out[1]) >> 11) * 2^-53, a double in [0, 1).
double PhiloxUniform(uint64_t seed, uint64_t step);

}  // namespace fp::kernels
