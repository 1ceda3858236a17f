"""GPT-2, exactly, and what RLHF needs of it.

The network is GPT-2 (Radford et al. 2019) as Hugging Face's GPT2LMHeadModel computes it:
pre-LN blocks, learned positions, tanh-GELU, tied input/output embeddings, LayerNorm eps
1e-5. A block is

    x = x + attn(ln_1(x))        attn: causal multi-head self-attention, softmax(q k^T / sqrt(hs)) v
    x = x + mlp(ln_2(x))         mlp:  c_proj(gelu_tanh(c_fc(x))), 4x wide

Module names follow GPT2LMHeadModel's, so HF import/export is a transpose of the
Conv1D weights (HF stores them (in, out); nn.Linear stores (out, in)).

Added for RLHF:
- left-padded batches: `attention_mask` (B, S) marks real tokens; position ids are its
  cumulative sum, and padded keys are masked out, so a prompt's logits do not depend on
  how much padding sits before it;
- a KV cache and batched sampling (temperature, top-k, top-p, per-row stop at EOS,
  a response mask 1 up to and including EOS);
- `ScalarGPT`: the same trunk with a linear head to one scalar per position, for the
  reward model and the value function (InstructGPT: "the SFT model with the final
  unembedding layer removed"); the reward is read at the last real token.
"""

import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file

from nanoinstruct.cli import UserError


@dataclass
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int        # embedding rows; may exceed the tokenizer's n_vocab (padding)
    block_size: int        # maximum sequence length (learned positions)
    dropout: float = 0.0   # embedding, attention and residual dropout (GPT-2's three pdrops)
    bias: bool = True      # biases in Linear and LayerNorm (GPT-2 has them)


# Size presets (vocab_size comes from the tokenizer). "tiny" is the embedded default's
# byte-level model, about 0.8M parameters; "small" (1.8M) is `make paper`'s larger SFT model;
# the gpt2* ones are GPT-2's published sizes.
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    "small": dict(n_layer=4, n_head=6, n_embd=192, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
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
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=self.n_head) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)                  # (B, nh, S, hs)
        p = self.dropout if self.training else 0.0
        if mask is None:  # full causal batch, no padding: the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = rearrange(y, "b h t d -> b t (h d)")              # (B, T, C)
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
            # position of a token = number of real tokens before it; padding gets 0
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]   # (B, T)
            mask = attention_bias(attention_mask, T)                             # (B,1,T,S)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, mask, cache, i)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, attention_mask=None, cache=None):
        """idx (B, T) long -> logits (B, T, vocab_size)."""
        return self.lm_head(self.hidden(idx, attention_mask, cache))

    # ----------------------------------------------------------------------------------
    # sampling

    @torch.no_grad()
    def generate(self, prompt, prompt_mask, max_new_tokens, eos_id, pad_id, n_vocab=None,
                 temperature=1.0, top_k=0, top_p=1.0, generator=None):
        """Sample responses for a batch of left-padded prompts, with a KV cache.

        prompt (B, P) long, prompt_mask (B, P): 1 on real prompt tokens (padding on the left).
        Returns response (B, N) with N <= max_new_tokens, PAD after each row's EOS, and
        response_mask (B, N) float: 1 up to and including EOS. Rows stop independently;
        sampling stops when all rows have emitted EOS. Ids >= n_vocab (embedding padding)
        and PAD are never sampled. temperature 0 is greedy.
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
        n_vocab = n_vocab or self.config.vocab_size
        was_training = self.training
        self.eval()  # no dropout while sampling
        cache = KVCache(self.config.n_layer, P + max_new_tokens)
        mask = prompt_mask.long()
        logits = self(prompt, mask, cache)[:, -1]                       # (B, V)
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
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = self(out[:, t:t + 1], mask, cache)[:, -1]
        self.train(was_training)
        out = out[:, :t + 1]
        is_eos = (out == eos_id).long()
        after_eos = (is_eos.cumsum(1) - is_eos) > 0                     # strictly after EOS
        return out, (~after_eos).float()

    # ----------------------------------------------------------------------------------
    # Hugging Face GPT-2 checkpoints

    TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf(cls, path, dropout=0.0, vocab_size=None):
        """Load a Hugging Face GPT-2 directory (config.json + model.safetensors).

        vocab_size, if larger than the checkpoint's, appends zero embedding rows (room for
        a PAD token, or a multiple of 64 for speed); those ids get logit 0 and are never
        sampled or trained on.
        """
        cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                hint = " (pytorch_model.bin is a pickle and is not loaded; convert it to " \
                       "safetensors)" if p == w_path else ""
                raise UserError(f"{p}: not found; expected a Hugging Face GPT-2 directory{hint}")
        with open(cfg_path) as f:
            hf = json.load(f)
        unsupported = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"),
                       "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
                       "reorder_and_upcast_attn": (False,), "layer_norm_epsilon": (1e-5,),
                       "n_inner": (None, 4 * hf.get("n_embd", 0)), "tie_word_embeddings": (True,)}
        for key, ok in unsupported.items():
            if key in hf and hf[key] not in ok:
                raise UserError(f"{cfg_path}: {key}={hf[key]!r} is not GPT-2 as model.py builds it")
        config = GPTConfig(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                           vocab_size=hf["vocab_size"], block_size=hf["n_positions"], dropout=dropout)
        sd = {k.removeprefix("transformer."): v for k, v in load_file(w_path).items()}
        model = cls(config)
        ours = model.state_dict()
        for name in ours:
            if name == "lm_head.weight":
                continue  # tied to wte
            key = name.removeprefix("transformer.")
            if key not in sd:
                raise UserError(f"{w_path}: missing tensor {key}")
            w = sd[key].t() if name.endswith(cls.TRANSPOSED) else sd[key]
            if w.shape != ours[name].shape:
                raise UserError(f"{w_path}: {key} has shape {tuple(w.shape)}, expected "
                                f"{tuple(ours[name].shape)}")
            with torch.no_grad():
                ours[name].copy_(w)
        if vocab_size and vocab_size > config.vocab_size:
            model.pad_vocab(vocab_size)
        return model

    def to_hf(self, path):
        """Write a directory that transformers.GPT2LMHeadModel.from_pretrained loads."""
        if not self.config.bias:
            raise ValueError("GPT-2 in transformers has biases; this model has bias=False")
        if os.path.exists(path) and os.listdir(path):
            raise UserError(f"{path}: exists and is not empty; not overwriting")
        from nanoinstruct.checkpoint import atomic_dir
        c = self.config
        hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
              "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_embd": c.n_embd,
              "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
              "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True}
        sd = {name: (w.t() if name.endswith(self.TRANSPOSED) else w).detach().contiguous().cpu()
              for name, w in self.state_dict().items() if name != "lm_head.weight"}
        with atomic_dir(path) as tmp:
            save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(hf, f, indent=2)

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
    logits[:, n_vocab:] = -float("inf")      # embedding padding past the tokenizer's ids
    logits[:, pad_id] = -float("inf")        # PAD is for batching only
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
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


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
