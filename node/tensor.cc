// Tensor storage and shape helpers; see tensor.h.
#include "node/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace fp::node {
namespace {

// Cache-line alignment keeps every row start usable by vector loads.
constexpr size_t kTensorAlignment = 64;

}  // namespace

int64_t ShapeElements(const Shape& shape) {
  if (shape.size() > kMaxTensorRank) return -1;
  int64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    // Bound by bytes of the widest dtype so that elements * 4 never overflows.
    if (d != 0 && elements > std::numeric_limits<int64_t>::max() / 4 / d) return -1;
    elements *= d;
  }
  return elements;
}

std::string ShapeString(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

void Tensor::FreeDeleter::operator()(void* p) const { std::free(p); }

Tensor::Tensor() : shape_{0} {}

Tensor Tensor::Zeros(DType dtype, Shape shape) {
  Tensor t;
  t.elements_ = ShapeElements(shape);
  FP_CHECK_MSG(t.elements_ >= 0, "invalid shape " + ShapeString(shape));
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  size_t size = t.bytes_size();
  size_t rounded = (size + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
  void* p = std::aligned_alloc(kTensorAlignment, rounded == 0 ? kTensorAlignment : rounded);
  FP_CHECK_MSG(p != nullptr, "out of memory allocating " + std::to_string(size) + " bytes");
  std::memset(p, 0, size);
  t.storage_.reset(p);
  t.data_ = p;
  return t;
}

Tensor Tensor::View(DType dtype, Shape shape, const void* data) {
  Tensor t;
  t.elements_ = ShapeElements(shape);
  FP_CHECK_MSG(t.elements_ >= 0, "invalid shape " + ShapeString(shape));
  FP_CHECK(data != nullptr || t.elements_ == 0);
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = data;
  return t;
}

Tensor Tensor::Copy(DType dtype, Shape shape, ByteSpan bytes) {
  Tensor t = Zeros(dtype, std::move(shape));
  FP_CHECK(bytes.size() == t.bytes_size());
  if (!bytes.empty()) std::memcpy(t.mutable_data(), bytes.data(), bytes.size());
  return t;
}

Tensor Tensor::Clone() const { return Copy(dtype_, shape_, bytes()); }

int64_t Tensor::dim(size_t i) const {
  FP_CHECK(i < shape_.size());
  return shape_[i];
}

void* Tensor::mutable_data() {
  FP_CHECK_MSG(storage_ != nullptr, "a tensor view is read-only");
  return storage_.get();
}

}  // namespace fp::node
