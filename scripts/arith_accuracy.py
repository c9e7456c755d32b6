#!/usr/bin/env python3
"""Exact-match accuracy of `meshtrain generate --json` answers on the held-out arithmetic set.

    meshtrain generate --checkpoint runs/sft-smoke/final --chat \
      --prompts configs/data/arith-chat-eval.jsonl --max-new-tokens 8 --json | tail -n 1 > answers.json
    python3 scripts/arith_accuracy.py configs/data/arith-chat-eval.jsonl answers.json

An answer is correct when its text, stripped of surrounding whitespace, equals the expected
number (the final <end_of_turn> is not part of the text).
"""
import json
import sys


def main() -> None:
    items = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    gens = json.load(open(sys.argv[2]))["generations"]
    assert len(gens) == len(items), (len(gens), len(items))
    right = sum(g["texts"][0].strip() == it["answer"] for g, it in zip(gens, items))
    print(json.dumps({"correct": right, "questions": len(items), "accuracy": right / len(items)}))
    for g, it in list(zip(gens, items))[:5]:
        print(f"  {it['prompt']!r} -> {g['texts'][0]!r} (expected {it['answer']})")


if __name__ == "__main__":
    main()
