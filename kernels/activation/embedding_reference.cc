// EmbeddingLookup on the CPU.
//
// Thread-safety: reentrant.
#include <string>

#include "kernels/activation/embedding.h"
#include "kernels/base/half.h"

namespace fp::kernels {

Status EmbeddingLookup(const int32_t* token_ids, const void* table, DType table_dtype, float* out,
                       int64_t num_tokens, int64_t vocab_size, int64_t dim, ThreadPool& pool) {
  if (num_tokens < 0 || vocab_size < 1 || dim < 1) {
    return InvalidArgumentError("embedding: num_tokens must be >= 0, vocab_size and dim >= 1");
  }
  if (!IsKnownDType(table_dtype)) return InvalidArgumentError("embedding: unknown table dtype");
  if (num_tokens == 0) return OkStatus();
  if (token_ids == nullptr || table == nullptr || out == nullptr) {
    return InvalidArgumentError("embedding: null pointer");
  }
  if (!IsAlignedFor(table, table_dtype)) {
    return InvalidArgumentError("embedding: table is not aligned for its dtype");
  }
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (token_ids[t] < 0 || token_ids[t] >= vocab_size) {
      return InvalidArgumentError("embedding: token id " + std::to_string(token_ids[t]) +
                                  " at index " + std::to_string(t) + " is outside [0, " +
                                  std::to_string(vocab_size) + ")");
    }
  }
  const size_t row_bytes = static_cast<size_t>(dim) * DTypeSize(table_dtype);
  pool.ParallelFor(num_tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const char* row =
          static_cast<const char*>(table) + static_cast<size_t>(token_ids[t]) * row_bytes;
      ConvertToF32(row, table_dtype, static_cast<size_t>(dim), out + t * dim);
    }
  });
  return OkStatus();
}

}  // namespace fp::kernels
