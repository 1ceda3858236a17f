"""GPT-2, exactly, and what RLHF needs of it.

The network is GPT-2 (Radford et al. 2019) as Hugging Face's GPT2LMHeadModel computes it:
pre-LN blocks, learned positions, tanh-GELU, tied input/output embeddings, LayerNorm eps
1e-5. A block is

    x = x + attn(ln_1(x))        attn: causal multi-head self-attention, softmax(q k^T / sqrt(hs)) v
    x = x + mlp(ln_2(x))         mlp:  c_proj(gelu_tanh(c_fc(x))), 4x wide

Module names follow GPT2LMHeadModel's, so HF import/export is a transpose of the
Conv1D weights (HF stores them (in, out); nn.Linear stores (out, in)).

The real vocabulary: the embedding may have more rows than the tokenizer has ids (PAD, and
padding to a multiple of 64 for speed). Those rows are inputs only: logits, log-probs and
samples cover the first `n_real` ids, the ones the tokenizer's text can produce, so that no
log-softmax ever spreads mass over a row no target can hit (with released GPT-2 weights,
whose real logits sit far below zero, zero-initialised padding rows would take it all).

Added for RLHF:
- left-padded batches: `attention_mask` (B, S) marks real tokens; position ids are its
  cumulative sum, and padded keys are masked out, so a prompt's logits do not depend on
  how much padding sits before it;
- a KV cache and batched sampling (temperature, top-k, top-p, per-row stop at EOS,
  a response mask 1 up to and including EOS);
- activation checkpointing (`model.checkpointing = True`): a block keeps only its input for
  the backward and recomputes the rest, memory for about a third more compute;
- `ScalarGPT`: the same trunk with a linear head to one scalar per position, for the
  reward model and the value function (InstructGPT: "the SFT model with the final
  unembedding layer removed"); the reward is read at the last real token.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import kernels


@dataclass
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int        # embedding rows; may exceed the tokenizer's n_vocab (PAD, padding)
    block_size: int        # maximum sequence length (learned positions)
    dropout: float = 0.0   # embedding, attention and residual dropout (GPT-2's three pdrops)
    bias: bool = True      # biases in Linear and LayerNorm (GPT-2 has them)
    n_real: int = 0        # the ids the model predicts, 0 .. n_real-1 (0: all vocab_size rows)

    def __post_init__(self):
        self.n_real = self.n_real or self.vocab_size
        if not 0 < self.n_real <= self.vocab_size:
            raise ValueError(f"n_real {self.n_real} must be in 1 .. vocab_size {self.vocab_size}")


# Size presets (vocab_size comes from the tokenizer). "tiny" is the embedded default's
# byte-level model, about 0.8M parameters; "small" (1.8M) is `make paper`'s larger SFT model;
# the gpt2*-random ones are GPT-2's published sizes, randomly initialised (the names gpt2,
# gpt2-medium, ... mean the released weights: hf.resolve_init).
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    "small": dict(n_layer=4, n_head=6, n_embd=192, block_size=256),
    "gpt2-random": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium-random": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large-random": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl-random": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask=None, cache=None, layer=0):
        # x (B, T, C); mask (B, 1, T, S) bool, True = may attend; S = cached + T keys
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)                  # (B, nh, S, hs)
        p = self.dropout if self.training else 0.0
        if mask is None:  # full causal batch, no padding: the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)                # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of every layer for the S tokens seen so far: (L, B, nh, S_max, hs)."""

    def __init__(self, n_layer, max_len):
        self.k = self.v = None
        self.n_layer, self.max_len, self.pos = n_layer, max_len, 0

    def update(self, layer, k, v):
        # k, v (B, nh, T, hs) for the T new tokens -> all keys/values so far (B, nh, pos+T, hs)
        if self.k is None:  # allocate on first use, in the dtype autocast gave us
            B, nh, _, hs = k.shape
            self.k = k.new_empty(self.n_layer, B, nh, self.max_len, hs)
            self.v = torch.empty_like(self.k)
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def attention_bias(key_mask, T):
    """(B, S) real-token mask over all keys -> (B, 1, T, S) bool mask for the last T queries.

    A query attends to earlier-or-same keys that are real. A padding query attends only to
    itself, so that no row is empty (an all-masked row makes SDPA return NaN); its output
    is never used.
    """
    S = key_mask.shape[1]
    q = torch.arange(S - T, S, device=key_mask.device)[:, None]   # (T, 1) query positions
    k = torch.arange(S, device=key_mask.device)[None, :]           # (1, S) key positions
    allowed = (k <= q) & key_mask.bool()[:, None, None, :]         # (B, 1, T, S)
    return allowed | (k == q)


