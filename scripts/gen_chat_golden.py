#!/usr/bin/env python3
"""Write the golden chat ids and loss masks that `crates/data/tests/chat.rs` compares against.

The reference is SentencePiece (`pip install sentencepiece`) on `tokenizer.gemma`, the Gemma
SentencePiece model in the `maxtext` wheel (see scripts/gen_gemma_golden.py for how to get it).
Not run by CI; rerun by hand when the cases change:

    python3 scripts/gen_chat_golden.py /tmp/mt/maxtext/assets/tokenizers/tokenizer.gemma

For every conversation the ids are `<bos>` and SentencePiece's ids of the whole rendered
template at once. The mask is built independently, piece by piece: the ids of each turn's
header, content, `<end_of_turn>` and newline encoded on their own, masked 1 on a model turn's
content and `<end_of_turn>`. The script checks that the pieces concatenate to the whole-text
ids (true for Gemma: control pieces and newlines are user-defined pieces that no merge
crosses), so the mask is that of the whole-text tokens. Writes
crates/data/tests/data/chat_golden.json.
"""
import hashlib
import json
import pathlib
import sys

import sentencepiece as spm

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/data/tests/data/chat_golden.json"

CASES = {
    "multi_turn": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "model", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome. It has been the capital since 1871."},
        {"role": "user", "content": "Thanks!"},
        {"role": "model", "content": "You're welcome."},
    ],
    "whitespace_padded": [
        {"role": "user", "content": "   \n\t  lots of   space around  \n\n"},
        {"role": "model", "content": "\n\n  an answer with\n\ninner   gaps \t "},
        {"role": "user", "content": "  "},
        {"role": "model", "content": "\t\tindented reply\n"},
    ],
    "code": [
        {"role": "user", "content": "Write a Python function that squares a number."},
        {
            "role": "model",
            "content": "```python\ndef square(x):\n    \"\"\"Return x squared.\"\"\"\n    return x ** 2\n```\n\nUse it as `square(3)`.",
        },
        {"role": "user", "content": "Now in Rust, with a tab:\n\tfn main() {}"},
        {
            "role": "model",
            "content": "fn square(x: i64) -> i64 {\n\tx * x\n}\n\nfn main() { println!(\"{}\", square(3)); }",
        },
    ],
    "non_latin": [
        {"role": "user", "content": "日本の首都はどこですか？"},
        {"role": "model", "content": "東京です。😀"},
        {"role": "user", "content": "Привет! Как дела? مرحبا שלום नमस्ते"},
        {"role": "model", "content": "Хорошо, спасибо! 한국어도 할 수 있어요. 🇺🇸👨‍👩‍👧"},
    ],
    "ends_with_user": [
        {"role": "user", "content": "2+2?"},
        {"role": "model", "content": "4"},
        {"role": "user", "content": "literal <bos> and <eos> in text, and <start_of_turn> too"},
    ],
    "empty_model_turn": [
        {"role": "user", "content": "Say nothing."},
        {"role": "model", "content": "   "},
    ],
}


def render(messages):
    text = ""
    for m in messages:
        role = "model" if m["role"] == "assistant" else m["role"]
        text += f"<start_of_turn>{role}\n{m['content'].strip()}<end_of_turn>\n"
    return text


def main() -> None:
    model = pathlib.Path(sys.argv[1])
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 256000, sp.get_piece_size()
    bos = sp.bos_id()
    assert bos == 2 and sp.piece_to_id("<start_of_turn>") == 106
    cases = []
    for name, messages in CASES.items():
        text = render(messages)
        ids = [bos] + sp.encode(text)
        piece_ids, mask = [bos], [0]
        for m in messages:
            role = "model" if m["role"] == "assistant" else m["role"]
            trained = 1 if role == "model" else 0
            for part, bit in [
                (f"<start_of_turn>{role}\n", 0),
                (m["content"].strip(), trained),
                ("<end_of_turn>", trained),
                ("\n", 0),
            ]:
                got = sp.encode(part) if part else []
                piece_ids += got
                mask += [bit] * len(got)
        assert piece_ids == ids, f"{name}: pieces do not concatenate to the whole-text ids"
        cases.append(
            {"name": name, "messages": messages, "text": text, "input_ids": ids, "loss_mask": mask}
        )
    doc = {
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "reference": f"sentencepiece {spm.__version__}",
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
