"""Hugging Face interop: GPT-2 weights and tokenizer files in, Hugging Face directories out.

- Released names. `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl` mean OpenAI's released
  weights, read from the local Hugging Face cache (the layout huggingface_hub writes,
  followed here without importing it): CACHE/models--openai-community--gpt2/refs/main holds
  a commit hash, and snapshots/<hash>/ the files. Nothing is downloaded at run time.
- Tokenizer files. A GPT-2 directory's vocab.json + merges.txt (byte-level BPE) are tiktoken
  ranks in another dress: a token's id is its rank, its string spells its bytes through
  GPT-2's byte -> printable-character table, and the merges come in the order of the ranks
  of the tokens they make (HF applies merges in line order, tiktoken in rank order). Going
  back, each token's merge is recovered by running BPE on it with the lower ranks only
  (tiktoken's educational module does the same).
- Export. The policy becomes a GPT2LMHeadModel directory that AutoModelForCausalLM,
  AutoTokenizer and pipeline("text-generation") load: vocab_size = the tokenizer's real ids
  (the embedding's padding rows and PAD are dropped, so no padding id can ever be
  generated), EOS as bos/eos and, as GPT-2 does, as the generation pad. The reward model
  becomes a GPT2ForSequenceClassification (num_labels=1) whose score equals ScalarGPT.score;
  it keeps PAD as pad_token_id, because transformers reads the score at the last token
  that is not pad_token_id, and with pad = EOS that would be the token before our EOS.

Weights: GPT-2's Conv1D layers store (in, out), nn.Linear (out, in): a transpose.
"""

import contextlib
import json
import math
import os

import torch
from safetensors.torch import load_file, save_file

from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig
from nanoinstruct.tokenizer import EOS, PAD, RESPONSE_PREFIX, TEMPLATES, TURNS, from_ranks, get_tokenizer

RELEASED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
WEIGHT_FILES = ("config.json", "model.safetensors")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def padded_vocab(tok):
    """Embedding rows for tok: its ids, PAD included, rounded up to a multiple of 64."""
    return 64 * math.ceil(tok.n_vocab / 64)


# ---------------------------------------------------------------------------------------
# released names -> a directory in the local Hugging Face cache

def hub_cache():
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        path = os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]
    else:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "huggingface")
        path = os.path.join(home, "hub")
    return os.path.expanduser(os.path.expandvars(path))


def _snapshots(repo_dir):
    """A cached repo's snapshot directories, the one refs/main names first."""
    snaps = os.path.join(repo_dir, "snapshots")
    names = sorted(os.listdir(snaps)) if os.path.isdir(snaps) else []
    ref = os.path.join(repo_dir, "refs", "main")
    if os.path.isfile(ref):
        main = open(ref).read().strip()
        names = [main] + [n for n in names if n != main]
    return [os.path.join(snaps, n) for n in names if os.path.isdir(os.path.join(snaps, n))]


def resolve_init(name, flag="--init"):
    """A released GPT-2 name -> its directory in the local cache; None for any other name.
    A released name that is not cached (with weights and tokenizer files) is a UserError
    that says how to get it."""
    if name not in RELEASED:
        return None
    cache, need = hub_cache(), WEIGHT_FILES + TOKENIZER_FILES
    for repo in (f"models--openai-community--{name}", f"models--{name}"):
        for snap in _snapshots(os.path.join(cache, repo)):
            if all(os.path.isfile(os.path.join(snap, f)) for f in need):
                return snap
    raise UserError(
        f"{flag}={name}: the released weights are not in the Hugging Face cache {cache}; on a "
        f"machine with a network run `hf download openai-community/{name} {' '.join(need)}` "
        f"(older huggingface_hub: `huggingface-cli download ...`) and copy that cache here "
        f"(or set HF_HUB_CACHE), or pass {flag}=/path/to/a/{name}/directory holding those files")


# ---------------------------------------------------------------------------------------
# byte-level BPE files (vocab.json + merges.txt) <-> tiktoken ranks

