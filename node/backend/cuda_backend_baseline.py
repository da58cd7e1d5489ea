#!/usr/bin/env python3
"""Baseline for node_cuda_backend_gpu_bench: Hugging Face transformers LlamaForCausalLM with the same
TinyLlama-1.1B shape (hidden 2048, 22 layers, 32 query / 4 KV heads, intermediate 5632, vocabulary
32000) and random bf16 weights, generate() with greedy decoding at batch 1 and 32, the same prompt
length and number of outputs as the benchmark (16 prompt tokens, exactly 256 new tokens), no
verification of any kind. Timed with torch.cuda.synchronize() around generate(), median of 3 runs
after a warm-up; tokens/s counts output tokens over the whole call (prefill included), as the
benchmark's tokens_per_second does.

Output: one JSON object on stdout, a short table on stderr.
"""
import json
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PROMPT_TOKENS = 16
OUTPUT_TOKENS = 256
TIMED_RUNS = 3
BATCHES = (1, 32)


def main():
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device")
        return 77
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                         num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                         max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    results = []
    print(f"{'batch':<6} {'tokens/s':>12} {'ms/step':>10}", file=sys.stderr)
    for batch in BATCHES:
        prompt = torch.randint(3, 31000, (batch, PROMPT_TOKENS), device="cuda")
        mask = torch.ones_like(prompt)

        def generate():
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(prompt, attention_mask=mask, do_sample=False,
                                     max_new_tokens=OUTPUT_TOKENS, min_new_tokens=OUTPUT_TOKENS)
            torch.cuda.synchronize()
            assert out.shape == (batch, PROMPT_TOKENS + OUTPUT_TOKENS)
            return time.perf_counter() - start

        generate()  # warm-up
        seconds = statistics.median(generate() for _ in range(TIMED_RUNS))
        tps = batch * OUTPUT_TOKENS / seconds
        results.append({"batch": batch, "tokens_per_second": round(tps, 1),
                        "ms_per_step": round(1000 * seconds / OUTPUT_TOKENS, 4)})
        print(f"{batch:<6} {tps:>12.0f} {1000 * seconds / OUTPUT_TOKENS:>10.3f}", file=sys.stderr)
    print(json.dumps({"device": torch.cuda.get_device_name(0),
                      "torch": torch.__version__,
                      "baseline": "transformers LlamaForCausalLM.generate, bf16, greedy",
                      "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
