#!/usr/bin/env python3
"""Writes the golden files of meshtrain's Gemma parity tests.

For three small random Gemma v1 models (multi-query, multi-head, and one
where heads * head_dim != d_model) it saves, under
crates/gemma/tests/golden/<name>/:
  model/                           the model, as a Hugging Face directory (f32)
  golden.safetensors               input_ids [2, 8] (i32), logits [2, 8, V],
                                   loss [] and grad.<param name> for every
                                   parameter, from transformers'
                                   GemmaForCausalLM in float32 with
                                   labels = input_ids (mean next-token CE).

Not run by CI. Needs: pip install torch transformers safetensors numpy
Usage: python3 scripts/gen_model_golden.py
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import GemmaConfig, GemmaForCausalLM

SHAPES = {
    # name: (vocab, d_model, layers, heads, kv_heads, head_dim, mlp)
    "multi_query": (96, 32, 2, 4, 1, 8, 64),
    "multi_head": (96, 32, 2, 4, 4, 8, 48),
    "wide_heads": (80, 24, 2, 3, 3, 16, 40),  # 3 * 16 = 48 != 24
}

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "gemma", "tests", "golden")


def main():
    torch.manual_seed(0)
    for name, (v, d, layers, h, kv, hd, mlp) in SHAPES.items():
        cfg = GemmaConfig(
            vocab_size=v, hidden_size=d, intermediate_size=mlp, num_hidden_layers=layers,
            num_attention_heads=h, num_key_value_heads=kv, head_dim=hd,
            max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
            hidden_activation="gelu_pytorch_tanh", attention_bias=False,
            attn_implementation="eager", torch_dtype="float32",
        )
        model = GemmaForCausalLM(cfg).float()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                # Random norms too, so that (1 + w) is exercised.
                std = 0.3 if "norm" in pname else 0.08
                p.copy_(torch.randn_like(p) * std)
        d_out = os.path.join(OUT, name)
        os.makedirs(d_out, exist_ok=True)
        model.save_pretrained(os.path.join(d_out, "model"), safe_serialization=True)
        for extra in ("generation_config.json",):
            p = os.path.join(d_out, "model", extra)
            if os.path.exists(p):
                os.remove(p)
        # Token 0 is <pad>: HF's nn.Embedding(padding_idx=0) gives its row no
        # gradient from lookups, meshtrain masks padding by segment instead.
        ids = torch.randint(1, v, (2, 8))
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        tensors = {
            "input_ids": ids.to(torch.int32),
            "logits": out.logits.detach().contiguous(),
            "loss": out.loss.detach().reshape([]),
        }
        for pname, p in model.named_parameters():
            tensors["grad." + pname] = p.grad.detach().contiguous()
        save_file(tensors, os.path.join(d_out, "golden.safetensors"))
        print(name, "loss", float(out.loss))


if __name__ == "__main__":
    sys.exit(main())
