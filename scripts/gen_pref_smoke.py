#!/usr/bin/env python3
"""Writes configs/data/prefs-smoke.json: synthetic token-level preference pairs
for configs/reward-smoke.toml.

Each pair shares a prompt (<bos> then 3-8 random ids); both responses are
4-12 random ids, and the chosen one contains the id 42 somewhere while the
rejected one never does. A reward model that learns "responses with 42 are
better" separates the pairs; nothing else tells them apart.

Deterministic (seeded). Usage: python3 scripts/gen_pref_smoke.py
[--seed N --pairs N --out FILE] (e.g. held-out pairs with another seed).
"""
import argparse
import json
import os
import random

VOCAB = 256
FAVOURITE = 42
PAIRS = 1024
OUT = os.path.join(os.path.dirname(__file__), "..", "configs", "data", "prefs-smoke.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=PAIRS)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    ids = [i for i in range(3, VOCAB) if i != FAVOURITE]
    chosen, rejected = [], []
    for _ in range(args.pairs):
        prompt = [2] + [rng.choice(ids) for _ in range(rng.randint(3, 8))]
        good = [rng.choice(ids) for _ in range(rng.randint(4, 12))]
        good[rng.randrange(len(good))] = FAVOURITE
        bad = [rng.choice(ids) for _ in range(rng.randint(4, 12))]
        chosen.append(prompt + good)
        rejected.append(prompt + bad)
    with open(args.out, "w") as f:
        json.dump({"chosen": chosen, "rejected": rejected}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{args.pairs} pairs -> {args.out}")


if __name__ == "__main__":
    main()
