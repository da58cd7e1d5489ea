// Embedding lookup: rows of an embedding matrix (any weight dtype) widened to f32.
//
// Thread-safety: reentrant; concurrent calls must use disjoint outputs.
#pragma once

#include <cstdint>

#include "common/base/dtype.h"
#include "common/base/status.h"
#include "kernels/base/thread_pool.h"

namespace fp::kernels {

// out[t, :] = f32(table[token_ids[t], :]).
//   token_ids: [num_tokens] int32, each in [0, vocab_size).
//   table:     [vocab_size, dim] of table_dtype, row-major, aligned to its element size;
//              borrowed.
//   out:       [num_tokens, dim] f32.
// InvalidArgument on null pointers, sizes < 1 (num_tokens may be 0: a no-op), a misaligned
// table, or a token id out of range (nothing is written then).
Status EmbeddingLookup(const int32_t* token_ids, const void* table, DType table_dtype, float* out,
                       int64_t num_tokens, int64_t vocab_size, int64_t dim, ThreadPool& pool);

}  // namespace fp::kernels
