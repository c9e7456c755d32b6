#!/usr/bin/env python3
"""The DESIGN bench step in JAX, for a side-by-side comparison with meshtrain.

Same model and math as meshtrain (Gemma v1: scaled embedding, RMSNorm (1+w),
rotate-half RoPE, multi-query attention, GeGLU with tanh GELU, tied head),
same AdamW with global-norm clipping, f32 parameters, optional bf16 compute,
jitted with donated state. Prints "COMPILE_SECONDS MEDIAN_STEP_SECONDS".

Needs: pip install jax   (CPU). Not run by CI; `cargo bench -p meshtrain-train
--bench step` runs it when MESHTRAIN_BENCH_PYTHON names a Python with JAX.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp

V, D, L, H, KV, HD, F, B, T = 32000, 512, 8, 8, 1, 64, 2048, 4, 256


def init(key):
    ks = jax.random.split(key, 2 + 7 * L)
    n = lambda k, s: jax.random.normal(k, s, jnp.float32) * 0.02
    p = {"embed": n(ks[0], (V, D)), "norm": jnp.zeros((D,)), "layers": []}
    for i in range(L):
        k = ks[2 + 7 * i: 9 + 7 * i]
        p["layers"].append({
            "in_norm": jnp.zeros((D,)), "post_norm": jnp.zeros((D,)),
            "q": n(k[0], (H * HD, D)), "k": n(k[1], (KV * HD, D)), "v": n(k[2], (KV * HD, D)),
            "o": n(k[3], (D, H * HD)), "gate": n(k[4], (F, D)), "up": n(k[5], (F, D)), "down": n(k[6], (D, F)),
        })
    return p


def rms(x, w):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + 1e-6) * (1 + w)
    return y.astype(x.dtype)


def rope(x, pos):
    half = HD // 2
    inv = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) * 2 / HD)
    f = pos[..., None].astype(jnp.float32) * inv
    emb = jnp.concatenate([f, f], -1)[:, :, None, :]
    xf = x.astype(jnp.float32)
    rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], -1)
    return (xf * jnp.cos(emb) + rot * jnp.sin(emb)).astype(x.dtype)


def loss_fn(p, ids, targets, mask, cd):
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    x = p["embed"][ids].astype(cd) * jnp.asarray(D ** 0.5, cd)
    causal = jnp.tril(jnp.ones((T, T), bool))
    for l in p["layers"]:
        h = rms(x, l["in_norm"])
        q = (h @ l["q"].astype(cd).T).reshape(B, T, H, HD)
        k = (h @ l["k"].astype(cd).T).reshape(B, T, KV, HD)
        v = (h @ l["v"].astype(cd).T).reshape(B, T, KV, HD)
        q, k = rope(q, pos), rope(k, pos)
        q = q.reshape(B, T, KV, H // KV, HD)
        s = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * HD ** -0.5
        s = jnp.where(causal, s, -1e30)
        a = jax.nn.softmax(s, -1).astype(cd)
        o = jnp.einsum("bkgts,bskd->btkgd", a, v).reshape(B, T, H * HD)
        x = x + o @ l["o"].astype(cd).T
        h = rms(x, l["post_norm"])
        g = jax.nn.gelu(h @ l["gate"].astype(cd).T, approximate=True)
        x = x + (g * (h @ l["up"].astype(cd).T)) @ l["down"].astype(cd).T
    x = rms(x, p["norm"])
    logits = (x @ p["embed"].astype(cd).T).astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, -1)
    picked = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return jnp.sum((lse - picked) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_step(cd, lr=3e-4, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, clip=1.0):
    def step(p, m, v, t, ids, targets, mask):
        loss, g = jax.value_and_grad(loss_fn)(p, ids, targets, mask, cd)
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
        scale = jnp.minimum(1.0, clip / (norm + 1e-6))
        t1 = t + 1
        tf = t1.astype(jnp.float32)
        def upd(p, m, v, g):
            g = g * scale
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            u = (m / (1 - b1 ** tf)) / (jnp.sqrt(v / (1 - b2 ** tf)) + eps)
            return p * (1 - lr * wd) - lr * u, m, v
        out = jax.tree_util.tree_map(upd, p, m, v, g)
        is_t = lambda x: isinstance(x, tuple)
        p2 = jax.tree_util.tree_map(lambda o: o[0], out, is_leaf=is_t)
        m2 = jax.tree_util.tree_map(lambda o: o[1], out, is_leaf=is_t)
        v2 = jax.tree_util.tree_map(lambda o: o[2], out, is_leaf=is_t)
        return p2, m2, v2, t1, loss, norm
    return jax.jit(step, donate_argnums=(0, 1, 2, 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--export", help="write the step's StableHLO to this file instead of timing it")
    a = ap.parse_args()
    cd = jnp.bfloat16 if a.dtype == "bf16" else jnp.float32
    p = init(jax.random.PRNGKey(0))
    m = jax.tree_util.tree_map(jnp.zeros_like, p)
    v = jax.tree_util.tree_map(jnp.zeros_like, p)
    t = jnp.zeros((), jnp.int32)
    ids = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, V)
    targets = jnp.roll(ids, -1, 1)
    mask = jnp.ones((B, T), jnp.float32).at[:, -1].set(0)
    step = make_step(cd)
    if a.export:
        with open(a.export, "w") as f:
            f.write(step.lower(p, m, v, t, ids, targets, mask).as_text())
        return
    t0 = time.perf_counter()
    compiled = step.lower(p, m, v, t, ids, targets, mask).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        p, m, v, t, loss, norm = compiled(p, m, v, t, ids, targets, mask)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    print(f"{compile_s:.3f} {statistics.median(times[1:]):.4f}")


if __name__ == "__main__":
    main()