def bytes_to_unicode():
    """GPT-2's byte -> character table: printable bytes stand for themselves, the other 68
    are shifted to 256, 257, ... in byte order, so every token is a printable string."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return table


def bpe(ranks, token, max_rank):
    """Byte pair encoding of `token` with the ranks below max_rank: merge the adjacent pair
    whose concatenation has the lowest rank, until none is left. -> list of parts."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def recover_merges(ranks):
    """Ranks -> the merges list of an equivalent HF BPE, in rank order: each multi-byte
    token is the merge of the two parts that BPE with the lower ranks leaves of it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = bpe(ranks, token, rank)
            if len(parts) != 2:
                raise UserError(f"token {token!r} (rank {rank}) is not one merge of lower-rank "
                                f"tokens: these ranks have no equivalent merges.txt")
            merges.append(tuple(parts))
    return merges


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None


def _bpe_files(path):
    """A directory's byte-level BPE as (vocab {string: id}, merges [(lineno, a, b)], where):
    from vocab.json + merges.txt, else from tokenizer.json (which transformers 5 saves
    alone). None when it has neither."""
    vocab_file, merges_file = (os.path.join(path, f) for f in TOKENIZER_FILES)
    if os.path.isfile(vocab_file) or os.path.isfile(merges_file):
        for f in (vocab_file, merges_file):
            if not os.path.isfile(f):
                raise UserError(f"{f}: not found (a GPT-2 tokenizer is vocab.json + merges.txt)")
        with open(merges_file, encoding="utf-8") as f:
            merges = [(n, *line.rstrip("\n").split(" ")) for n, line in enumerate(f, 1)
                      if line.strip() and not line.startswith("#version")]
        return _read_json(vocab_file), merges, merges_file
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        return None
    tj = _read_json(file)
    model, pre = tj.get("model") or {}, tj.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or tj.get("normalizer") or pre.get("type") != "ByteLevel" \
            or pre.get("add_prefix_space") or not pre.get("use_regex", True) \
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UserError(f"{file}: not GPT-2's byte-level BPE (a BPE model, ByteLevel "
                        f"pre-tokenizer with GPT-2's regex and no prefix space, no normalizer)")
    vocab = {**model.get("vocab", {}), **{t["content"]: t["id"] for t in tj.get("added_tokens", [])}}
    merges = [(f"merge {n}", *(m.split(" ") if isinstance(m, str) else m))
              for n, m in enumerate(model.get("merges", []), 1)]
    return vocab, merges, file


def read_tokenizer(path, template="instruction"):
    """A directory's GPT-2 tokenizer files -> our Tokenizer, or None when it has none.

    Checked: every token spells bytes; the 256 single bytes are there; merge i makes a token
    of a higher id than merge i-1 (HF merges in line order, tiktoken in rank order, so the
    two agree only then), each multi-byte token comes from a merge, and the tokens that are
    not BPE's are EOS (then PAD) right after the last BPE id."""
    found = _bpe_files(path)
    if found is None:
        return None
    vocab, merges, where = found
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab = dict(vocab)
    specials = {s: vocab.pop(s) for s in (EOS, PAD) if s in vocab}
    ranks = {}
    for text, rank in vocab.items():
        if any(c not in byte_of for c in text):
            raise UserError(f"{where}: token {text!r} is not byte-level BPE (an added token "
                            f"other than {EOS} and {PAD} is not supported)")
        ranks[bytes(byte_of[c] for c in text)] = rank
    if len(ranks) != len(vocab) or any(bytes([b]) not in ranks for b in range(256)):
        raise UserError(f"{where}: not a byte-level BPE vocabulary (needs each of the 256 "
                        f"bytes once, and distinct tokens)")
    last, made = -1, set()
    for lineno, *pair in merges:
        merged = "".join(pair)
        if len(pair) != 2 or any(p not in vocab for p in pair) or merged not in vocab:
            raise UserError(f"{where}:{lineno}: expected two tokens of the vocabulary whose "
                            f"concatenation is one too, got {' '.join(pair)!r}")
        if vocab[merged] <= last:
            raise UserError(f"{where}:{lineno}: {merged!r} has id {vocab[merged]}, below the "
                            f"previous merge's {last}: merges must follow ids")
        last = vocab[merged]
        made.add(merged)
    unmade = [t for t in vocab if len(t) > 1 and t not in made]
    if unmade:
        raise UserError(f"{where}: token {unmade[0]!r} is made by no merge (added tokens other "
                        f"than {EOS} and {PAD} are not supported)")
    if EOS not in specials or specials[EOS] != len(ranks) or sorted(ranks.values()) != \
            list(range(len(ranks))) or specials.get(PAD, len(ranks) + 1) != len(ranks) + 1:
        raise UserError(f"{where}: expected ids 0..{len(ranks) - 1} for the BPE tokens, then "
                        f"{EOS} (and optionally {PAD} after it)")
    return from_ranks(os.path.abspath(path), ranks, specials[EOS], template)


