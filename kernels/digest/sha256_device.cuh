// SHA-256 for CUDA device code, written from FIPS 180-4 (sections 4.1.2, 4.2.2, 5.1.1, 5.3.3,
// 6.2), specialised for the two message shapes of the RFC 6962 trees fieldprint builds on the GPU:
//   - a one-byte prefix followed by a payload read from memory (a leaf: 0x00 || chunk, at most
//     1 + 1024 bytes, 17 compression blocks), and
//   - 0x01 || left || right with two 32-byte digests held in registers (a node: 65 bytes, two
//     blocks).
//
// Design. A digest is carried as its eight big-endian state words (word i holds digest bytes
// 4i..4i+3, most significant first); callers byte-swap only when storing to memory. A payload is
// consumed as 32-bit big-endian groups G[k] = payload bytes 4k..4k+3. The one-byte prefix shifts
// every message word by a byte, so message word i is
//     W[i] = (G[i - 1] << 24) | (G[i] >> 8),   with the prefix as the low byte of G[-1],
// one funnel shift per word: unaligned prefixed messages cost nothing extra. Padding (the 0x80
// byte, zeros and the 64-bit bit length) is added here, so sources only describe their payload.
//
// The compression function is fully unrolled with a rolling 16-word schedule so that every
// message word, state word and round constant index is a compile-time constant (registers and
// constant-bank operands, no local memory).
//
// Thread-safety: device functions on per-thread registers; no shared state.
#pragma once

#include <cstdint>

