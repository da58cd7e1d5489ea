// Test-only reference: a literal, recursive transcription of RFC 9162's definitions of MTH
// (section 2.1.1), PATH (2.1.3.1) and PROOF/SUBPROOF (2.1.4.1), sharing no code with merkle.cc
// but the SHA-256 primitive. Tests compare the optimised implementation against it.
//
// Leaves are a uniform leaf hash everywhere except at listed indices, so the same reference
// serves small explicit trees (every leaf listed) and virtual trees of up to 2^64 - 1 leaves (a
// few listed): the MTH of a range without listed leaves depends only on its length and is
// memoised by length.
//
// Thread-safety: not thread-safe (the memo is mutable); one object per test.
#pragma once

#include <bit>
#include <cstdint>
#include <map>
#include <vector>

#include "common/crypto/sha256.h"

namespace fp::merkle::testing {

class NaiveTree {
 public:
  // `size` leaves; leaf i's hash is special.at(i) if present, uniform_leaf otherwise.
  NaiveTree(uint64_t size, Hash uniform_leaf, std::map<uint64_t, Hash> special)
      : size_(size), uniform_leaf_(uniform_leaf), special_(std::move(special)) {}

  // An explicit tree: every leaf listed.
  static NaiveTree FromLeaves(const std::vector<Hash>& leaves) {
    std::map<uint64_t, Hash> special;
    for (uint64_t i = 0; i < leaves.size(); ++i) special[i] = leaves[i];
    return NaiveTree(leaves.size(), Hash{}, std::move(special));
  }

  static Hash Leaf(ByteSpan data) {
    const uint8_t prefix = 0x00;
    return Sha256Parts({ByteSpan(&prefix, 1), data});
  }
  static Hash Node(const Hash& left, const Hash& right) {
    const uint8_t prefix = 0x01;
    return Sha256Parts({ByteSpan(&prefix, 1), ByteSpan(left), ByteSpan(right)});
  }

  uint64_t size() const { return size_; }
  Hash LeafAt(uint64_t i) const {
    auto it = special_.find(i);
    return it == special_.end() ? uniform_leaf_ : it->second;
  }

  // MTH(D[0:n]).
  Hash Root(uint64_t n) { return n == 0 ? Sha256(ByteSpan()) : Mth(0, n); }

  // MTH(D[begin:begin+n]), n >= 1.
  Hash Mth(uint64_t begin, uint64_t n) {
    if (n == 1) return LeafAt(begin);
    if (!HasSpecial(begin, n)) return UniformMth(n);
    const uint64_t k = SplitPoint(n);
    return Node(Mth(begin, k), Mth(begin + k, n - k));
  }

  // PATH(m, D[0:n]).
  std::vector<Hash> Path(uint64_t m, uint64_t n) { return PathIn(m, 0, n); }

  // PROOF(m, D[0:n]) = SUBPROOF(m, D[0:n], true).
  std::vector<Hash> Proof(uint64_t m, uint64_t n) { return SubProof(m, 0, n, true); }

  // The largest power of two smaller than n (n >= 2): RFC 9162's k.
  static uint64_t SplitPoint(uint64_t n) { return uint64_t{1} << (std::bit_width(n - 1) - 1); }

 private:
  bool HasSpecial(uint64_t begin, uint64_t n) const {
    auto it = special_.lower_bound(begin);
    return it != special_.end() && it->first - begin < n;
  }

  Hash UniformMth(uint64_t n) {
    if (n == 1) return uniform_leaf_;
    auto it = uniform_memo_.find(n);
    if (it != uniform_memo_.end()) return it->second;
    const uint64_t k = SplitPoint(n);
    const Hash hash = Node(UniformMth(k), UniformMth(n - k));
    uniform_memo_[n] = hash;
    return hash;
  }

  // PATH(m, D[begin:begin+n]).
  std::vector<Hash> PathIn(uint64_t m, uint64_t begin, uint64_t n) {
    if (n == 1) return {};
    const uint64_t k = SplitPoint(n);
    std::vector<Hash> path;
    if (m < k) {
      path = PathIn(m, begin, k);
      path.push_back(Mth(begin + k, n - k));
    } else {
      path = PathIn(m - k, begin + k, n - k);
      path.push_back(Mth(begin, k));
    }
    return path;
  }

  // SUBPROOF(m, D[begin:begin+n], b).
  std::vector<Hash> SubProof(uint64_t m, uint64_t begin, uint64_t n, bool b) {
    if (m == n) {
      if (b) return {};
      return {Mth(begin, n)};
    }
    const uint64_t k = SplitPoint(n);
    std::vector<Hash> proof;
    if (m <= k) {
      proof = SubProof(m, begin, k, b);
      proof.push_back(Mth(begin + k, n - k));
    } else {
      proof = SubProof(m - k, begin + k, n - k, false);
      proof.push_back(Mth(begin, k));
    }
    return proof;
  }

  uint64_t size_;
  Hash uniform_leaf_;
  std::map<uint64_t, Hash> special_;
  std::map<uint64_t, Hash> uniform_memo_;  // UniformMth by length
};

}  // namespace fp::merkle::testing
