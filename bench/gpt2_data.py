"""The inputs of the README's "GPT-2 on real data" walk-through, made offline in DIR:

    python bench/gpt2_data.py DIR path/to/gpt2.tiktoken

- DIR/gpt2: a GPT-2-124M-shaped Hugging Face directory (transformers' GPT2Config(), random
  weights: the released ones cannot be downloaded here) with the real GPT-2 BPE, from the
  .tiktoken ranks file, as vocab.json + merges.txt: what a user's downloaded gpt2 holds.
- HH-RLHF-format data: raw {"chosen", "rejected"} dialogues, single- and multi-turn, as
  Anthropic's files are written (hh_train.jsonl 200, hh_test.jsonl 40); SFT demonstrations
  as chat "messages" (sft.jsonl 180, sft_val.jsonl 20); plain text for the ptx term.
"""

import json
import os
import random
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanoinstruct import hf  # noqa: E402
from nanoinstruct.cli import UserError, cli_main  # noqa: E402
from nanoinstruct.tokenizer import get_tokenizer  # noqa: E402

TOPICS = [  # (question, a good answer, a bad one)
    ("How do I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it in cold water.",
     "Eggs are hard."),
    ("What is the capital of France?", "The capital of France is Paris.", "I don't know."),
    ("Can you recommend a book about space?", "Try Cosmos by Carl Sagan: it is clear and well written.", "No."),
    ("How can I sleep better?", "Keep a regular bedtime, avoid screens late, and keep the room cool and dark.",
     "Just sleep."),
    ("What is 12 times 12?", "12 times 12 is 144.", "It is 124."),
    ("How do I make my plants grow faster?", "Give them enough light, water when the soil is dry, and add some "
     "fertilizer.", "Plants grow when they want."),
    ("Tell me a fun fact.", "Octopuses have three hearts.", "Facts are boring."),
    ("How do I pick a strong password?", "Use a long passphrase of random words, and a different one for each "
     "site.", "Use password123."),
]
OPENERS = ["Hi!", "Hello there.", "Good morning.", "Hey."]


def write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in rows)


def main(out, ranks):
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out}: not a directory")
    tok = get_tokenizer(ranks)                                   # a bad ranks file fails before any write
    os.makedirs(out, exist_ok=True)
    r = random.Random(0)

    def dialogue(q, a):
        if r.random() < 0.4:  # multi-turn
            return f"\n\nHuman: {r.choice(OPENERS)}\n\nAssistant: Hello! How can I help?\n\nHuman: {q}\n\nAssistant: {a}"
        return f"\n\nHuman: {q}\n\nAssistant: {a}"

    pairs = []
    for _ in range(240):
        q, good, bad = r.choice(TOPICS)
        d = dialogue(q, "")
        pairs.append({"chosen": d + good, "rejected": d + bad})
    write(f"{out}/hh_train.jsonl", pairs[:200])
    write(f"{out}/hh_test.jsonl", pairs[200:])
    sft = [{"messages": [{"role": "user" if t.startswith("Human:") else "assistant", "content": t.split(": ", 1)[1]}
                         for t in p["chosen"].split("\n\n") if t]} for p in pairs[:200]]
    write(f"{out}/sft.jsonl", sft[:180])
    write(f"{out}/sft_val.jsonl", sft[180:])
    write(f"{out}/text.jsonl", [{"text": f"{q} {a}"} for q, a, _ in TOPICS] * 20)

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(f"{out}/gpt2")
    hf.write_tokenizer(tok, f"{out}/gpt2", tok.n_real, "<|endoftext|>", "right", 1024)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    cli_main(main, *sys.argv[1:])
