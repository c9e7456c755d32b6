#!/usr/bin/env python3
"""The DESIGN bench step in PyTorch eager, for a side-by-side comparison with meshtrain.

Same model and math as meshtrain and scripts/bench_jax_step.py (Gemma v1:
scaled embedding, RMSNorm (1+w), rotate-half RoPE, multi-query attention,
GeGLU with tanh GELU, tied head), f32 parameters, AdamW (torch.optim.AdamW,
decoupled weight decay) after global-norm clipping; `--dtype bf16` runs the
forward and backward under CPU autocast to bfloat16, as PyTorch users train
in bf16. Prints "0 MEDIAN_STEP_SECONDS" (eager: nothing to compile).

Needs: pip install torch (CPU). Not run by CI; `cargo bench -p meshtrain-train
--bench step` runs it when MESHTRAIN_BENCH_PYTHON names a Python with torch.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

V, D, L, H, KV, HD, FF, B, T = 32000, 512, 8, 8, 1, 64, 2048, 4, 256


def init(gen):
    n = lambda *s: (torch.randn(*s, generator=gen) * 0.02).requires_grad_()
    z = lambda *s: torch.zeros(*s, requires_grad=True)
    p = {"embed": n(V, D), "norm": z(D), "layers": []}
    for _ in range(L):
        p["layers"].append({
            "in_norm": z(D), "post_norm": z(D),
            "q": n(H * HD, D), "k": n(KV * HD, D), "v": n(KV * HD, D),
            "o": n(D, H * HD), "gate": n(FF, D), "up": n(FF, D), "down": n(D, FF),
        })
    return p


def leaves(p):
    out = [p["embed"], p["norm"]]
    for l in p["layers"]:
        out += list(l.values())
    return out


def rms(x, w):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w)
    return y.to(x.dtype)


def rope(x, pos):
    half = HD // 2
    inv = 10000.0 ** (-torch.arange(half, dtype=torch.float32) * 2 / HD)
    f = pos[..., None].float() * inv
    emb = torch.cat([f, f], -1)[:, :, None, :]
    xf = x.float()
    rot = torch.cat([-xf[..., half:], xf[..., :half]], -1)
    return (xf * emb.cos() + rot * emb.sin()).to(x.dtype)


def loss_fn(p, ids, targets, mask):
    pos = torch.arange(T).expand(B, T)
    x = p["embed"][ids] * D ** 0.5
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in p["layers"]:
        h = rms(x, l["in_norm"])
        q = F.linear(h, l["q"]).view(B, T, H, HD)
        k = F.linear(h, l["k"]).view(B, T, KV, HD)
        v = F.linear(h, l["v"]).view(B, T, KV, HD)
        q, k = rope(q, pos), rope(k, pos)
        q = q.view(B, T, KV, H // KV, HD)
        s = torch.einsum("btkgd,bskd->bkgts", q, k).float() * HD ** -0.5
        s = s.masked_fill(~causal, -1e30)
        a = s.softmax(-1).to(v.dtype)
        o = torch.einsum("bkgts,bskd->btkgd", a, v).reshape(B, T, H * HD)
        x = x + F.linear(o, l["o"])
        h = rms(x, l["post_norm"])
        g = F.gelu(F.linear(h, l["gate"]), approximate="tanh")
        x = x + F.linear(g * F.linear(h, l["up"]), l["down"])
    x = rms(x, p["norm"])
    logits = F.linear(x, p["embed"]).float()
    nll = F.cross_entropy(logits.view(-1, V), targets.view(-1), reduction="none")
    return (nll * mask.view(-1)).sum() / mask.sum().clamp(min=1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    p = init(gen)
    params = leaves(p)
    opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ids = torch.randint(0, V, (B, T), generator=gen)
    targets = ids.roll(-1, 1)
    mask = torch.ones(B, T)
    mask[:, -1] = 0
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            loss = loss_fn(p, ids, targets, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    print(f"0 {statistics.median(times[1:]):.4f}")


if __name__ == "__main__":
    main()