def check_exportable(tok):
    from tiktoken_ext.openai_public import r50k_pat_str
    if tok.name != "bytes" and tok.enc._pat_str != r50k_pat_str:
        raise UserError(f"tokenizer {tok.name}: export writes GPT-2's byte-level BPE, which "
                        f"splits text with GPT-2's regex; this encoding uses another")


def write_tokenizer(tok, path, n_ids, pad_token, padding_side, block_size, chat_template=None):
    """Write vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json for
    the ids below n_ids (PAD is among them only for the reward model). GPT-2-family
    encodings only: GPT-2's split regex (r50k, p50k, a vocabulary read by read_tokenizer),
    or `bytes`, whose ids are byte values (no merges, so its regex does not matter)."""
    check_exportable(tok)
    ranks = tok.enc._mergeable_ranks
    char = bytes_to_unicode()
    spell = lambda t: "".join(char[b] for b in t)                       # noqa: E731
    vocab = {spell(t): r for t, r in ranks.items() if r < n_ids}
    specials = {s: i for s, i in tok.enc._special_tokens.items() if i < n_ids}
    vocab.update(specials)
    if sorted(vocab.values()) != list(range(n_ids)):
        raise UserError(f"tokenizer {tok.name}: ids 0..{n_ids - 1} are not all tokens")
    merges = recover_merges(ranks)
    added = {str(i): {"content": s, "lstrip": False, "normalized": True, "rstrip": False,
                      "single_word": False, "special": True} for s, i in specials.items()}
    special_map = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size,
              "add_prefix_space": False, "clean_up_tokenization_spaces": False,
              "padding_side": padding_side, "added_tokens_decoder": added, **special_map}
    if chat_template:
        config["chat_template"] = chat_template
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{spell(a)} {spell(b)}\n" for a, b in merges))
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
        with open(os.path.join(path, name), "w") as f:
            json.dump(obj, f, indent=2)


def chat_template(template):
    """A Jinja chat template that renders a conversation as tokenizer.format_prompt writes it
    in our prompt template (by name), so that apply_chat_template(messages,
    add_generation_prompt=True) gives the prompt the model was trained on:
    - instruction: one user turn as "Instruction: ...\nResponse:" (the template already ends
      with the assistant's header); an assistant turn as " " + its text + EOS;
    - dialogue (HH-RLHF's): every turn as "\n\nHuman: ..." / "\n\nAssistant: ...", a system
      message's text first, and "\n\nAssistant:" as the generation prompt."""
    q = json.dumps   # a JSON string is a valid Jinja string literal
    if template == "dialogue":
        return ("{% for message in messages %}"
                "{% if message['role'] == 'system' %}{{ message['content'] }}"
                f"{{% elif message['role'] == 'user' %}}{{{{ {q(TURNS['user'])} + message['content'] }}}}"
                f"{{% else %}}{{{{ {q(TURNS['assistant'])} + message['content'] }}}}{{% endif %}}"
                "{% endfor %}"
                f"{{% if add_generation_prompt %}}{{{{ {q(TURNS['assistant'].rstrip())} }}}}{{% endif %}}")
    before, after = TEMPLATES[template].split("{prompt}")
    return ("{% for message in messages %}"
            "{% if message['role'] == 'user' %}"
            f"{{{{ {q(before)} + message['content'] + {q(after)} }}}}"
            "{% elif message['role'] == 'assistant' %}"
            f"{{{{ {q(RESPONSE_PREFIX)} + message['content'] + eos_token }}}}"
            "{% else %}{{ raise_exception('only user and assistant turns') }}{% endif %}"
            "{% endfor %}")


