"""The JSONL formats, their validation with `file:line: field: problem` errors, and batching.

One JSON object per line; blank lines are skipped; keys other than the ones below are
allowed and kept as they are (the world puts what its labelers need there).

    text            {"text": "Words that are fruits: apple, pear, plum."}
    demonstrations  {"prompt": "Reverse the word cat.", "response": "tac"}
    comparisons     {"prompt": "Add 2 and 3.", "responses": ["6", "5", "7"], "ranking": [1, 0, 2]}
                    {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}
    prompts         {"prompt": "Is 7 odd or even?", "answer": "odd", "family": "parity"}

A comparison holds K >= 2 responses (K may differ from line to line; the paper's labelers
ranked K = 4..9) and `ranking`, the response indices from best to worst, so the responses
best-first are `[r["responses"][i] for i in r["ranking"]]`. The pair format of HH-RLHF and
TRL (`chosen`, `rejected`) is read as K = 2: responses [chosen, rejected], ranking [0, 1].

Reading checks every line and reports every bad one at once (a UserError listing
`file:line: field: problem`). The records come back as dicts in the canonical shape above
(a pair becomes responses + ranking); each is a `Record`, a dict that also remembers its
line number in `.line`, which the writers never see. Writing is atomic and deterministic:
the same records give byte-identical files.

Batching and the position convention. A prompt+response batch is laid out as

    ids             [PAD PAD p0 p1 p2 | r0 r1 EOS PAD]      (B, P+R)
    attention_mask  [ 0   0  1  1  1  |  1  1  1   0 ]      (B, P+R)
    response_mask                     [  1  1  1   0 ]      (B, R)   float

prompts left-padded to P (so that generation continues from the right edge), responses
right-padded to R and ending with EOS. The logits predicting response token j sit at
position P-1+j: `logits[:, P-1:-1]` (B, R, V) against targets `ids[:, P:]` (B, R), weighted
by `response_mask`, give the SFT loss and PPO's per-token log-probs. The reward model reads
its score at the last real token, `model.last_index(attention_mask)` (the EOS). For
scoring alone, `pack_sequences` left-pads whole prompt+response rows instead, which keeps
the width within block_size; `pack_rankings` lays out K-way comparisons that way. PAD is
distinct from EOS, and no mask is 1 on a PAD: padding is never a target.
"""

import json
import os
import sys
from collections import namedtuple

import torch

from nanoinstruct.cli import UserError

MAX_LISTED = 20  # bad lines listed in one error; the rest are counted


class Record(dict):
    """A record as read: a plain dict (equal to one) that also knows its line in the file."""
    line = None


class Bad(Exception):
    """One problem on one line: Bad(field, problem); field is None for the whole line."""


# ----------------------------------------------------------------------------------------
# validation: one check per format, obj (a dict) -> the record in canonical shape, or Bad

KINDS = {str: "a string", bool: "true/false", int: "a number", float: "a number",
         list: "a list", dict: "an object", type(None): "null"}


def _kind(v):
    return KINDS.get(type(v), type(v).__name__)


def _string(field, v, empty_ok=False):
    if not isinstance(v, str):
        raise Bad(field, f"expected a string, got {_kind(v)}")
    if not v.strip() and not empty_ok:
        raise Bad(field, "empty string")


def _require(r, *fields):
    for field in fields:
        if field not in r:
            raise Bad(field, "missing")
        _string(field, r[field])


def check_text(r):
    """{"text": str}"""
    _require(r, "text")
    return r


def check_demo(r):
    """{"prompt": str, "response": str}"""
    _require(r, "prompt", "response")
    return r


