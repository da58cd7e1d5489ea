#!/usr/bin/env python3
"""PyTorch baselines for kernels_paged_attention_gpu_bench, same shapes, same card, same run.

Decode (B=64, L=4096 and B=1, L=16384; 32 query heads, 8 KV heads, d=128, 64 anchors, gamma
per head): (1) prefix injection: one SDPA call over [anchors + context] with contiguous (not
paged) K/V, i.e. the anchors already copied in front of every sequence, the best case for that
path; (2) the unfused dual path: SDPA over the context, SDPA over the anchors, then the gamma mix
(three calls). Effective TB/s counts the context K/V once plus the anchors once, as the CUDA
benchmark does. Every SDPA backend (flash, cuDNN, efficient, math) is tried; the fastest that
runs is reported, with each backend's time.

Prefill: causal self-attention of 4k, 8k and 16k tokens, 32/8 heads, d=128 (GQA through
enable_gqa), per backend; TFLOP/s counts 4 * d * heads * L (L + 1) / 2 (Q K^T and P V over the
causal triangle), as the CUDA benchmark does for its causal part.

Timing: CUDA events, 5 warm-up runs, median of 25; the B=1 decode rotates over 4 copies so the
cache is not served from L2. JSON on stdout, a table on stderr. Exits 0 with {"skipped": ...}
when PyTorch or a GPU is missing.
"""
import json
import statistics
import sys

WARMUP = 5
TIMED = 25
Q_HEADS, KV_HEADS, HEAD_DIM, ANCHORS = 32, 8, 128, 64


def main():
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as error:
        print(json.dumps({"benchmark": "paged_attention_baseline", "skipped": str(error)}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "paged_attention_baseline", "skipped": "no CUDA device"}))
        return 0
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    dev = torch.device("cuda")
    bf16 = torch.bfloat16

    def median_us(fn, rotations=1):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        for i in range(WARMUP):
            fn(i % rotations)
        times = []
        for i in range(TIMED):
            start.record()
            fn(i % rotations)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1000.0)
        return statistics.median(times)

    def per_backend(fn, rotations=1):
        results = {}
        for name, backend in backends.items():
            try:
                with sdpa_kernel([backend]):
                    results[name] = median_us(fn, rotations)
            except RuntimeError:
                results[name] = None
        return results

    def fastest(results):
        ok = {k: v for k, v in results.items() if v is not None}
        name = min(ok, key=ok.get)
        return name, ok[name]

    gamma = (0.25 + 0.5 * (torch.arange(Q_HEADS, device=dev) % 2)).to(bf16).view(1, -1, 1, 1)
    report = {"benchmark": "paged_attention_baseline", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "decode": [], "prefill": []}
    table = []
    for batch, length, rotations in ((64, 4096, 1), (1, 16384, 4)):
        q = [torch.randn(batch, Q_HEADS, 1, HEAD_DIM, device=dev, dtype=bf16)
             for _ in range(rotations)]
        kv = [(torch.randn(batch, KV_HEADS, ANCHORS + length, HEAD_DIM, device=dev, dtype=bf16),
               torch.randn(batch, KV_HEADS, ANCHORS + length, HEAD_DIM, device=dev, dtype=bf16))
              for _ in range(rotations)]
        ctx = [(k[:, :, ANCHORS:], v[:, :, ANCHORS:]) for k, v in kv]
        ak = torch.randn(1, KV_HEADS, ANCHORS, HEAD_DIM, device=dev, dtype=bf16)
        av = torch.randn(1, KV_HEADS, ANCHORS, HEAD_DIM, device=dev, dtype=bf16)

        def prefix(r):
            return F.scaled_dot_product_attention(q[r], kv[r][0], kv[r][1], enable_gqa=True)

        def dual(r):
            o_kv = F.scaled_dot_product_attention(q[r], ctx[r][0], ctx[r][1], enable_gqa=True)
            o_a = F.scaled_dot_product_attention(q[r], ak.expand(batch, -1, -1, -1),
                                                 av.expand(batch, -1, -1, -1), enable_gqa=True)
            return (1 - gamma) * o_kv + gamma * o_a

        prefix_all = per_backend(prefix, rotations)
        dual_all = per_backend(dual, rotations)
        bytes_read = 2.0 * batch * length * KV_HEADS * HEAD_DIM * 2 + \
            2.0 * ANCHORS * KV_HEADS * HEAD_DIM * 2
        p_name, p_us = fastest(prefix_all)
        d_name, d_us = fastest(dual_all)
        report["decode"].append({
            "batch": batch, "context": length, "bytes_read": bytes_read,
            "prefix_sdpa_us": p_us, "prefix_backend": p_name,
            "prefix_tb_per_s": bytes_read / p_us / 1e6, "prefix_per_backend_us": prefix_all,
            "dual_sdpa_us": d_us, "dual_backend": d_name,
            "dual_tb_per_s": bytes_read / d_us / 1e6, "dual_per_backend_us": dual_all})
        table.append(f"decode B={batch} L={length}: prefix {p_us:.1f} us ({p_name}, "
                     f"{bytes_read / p_us / 1e6:.3f} TB/s), dual {d_us:.1f} us ({d_name}, "
                     f"{bytes_read / d_us / 1e6:.3f} TB/s)")
        del q, kv, ctx
        torch.cuda.empty_cache()

    for length in (4096, 8192, 16384):
        q = torch.randn(1, Q_HEADS, length, HEAD_DIM, device=dev, dtype=bf16)
        k = torch.randn(1, KV_HEADS, length, HEAD_DIM, device=dev, dtype=bf16)
        v = torch.randn(1, KV_HEADS, length, HEAD_DIM, device=dev, dtype=bf16)
        # GQA spelled out for backends without enable_gqa support.
        k_full = k.repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
        v_full = v.repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
        results = {}
        for name, backend in backends.items():
            if name == "math":
                continue  # materialises L x L scores: far slower, and 16k needs 32 GB
            try:
                with sdpa_kernel([backend]):
                    results[name] = median_us(lambda _: F.scaled_dot_product_attention(
                        q, k_full, v_full, is_causal=True))
            except RuntimeError:
                results[name] = None
        name, us = fastest(results)
        flops = 4.0 * HEAD_DIM * Q_HEADS * length * (length + 1) / 2
        report["prefill"].append({"tokens": length, "us": us, "backend": name,
                                  "tflop_per_s": flops / us / 1e6,
                                  "per_backend_us": results})
        table.append(f"prefill {length}: {us:.1f} us ({name}, {flops / us / 1e6:.1f} TFLOP/s)")
        del q, k, v, k_full, v_full
        torch.cuda.empty_cache()

    print(json.dumps(report, indent=1))
    for line in table:
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