# ---------------------------------------------------------------------------------------
# weights

def is_hf_dir(path):
    """A directory whose config.json is a transformers config (it names a model_type)."""
    config = os.path.join(path, "config.json")
    return os.path.isfile(config) and "model_type" in _read_json(config)


def read_gpt(path, dropout=0.0, vocab_size=None):
    """A Hugging Face GPT-2 directory (config.json + model.safetensors) -> GPT. vocab_size,
    if larger than the checkpoint's, appends zero embedding rows (PAD, rounding)."""
    cfg_path, w_path = (os.path.join(path, f) for f in WEIGHT_FILES)
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            hint = " (pytorch_model.bin is a pickle and is not loaded; convert it to " \
                   "safetensors)" if p == w_path else ""
            raise UserError(f"{p}: not found; expected a Hugging Face GPT-2 directory{hint}")
    hf = _read_json(cfg_path)
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
    model = GPT(config)
    ours = model.state_dict()
    for name in ours:
        if name == "lm_head.weight":
            continue  # tied to wte
        key = name.removeprefix("transformer.")
        if key not in sd:
            raise UserError(f"{w_path}: missing tensor {key}")
        w = sd[key].t() if name.endswith(TRANSPOSED) else sd[key]
        if w.shape != ours[name].shape:
            raise UserError(f"{w_path}: {key} has shape {tuple(w.shape)}, expected "
                            f"{tuple(ours[name].shape)}")
        with torch.no_grad():
            ours[name].copy_(w)
    if vocab_size and vocab_size > config.vocab_size:
        model.pad_vocab(vocab_size)
    return model


def load(path, tokenizer="", dropout=0.0, template="instruction"):
    """An HF GPT-2 directory -> (GPT, Tokenizer), the embedding grown to padded_vocab(tok).

    The tokenizer is `tokenizer` (a --tokenizer value) if given, else the directory's
    vocab.json + merges.txt; with neither, or when they disagree with each other or with
    the ids the model predicts (its config's vocab_size), a UserError says what to pass."""
    files = read_tokenizer(path, template)
    V = _read_json(os.path.join(path, "config.json")).get("vocab_size", 0)
    if tokenizer:
        tok = get_tokenizer(tokenizer, template)
        if files is not None and files != tok:
            raise UserError(f"--tokenizer={tokenizer} differs from {path}'s tokenizer files; "
                            f"leave out --tokenizer to use the directory's")
    elif files is not None:
        tok = files
    else:
        raise UserError(f"{path}: no tokenizer files (vocab.json + merges.txt) and no --tokenizer; "
                        f"it predicts {V} token ids" + (" (GPT-2's BPE): pass --tokenizer=gpt2 or "
                        "a path to r50k_base.tiktoken" if V == 50257 else ": pass --tokenizer")
                        + ", or add the model's vocab.json + merges.txt to the directory")
    if V != tok.n_real:
        raise UserError(f"{path}: the model predicts {V} token ids and tokenizer {tok.name} has "
                        f"{tok.n_real}: not this model's tokenizer; pass the one it was trained with")
    return read_gpt(path, dropout, padded_vocab(tok)), tok


def _hf_config(c, n_ids, eos_id, architecture, **extra):
    return {"architectures": [architecture], "model_type": "gpt2", "vocab_size": n_ids,
            "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
            "n_head": c.n_head, "n_inner": None, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout, "initializer_range": 0.02, "scale_attn_weights": True,
            "tie_word_embeddings": True, "bos_token_id": eos_id, "eos_token_id": eos_id,
            "dtype": "float32", **extra}


