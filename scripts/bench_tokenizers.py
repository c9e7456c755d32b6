#!/usr/bin/env python3
"""Reference tokenization throughput for `cargo run --release --example bench` (crates/data).

Encodes the same text as the Rust bench (the file repeated to about 3 MB, cut into
paragraphs at blank lines), one paragraph at a time on one thread, with
  * SentencePiece (`pip install sentencepiece`) on a SentencePiece model (tokenizer.gemma), and
  * HF tokenizers (`pip install tokenizers`) on a tokenizer.json (the Gemma one from
    `meshtrain setup tokenizer`, or configs/data/shakespeare-bpe8k.json).

    python3 scripts/bench_tokenizers.py TEXT [--spm tokenizer.gemma] [--hf tokenizer.json ...]
"""
import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("text")
    ap.add_argument("--spm", action="append", default=[])
    ap.add_argument("--hf", action="append", default=[])
    a = ap.parse_args()
    base = open(a.text, encoding="utf-8").read()
    copies = max(1, 3_000_000 // max(1, len(base.encode())))
    text = base * copies
    paras = [p for p in text.split("\n\n") if p.strip()]
    nbytes = sum(len(p.encode()) for p in paras)
    print(f"text {a.text} x{copies}: {len(paras)} paragraphs, {nbytes / 1e6:.2f} MB")
    print("| tokenizer | MB/s, 1 thread | tokens/s |")
    print("|---|---|---|")
    for path in a.spm:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=path)
        t = time.perf_counter()
        n = sum(len(sp.encode(p)) for p in paras)
        dt = time.perf_counter() - t
        print(f"| sentencepiece {spm.__version__} {os.path.basename(path)} | {nbytes / 1e6 / dt:.2f} | {n / dt:.0f} |")
    for path in a.hf:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        import tokenizers

        tk = tokenizers.Tokenizer.from_file(path)
        t = time.perf_counter()
        n = sum(len(tk.encode(p, add_special_tokens=False).ids) for p in paras)
        dt = time.perf_counter() - t
        print(f"| HF tokenizers {tokenizers.__version__} {os.path.basename(path)} | {nbytes / 1e6 / dt:.2f} | {n / dt:.0f} |")


if __name__ == "__main__":
    main()
