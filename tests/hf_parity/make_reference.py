#!/usr/bin/env python3
"""Builds the Hugging Face parity data for hf_parity_test (tests/hf_parity/).

Run on a machine with PyTorch and transformers (no GPU needed):

    python3 tests/hf_parity/make_reference.py [--out tests/hf_parity/data]

For each variant it builds a tiny random LlamaForCausalLM in float32, saves it with
save_pretrained(safe_serialization=True) into OUT/<name>/, and writes OUT/<name>/reference.json:

    {
      "format": "fieldprint-hf-parity-v1",
      "name": "<name>", "torch": "<version>", "transformers": "<version>",
      "prompts": [
        {
          "ids": [token ids],
          "logits": [[vocab floats] for every prompt position],   # teacher-forced
          "greedy": [token ids],          # greedy continuation, one forward per step
          "greedy_margins": [floats]      # top-1 minus top-2 logit at each greedy step
        }, ...
      ]
    }

Floats are written with repr() of the float32 value widened to a Python float, which reads back
exactly. The data is small (about 1.6 MB in total) and deterministic for a given torch version.
"""
import argparse
import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VARIANTS = {
    # Plain RoPE, separate LM head.
    "llama_tiny": dict(rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False),
    # LLaMA 3.1 frequency scaling, tied embeddings.
    "llama3_tied": dict(
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=True,
    ),
    # Head dim 64 (q width 256 > hidden 64): the smallest head the CUDA kernels take.
    "llama_wide": dict(rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False, head_dim=64),
}

PROMPTS = [
    [1],
    [1, 17, 42, 299, 5],
    [1] + [(i * 37 + 11) % 300 for i in range(16)],
    [1] + [(i * 113 + 7) % 300 for i in range(39)],
]
GREEDY_STEPS = 12


def build(name, variant, seed):
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        # Larger than the default 0.02 so logits carry signal well above float32 noise.
        initializer_range=0.25,
        bos_token_id=1,
        eos_token_id=2,
        attention_bias=False,
        mlp_bias=False,
        torch_dtype="float32",
        **variant,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        # HF initialises RMSNorm weights to 1; perturb them so the test sees them applied.
        for module in model.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.weight.add_(0.1 * torch.randn_like(module.weight))
    return model


def floats(tensor):
    return [float(x) for x in tensor.float().tolist()]


def reference(model):
    prompts = []
    with torch.no_grad():
        for ids in PROMPTS:
            logits = model(torch.tensor([ids])).logits[0]
            greedy, margins, seq = [], [], list(ids)
            for _ in range(GREEDY_STEPS):
                last = model(torch.tensor([seq])).logits[0, -1]
                top = torch.topk(last, 2).values
                token = int(torch.argmax(last))
                greedy.append(token)
                margins.append(float(top[0] - top[1]))
                seq.append(token)
            prompts.append(
                {
                    "ids": ids,
                    "logits": [floats(row) for row in logits],
                    "greedy": greedy,
                    "greedy_margins": margins,
                }
            )
    return prompts


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "data"))
    args = parser.parse_args()
    import transformers

    for seed, (name, variant) in enumerate(sorted(VARIANTS.items())):
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        model = build(name, variant, seed)
        model.save_pretrained(out, safe_serialization=True)
        data = {
            "format": "fieldprint-hf-parity-v1",
            "name": name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "prompts": reference(model),
        }
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump(data, f, separators=(",", ":"))
        print("wrote", out)


if __name__ == "__main__":
    main()
