// Tensor: a dense, row-major array with an explicit element type and shape, either owning its
// (64-byte aligned) storage or borrowing memory that outlives it (a memory-mapped weight file).
//
// Tensors are the currency between the model loader, anchor sets and backends: everything that
// crosses those boundaries says its dtype and shape, so a backend can check what it receives.
// A tensor's bytes are in host memory; a device backend uploads them (see backend/backend.h).
//
// Thread-safety: a Tensor is a value type without internal synchronisation; concurrent reads of
// one tensor are safe, a write must not race with anything else on the same tensor.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/base/bytes.h"
#include "common/base/dtype.h"
#include "common/base/status.h"

namespace fp::node {

// Bounds every shape that comes from outside (files); real models use rank <= 2.
inline constexpr size_t kMaxTensorRank = 8;

using Shape = std::vector<int64_t>;

// Elements in `shape`, or -1 if a dimension is negative or the product overflows int64 bytes.
int64_t ShapeElements(const Shape& shape);
// "[2, 3]".
std::string ShapeString(const Shape& shape);

class Tensor {
 public:
  // An empty tensor: dtype f32, rank 0 shape {0}, no data.
  Tensor();
  // An owning tensor of zeros. FP_CHECKs that the shape is valid.
  static Tensor Zeros(DType dtype, Shape shape);
  // A borrowed view of `data` (which must hold ShapeElements(shape) * DTypeSize(dtype) bytes and
  // outlive the view, and every copy of it).
  static Tensor View(DType dtype, Shape shape, const void* data);
  // An owning copy of `bytes` reinterpreted as `dtype` with `shape`. FP_CHECKs that the sizes
  // agree.
  static Tensor Copy(DType dtype, Shape shape, ByteSpan bytes);

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  // An owning deep copy (of a view too).
  Tensor Clone() const;

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  size_t rank() const { return shape_.size(); }
  // Dimension i; FP_CHECKs i < rank().
  int64_t dim(size_t i) const;
  int64_t elements() const { return elements_; }
  size_t bytes_size() const { return static_cast<size_t>(elements_) * DTypeSize(dtype_); }
  bool owning() const { return storage_ != nullptr; }

  const void* data() const { return data_; }
  // FP_CHECKs that the tensor owns its storage (views are read-only).
  void* mutable_data();
  ByteSpan bytes() const { return {static_cast<const uint8_t*>(data_), bytes_size()}; }

  // Typed access; FP_CHECKs that sizeof(T) matches the dtype's element size.
  template <typename T>
  const T* data_as() const {
    FP_CHECK(sizeof(T) == DTypeSize(dtype_));
    return static_cast<const T*>(data_);
  }
  template <typename T>
  T* mutable_data_as() {
    FP_CHECK(sizeof(T) == DTypeSize(dtype_));
    return static_cast<T*>(mutable_data());
  }

 private:
  struct FreeDeleter {
    void operator()(void* p) const;
  };

  DType dtype_ = DType::kF32;
  Shape shape_;
  int64_t elements_ = 0;
  std::unique_ptr<void, FreeDeleter> storage_;  // null for views
  const void* data_ = nullptr;                  // storage_ or the borrowed memory
};

}  // namespace fp::node