def last_index(mask):
    """(B, T) 0/1 mask -> (B,) index of the last 1 in each row (0 for an all-zero row)."""
    T = mask.shape[1]
    return (mask.long() * torch.arange(1, T + 1, device=mask.device)).argmax(-1)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied embeddings
        self.checkpointing = False  # activation checkpointing: per-block recompute in the backward
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self):
        """Parameters, counting the tied embedding once and leaving out positions (as nanoGPT)."""
        return sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()

    def hidden(self, idx, attention_mask=None, cache=None):
        """idx (B, T) -> final hidden states (B, T, C), after ln_f.

        attention_mask (B, S): 1 on real tokens, 0 on padding, over all S = cached + T
        tokens. None means every token is real.
        """
        B, T = idx.shape
        past = cache.pos if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size "
                             f"{self.config.block_size}")
        if attention_mask is None and cache is None:
            pos, mask = torch.arange(T, device=idx.device)[None], None  # plain causal
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, past + T, dtype=torch.long, device=idx.device)
            assert attention_mask.shape == (B, past + T), "attention_mask must cover all keys"
            if T == 1 and cache is not None:  # sampling: one new real token per row sees every real key
                pos = attention_mask.sum(-1, keepdim=True) - 1                        # (B, 1)
                mask = attention_mask.bool()[:, None, None, :]                        # (B,1,1,S)
            else:
                # position of a token = number of real tokens before it; padding gets 0
                pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]   # (B, T)
                mask = attention_bias(attention_mask, T)                             # (B,1,T,S)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            if self.checkpointing and cache is None and torch.is_grad_enabled():
                # keep only the block's input (B, T, C); its insides are recomputed in the
                # backward, with the same dropout masks (the RNG state is replayed)
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask, cache, i)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, attention_mask=None, cache=None, targets=None, temperature=1.0):
        """idx (B, T) long -> logits (B, T, n_real) over the real vocabulary; or, given
        targets (B, T) long in [0, n_real): (log p(targets) (B, T), entropy (B, T)), float32,
        at the temperature (see `logprobs`). nanoGPT takes targets in forward too: under DDP
        the loss must come out of the wrapped module's forward for gradients to be reduced."""
        h = self.hidden(idx, attention_mask, cache)
        if targets is None:
            return F.linear(h, self.lm_head.weight[:self.config.n_real])
        return self.logprobs(h, targets, temperature)

    def logprobs(self, h, targets, temperature=1.0):
        """Final hidden states h (B, T, C) and the ids they predict, targets (B, T) ->
        (log p(targets), entropy), each (B, T) float32, under softmax(h W^T / temperature)
        over the real vocabulary W = lm_head.weight[:n_real] (the tied embedding's rows).
        Fused (kernels.linear_logprobs): the (B, T, n_real) logits are never materialised,
        in the forward or the backward, which recomputes them chunk by chunk."""
        return kernels.linear_logprobs(h, self.lm_head.weight[:self.config.n_real], targets, temperature)

    # ----------------------------------------------------------------------------------
    # sampling

    @torch.no_grad()
    def generate(self, prompt, prompt_mask, max_new_tokens, eos_id, pad_id, n_vocab=None,
                 temperature=1.0, top_k=0, top_p=1.0, generator=None):
        """Sample responses for a batch of left-padded prompts, with a KV cache.

        prompt (B, P) long, prompt_mask (B, P): 1 on real prompt tokens (padding on the left).
        Returns response (B, N) with N <= max_new_tokens, PAD after each row's EOS, and
        response_mask (B, N) float: 1 up to and including EOS. Rows stop independently;
        sampling stops when all rows have emitted EOS. Only the real vocabulary is sampled
        (ids < n_real, and < n_vocab if given); never PAD. temperature 0 is greedy.
        """
        B, P = prompt.shape
        if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1; "
                             f"got {max_new_tokens}, {temperature}, {top_p}")
        if pad_id >= self.config.vocab_size:
            raise ValueError(f"PAD id {pad_id} has no embedding row (vocab_size "
                             f"{self.config.vocab_size}): grow it with pad_vocab / from_hf(vocab_size=...)")
        if P + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt length {P} + max_new_tokens {max_new_tokens} exceeds "
                             f"block_size {self.config.block_size}")
        n_vocab = min(n_vocab or self.config.n_real, self.config.n_real)
        was_training = self.training
        self.eval()  # no dropout while sampling
        cache = KVCache(self.config.n_layer, P + max_new_tokens)
        # the key mask of every step at once: the prompt's, then 1 for each new token
        mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones(B, max_new_tokens, dtype=torch.long)], 1)
        logits = self(prompt, mask[:, :P], cache)[:, -1]                # (B, V)
        if not torch.isfinite(logits).all():
            raise FloatingPointError("the model's logits are not finite: its weights have diverged")
        out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=prompt.device)
        done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
        for t in range(max_new_tokens):
            tok = sample_token(logits, temperature, top_k, top_p, n_vocab, pad_id, generator)
            out[:, t] = torch.where(done, pad_id, tok)
            done |= tok == eos_id
            if done.all() or t == max_new_tokens - 1:
                break
            # finished rows keep stepping (batched), fed PAD; their outputs are discarded
            logits = self(out[:, t:t + 1], mask[:, :P + t + 1], cache)[:, -1]
        self.train(was_training)
        out = out[:, :t + 1]
        is_eos = (out == eos_id).long()
        after_eos = (is_eos.cumsum(1) - is_eos) > 0                     # strictly after EOS
        return out, (~after_eos).float()

    # ----------------------------------------------------------------------------------
    # Hugging Face GPT-2 checkpoints (nanoinstruct/hf.py does the work)

    @classmethod
    def from_hf(cls, path, dropout=0.0, vocab_size=None):
        """Load a Hugging Face GPT-2 directory (config.json + model.safetensors).

        vocab_size, if larger than the checkpoint's, appends zero embedding rows (room for
        a PAD token, or a multiple of 64 for speed); those ids get logit 0 and are never
        sampled or trained on. hf.load also reads the directory's tokenizer."""
        from nanoinstruct import hf
        return hf.read_gpt(path, dropout, vocab_size)

    def to_hf(self, path, tokenizer=None, chat_template=None):
        """Write a directory that transformers.GPT2LMHeadModel.from_pretrained loads. With
        the tokenizer: its real ids only (no padding row can be generated), its files, EOS
        and generation_config.json, so AutoTokenizer and pipeline() load it too."""
        from nanoinstruct import hf
        hf.export_policy(self, path, tokenizer, chat_template)

    def pad_vocab(self, vocab_size):
        """Grow the (tied) embedding to vocab_size rows; new rows are zero."""
        old = self.transformer.wte.weight
        new = nn.Embedding(vocab_size, old.shape[1], device=old.device, dtype=old.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:old.shape[0]] = old
        self.transformer.wte = new
        self.lm_head = nn.Linear(old.shape[1], vocab_size, bias=False)
        self.lm_head.weight = new.weight
        self.config.vocab_size = vocab_size


