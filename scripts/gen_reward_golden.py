#!/usr/bin/env python3
"""Writes the golden files of meshtrain's reward-model parity test.

A small random transformers GemmaForSequenceClassification (num_labels = 1,
multi-query, heads * head_dim != d_model), saved under
crates/gemma/tests/golden/reward/:
  model/               the model as a Hugging Face directory (f32, with score.weight)
  golden.safetensors   input_ids [4, 9] (i32, right padded with pad id 0),
                       lengths [4] (i32), rewards [4] (f32), from the model
                       in float32 with attention_mask = the real tokens.

transformers pools the rightmost token that is not pad_token_id (0); the
real ids here are drawn from 1..vocab so that this is each row's last real
token, which is what meshtrain pools (by row length).

Not run by CI. Needs: pip install torch transformers safetensors
Usage: python3 scripts/gen_reward_golden.py
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import GemmaConfig, GemmaForSequenceClassification

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "gemma", "tests", "golden", "reward")
LENGTHS = [9, 4, 1, 6]


def main():
    torch.manual_seed(0)
    cfg = GemmaConfig(
        vocab_size=64, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=3, num_key_value_heads=1, head_dim=16,
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
        hidden_activation="gelu_pytorch_tanh", attention_bias=False,
        attn_implementation="eager", torch_dtype="float32", num_labels=1,
        pad_token_id=0,
    )
    model = GemmaForSequenceClassification(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if "norm" in name else 0.08
            p.copy_(torch.randn_like(p) * std)
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(os.path.join(OUT, "model"), safe_serialization=True)
    extra = os.path.join(OUT, "model", "generation_config.json")
    if os.path.exists(extra):
        os.remove(extra)
    t = max(LENGTHS)
    ids = torch.zeros((len(LENGTHS), t), dtype=torch.long)
    mask = torch.zeros((len(LENGTHS), t), dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        ids[i, :n] = torch.randint(1, cfg.vocab_size, (n,))
        mask[i, :n] = 1
    with torch.no_grad():
        rewards = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    save_file(
        {
            "input_ids": ids.to(torch.int32),
            "lengths": torch.tensor(LENGTHS, dtype=torch.int32),
            "rewards": rewards.contiguous(),
        },
        os.path.join(OUT, "golden.safetensors"),
    )
    print("rewards", rewards.tolist())


if __name__ == "__main__":
    sys.exit(main())
