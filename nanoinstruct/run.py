"""A training run's machinery, shared by the three stage scripts: where the model starts,
the optimizer and its schedule, the out dir and its metrics log.

The scripts stay linear loops (nanoGPT's train.py, cleanrl's ppo.py); this file holds only
what would otherwise be written three times.
"""

import contextlib
import dataclasses
import json
import math
import os
import time

import torch
from tqdm import tqdm

from nanoinstruct import checkpoint, hf
from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, PRESETS, GPTConfig, ScalarGPT
from nanoinstruct.tokenizer import get_tokenizer


def init_gpt(spec, tokenizer, dropout, block_size=None, template=""):
    """Where a GPT starts: a preset name, a nanoinstruct checkpoint (or out dir), or a
    Hugging Face GPT-2 directory. -> (model, tokenizer). A checkpoint keeps its own
    tokenizer; a preset or HF model uses `tokenizer` (the embedding is grown to hold PAD,
    rounded up to a multiple of 64). The prompt template: `template` if given, else the
    checkpoint's, else the instruction template."""
    if spec in PRESETS:  # random weights of a size
        tok = get_tokenizer(tokenizer or "bytes", template or "instruction")
        cfg = {**PRESETS[spec], **({"block_size": block_size} if block_size else {})}
        return GPT(GPTConfig(**cfg, vocab_size=hf.padded_vocab(tok), dropout=dropout, n_real=tok.n_real)), tok
    path = hf.resolve_init(spec) or spec          # gpt2, gpt2-medium, ...: the released weights
    if not os.path.isdir(path):
        raise UserError(f"--init={spec}: not a preset ({', '.join(PRESETS)}), a released GPT-2 "
                        f"({', '.join(hf.RELEASED)}) nor a directory")
    if hf.is_hf_dir(path):
        return hf.load(path, tokenizer, dropout, template or "instruction")
    model, meta = checkpoint.load(path)
    if not isinstance(model, GPT):
        raise UserError(f"--init={spec}: a {meta['kind']} checkpoint, not a language model")
    fresh = GPT(dataclasses.replace(model.config, dropout=dropout))  # dropout: this run's
    fresh.load_state_dict(model.state_dict())
    tok = checkpoint.load_tokenizer(path, meta, template)
    check_fit(fresh.config, tok, f"--init={spec}")
    return fresh, tok


def check_fit(config, tok, where):
    """A model and a tokenizer fit when the model predicts exactly the tokenizer's real ids
    (config.n_real == tok.n_real) and has an embedding row for every id, PAD included."""
    if config.n_real != tok.n_real or config.vocab_size < tok.n_vocab:
        raise UserError(f"{where}: the model predicts {config.n_real} token ids ({config.vocab_size} embedding "
                        f"rows); its tokenizer {tok.name} has {tok.n_real} (+ PAD): they do not fit")


def init_scalar(spec, tokenizer, dropout, block_size=None, template=""):
    """Where a reward model or value function starts: a scalar checkpoint (an RM, to
    continue it or to start PPO's value function from), or anything init_gpt takes (the
    SFT model, for the RM: its trunk, a fresh scalar head in place of the unembedding)."""
    try:
        scalar = checkpoint.read_config(spec)["kind"] == "scalar"
    except UserError:  # not a nanoinstruct checkpoint: init_gpt says what it is
        scalar = False
    if scalar:
        model, meta = checkpoint.load(spec)
        fresh = ScalarGPT(dataclasses.replace(model.config, dropout=dropout))
        fresh.load_state_dict(model.state_dict())
        tok = checkpoint.load_tokenizer(spec, meta, template)
        check_fit(fresh.config, tok, spec)
        return fresh, tok
    gpt, tok = init_gpt(spec, tokenizer, dropout, block_size, template)
    return ScalarGPT.from_gpt(gpt), tok


def epoch_sampler(items, seed):
    """-> at(pos): the item at global sample position pos, epoch pos // N of a shuffle drawn
    afresh for each epoch (seed + epoch). A function of the position alone, so a resumed run
    and every DDP rank agree on the order without carrying sampler state."""
    N, perms = len(items), {}

    def at(pos):
        epoch = pos // N
        if epoch not in perms:
            perms[epoch] = torch.randperm(N, generator=torch.Generator().manual_seed(seed + epoch))
        return items[perms[epoch][pos % N]]
    return at


def prepare_out_dir(out_dir, resume, overwrite, is_main=True):
    """A new run never writes over an existing checkpoint unless told to. Every rank
    checks (so all of them stop on a mistake); rank 0 alone creates and writes."""
    ckpt = os.path.join(out_dir, checkpoint.CKPT)
    exists = os.path.isdir(ckpt) or os.path.isdir(ckpt + ".old")
    if resume and not exists:
        raise UserError(f"--resume: {out_dir} has no checkpoint to resume")
    if exists and not (resume or overwrite):
        raise UserError(f"--out_dir={out_dir} already holds a checkpoint; pass --resume to "
                        f"continue it or --overwrite to start over")
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
        if not resume:  # a fresh run starts a fresh log
            open(os.path.join(out_dir, "metrics.jsonl"), "w").close()
    return ckpt


def log_metrics(out_dir, row):
    with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def make_optimizer(model, lr, weight_decay, betas):
    """AdamW; weight decay on matrices only (not biases, LayerNorm or the scalar bias). The fused
    implementation (one kernel over all parameters; on CPU 6x faster than the per-tensor loop
    that is torch's default there)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, fused=True)


def lr_at(it, lr, min_lr, warmup, total):
    """Linear warmup for `warmup` steps, then cosine decay to min_lr at `total`."""
    if it < warmup:
        return lr * (it + 1) / warmup
    frac = min(1.0, (it - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (lr - min_lr)


def autocast(device):
    """bf16 autocast on CUDA; full precision on CPU (bit-exact resume, simple tests)."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_finite(loss, what, it, ckpt):
    if not torch.isfinite(loss):
        raise UserError(f"{what} is {loss.item()} at iteration {it}; stopped. The last good "
                        f"checkpoint is {ckpt} (untouched)")


def matmul_peak(device, n=1024, reps=10):
    """Measured fp32 matmul throughput of this device now, in FLOP/s: the yardstick for
    a training run's achieved FLOP/s (bf16 on CUDA)."""
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def train_flops_per_token(model, T):
    """Forward + backward FLOPs per token: 6 per parameter plus attention (nanoGPT/PaLM)."""
    c = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.n_embd * T


def progress(total, initial=0, desc=None, enabled=True):
    """A tqdm progress bar with an ETA, drawn on a terminal only (disable=None), and by rank 0
    alone. Log lines printed while it runs go through tqdm.write (distributed.print0)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=None if enabled else True,
                dynamic_ncols=True, leave=False)


def available_memory():
    """Bytes of memory available to a new allocation now (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def peak_memory():
    """This process's peak resident memory so far, in bytes (ru_maxrss: KiB on Linux)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Timer:
    def __init__(self):
        self.t0 = self.last = time.perf_counter()

    def lap(self):
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        return dt

    def elapsed(self):
        return time.perf_counter() - self.t0