def _hf_weights(gpt, n_ids):
    """Our GPT's tensors in GPT-2's names and layout, the embedding cut to n_ids rows;
    lm_head is left out (tie_word_embeddings ties it to wte on load)."""
    sd = {}
    for name, w in gpt.state_dict().items():
        if name == "lm_head.weight":
            continue
        w = w[:n_ids] if name == "transformer.wte.weight" else w
        sd[name] = (w.t() if name.endswith(TRANSPOSED) else w).detach().float().contiguous().cpu()
    return sd


@contextlib.contextmanager
def _new_dir(path):
    """Yield a temporary directory that becomes path, which must not hold anything yet."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise UserError(f"{path}: exists and is not empty; not overwriting")
    from nanoinstruct.checkpoint import atomic_dir
    with atomic_dir(path) as tmp:
        yield tmp


def _write_json(directory, name, obj):
    with open(os.path.join(directory, name), "w") as f:
        json.dump(obj, f, indent=2)


def _check_fit(config, tok):
    if config.n_real != tok.n_real:
        raise UserError(f"the model predicts {config.n_real} token ids and its tokenizer "
                        f"{tok.name} has {tok.n_real}: they do not fit")
    check_exportable(tok)


def export_policy(gpt, path, tok=None, chat=None):
    """Write a GPT2LMHeadModel directory of the model's real ids: vocab_size = n_real (PAD
    and the embedding's padding rows dropped). With tok: EOS as bos/eos/generation pad,
    tokenizer files, and `chat` (a chat template) in tokenizer_config.json."""
    if not gpt.config.bias:
        raise ValueError("GPT-2 in transformers has biases; this model has bias=False")
    if tok is not None:
        _check_fit(gpt.config, tok)
    n_ids = gpt.config.n_real
    eos = None if tok is None else tok.eos_id
    with _new_dir(path) as tmp:
        save_file(_hf_weights(gpt, n_ids), os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        _write_json(tmp, "config.json", _hf_config(gpt.config, n_ids, eos, "GPT2LMHeadModel"))
        if tok is not None:
            _write_json(tmp, "generation_config.json",
                        {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos})
            write_tokenizer(tok, tmp, n_ids, EOS, "left", gpt.config.block_size, chat)


def export_reward(rm, tok, path):
    """Write a GPT2ForSequenceClassification (num_labels=1) directory whose score is ours.

    Ours: r = w . h_last + b, h = ln_f(x) = g * xhat + beta. HF's `score` has no bias, so b
    goes into ln_f's bias: beta' = beta + b w / |w|^2 gives w . h' = w . h + b exactly (in
    real arithmetic). The ids keep PAD (vocab_size = n_real + 1; PAD is the id after the real
    ones), which is pad_token_id."""
    _check_fit(rm.config, tok)
    w, b = rm.head.weight.detach().double()[0], rm.head.bias.detach().double()[0]  # (C,), ()
    if w.norm() == 0 and b != 0:
        raise ValueError("the reward head's weight is zero: its bias cannot be folded")
    n_ids = tok.pad_id + 1
    sd = {k.removeprefix("gpt."): v for k, v in _hf_weights(rm.gpt, n_ids).items()}
    delta = b * w / w.dot(w) if b != 0 else torch.zeros_like(w)                     # (C,)
    sd["transformer.ln_f.bias"] = (sd["transformer.ln_f.bias"].double() + delta).float()
    sd["score.weight"] = w[None].float().contiguous()                               # (1, C)
    config = _hf_config(rm.config, n_ids, tok.eos_id, "GPT2ForSequenceClassification",
                        pad_token_id=tok.pad_id, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    with _new_dir(path) as tmp:
        save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp, "config.json", config)
        write_tokenizer(tok, tmp, n_ids, PAD, "right", rm.config.block_size)