def sample_token(logits, temperature, top_k, top_p, n_vocab, pad_id, generator=None):
    """logits (B, V) -> sampled ids (B,). Temperature 0 is greedy."""
    logits = logits.float().clone()
    if n_vocab < logits.shape[-1]:
        logits[:, n_vocab:] = -float("inf")  # past the tokenizer's ids
    if pad_id < logits.shape[-1]:
        logits[:, pad_id] = -float("inf")    # PAD is for batching only
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:  # nucleus: the smallest set of top tokens whose mass reaches top_p
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p          # mass before this token already >= p
        drop[:, 0] = False                                # the top token always stays
        sorted_logits = sorted_logits.masked_fill(drop, -float("inf"))
        logits = torch.full_like(logits, -float("inf")).scatter(-1, order, sorted_logits)
    # inverse-CDF sampling: one uniform per row (torch.multinomial draws V exponentials per row,
    # most of a small model's sampling time on a CPU). u is scaled by the row's total mass and
    # the search takes the first cdf > u, so a token of probability 0 (a flat step of the cdf)
    # is never drawn, whatever the rounding of the cumulative sum.
    cdf = logits.softmax(-1).cumsum(-1)                                          # (B, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


class ScalarGPT(nn.Module):
    """GPT trunk + linear head to one scalar per position: the reward model r(x, y) and
    the value function V. The trunk's unembedding (lm_head) is not used."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gpt = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        # lm-human-preferences: head weights ~ N(0, 1/(d+1)), bias 0
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(config.n_embd + 1))
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_gpt(cls, gpt):
        """A scalar model whose trunk is a copy of gpt's (e.g. the RM from the SFT model)."""
        model = cls(GPTConfig(**asdict(gpt.config)))
        model.gpt.load_state_dict(gpt.state_dict())
        return model.to(next(gpt.parameters()).device)

    def forward(self, idx, attention_mask=None):
        """idx (B, T) -> one scalar per position (B, T), float32.

        The head runs in fp32 even under bf16 autocast: bf16 would round a reward of 5
        to the nearest 1/32, noise that goes straight into ranking margins and GAE."""
        h = self.gpt.hidden(idx, attention_mask)
        with torch.autocast(h.device.type, enabled=False):
            return self.head(h.float()).squeeze(-1)

    def score(self, idx, attention_mask):
        """The reward of each sequence, read at its last real token: (B,)."""
        values = self(idx, attention_mask)
        return values.gather(1, last_index(attention_mask)[:, None]).squeeze(1)


def config_from_dict(d):
    """GPTConfig from a dict (e.g. a checkpoint's config.json), ignoring unknown keys."""
    names = {f.name for f in fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in d.items() if k in names})
