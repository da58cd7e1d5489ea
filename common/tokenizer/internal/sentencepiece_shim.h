// The C interface of libfp_sentencepiece.so, the shim through which fieldprint uses
// libsentencepiece.
//
// Why a shim: Debian's libsentencepiece.so.0 carries its own copy of the protobuf runtime and
// exports its symbols. Linked into a process that also uses the system libprotobuf (fieldprint's
// wire messages), the two copies interpose on each other and the process crashes while
// registering descriptors at start-up. The shim links libsentencepiece and is loaded with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND), so sentencepiece binds to its own protobuf and nothing of
// it enters the process's global symbol scope. The interface is plain C: no C++ object or
// exception crosses it, and the caller owns every buffer.
//
// Thread-safety: a processor handle may be used by several threads at once for encode and
// decode (SentencePieceProcessor's const methods are thread-safe); load and free are not
// concurrent with other uses of the same handle.
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {

// Loads a tokenizer.model. Returns a handle, or null with a message in `error` (NUL-terminated,
// truncated to error_size).
typedef void* (*FpSpmLoadFn)(const char* path, char* error, size_t error_size);
// Frees a handle from load (null is ignored).
typedef void (*FpSpmFreeFn)(void* processor);
// Vocabulary size, BOS id and EOS id (-1 when the model has none).
typedef int32_t (*FpSpmIntFn)(const void* processor);
// Encodes `text`: returns the number of ids (writing at most `capacity` of them to `ids`), or
// -1 with a message in `error`. A result above `capacity` means: call again with more room.
typedef int64_t (*FpSpmEncodeFn)(const void* processor, const char* text, size_t text_size,
                                 int32_t* ids, size_t capacity, char* error, size_t error_size);
// Decodes `ids`: returns the text's size in bytes (writing at most `capacity` bytes to `text`,
// no terminator), or -1 with a message in `error`. A result above `capacity` means: call again.
typedef int64_t (*FpSpmDecodeFn)(const void* processor, const int32_t* ids, size_t count,
                                 char* text, size_t capacity, char* error, size_t error_size);

}  // extern "C"

namespace fp::tokenizer::internal {

// The shim's file name and its exported symbols.
inline constexpr char kSentencePieceShimFile[] = "libfp_sentencepiece.so";
inline constexpr char kSpmLoad[] = "fp_spm_load";
inline constexpr char kSpmFree[] = "fp_spm_free";
inline constexpr char kSpmPieceSize[] = "fp_spm_piece_size";
inline constexpr char kSpmBosId[] = "fp_spm_bos_id";
inline constexpr char kSpmEosId[] = "fp_spm_eos_id";
inline constexpr char kSpmEncode[] = "fp_spm_encode";
inline constexpr char kSpmDecode[] = "fp_spm_decode";

}  // namespace fp::tokenizer::internal
