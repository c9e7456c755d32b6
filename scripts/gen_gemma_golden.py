#!/usr/bin/env python3
"""Write the golden Gemma token ids that `crates/data/tests/gemma_tokenizer.rs` compares against.

The reference implementation is SentencePiece itself (`pip install sentencepiece`) run on
`tokenizer.gemma`, the SentencePiece model that ships in the `maxtext` wheel on the Python
package index. Not run by CI; rerun by hand when the test text changes:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 maxtext==0.2.5 -d /tmp/mt
    unzip -o /tmp/mt/maxtext-0.2.5-py3-none-any.whl maxtext/assets/tokenizers/tokenizer.gemma -d /tmp/mt
    python3 scripts/gen_gemma_golden.py /tmp/mt/maxtext/assets/tokenizers/tokenizer.gemma

It writes crates/data/tests/data/gemma_golden.json: {"model_sha256", "cases": [{"text", "ids", "decoded"}]}.
"""
import hashlib
import json
import pathlib
import sys

import sentencepiece as spm

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/data/tests/data/gemma_golden.json"

CASES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 9:45 a.m., isn't it?",
    "a  b   c    d     e",
    "  two leading spaces",
    "trailing spaces   ",
    "x\n\n\ny\n",
    "line one\r\nline two\r\n",
    "1234567890 3.14159 -0.5e-10 0x1F 2026-11-27 1,000,000",
    "日本語のテキストです。中文文本。한국어 텍스트.",
    "emoji 😀👍🏽 🇺🇸 👨‍👩‍👧‍👦 ❤️",
    "def square(x):\n    \"\"\"Return x squared.\"\"\"\n    return x ** 2\n\n\tif x:\n\t\tpass  # tabs\n",
    "fn main() { let v: Vec<u32> = (0..10).map(|i| i * i).collect(); println!(\"{v:?}\"); }",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<b>bold</b> <table><tr><td>cell</td></tr></table> <code>x</code>",
    "literal control text: <bos> <eos> <pad> <unk>",
    "Ünïcödé façade naïve Ångström Œuvre ß",
    "\t\t\t three tabs and \t\t two",
    " ",
    "\x00\x01 control chars \x7f \x1b[0m",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 mathematical letters and rare CJK 𠀋𡈽",
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم שלום עולם नमस्ते दुनिया",
    "                                        forty spaces then text",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nmany newlines",
    "mixed   \n  \n\t \n whitespace",
]


def main() -> None:
    model = pathlib.Path(sys.argv[1])
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 256000, sp.get_piece_size()
    cases = []
    for text in CASES:
        ids = sp.encode(text)
        cases.append({"text": text, "ids": ids, "decoded": sp.decode(ids)})
    doc = {
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "reference": f"sentencepiece {spm.__version__}",
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