def check_comparison(r):
    """{"prompt": str, "responses": [str, ...], "ranking": [best, ..., worst]} or a pair
    {"prompt": str, "chosen": str, "rejected": str}"""
    _require(r, "prompt")
    if "responses" not in r and ("chosen" in r or "rejected" in r):   # a pair: K = 2
        _require(r, "chosen", "rejected")
        rest = {k: v for k, v in r.items() if k not in ("prompt", "chosen", "rejected", "ranking")}
        return {"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]],
                "ranking": [0, 1], **rest}
    if "responses" not in r:
        raise Bad("responses", "missing (or give chosen and rejected)")
    responses = r["responses"]
    if not isinstance(responses, list):
        raise Bad("responses", f"expected a list of strings, got {_kind(responses)}")
    K = len(responses)
    if K < 2:
        raise Bad("responses", f"needs at least 2 responses to rank, got {K}")
    for i, s in enumerate(responses):  # a sampled response may be empty (EOS at once): still ranked
        _string(f"responses[{i}]", s, empty_ok=True)
    if "ranking" not in r:
        raise Bad("ranking", "missing")
    ranking = r["ranking"]
    if not isinstance(ranking, list) or any(type(i) is not int for i in ranking):
        raise Bad("ranking", f"expected a list of integers, got {json.dumps(ranking)}")
    if sorted(ranking) != list(range(K)):
        raise Bad("ranking", f"{ranking} is not a permutation of 0..{K - 1} ({K} responses)")
    return r


def check_prompt(r):
    """{"prompt": str, ...metadata}"""
    _require(r, "prompt")
    return r


# ----------------------------------------------------------------------------------------
# reading and writing

def read_jsonl(path, check):
    """Read a JSONL file, every line through check(); raise one UserError for all bad lines."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")
    records, errors = [], []
    with open(path, "rb") as f:    # binary: only b"\n" ends a line (not U+2028 in a string)
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                try:
                    text = raw.rstrip(b"\r\n").decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise Bad(None, "not UTF-8 text") from None
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise Bad(None, f"not JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise Bad(None, f"expected a JSON object, got {_kind(obj)}")
                rec = Record(check(obj))
                rec.line = lineno
                records.append(rec)
            except Bad as e:
                field, problem = e.args
                errors.append(f"{path}:{lineno}: " + (f"{field}: " if field else "") + problem)
    shape = " ".join(check.__doc__.split())        # the check's docstring: the line's shape
    if errors:
        listed = errors[:MAX_LISTED]
        if len(errors) > MAX_LISTED:
            listed.append(f"... and {len(errors) - MAX_LISTED} more")
        raise UserError(f"{path}: {len(errors)} bad line{'s' * (len(errors) > 1)}; each line "
                        f"should be {shape}\n" + "\n".join(listed))
    if not records:
        raise UserError(f"{path}: empty file; each line should be {shape}")
    return records


def read_text(path):
    return read_jsonl(path, check_text)


def read_demos(path):
    return read_jsonl(path, check_demo)


def read_comparisons(path):
    return read_jsonl(path, check_comparison)


def read_prompts(path):
    return read_jsonl(path, check_prompt)


def _dumps(record):
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path, records):
    """Write records, one per line, atomically: a temporary file beside path, then a rename."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(_dumps(r))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def append_jsonl(path, record):
    """Append one record and flush it to disk now (a labeling session killed loses nothing)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8", newline="\n") as f:
        f.write(_dumps(record))
        f.flush()
        os.fsync(f.fileno())


def fit_prompts(records, tok, max_prompt_tokens, path):
    """The records whose encoded prompt has at most max_prompt_tokens tokens.

    The others are counted and reported on stderr in one line, never silently dropped;
    a UserError if none fits.
    """
    kept, first, n_long = [], None, 0
    for i, r in enumerate(records):
        if len(tok.encode_prompt(r["prompt"])) <= max_prompt_tokens:
            kept.append(r)
        else:
            n_long += 1
            if first is None:
                line = getattr(r, "line", None)
                first = f"line {line}" if line is not None else f"record {i + 1}"
    if not kept:
        raise UserError(f"{path}: all {len(records)} prompts are longer than "
                        f"{max_prompt_tokens} tokens")
    if n_long:
        print(f"{path}: {n_long} of {len(records)} prompts longer than {max_prompt_tokens} "
              f"tokens left out (first at {first})", file=sys.stderr, flush=True)
    return kept


# ----------------------------------------------------------------------------------------
# batching

def _pad(seqs, pad_id, left):
    B, T = len(seqs), max((len(s) for s in seqs), default=0)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, s in enumerate(seqs):
        span = slice(T - len(s), T) if left else slice(0, len(s))
        ids[b, span] = torch.as_tensor(s, dtype=torch.long)
        mask[b, span] = 1
    return ids, mask


def left_pad(seqs, pad_id):
    """Token lists -> ids (B, P) long, mask (B, P) long; padding on the left, P = longest."""
    return _pad(seqs, pad_id, left=True)


def right_pad(seqs, pad_id):
    """Token lists -> ids (B, R) long, mask (B, R) long; padding on the right, R = longest."""
    return _pad(seqs, pad_id, left=False)


def join(prompt_ids, prompt_mask, response_ids, response_mask):
    """Left-padded prompts (B, P) + right-padded responses (B, R), e.g. from model.generate
    -> ids (B, P+R), attention_mask (B, P+R) long. The real tokens of a row are contiguous."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    return ids, attention_mask


