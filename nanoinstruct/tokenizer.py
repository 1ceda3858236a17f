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

The template is defined here and only here. A prompt (data.py's canonical prompt: a
string for one user turn, or a list of {"role", "content"} messages ending with the user's)
is written by `format_prompt(prompt, template)` and encoded; a response is " " + response
followed by EOS. Two templates:

    instruction  (the default)  "Instruction: Add 2 and 3.\nResponse:"
    dialogue     (HH-RLHF's)    "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: Add 2 and 3.\n\nAssistant:"

The dialogue template writes every turn as "\n\nHuman: ..." or "\n\nAssistant: ...", a
system message's text before the first, and ends with "\n\nAssistant:", so that an HH-RLHF
dialogue read by data.py comes back exactly: format_prompt(prompt) + " " + response. The
instruction template holds one user turn. Prompt and response are encoded separately (no
token merges across the boundary), which is exactly what happens at sampling time, when
the response is generated after the encoded prompt.
"""

import base64
import os
from unittest import mock

import tiktoken

from nanoinstruct.cli import UserError

TEMPLATES = {"instruction": "Instruction: {prompt}\nResponse:",
             "dialogue": "\n\nHuman: {prompt}\n\nAssistant:"}
PROMPT_TEMPLATE = TEMPLATES["instruction"]      # the default; the world's worksheets use it
TURNS = {"user": "\n\nHuman: ", "assistant": "\n\nAssistant: ", "system": ""}  # dialogue's
RESPONSE_PREFIX = " "
EOS, PAD = "<|endoftext|>", "<|pad|>"
NAMED = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")


def format_prompt(prompt, template="instruction"):
    """A prompt (a string, or messages ending with the user's turn) -> the text in the template."""
    if template not in TEMPLATES:
        raise UserError(f"--template={template!r}: choose {' or '.join(TEMPLATES)}")
    if isinstance(prompt, str):
        return TEMPLATES[template].format(prompt=prompt)
    if template != "dialogue":
        raise UserError(f"a multi-turn prompt (or one with a system message) needs "
                        f"--template=dialogue; the {template} template holds one user turn")
    return "".join(TURNS[m["role"]] + m["content"] for m in prompt) + "\n\nAssistant:"


class Tokenizer:
    def __init__(self, name, enc, template="instruction"):
        self.name = name                            # what to pass to get_tokenizer to rebuild it
        format_prompt("", template)                 # a UserError for an unknown template
        self.template = template                    # ... and the template's name
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
        """The same ids for the same prompt: same template, split regex, ranks and special tokens."""
        return isinstance(other, Tokenizer) and (self.template, self.enc._pat_str, self.enc._special_tokens) == \
            (other.template, other.enc._pat_str, other.enc._special_tokens) and \
            self.enc._mergeable_ranks == other.enc._mergeable_ranks

    def encode(self, text):
        """Plain text -> ids. Special-token strings in text are encoded as plain text."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode([i for i in ids if i != self.pad_id and i in self.valid],
                               errors="replace")

    def format_prompt(self, prompt):
        return format_prompt(prompt, self.template)

    def encode_prompt(self, prompt):
        """A prompt (a string or a list of messages) -> ids of the text in the template."""
        return self.encode(format_prompt(prompt, self.template))

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
    """A .tiktoken file: one `base64(token) rank` pair per line -> {token bytes: rank}.

    What tiktoken would choke on later, with a panic or an OverflowError and a traceback,
    is a `file:line` error here: a token or a rank given twice, a rank that is not an
    integer in 0 .. 2**32-1 (tiktoken's id type), and a missing single byte (its BPE starts
    from the 256 bytes). Gaps between ranks are allowed: p50k and cl100k have them."""
    ranks, line_of = {}, {}                        # token -> rank; rank -> its line
    try:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    token, rank = line.split()
                    token = base64.b64decode(token, validate=True)
                except ValueError:
                    raise UserError(f"{path}:{lineno}: expected 'base64-token rank', "
                                    f"got {line[:60]!r}") from None
                if not rank.isdigit() or len(rank) > 10 or int(rank) >= 2 ** 32:
                    raise UserError(f"{path}:{lineno}: rank {rank[:20].decode(errors='replace')!r} "
                                    f"is not an integer from 0 to 2**32-1")
                rank = int(rank)
                if token in ranks:
                    raise UserError(f"{path}:{lineno}: token {token[:20]!r} already has rank "
                                    f"{ranks[token]} (line {line_of[ranks[token]]})")
                if rank in line_of:
                    raise UserError(f"{path}:{lineno}: rank {rank} already given at line {line_of[rank]}")
                ranks[token], line_of[rank] = rank, lineno
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not ranks:
        raise UserError(f"{path}: no tokens in this .tiktoken file")
    missing = [f"0x{b:02x}" for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise UserError(f"{path}: no token for the single byte{'s' * (len(missing) > 1)} "
                        f"{', '.join(missing[:4])}{' ...' * (len(missing) > 4)} "
                        f"({len(missing)} of 256); tiktoken needs every byte")
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
    clash = sorted(set(ranks.values()) & set(specials.values()))
    if clash:
        raise UserError(f"{path}: rank {clash[0]} is also {stem}'s special token "
                        f"{[k for k, v in specials.items() if v == clash[0]][0]}; is this {stem}'s file?")
    return tiktoken.Encoding(name=os.path.basename(path), pat_str=spec["pat_str"],
                             mergeable_ranks=ranks, special_tokens=specials)


def get_tokenizer(name="bytes", template="instruction"):
    """'bytes', a tiktoken encoding name, or a path to a local .tiktoken file; the template
    by name (TEMPLATES)."""
    format_prompt("", template)                     # a bad --template fails before any download
    if name == "bytes":
        return Tokenizer(name, _bytes_encoding(), template)
    if os.path.sep in name or name.endswith(".tiktoken"):
        if not os.path.exists(name):
            raise UserError(f"tokenizer file not found: {name}")
        if not os.path.isfile(name):
            raise UserError(f"{name}: not a .tiktoken file (a directory or a pipe)")
        return Tokenizer(os.path.abspath(name), _local_encoding(name), template)
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
    return Tokenizer(name, enc, template)


# ---------------------------------------------------------------------------------------
# Tokenizers from in-memory ranks, and ranks back to a file (Hugging Face import,
# checkpoints that carry their tokenizer)

def from_ranks(name, ranks, eos_id, template="instruction"):
    """A GPT-2-style tokenizer (GPT-2's split regex) from {token bytes: rank} and EOS's id.
    A byte-level vocabulary with no merges is the `bytes` encoding."""
    if ranks == {bytes([i]): i for i in range(256)} and eos_id == 256:
        return get_tokenizer("bytes", template)
    from tiktoken_ext.openai_public import r50k_pat_str
    enc = tiktoken.Encoding(name=os.path.basename(name), pat_str=r50k_pat_str,
                            mergeable_ranks=ranks, special_tokens={EOS: eos_id})
    return Tokenizer(name, enc, template)


def write_ranks(ranks, path):
    """Write ranks {token bytes: rank} (a tokenizer's: tok.enc._mergeable_ranks) as a .tiktoken
    file (`base64(token) rank` per line, rank order): the file get_tokenizer(path) reads back.
    Atomic (a temporary file beside path, then a rename): a killed write leaves path as it was."""
    ranks = sorted(ranks.items(), key=lambda kv: kv[1])
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.writelines(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks)
        os.replace(tmp, path)
    except OSError as e:                       # a full disk, no permission: path left as it was
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
