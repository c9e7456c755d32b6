#!/usr/bin/env python3
"""Writes configs/data/prompts-smoke.json: the prompts of configs/rlhf-smoke.toml.

Each prompt is <bos> then 3-8 random ids, never 42 (the id the reward model of
configs/reward-smoke.toml learned to prefer in responses, see
scripts/gen_pref_smoke.py). Token rows, one prompt per row.

Deterministic (seeded). Usage: python3 scripts/gen_prompt_smoke.py
"""
import json
import os
import random

VOCAB = 256
FAVOURITE = 42
PROMPTS = 256
OUT = os.path.join(os.path.dirname(__file__), "..", "configs", "data", "prompts-smoke.json")


def main():
    rng = random.Random(1)
    ids = [i for i in range(3, VOCAB) if i != FAVOURITE]
    prompts = [[2] + [rng.choice(ids) for _ in range(rng.randint(3, 8))] for _ in range(PROMPTS)]
    with open(OUT, "w") as f:
        json.dump({"input_ids": prompts}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{PROMPTS} prompts -> {OUT}")


if __name__ == "__main__":
    main()
