"""Tokenizers on tiktoken, EOS and a PAD distinct from it, and the prompt/response template.

- `bytes` (the default, used by the embedded world): the 256 byte values as a tiktoken
  Encoding with no merges. Needs no download.
- a named encoding (`gpt2`, `r50k_base`, `cl100k_base`, `o200k_base`): fetched by tiktoken
  where there is a network (and cached under TIKTOKEN_CACHE_DIR).
- a path to a local `.tiktoken` ranks file: works offline. We parse the file ourselves
  rather than through tiktoken.load, because tiktoken caches even local paths under
  TIKTOKEN_CACHE_DIR by the path's hash, so a stale cache entry would shadow an edited file.
  The file's stem picks the split regex and special tokens (`cl100k_base.tiktoken` gets
  cl100k's); any other stem gets GPT-2's.

PAD must differ from EOS: if they were equal, masking padding would mask every EOS too,
and the policy would never be trained to stop. Every encoding here gets a `<|pad|>`
special token after its last id when it has none. PAD is never a training target and is
never sampled.

The template is defined here and only here: a prompt is encoded as
    PROMPT_TEMPLATE.format(prompt=prompt)            e.g. "Instruction: Add 2 and 3.\nResponse:"
and a response as " " + response followed by EOS. Prompt and response are encoded
separately (no token merges across the boundary), which is exactly what happens at
sampling time, when the response is generated after the encoded prompt.
"""

import base64
import os
from unittest import mock

import tiktoken

from nanoinstruct.cli import UserError

PROMPT_TEMPLATE = "Instruction: {prompt}\nResponse:"
RESPONSE_PREFIX = " "
EOS, PAD = "<|endoftext|>", "<|pad|>"
NAMED = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")


class Tokenizer:
    def __init__(self, name, enc):
        self.name = name                            # what to pass to get_tokenizer to rebuild it
        specials = dict(enc._special_tokens)
        if PAD not in specials:                     # add PAD after the last id
            specials[PAD] = enc.n_vocab
            enc = tiktoken.Encoding(name=enc.name + "+pad", pat_str=enc._pat_str,
                                    mergeable_ranks=enc._mergeable_ranks, special_tokens=specials)
        self.enc = enc
        self.eos_id = specials[EOS]
        self.pad_id = specials[PAD]
        self.n_vocab = enc.n_vocab                  # ids 0 .. n_vocab-1, PAD the last; the model may pad
        assert self.pad_id == self.n_vocab - 1, "PAD must be the last id"
        self.n_real = self.pad_id                   # the ids a model predicts: every one but PAD
        # some encodings (cl100k, o200k) leave gaps below n_vocab; decode skips them
        self.valid = set(enc._mergeable_ranks.values()) | set(specials.values())
        assert self.eos_id != self.pad_id

    def __eq__(self, other):
        """The same ids for the same text: same split regex, ranks and special tokens."""
        return isinstance(other, Tokenizer) and (self.enc._pat_str, self.enc._special_tokens) == \
            (other.enc._pat_str, other.enc._special_tokens) and self.enc._mergeable_ranks == other.enc._mergeable_ranks

    def encode(self, text):
        """Plain text -> ids. Special-token strings in text are encoded as plain text."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode([i for i in ids if i != self.pad_id and i in self.valid],
                               errors="replace")

    def encode_prompt(self, prompt):
        return self.encode(PROMPT_TEMPLATE.format(prompt=prompt))

    def encode_response(self, response):
        """Response text -> ids, ending with EOS (the policy learns to stop)."""
        return self.encode(RESPONSE_PREFIX + response) + [self.eos_id]

    def decode_response(self, ids):
        """Sampled response ids -> text, cut at the first EOS."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        text = self.decode(ids)
        return text[len(RESPONSE_PREFIX):] if text.startswith(RESPONSE_PREFIX) else text


def _bytes_encoding():
    # 256 single-byte tokens, no merges; pieces of at most 64 characters keep BPE cheap
    ranks = {bytes([i]): i for i in range(256)}
    return tiktoken.Encoding(name="bytes", pat_str=r"[\s\S]{1,64}", mergeable_ranks=ranks,
                             special_tokens={EOS: 256, PAD: 257})


def _read_ranks(path):
    """A .tiktoken file: one `base64(token) rank` pair per line."""
    ranks = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise UserError(f"{path}:{lineno}: expected 'base64-token rank', "
                                f"got {line[:60]!r}") from None
    if not ranks:
        raise UserError(f"{path}: no tokens in this .tiktoken file")
    return ranks


def _local_encoding(path):
    ranks = _read_ranks(path)
    stem = os.path.basename(path).split(".")[0]
    known = stem in NAMED and stem != "gpt2"        # gpt2's ranks ship as r50k_base
    # Run tiktoken's own constructor for that encoding (its split regex and special
    # tokens) with its download replaced by the ranks we just read.
    from tiktoken_ext import openai_public
    with mock.patch.object(openai_public, "load_tiktoken_bpe", lambda *a, **k: ranks):
        spec = openai_public.ENCODING_CONSTRUCTORS[stem if known else "r50k_base"]()
    # an unknown file gets GPT-2's regex and an EOS right after its last rank
    specials = spec["special_tokens"] if known else {EOS: max(ranks.values()) + 1}
    return tiktoken.Encoding(name=os.path.basename(path), pat_str=spec["pat_str"],
                             mergeable_ranks=ranks, special_tokens=specials)


def get_tokenizer(name="bytes"):
    """'bytes', a tiktoken encoding name, or a path to a local .tiktoken file."""
    if name == "bytes":
        return Tokenizer(name, _bytes_encoding())
    if os.path.sep in name or name.endswith(".tiktoken"):
        if not os.path.isfile(name):
            raise UserError(f"tokenizer file not found: {name}")
        return Tokenizer(os.path.abspath(name), _local_encoding(name))
    if name not in NAMED:
        raise UserError(f"unknown tokenizer {name!r}: use 'bytes', one of {', '.join(NAMED)}, "
                        f"or a path to a .tiktoken file")
    try:
        enc = tiktoken.get_encoding(name)
    except Exception as e:  # no network, a proxy, a broken cache: all end here
        local = "r50k_base" if name == "gpt2" else name
        raise UserError(
            f"could not fetch the tiktoken encoding {name!r} ({type(e).__name__}: {e}). "
            f"Without a network, download {local}.tiktoken elsewhere and pass its path "
            f"instead, e.g. --tokenizer=/path/to/{local}.tiktoken") from None
    return Tokenizer(name, enc)


# ---------------------------------------------------------------------------------------
# Tokenizers from in-memory ranks, and ranks back to a file (Hugging Face import,
# checkpoints that carry their tokenizer)

def from_ranks(name, ranks, eos_id):
    """A GPT-2-style tokenizer (GPT-2's split regex) from {token bytes: rank} and EOS's id.
    A byte-level vocabulary with no merges is the `bytes` encoding."""
    if ranks == {bytes([i]): i for i in range(256)} and eos_id == 256:
        return get_tokenizer("bytes")
    from tiktoken_ext.openai_public import r50k_pat_str
    enc = tiktoken.Encoding(name=os.path.basename(name), pat_str=r50k_pat_str,
                            mergeable_ranks=ranks, special_tokens={EOS: eos_id})
    return Tokenizer(name, enc)


def write_ranks(tok, path):
    """Write tok's ranks as a .tiktoken file (`base64(token) rank` per line, rank order):
    the file get_tokenizer(path) reads back."""
    ranks = sorted(tok.enc._mergeable_ranks.items(), key=lambda kv: kv[1])
    with open(path, "w") as f:
        f.writelines(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks)