namespace fp::kernels::sha256 {

inline constexpr int kDigestWords = 8;
inline constexpr int kBlockWords = 16;
inline constexpr uint32_t kBlockBytes = 64;
// The message bit length must fit the 32 low bits of the 64-bit length field, which these
// messages (at most a few KiB) always do; Sha256Prefixed documents the bound.
inline constexpr uint32_t kMaxPayloadBytes = (1u << 29) - 2;

namespace internal {

// FIPS 180-4 section 4.2.2: the first 32 bits of the fractional parts of the cube roots of the
// first 64 primes. `static`: whole-program CUDA compilation gives each translation unit its own
// copy in the constant bank.
static __constant__ const uint32_t kRoundConstants[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

__device__ __forceinline__ uint32_t RotateRight(uint32_t x, int n) {
  return __funnelshift_r(x, x, n);
}

// FIPS 180-4 (4.4)-(4.7).
__device__ __forceinline__ uint32_t BigSigma0(uint32_t x) {
  return RotateRight(x, 2) ^ RotateRight(x, 13) ^ RotateRight(x, 22);
}
__device__ __forceinline__ uint32_t BigSigma1(uint32_t x) {
  return RotateRight(x, 6) ^ RotateRight(x, 11) ^ RotateRight(x, 25);
}
__device__ __forceinline__ uint32_t SmallSigma0(uint32_t x) {
  return RotateRight(x, 7) ^ RotateRight(x, 18) ^ (x >> 3);
}
__device__ __forceinline__ uint32_t SmallSigma1(uint32_t x) {
  return RotateRight(x, 17) ^ RotateRight(x, 19) ^ (x >> 10);
}
__device__ __forceinline__ uint32_t Choose(uint32_t x, uint32_t y, uint32_t z) {
  return (x & y) ^ (~x & z);
}
__device__ __forceinline__ uint32_t Majority(uint32_t x, uint32_t y, uint32_t z) {
  return (x & y) ^ (x & z) ^ (y & z);
}

// (G[i - 1] << 24) | (G[i] >> 8): message word i of a message with a one-byte prefix.
__device__ __forceinline__ uint32_t ShiftInPreviousByte(uint32_t previous, uint32_t current) {
  return __funnelshift_r(current, previous, 8);
}

}  // namespace internal

// FIPS 180-4 section 5.3.3.
__device__ __forceinline__ void InitState(uint32_t state[kDigestWords]) {
  state[0] = 0x6a09e667;
  state[1] = 0xbb67ae85;
  state[2] = 0x3c6ef372;
  state[3] = 0xa54ff53a;
  state[4] = 0x510e527f;
  state[5] = 0x9b05688c;
  state[6] = 0x1f83d9ab;
  state[7] = 0x5be0cd19;
}

// FIPS 180-4 section 6.2.2: folds one 512-bit block (16 big-endian message words) into `state`.
// `schedule` is consumed: it is overwritten by the message schedule in place.
__device__ __forceinline__ void Compress(uint32_t state[kDigestWords],
                                         uint32_t schedule[kBlockWords]) {
  using namespace internal;
  uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
  uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
#pragma unroll
  for (int t = 0; t < 64; ++t) {
    if (t >= 16) {
      schedule[t & 15] += SmallSigma1(schedule[(t - 2) & 15]) + schedule[(t - 7) & 15] +
                          SmallSigma0(schedule[(t - 15) & 15]);
    }
    const uint32_t t1 = h + BigSigma1(e) + Choose(e, f, g) + kRoundConstants[t] + schedule[t & 15];
    const uint32_t t2 = BigSigma0(a) + Majority(a, b, c);
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
  state[4] += e;
  state[5] += f;
  state[6] += g;
  state[7] += h;
}

// SHA-256 of the empty message: one block holding only the padding.
__device__ __forceinline__ void HashEmpty(uint32_t digest[kDigestWords]) {
  uint32_t schedule[kBlockWords] = {0x80000000u};
  InitState(digest);
  Compress(digest, schedule);
}

// SHA-256(prefix_byte || payload) for a payload of `payload_bytes` bytes (at most
// kMaxPayloadBytes; callers pass at most a few KiB) described by `source`, which must provide
//   __device__ void Fetch(uint32_t block, uint32_t raw[16]) const;
//       issue the loads of payload bytes [64 block, 64 block + 64) into `raw`, in any encoding
//       of the source's choice, reading nothing at or past payload_bytes;
//   __device__ void Decode(uint32_t raw[16]) const;
//       turn what Fetch produced into the 16 big-endian groups of those payload bytes, with
//       every byte at or past payload_bytes zero.
// Fetch for the next block is issued before the current block is compressed, so memory latency
// overlaps the 64 rounds. Writes the digest's state words to `digest`.
template <typename Source>
__device__ __forceinline__ void HashPrefixed(uint32_t prefix_byte, uint32_t payload_bytes,
                                             const Source& source, uint32_t digest[kDigestWords]) {
  // Message = prefix + payload + 0x80 + zeros + 8 length bytes, rounded up to whole blocks.
  const uint32_t blocks = (payload_bytes + 1 + 1 + 8 + kBlockBytes - 1) / kBlockBytes;
  // The 0x80 terminator is payload byte `payload_bytes`, in group payload_bytes / 4.
  const uint32_t marker_block = payload_bytes / kBlockBytes;
  const uint32_t marker_word = (payload_bytes % kBlockBytes) / 4;
  const uint32_t marker = 0x80u << (24 - 8 * (payload_bytes % 4));
  uint32_t raw[kBlockWords];
  uint32_t previous_group = prefix_byte;
  InitState(digest);
  source.Fetch(0, raw);
#pragma unroll 1
  for (uint32_t block = 0; block < blocks; ++block) {
    source.Decode(raw);
    if (block == marker_block) {
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) raw[i] |= (i == marker_word) ? marker : 0u;
    }
    uint32_t schedule[kBlockWords];
#pragma unroll
    for (int i = 0; i < kBlockWords; ++i) {
      schedule[i] = internal::ShiftInPreviousByte(i == 0 ? previous_group : raw[i - 1], raw[i]);
    }
    previous_group = raw[kBlockWords - 1];
    if (block + 1 == blocks) {
      // The length field: the terminator and the payload never reach these bytes (that is what
      // the block count above guarantees), and the bit length fits 32 bits.
      schedule[14] = 0;
      schedule[15] = (payload_bytes + 1) * 8;
    } else {
      source.Fetch(block + 1, raw);
    }
    Compress(digest, schedule);
  }
}

// RFC 6962 interior node: SHA-256(0x01 || left || right), digests as state words.
__device__ __forceinline__ void HashNode(const uint32_t left[kDigestWords],
                                         const uint32_t right[kDigestWords],
                                         uint32_t digest[kDigestWords]) {
  uint32_t schedule[kBlockWords];
  schedule[0] = internal::ShiftInPreviousByte(0x01, left[0]);
#pragma unroll
  for (int i = 1; i < kDigestWords; ++i) {
    schedule[i] = internal::ShiftInPreviousByte(left[i - 1], left[i]);
  }
  schedule[8] = internal::ShiftInPreviousByte(left[7], right[0]);
#pragma unroll
  for (int i = 1; i < kDigestWords; ++i) {
    schedule[8 + i] = internal::ShiftInPreviousByte(right[i - 1], right[i]);
  }
  InitState(digest);
  Compress(digest, schedule);
  // Second block: the last byte of `right`, the 0x80 terminator, zeros, and 65 * 8 bits.
  schedule[0] = internal::ShiftInPreviousByte(right[7], 0x80000000u);
#pragma unroll
  for (int i = 1; i < 15; ++i) schedule[i] = 0;
  schedule[15] = 65 * 8;
  Compress(digest, schedule);
}

}  // namespace fp::kernels::sha256
