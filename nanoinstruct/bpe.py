"""Train a byte-level BPE tokenizer on a text corpus: a .tiktoken ranks file.

GPT-2's tokenizer was trained on its own pretraining text (WebText). The embedded world's
corpus is a different language: a few hundred words ("white", " owl", "Instruction") and
numbers. A byte-level model spends four tokens on " owl" and must learn to spell it, copy it
and compare it letter by letter; a BPE model trained on the corpus sees one token. This is
the same algorithm as GPT-2's (Sennrich et al. 2016, byte-level as Radford et al. 2019):

    text -> pieces by GPT-2's split regex (" owl", " 479", "."), counted
    vocabulary = the 256 bytes; then, until it has vocab_size tokens:
        the most frequent adjacent pair (a, b) in the pieces becomes the token a+b

with one rule of LLaMA's: digits are never merged, so a number is its digits ("479" ->
"4" "7" "9") and a number's parity is its last token. Ties go to the pair of lowest ranks,
so the result is a function of the text. The file is what tokenizer.get_tokenizer reads
(`base64(token) rank` per line); a stem other than a tiktoken name gets GPT-2's regex, the
one used here, and EOS after the last rank.

    python -m nanoinstruct.bpe --data=data/world/corpus.jsonl --out=data/world/world.tiktoken
"""

import os
import sys
from collections import Counter
from dataclasses import dataclass

import regex
from tiktoken_ext.openai_public import r50k_pat_str

DIGITS = frozenset(b"0123456789")


def train(texts, vocab_size, pat_str=r50k_pat_str):
    """texts (an iterable of str) -> ranks {token bytes: rank}: the 256 bytes, then up to
    vocab_size - 256 merges (fewer when no pair is left to merge)."""
    pieces = Counter(p for t in texts for p in regex.findall(pat_str, t))
    words = [[bytes([b]) for b in p.encode()] for p in pieces]      # each piece as its tokens
    freq = list(pieces.values())
    ranks = {bytes([i]): i for i in range(256)}
    while len(ranks) < vocab_size:
        pairs = Counter()
        for w, f in zip(words, freq):
            for a, b in zip(w, w[1:]):
                if not DIGITS & set(a + b):
                    pairs[a, b] += f
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], -ranks[kv[0][0]], -ranks[kv[0][1]]))
        ranks.setdefault(a + b, len(ranks))
        for i, w in enumerate(words):                                  # merge (a, b) everywhere
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
    return ranks


@dataclass
class Config:
    data: str = ""              # required; the corpus: JSONL of {"text"} documents (pretraining's --data)
    demos: str = ""             # demonstrations JSONL whose prompts (in the template) and responses count too
    out: str = ""               # required; the .tiktoken file to write
    vocab_size: int = 512       # [257, 65536]; the 256 bytes and the merges (EOS and PAD come on top)
    overwrite: bool = False     # replace --out if it exists


def main(argv=None):
    from nanoinstruct import data, tokenizer
    from nanoinstruct.cli import UserError, parse_flags

    cfg = parse_flags(Config, argv)
    if os.path.lexists(cfg.out) and (os.path.isdir(cfg.out) or not cfg.overwrite):
        raise UserError(f"--out={cfg.out}: " + ("a directory" if os.path.isdir(cfg.out)
                                                 else "exists; pass --overwrite to replace it"))
    texts = [d["text"] for d in data.read_text(cfg.data)]
    if cfg.demos:  # the words of the responses, which the corpus of facts does not use ("Sure!")
        texts += [tokenizer.format_prompt(d["prompt"]) + tokenizer.RESPONSE_PREFIX + d["response"]
                  for d in data.read_demos(cfg.demos)]
    ranks = train(texts, cfg.vocab_size)
    tokenizer.write_ranks(ranks, cfg.out)
    tok = tokenizer.get_tokenizer(cfg.out)
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tokens = sum(len(tok.encode(t)) for t in texts)
    print(f"{cfg.out}: {len(ranks)} tokens ({len(ranks) - 256} merges); the {len(texts)} texts it was "
          f"trained on: {n_bytes} bytes -> {n_tokens} tokens ({n_bytes / max(n_tokens, 1):.2f} bytes per token)",
          file=sys.stderr)


if __name__ == "__main__":
    from nanoinstruct.cli import cli_main
    cli_main(main)
