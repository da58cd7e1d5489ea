#!/usr/bin/env python3
"""Baseline for kernels_gemm_gpu_bench: torch.nn.functional.linear in bf16 (cuBLAS's default
choice) on the same TinyLlama-1.1B projection shapes and batch sizes, timed the same way: a CUDA
graph of 10 calls (no host overhead in the numbers), median of 25 event-timed replays after 2
warm-up replays, divided by 10; weights and activations rotated over >= 256 MiB so no call finds
its weights in L2. JSON on stdout, a table on stderr.

F.linear returns bf16 for every shape; the benchmarked kernel writes f32 logits for lm_head
(4 bytes per output instead of 2), which costs it a little at prefill sizes.

    gemm_baseline.py                          time the baseline
    gemm_baseline.py --join BENCH BASELINE    print kernel vs baseline per shape from two JSON
                                              files (no GPU needed)
"""
import argparse
import json
import statistics
import sys

WARMUP = 2
TIMED = 25
LAUNCHES_PER_GRAPH = 10
ROTATE_BYTES = 256 << 20
BATCH_SIZES = [1, 8, 32, 64, 128, 256, 2048, 4096, 8192]
SHAPES = [  # name, n (out features), k (in features)
    ("qkv_proj", 2048 + 256 + 256, 2048),
    ("o_proj", 2048, 2048),
    ("gate_up_proj", 11264, 2048),
    ("gate_proj", 5632, 2048),
    ("down_proj", 2048, 5632),
    ("lm_head", 32000, 2048),
]
DECODE_MAX_M = 256


def copies_for(nbytes):
    return max(2, -(-ROTATE_BYTES // nbytes))


def measure(torch, name, m, n, k):
    f = torch.nn.functional
    ws = [torch.empty(n, k, dtype=torch.bfloat16, device="cuda").uniform_(-1, 1)
          for _ in range(copies_for(2 * n * k))]
    xs = [torch.empty(m, k, dtype=torch.bfloat16, device="cuda").uniform_(-1, 1)
          for _ in range(copies_for(2 * m * k))]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # cuBLAS sets itself up outside the capture
        for i in range(3):
            f.linear(xs[i % len(xs)], ws[i % len(ws)])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(LAUNCHES_PER_GRAPH):
            f.linear(xs[i % len(xs)], ws[i % len(ws)])
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    for _ in range(WARMUP):
        graph.replay()
    times = []
    for _ in range(TIMED):
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1000.0 / LAUNCHES_PER_GRAPH)
    del graph
    us = statistics.median(times)
    nbytes = 2 * n * k + 2 * m * k + 2 * m * n
    return {"name": name, "m": m, "n": n, "k": k, "out_dtype": "bf16", "us": round(us, 3),
            "tflops": round(2.0 * m * n * k / us / 1e6, 2), "gb_per_s": round(nbytes / us / 1e3, 1)}


def run_baseline():
    import torch
    results = [measure(torch, name, m, n, k) for name, n, k in SHAPES for m in BATCH_SIZES]
    print(json.dumps({"benchmark": "kernels_gemm_gpu_baseline",
                      "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "call": "torch.nn.functional.linear(x, w), bf16",
                      "timing": f"CUDA graph of {LAUNCHES_PER_GRAPH} calls; median of {TIMED} "
                                f"event-timed replays after {WARMUP} warm-up replays, divided by "
                                f"{LAUNCHES_PER_GRAPH}; inputs rotated over >= "
                                f"{ROTATE_BYTES >> 20} MiB",
                      "results": results}, indent=1))
    print(f"{'shape':13} {'m':>5} {'n':>6} {'k':>5} {'us':>9} {'TFLOP/s':>8} {'GB/s':>8}",
          file=sys.stderr)
    for r in results:
        print(f"{r['name']:13} {r['m']:5} {r['n']:6} {r['k']:5} {r['us']:9.2f} "
              f"{r['tflops']:8.1f} {r['gb_per_s']:8.0f}", file=sys.stderr)


def join(bench_path, baseline_path):
    with open(bench_path) as f:
        bench = json.load(f)
    with open(baseline_path) as f:
        baseline = json.load(f)
    base = {(r["name"], r["m"]): r for r in baseline["results"]}
    print(f"kernel: {bench['device']}; baseline: {baseline['device']} torch {baseline['torch']}")
    print(f"{'shape':13} {'m':>5} {'tile':>4} {'us':>9} {'cublas_us':>9} {'TFLOP/s':>8} "
          f"{'GB/s':>7} {'ratio':>6} {'target':>6}")
    short = 0
    for r in bench["results"]:
        b = base[(r["name"], r["m"])]
        ratio = b["us"] / r["us"]
        target = 0.8 if r["m"] <= DECODE_MAX_M else 0.7
        short += ratio < target
        print(f"{r['name']:13} {r['m']:5} {r['tile']:4} {r['us']:9.2f} {b['us']:9.2f} "
              f"{r['tflops']:8.1f} {r['gb_per_s']:7.0f} {ratio:6.2f} "
              f"{'ok' if ratio >= target else 'SHORT':>6}")
    print(f"{short} of {len(bench['results'])} shapes under target")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--join", nargs=2, metavar=("BENCH_JSON", "BASELINE_JSON"))
    args = parser.parse_args()
    if args.join:
        join(*args.join)
    else:
        run_baseline()


if __name__ == "__main__":
    main()
