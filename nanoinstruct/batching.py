"""Batches: padding, masks, and the packing of prompts, responses, rankings and documents.

The position convention. A prompt+response batch is laid out as

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

import sys
from collections import namedtuple

import torch

from nanoinstruct.cli import UserError


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
