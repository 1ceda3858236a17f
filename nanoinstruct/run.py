"""A training run's machinery, shared by the three stage scripts: where the model starts,
the optimizer and its schedule, the out dir and its metrics log.

An out dir belongs to one run at a time: the run holds an exclusive lock (flock) on the
marker file out_dir/.nanoinstruct for its life, and the marker says which stage wrote the
dir. A run writes only into a directory it creates, an empty one, or one with that marker
(or a checkpoint of ours); it checks everything it can before it writes anything, and it
writes (the lock, the marker, a fresh metrics log) only once models and data are loaded.

The scripts stay linear loops (nanoGPT's train.py, cleanrl's ppo.py); this file holds only
what would otherwise be written three times.
"""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import time

import torch
from tqdm import tqdm

from nanoinstruct import checkpoint, data, distributed, hf
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
    # gpt2, gpt2-medium, ...: the released weights; a checkpoint between the renames of a save: its .old
    path = hf.resolve_init(spec) or checkpoint.readable(spec)
    if not os.path.isdir(path):
        raise UserError(f"--init={spec}: not a preset ({', '.join(PRESETS)}), a released GPT-2 "
                        f"({', '.join(hf.RELEASED)}) nor a directory")
    if hf.is_hf_dir(path):
        return hf.load(path, tokenizer, dropout, template or "instruction")
    model, tok, meta = checkpoint.load_with_tokenizer(path, template=template)
    if not isinstance(model, GPT):
        raise UserError(f"--init={spec}: a {meta['kind']} checkpoint, not a language model")
    fresh = GPT(dataclasses.replace(model.config, dropout=dropout))  # dropout: this run's
    fresh.load_state_dict(model.state_dict())
    return fresh, tok


def init_scalar(spec, tokenizer, dropout, block_size=None, template=""):
    """Where a reward model or value function starts: a scalar checkpoint (an RM, to
    continue it or to start PPO's value function from), or anything init_gpt takes (the
    SFT model, for the RM: its trunk, a fresh scalar head in place of the unembedding)."""
    try:
        scalar = checkpoint.read_config(spec)["kind"] == "scalar"
    except UserError:  # not a nanoinstruct checkpoint: init_gpt says what it is
        scalar = False
    if scalar:
        model, tok, _ = checkpoint.load_with_tokenizer(spec, template=template)
        fresh = ScalarGPT(dataclasses.replace(model.config, dropout=dropout))
        fresh.load_state_dict(model.state_dict())
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


MARKER = ".nanoinstruct"  # in a run's out dir: {"stage", "pid"}; locked for the run's life
KIND = {"sft": "gpt", "rm": "scalar", "ppo": "gpt"}  # the checkpoint each stage writes
_locks = {}              # out dir (real path) -> its open, locked marker file, in this process


def _marker(out_dir):
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def prepare_out_dir(out_dir, stage, resume, overwrite):
    """Check, writing nothing, that this run may use out_dir: a new run never writes over a
    checkpoint unless told to (--overwrite), never into a directory that holds something
    else, and --resume needs a checkpoint of the same stage. -> the checkpoint path."""
    flag = f"--out_dir={out_dir}"
    ckpt = os.path.join(out_dir, checkpoint.CKPT)
    if os.path.islink(out_dir) and not os.path.exists(out_dir):
        raise UserError(f"{flag}: a symlink to {os.readlink(out_dir)}, which does not exist")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{flag}: a file, not a directory")
    if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
        raise UserError(f"{flag}: a checkpoint directory; --out_dir names the run's directory, which "
                        f"keeps its checkpoint in {checkpoint.CKPT}/")
    for p in (ckpt, ckpt + ".old"):
        if os.path.islink(p):
            raise UserError(f"{flag}: {p} is a symlink (to {os.readlink(p)}); a run writes its own "
                            f"checkpoint directory: remove the link or choose another --out_dir")
    exists = os.path.isdir(ckpt) or os.path.isdir(ckpt + ".old")
    log, marker = os.path.join(out_dir, "metrics.jsonl"), _marker(out_dir)
    if os.path.isdir(out_dir) and marker is None and not exists:
        names = sorted(n for n in os.listdir(out_dir) if n != MARKER)
        if names:
            raise UserError(f"{flag}: holds files that are not a nanoinstruct run ({', '.join(names[:3])}"
                            f"{', ...' * (len(names) > 3)}); choose a new or empty directory")
    if resume:
        if not exists:
            raise UserError(f"--resume: {out_dir} has no checkpoint to resume")
        theirs = (marker or {}).get("stage")
        if theirs is None:  # a run from before markers: only the checkpoint's kind tells
            kind = checkpoint.read_config(ckpt)["kind"]
            theirs = stage if kind == KIND[stage] else {"scalar": "rm", "gpt": "sft or ppo"}[kind]
        if theirs != stage:
            raise UserError(f"--resume: {out_dir} holds a {theirs} run, not a {stage} run; "
                            f"start a new run from it with --init={out_dir}")
    elif exists and not overwrite:
        raise UserError(f"{flag} already holds a checkpoint; pass --resume to continue it or "
                        f"--overwrite to start over")
    elif not overwrite and os.path.isfile(log) and os.path.getsize(log):
        raise UserError(f"{flag} holds the log (metrics.jsonl) of a run that saved no checkpoint; pass "
                        f"--overwrite to start over")
    parent = out_dir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "."
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag}: {parent} is not writable (read-only or no permission); "
                        f"choose another --out_dir")
    return ckpt


