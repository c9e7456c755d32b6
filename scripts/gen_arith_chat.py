#!/usr/bin/env python3
"""Write the arithmetic chat set of configs/sft-smoke.toml (deterministic; rerun to rebuild).

Every pair (a, b) with 0 <= a, b < 50 is one question "What is a plus b?" answered "a+b".
100 pairs, drawn with a fixed seed, are held out for evaluation and never trained on:

  configs/data/arith-chat-train.jsonl   {"messages": [user question, model answer]} per line
  configs/data/arith-chat-eval.jsonl    {"prompt": question, "answer": "..."} per line

    python3 scripts/gen_arith_chat.py
"""
import json
import pathlib
import random

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "configs" / "data"
N = 50
HELD_OUT = 100


def main() -> None:
    pairs = [(a, b) for a in range(N) for b in range(N)]
    rng = random.Random(0)
    rng.shuffle(pairs)
    held, train = pairs[:HELD_OUT], pairs[HELD_OUT:]
    with open(OUT / "arith-chat-train.jsonl", "w") as f:
        for a, b in train:
            msgs = [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "model", "content": str(a + b)},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    with open(OUT / "arith-chat-eval.jsonl", "w") as f:
        for a, b in held:
            f.write(json.dumps({"prompt": f"What is {a} plus {b}?", "answer": str(a + b)}) + "\n")
    print(f"{len(train)} training conversations, {len(held)} held-out questions in {OUT}")


if __name__ == "__main__":
    main()
