// Instruction-set dispatch for the hot CPU kernels: each is compiled twice from one
// always-inline body, for AVX2 and for the x86-64 baseline, and the AVX2 copy runs when the CPU
// has it. Results do not depend on the copy: the kernels use only element-wise IEEE operations in
// a fixed order (and -ffp-contract=off), never instructions whose rounding differs.
//
// Dispatch is a plain branch on a cached CPUID answer rather than GCC's target_clones: clones
// resolve through ifunc before sanitizer runtimes initialise, which crashes ThreadSanitizer.
//
// Thread-safety: the cached answer is a thread-safe function-local static; the test hook is an
// atomic flag.
#pragma once

#include <atomic>

namespace fp::kernels::internal {

inline bool CpuHasAvx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has_avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has_avx2;
#else
  return false;
#endif
}

// Set only by tests (TEST_ForceBaseline), to check that both copies give the same bits.
inline std::atomic<bool> force_baseline{false};

// Test hook: while `force` is true every kernel runs its baseline copy. Flip it only while no
// kernel is running.
inline void TEST_ForceBaseline(bool force) { force_baseline.store(force); }

// True when the AVX2 copy of a kernel should run.
inline bool UseAvx2() { return !force_baseline.load(std::memory_order_relaxed) && CpuHasAvx2(); }

}  // namespace fp::kernels::internal

// FP_KERNELS_TARGET_AVX2 marks the AVX2 copy of a kernel; on other architectures it is empty and
// both copies are the same baseline code.
#if defined(__x86_64__) || defined(__i386__)
#define FP_KERNELS_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define FP_KERNELS_TARGET_AVX2
#endif