def _lock(out_dir):
    """Hold the marker's lock for the rest of this process: a second run stops, naming the
    pid the marker holds."""
    key, path = os.path.realpath(out_dir), os.path.join(out_dir, MARKER)
    f = _locks.get(key)                    # held by an earlier run in this process: it has ended
    if f is not None and (not os.path.exists(path) or os.stat(path).st_ino != os.fstat(f.fileno()).st_ino):
        f.close()                          # ... but its directory was replaced since
        f = None
    if f is None:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                pid = json.loads(f.read()).get("pid", "?")
            except ValueError:
                pid = "?"
            f.close()
            raise UserError(f"--out_dir={out_dir}: another run (pid {pid}) is using it; wait for it "
                            f"to finish or choose another --out_dir") from None
        _locks[key] = f
    return f


def claim_out_dir(d, out_dir, stage, resume, overwrite):
    """Rank 0 takes out_dir for this run, once models and data are loaded: the lock, the
    checks again under it, the marker, and a fresh metrics log for a new run. Every rank
    stops with the same line if that fails."""
    def claim():
        try:
            prepare_out_dir(out_dir, stage, resume, overwrite)
            os.makedirs(out_dir, exist_ok=True)
            f = _lock(out_dir)
            prepare_out_dir(out_dir, stage, resume, overwrite)   # under the lock: no one else moves
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"stage": stage, "pid": os.getpid()}))
            f.flush()
            checkpoint.recover(os.path.join(out_dir, checkpoint.CKPT))  # finish a save that was killed
            if not resume:  # a fresh run starts a fresh log
                open(os.path.join(out_dir, "metrics.jsonl"), "w").close()
            else:           # a killed run may have left half a line: drop it (and say so)
                data.repair_tail(os.path.join(out_dir, "metrics.jsonl"))
        except OSError as e:
            raise UserError(f"--out_dir={out_dir}: {e.filename or out_dir}: {e.strerror}") from None
    distributed.on_main(d, claim)


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


def load_optimizer(optimizer, state, ckpt):
    """Resume the optimizer's moments but keep this run's hyperparameters (lr, betas, weight
    decay): load_state_dict alone would bring back the saved run's, ignoring the flags."""
    mine = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except ValueError as e:
        raise UserError(f"--resume: {ckpt}'s optimizer state does not fit the model ({e})") from None
    for group, hyper in zip(optimizer.param_groups, mine):
        group.update(hyper)


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


def stopped(what, it, ckpt):
    """The UserError that stops a diverged run, saying which checkpoint is intact (saves
    refuse non-finite weights, so the last one on disk is good)."""
    return UserError(f"{what} at iteration {it}; stopped. " + (checkpoint.intact(ckpt) if ckpt else
                                                                "Nothing was saved."))


def check_finite(x, what, it, ckpt):
    """Stop the run on a non-finite loss (a tensor or a float)."""
    value = x.item() if torch.is_tensor(x) else x
    if not math.isfinite(value):
        raise stopped(f"{what} is {value}", it, ckpt)


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
