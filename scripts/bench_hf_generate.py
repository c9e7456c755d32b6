#!/usr/bin/env python3
"""transformers' generate (PyTorch, KV cache) on the DESIGN bench model, for
meshtrain's generation bench (crates/train/benches/generate.rs calls this).

A random GemmaForCausalLM (vocab 32000, d_model 512, 8 layers, 8 heads,
1 kv head, head_dim 64, MLP 2048), greedy, a 16-token prompt per row, exactly
N new tokens (no stopping). Prints one JSON line per case:
{"dtype", "batch", "new_tokens", "seconds", "tokens_per_s"} where seconds is
the median wall time of whole `generate` calls (prefill included).

Usage: python3 scripts/bench_hf_generate.py --cases f32:1:64,bf16:8:512 [--repeats 3]
Needs: pip install torch transformers
"""
import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True, help="dtype:batch:new_tokens, comma separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=16)
    a = ap.parse_args()
    try:
        import torch
        from transformers import GemmaConfig, GemmaForCausalLM
    except ImportError as e:
        print(json.dumps({"error": f"no torch/transformers in {sys.executable}: {e}"}))
        return 0
    torch.manual_seed(0)
    cfg = GemmaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=1, head_dim=64,
        max_position_embeddings=1024, hidden_activation="gelu_pytorch_tanh",
        attn_implementation="sdpa",
    )
    models = {}
    for case in a.cases.split(","):
        dtype, batch, new = case.split(":")
        batch, new = int(batch), int(new)
        if dtype not in models:
            m = GemmaForCausalLM(cfg).eval().to(torch.bfloat16 if dtype == "bf16" else torch.float32)
            m.generation_config.eos_token_id = None
            m.generation_config.pad_token_id = 0
            models[dtype] = m
        m = models[dtype]
        ids = torch.randint(3, 32000, (batch, a.prompt_len))
        mask = torch.ones_like(ids)
        times = []
        with torch.inference_mode():
            m.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)  # warm-up
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                out = m.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False)
                times.append(time.perf_counter() - t0)
                assert out.shape[1] == a.prompt_len + new, out.shape
        times.sort()
        med = times[len(times) // 2]
        print(json.dumps({"dtype": dtype, "batch": batch, "new_tokens": new, "seconds": med,
                          "tokens_per_s": batch * new / med, "torch": torch.__version__,
                          "threads": torch.get_num_threads()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