# ids (B, P+R) long, attention_mask (B, P+R) long, response_mask (B, R) float, P int
Pairs = namedtuple("Pairs", "ids attention_mask response_mask P")


def pack_pairs(tok, prompts, responses):
    """Prompt and response strings -> Pairs, laid out as in the module docstring."""
    p_ids, p_mask = left_pad([tok.encode_prompt(p) for p in prompts], tok.pad_id)    # (B, P)
    r_ids, r_mask = right_pad([tok.encode_response(r) for r in responses], tok.pad_id)  # (B, R)
    ids, attention_mask = join(p_ids, p_mask, r_ids, r_mask)
    return Pairs(ids, attention_mask, r_mask.float(), p_ids.shape[1])


def pack_sequences(tok, prompts, responses):
    """Prompt and response strings -> ids (B, L) long, attention_mask (B, L) long, each
    whole prompt+response left-padded: for scoring, not generation. L is the longest row
    (where Pairs would take the longest prompt plus the longest response, which can exceed
    block_size when every row fits), and every row's last real token, its EOS, sits in the
    last column."""
    return left_pad([tok.encode_prompt(p) + tok.encode_response(y) for p, y in zip(prompts, responses)],
                    tok.pad_id)


# ids (R, L) long, attention_mask (R, L) long: every response once (with its prompt), as
# pack_sequences lays them out, grouped by prompt and best first; rank (P, Kmax) long: the
# row of prompt p's k-th best response (0 in padding); valid (P, Kmax) bool: it exists
Rankings = namedtuple("Rankings", "ids attention_mask rank valid")


def pack_rankings(tok, comparisons):
    """K-way comparisons -> Rankings. Each response is one row, so a model scores a prompt's
    K responses in K forward passes; `scores[rank]` (P, Kmax) is then ordered best to worst,
    the layout ranking_loss takes. The order of responses in the file does not matter, only
    the ranking."""
    prompts, responses, rank, valid = [], [], [], []
    K = max(len(c["responses"]) for c in comparisons)
    for c in comparisons:
        best_first = [c["responses"][i] for i in c["ranking"]]
        k = len(best_first)
        rank.append(list(range(len(responses), len(responses) + k)) + [0] * (K - k))
        valid.append([True] * k + [False] * (K - k))
        prompts += [c["prompt"]] * k
        responses += best_first
    ids, attention_mask = pack_sequences(tok, prompts, responses)
    return Rankings(ids, attention_mask, torch.tensor(rank), torch.tensor(valid))


def sft_example(tok, prompt, response):
    """One demonstration -> ids (L+1,) long, loss mask (L,) float for inputs ids[:-1] and
    targets ids[1:]: 1 on the targets that are response tokens or EOS, 0 on prompt targets."""
    p, y = tok.encode_prompt(prompt), tok.encode_response(response)
    return torch.tensor(p + y), torch.tensor([0.0] * (len(p) - 1) + [1.0] * len(y))


def pack_documents(tok, texts, block_size):
    """Pretraining rows: LongTensor (N, block_size+1); x = row[:-1], y = row[1:].

    The documents are encoded, each followed by EOS, and concatenated into one stream (as
    GPT-2 was trained: attention crosses document boundaries, EOS marks them). Row i is
    stream[i*T : i*T + T + 1] with T = block_size, so consecutive rows share one token and
    every token after the first is a target exactly once. The tail of fewer than T tokens
    is dropped. The loss is on every token: there is no padding.
    """
    stream = []
    for text in texts:
        stream += tok.encode(text) + [tok.eos_id]
    N = (len(stream) - 1) // block_size
    if N == 0:
        raise UserError(f"the text corpus is {len(stream)} tokens, fewer than one block of "
                        f"{block_size + 1}")
    stream = torch.tensor(stream[:N * block_size + 1], dtype=torch.long)
    return stream.unfold(0, block_size + 1, block_size).contiguous()           # (N, T+1)
