"""Sample from a checkpoint on the command line or over a prompts file, or measure sampling speed.

    python -m nanoinstruct.sample --ckpt=out/sft --prompt="Reverse the word cat."
    python -m nanoinstruct.sample --ckpt=out/ppo --prompts=my_prompts.jsonl --out=samples.jsonl
    python -m nanoinstruct.sample --bench            # KV cache vs recomputing, tiny preset

--prompts reads any format data.py reads prompts from (prompt-only, demonstrations, chat
messages, pairs, HH-RLHF dialogues) and writes --n samples per prompt to --out, one line
each: the prompt's record with its "response" and "sample" (0 .. n-1), the demonstrations
format, so the file can be read back as demonstrations or judged (evaluate, collect).

The bench builds a random model of the given preset, samples greedily with the KV cache
and by recomputing the whole sequence every step, checks that both give the same tokens,
and prints tokens/s for each.
"""

import os
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from nanoinstruct import batching, checkpoint, data
from nanoinstruct.cli import UserError, cli_main, parse_flags
from nanoinstruct.model import GPT, PRESETS, GPTConfig, sample_token
from nanoinstruct.tokenizer import get_tokenizer


@dataclass
class Config:
    ckpt: str = ""               # checkpoint directory to sample from
    prompt: str = ""             # the instruction; it is wrapped in the prompt template
    prompts: str = ""            # or a JSONL file of prompts (any format data.py reads) ...
    out: str = ""                # ... sampled into this JSONL file (it must not exist)
    batch_size: int = 64         # [1, 4096]; --prompts: rows sampled together
    n: int = 4                   # [1, 4096]; samples
    max_new_tokens: int = 64     # >= 1
    temperature: float = 0.7     # >= 0; 0: greedy
    top_k: int = 0               # >= 0; 0: off
    top_p: float = 1.0           # (0, 1]
    seed: int = 0                # [0, 2**32)
    bench: bool = False          # measure sampling speed instead
    preset: str = "tiny"         # tiny | small | gpt2-random | gpt2-medium-random | gpt2-large-random | gpt2-xl-random; --bench: model size
    batch: int = 8               # [1, 4096]; --bench: rows sampled together
    threads: int = 0             # [0, 1024]; torch threads (0: torch's default)

    def check(self):
        if not self.bench and not (self.ckpt and (self.prompt or self.prompts)) or bool(self.prompts) != bool(self.out):
            raise UserError("--ckpt and --prompt (or --prompts and --out) are required (or --bench)")


def recompute_greedy(model, prompt, n_new, n_vocab, pad_id):
    """Greedy decoding without a cache: the whole sequence through the model each step."""
    seq = prompt
    for _ in range(n_new):
        logits = model(seq)[:, -1]
        seq = torch.cat([seq, sample_token(logits, 0, 0, 1.0, n_vocab, pad_id)[:, None]], 1)
    return seq[:, prompt.shape[1]:]


@torch.no_grad()
def bench(cfg):
    tok = get_tokenizer("bytes")
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**PRESETS[cfg.preset], vocab_size=320)).eval()
    P = 32
    n_new = min(cfg.max_new_tokens, model.config.block_size - P)
    prompt = torch.randint(0, 256, (cfg.batch, P))
    eos = -1  # no row stops early: every row makes n_new tokens
    timings = {}
    for name in ("kv_cache", "recompute"):
        t0 = time.perf_counter()
        if name == "kv_cache":
            out, _ = model.generate(prompt, torch.ones_like(prompt), n_new, eos, tok.pad_id,
                                    n_vocab=tok.n_vocab, temperature=0)
        else:
            ref = recompute_greedy(model, prompt, n_new, tok.n_vocab, tok.pad_id)
        timings[name] = time.perf_counter() - t0
    same = torch.equal(out, ref)
    print(f"preset {cfg.preset} ({model.num_params() / 1e6:.2f}M params), batch {cfg.batch}, "
          f"prompt {P}, {n_new} new tokens, {torch.get_num_threads()} threads")
    for name, dt in timings.items():
        print(f"  {name:9s} {cfg.batch * n_new / dt:9.0f} tokens/s  ({dt:.2f} s)")
    print(f"  greedy tokens identical: {same}")
    if not same:
        raise SystemExit("KV-cache sampling differs from recomputation")


@torch.no_grad()
def sample_file(model, tok, cfg):
    """--prompts -> --out: n samples of every prompt that fits, in batches, one line each."""
    prompts = data.check_template(data.read_prompts(cfg.prompts), cfg.prompts, tok.template)
    room = model.config.block_size - cfg.max_new_tokens
    if room < 1:
        raise UserError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in block_size "
                        f"{model.config.block_size}")
    prompts = batching.fit_prompts(prompts, tok, room, cfg.prompts)
    rows = [(r, s) for r in prompts for s in range(cfg.n)]
    g, out = torch.Generator().manual_seed(cfg.seed), []
    for i in tqdm(range(0, len(rows), cfg.batch_size), desc="sample", disable=None, leave=False):
        batch = rows[i:i + cfg.batch_size]
        ids, mask = batching.left_pad([tok.encode_prompt(r["prompt"]) for r, _ in batch], tok.pad_id)
        y, _ = model.generate(ids, mask, cfg.max_new_tokens, tok.eos_id, tok.pad_id, tok.n_vocab,
                              cfg.temperature, cfg.top_k, cfg.top_p, generator=g)
        out += [{**r, "response": tok.decode_response(row), "sample": s} for (r, s), row in zip(batch, y.tolist())]
    data.write_jsonl(cfg.out, out)
    print(f"{cfg.out}: {len(out)} samples ({cfg.n} of each of {len(prompts)} prompts)")


@torch.no_grad()
def main(argv=None):
    cfg = parse_flags(Config, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.bench:
        return bench(cfg)
    if cfg.out and os.path.exists(cfg.out):
        raise UserError(f"--out={cfg.out}: exists; not overwriting")
    model, tok, meta = checkpoint.load_with_tokenizer(cfg.ckpt)
    if not isinstance(model, GPT):
        raise UserError(f"--ckpt={cfg.ckpt}: a {meta['kind']} model has no language-model head")
    model.eval()
    if cfg.prompts:
        return sample_file(model, tok, cfg)
    prompt = torch.tensor([tok.encode_prompt(cfg.prompt)] * cfg.n)
    room = model.config.block_size - prompt.shape[1]
    if room < 1:
        raise UserError(f"--prompt: {prompt.shape[1]} tokens leave no room in block_size "
                        f"{model.config.block_size}")
    g = torch.Generator().manual_seed(cfg.seed)
    out, mask = model.generate(prompt, torch.ones_like(prompt), min(cfg.max_new_tokens, room),
                               tok.eos_id, tok.pad_id, tok.n_vocab, cfg.temperature, cfg.top_k,
                               cfg.top_p, generator=g)
    for i in range(cfg.n):
        print(f"--- sample {i} ({int(mask[i].sum())} tokens)\n{tok.decode_response(out[i].tolist())}")


if __name__ == "__main__":
    cli_main(main)
