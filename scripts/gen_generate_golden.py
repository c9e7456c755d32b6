#!/usr/bin/env python3
"""Writes the golden files of meshtrain's generation and evaluation tests.

Under crates/train/tests/golden/generate/:
  trained/          a tiny Gemma trained here (transformers, float32) to
                    memorize 8 random documents of 100 tokens (Hugging Face
                    directory, ~0.4 MB)
  golden.json       reference outputs from transformers' GemmaForCausalLM in
                    float32:
    greedy[]        for the three random models of the parity tests
                    (crates/gemma/tests/golden/<name>/model) and the trained
                    one: prompts of different lengths and
                    `model.generate(prompt, max_new_tokens, do_sample=False)`
                    run on each prompt alone (so stopping at <eos> = 1 is
                    exercised as transformers does it)
    memorization    the 8 trained documents and 8 fresh ones, and which of
                    them transformers' greedy decoding continues exactly
                    (50-token prompt, 50-token continuation, no stopping)
    choices         token-id multiple-choice items and, per choice, the
                    summed log-probability of the choice's tokens after the
                    context (log_softmax of the logits), as lm-evaluation-harness
                    scores them

Not run by CI. Needs: pip install torch transformers safetensors
Usage: python3 scripts/gen_generate_golden.py
"""
import json
import os
import sys

import torch
from transformers import GemmaConfig, GemmaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "train", "tests", "golden", "generate")
RANDOM = ["multi_query", "multi_head", "wide_heads"]


def load(path):
    m = GemmaForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def greedy_cases(model, vocab, gen, lengths, max_new, prompts=None):
    out = []
    for i, n in enumerate(lengths):
        if prompts is not None:
            p = prompts[i]
        else:
            p = torch.randint(2, vocab, (n,), generator=gen).tolist()
        ids = torch.tensor([p])
        with torch.no_grad():
            y = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                do_sample=False, eos_token_id=1, pad_token_id=0,
            )
        out.append({"prompt": p, "new": y[0, len(p):].tolist()})
    return out


def greedy_continuation(model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[0, -1].argmax().item()
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return ids[0, len(prompt):].tolist()


def train_memorizer(gen):
    cfg = GemmaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
        hidden_activation="gelu_pytorch_tanh", attention_bias=False,
        attn_implementation="eager", torch_dtype="float32",
    )
    model = GemmaForCausalLM(cfg).float()
    docs = torch.randint(2, 128, (8, 100), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(600):
        out = model(input_ids=docs, labels=docs)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % 100 == 0:
            print("train step", step, "loss", float(out.loss))
    model.eval()
    return model, docs.tolist()


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    golden = {"greedy": [], "memorization": {}, "choices": {}}
    for name in RANDOM:
        path = os.path.join(ROOT, "crates", "gemma", "tests", "golden", name, "model")
        model = load(path)
        v = model.config.vocab_size
        cases = greedy_cases(model, v, gen, [1, 6, 11, 3], 14)
        golden["greedy"].append({
            "model": f"crates/gemma/tests/golden/{name}/model", "cases": cases,
            "max_new_tokens": 14,
        })

    model, docs = train_memorizer(gen)
    tdir = os.path.join(OUT, "trained")
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(tdir, safe_serialization=True)
    extra = os.path.join(tdir, "generation_config.json")
    if os.path.exists(extra):
        os.remove(extra)
    model = load(tdir)  # exactly what the tests load
    prompts = [docs[0][:10], docs[3][:23], docs[5][:37], docs[7][:50]]
    golden["greedy"].append({
        "model": "crates/train/tests/golden/generate/trained", "max_new_tokens": 30,
        "cases": greedy_cases(model, 128, gen, [len(p) for p in prompts], 30, prompts),
    })
    fresh = torch.randint(2, 128, (8, 100), generator=gen).tolist()
    all_docs = docs + fresh
    memorized = [
        i for i, d in enumerate(all_docs) if greedy_continuation(model, d[:50], 50) == d[50:100]
    ]
    golden["memorization"] = {
        "model": "crates/train/tests/golden/generate/trained",
        "docs": all_docs, "prompt_len": 50, "continuation_len": 50, "memorized": memorized,
    }
    print("memorized", memorized)

    path = os.path.join(ROOT, "crates", "gemma", "tests", "golden", "multi_head", "model")
    model = load(path)
    items = []
    for _ in range(5):
        ctx = torch.randint(2, 96, (int(torch.randint(1, 8, (1,), generator=gen)),), generator=gen).tolist()
        choices = [
            torch.randint(2, 96, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(4)
        ]
        scores = []
        for ch in choices:
            ids = torch.tensor([ctx + ch])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            scores.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(ch)))
        answer = int(torch.randint(0, 4, (1,), generator=gen))
        items.append({"context": ctx, "choices": choices, "answer": answer, "logprobs": scores})
    golden["choices"] = {"model": "crates/gemma/tests/golden/multi_head/model", "items": items}

    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    sys.exit(main())
