"""Step 2 of InstructGPT: the reward model r(x, y), trained on K-way rankings.

The SFT model with its unembedding replaced by a scalar head (model.ScalarGPT), the reward
read at the last real token of prompt + response (the EOS). A labeler ranked K responses
y_1 > ... > y_K to each prompt x; the loss is eq. 1 of the paper (losses.ranking_loss):

    loss = mean over prompts x of  1 / C(K,2) * sum_{i<j} -log sigma(r(x, y_i) - r(x, y_j))

A prompt is one batch element: its K responses take K forward passes and give all C(K,2)
pairs (the paper: shuffling pairs independently overfit within an epoch). One epoch by
default; the paper found more overfit. K may differ between prompts; the pair format
(chosen, rejected) is read as K = 2.

The loss only sees reward differences, so the head's bias gets no gradient. After
training it is set so that the demonstrations (--demos) score 0 on average, as the paper
did before RL; the checkpoint's output is then the normalised reward. Without --demos (data
that comes with none, as HH-RLHF), the preferred response of each training comparison
stands in for a demonstration, and the log says so.

Evaluation: pairwise accuracy on the held-out comparisons, over all pairs. When the data
are the world's, the held-out rankings are also compared with the other world labeler's:
that inter-labeler agreement is the yardstick the paper reads its accuracy against (about
72 %, with labelers agreeing on 72.6 %). It is not a ceiling: a model of one labeler can
agree with that labeler more often than a second, noisy labeler does.

    python -m nanoinstruct.collect --policy=out/sft --prompts=data/world/rm_prompts.jsonl \\
        --k=4 --out=data/world/comparisons.jsonl        # and rm_val_prompts -> comparisons_val
    python train_rm.py --init=out/sft --out_dir=out/rm
    torchrun --nproc_per_node=8 train_rm.py --data=hh.jsonl --val_data=hh_val.jsonl ...
"""

import math
import sys
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nanoinstruct import batching, checkpoint, collect, data, distributed, losses, run
from nanoinstruct.cli import UserError, cli_main, parse_flags
from nanoinstruct.model import last_index
from nanoinstruct.world import LABELERS


@dataclass
class Config:
    # data and model
    data: str = "data/world/comparisons.jsonl"         # required; K-way comparisons (or chosen/rejected pairs)
    val_data: str = "data/world/comparisons_val.jsonl"  # required; held-out, the same format
    demos: str = ""                          # demonstrations, shifted to average reward 0 ("": the preferred responses)
    out_dir: str = "out/rm"                  # required; the run: ckpt/, metrics.jsonl
    init: str = "out/sft"                    # required; the SFT model (or an RM checkpoint, a preset, an HF dir)
    tokenizer: str = ""                      # "" (bytes for a preset, an HF dir's own files), a tiktoken name or a .tiktoken file
    template: str = ""                       # instruction or dialogue (HH-RLHF's); "" the init's, else instruction
    block_size: int = 0                      # [0, 2**20]; preset init only: context length (0: the preset's)
    resume: bool = False
    overwrite: bool = False
    # optimization
    batch_size: int = 8                      # [1, 4096]; prompts per micro-step per process (each with its K responses)
    grad_accum: int = 1                      # [1, 4096]
    epochs: float = 1.0                      # > 0; passes over the comparisons (the paper: 1)
    lr: float = 3e-4                         # > 0
    min_lr: float = 3e-5                     # [0, lr]
    warmup_iters: int = 5                    # >= 0
    weight_decay: float = 0.1                # >= 0
    beta1: float = 0.9                       # [0, 1)
    beta2: float = 0.95                      # [0, 1)
    grad_clip: float = 1.0                   # >= 0; 0: off
    dropout: float = 0.0                     # [0, 1)
    # evaluation, logging, machine
    eval_interval: int = 50                  # >= 1; held-out accuracy and a checkpoint every this many steps
    log_interval: int = 10                   # >= 1
    seed: int = 1337                         # [0, 2**32)
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    threads: int = 0                         # [0, 1024]; torch CPU threads (0: torch's default)
    gradient_checkpointing: bool = False     # recompute each block's activations in the backward: less memory


def main(argv=None):
    cfg = parse_flags(Config, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = distributed.setup(cfg.device)
    ckpt = run.prepare_out_dir(cfg.out_dir, "rm", cfg.resume, cfg.overwrite)     # checks; writes nothing yet

    # ---- model: the SFT trunk + a scalar head ------------------------------------------
    torch.manual_seed(cfg.seed)                                   # the fresh head's weights
    model, tok = run.init_scalar(ckpt if cfg.resume else cfg.init, cfg.tokenizer, cfg.dropout,
                                  cfg.block_size or None, cfg.template)
    model.to(d.device)
    model.gpt.checkpointing = cfg.gradient_checkpointing
    T = model.config.block_size
    # The loss sees only reward differences. The head's bias, and the final LayerNorm's bias
    # (it reaches the reward only as head.weight . bias, the same for every sequence), shift
    # all rewards alike: their true gradient is exactly 0, and Adam would turn its rounding
    # noise into steps of size lr. Both stay fixed; normalisation sets the head's bias below.
    for p in (model.head.bias, model.gpt.transformer.ln_f.bias):
        p.requires_grad_(False)

    # ---- data: comparisons, each one prompt with its ranked responses -------------------
    def fits(prompt, responses):
        p = len(tok.encode_prompt(prompt))
        return all(p + len(tok.encode_response(y)) <= T for y in responses)

    def load(path):
        rows = data.check_template(data.read_comparisons(path), path, tok.template)
        kept = [c for c in rows if fits(c["prompt"], c["responses"])]
        if len(kept) < len(rows):
            distributed.print0(d, f"{path}: {len(rows) - len(kept)} of {len(rows)} comparisons longer "
                                  f"than block_size {T} left out", file=sys.stderr)
        if not kept:
            raise UserError(f"{path}: no comparison fits in block_size {T}")
        return kept

    train, val = load(cfg.data), load(cfg.val_data)
    if cfg.demos:  # what the reward is normalised on: (prompt, response) pairs that should score 0
        demos = [(r["prompt"], r["response"]) for r in data.check_template(data.read_demos(cfg.demos), cfg.demos,
                                                                            tok.template) if fits(r["prompt"], [r["response"]])]
        if not demos:
            raise UserError(f"{cfg.demos}: no demonstration fits in block_size {T}")
        norm_on = f"the demonstrations of {cfg.demos}"
    else:
        demos = [(c["prompt"], c["responses"][c["ranking"][0]]) for c in train]
        norm_on = f"the preferred responses of {cfg.data} (no --demos)"
    N = len(train)
    B, A, W = cfg.batch_size, cfg.grad_accum, d.world_size
    max_iters = math.ceil(cfg.epochs * N / (B * A * W))
    # global position -> a comparison; the last step of a fractional epoch tops up from the
    # start of the next epoch's shuffle
    example = run.epoch_sampler(train, cfg.seed)

    def rewards(net, comparisons):
        """-> rewards (P, K) best to worst, valid (P, K): one forward pass per response."""
        batch = batching.pack_rankings(tok, comparisons)
        ids, mask = batch.ids.to(d.device), batch.attention_mask.to(d.device)
        with run.autocast(d.device):
            values = net(ids, mask)                                   # (R, T) a scalar per position
        scores = values.gather(1, last_index(mask)[:, None]).squeeze(1)  # (R,) at the last real token
        return scores[batch.rank.to(d.device)], batch.valid.to(d.device)

    @torch.no_grad()
    def evaluate(comparisons):
        """-> (mean loss per prompt, pairwise accuracy) over all the comparisons."""
        model.eval()
        loss_sum = agree = pairs = 0.0
        for i in range(0, len(comparisons), B):
            chunk = comparisons[i:i + B]
            r, valid = rewards(model, chunk)
            loss_sum += losses.ranking_loss(r, valid).item() * len(chunk)
            a, n = losses.ranking_accuracy(r, valid)
            agree, pairs = agree + a, pairs + n
        model.train()
        return loss_sum / len(comparisons), agree / pairs

    @torch.no_grad()
    def demo_mean():
        model.eval()
        total = 0.0
        for i in range(0, len(demos), B * 4):
            chunk = demos[i:i + B * 4]
            ids, mask = batching.pack_sequences(tok, [p for p, _ in chunk], [y for _, y in chunk])
            ids, mask = ids.to(d.device), mask.to(d.device)
            with run.autocast(d.device):
                total += model.score(ids, mask).sum().item()
        model.train()
        return total / len(demos)

    # the yardstick: how often a second labeler orders the held-out pairs as their labels do
    second = collect.second_labeler(val, cfg.val_data)
    agreement = collect.agreement(val, LABELERS[second])[0] if second else None
    n_pairs = sum(len(c["responses"]) * (len(c["responses"]) - 1) // 2 for c in val)

    # ---- optimizer, resume -------------------------------------------------------------
    optimizer = run.make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    it = 0
    if cfg.resume:
        state = checkpoint.load_resume(ckpt, keys=("optimizer", "iter"))
        if checkpoint.read_config(ckpt).get("normalized"):  # its bias already shifted: would shift twice
            raise UserError(f"--resume: {ckpt} is a finished, normalised reward model; train further "
                            f"from it with --init={cfg.out_dir} and a new --out_dir")
        run.load_optimizer(optimizer, state["optimizer"], ckpt)
        it = state["iter"]
        distributed.print0(d, f"resuming {ckpt} at iteration {it}")
    net = DDP(model) if d.ddp else model
    Ks = sorted({len(c["responses"]) for c in train})
    distributed.print0(d, f"reward model: {model.gpt.num_params() / 1e6:.2f}M parameters, {N} comparisons "
                          f"(K = {', '.join(map(str, Ks))}), {len(val)} held out ({n_pairs} pairs), "
                          f"global batch {B * A * W} prompts, {max_iters} steps")

    def save(extra):
        if d.is_main:
            checkpoint.save(ckpt, model, {"run": asdict(cfg), "iter": it, **extra},
                            resume={"optimizer": optimizer.state_dict(), "iter": it}, tokenizer=tok)

    # ---- the loop ----------------------------------------------------------------------
    run.claim_out_dir(d, cfg.out_dir, "rm", cfg.resume, cfg.overwrite)    # models and data loaded: now write
    timer, val_loss, val_acc = run.Timer(), float("nan"), float("nan")
    model.train()
    bar = run.progress(max_iters, it, "reward model", d.is_main)
    while it < max_iters:
        lr = run.lr_at(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank + it)    # dropout: a function of (rank, step)
        step = [example((it * A * W + a * W + r) * B + i) for a in range(A) for r in range(W) for i in range(B)]
        step_loss = torch.zeros((), device=d.device)
        agree = pairs = 0.0
        for a in range(A):
            mine = step[(a * W + d.rank) * B:(a * W + d.rank + 1) * B]
            with net.no_sync() if d.ddp and a < A - 1 else torch.enable_grad():
                r, valid = rewards(net, mine)
                # every prompt weighs the same whatever micro-step or rank it landed in
                loss = losses.ranking_loss(r, valid) * len(mine) / len(step)
                run.check_finite(loss, "the ranking loss", it, ckpt)
                (loss * W).backward()        # DDP averages over ranks; * W makes it a sum
            step_loss += loss.detach()
            a_, n_ = losses.ranking_accuracy(r.detach(), valid)
            agree, pairs = agree + a_, pairs + n_
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        bar.update()
        if it % cfg.log_interval == 0 or it == max_iters:
            train_loss = distributed.all_mean(d, step_loss.item()) * W
            train_acc = distributed.all_mean(d, agree) / max(distributed.all_mean(d, pairs), 1)
            distributed.print0(d, f"iter {it}/{max_iters}: loss {train_loss:.4f}, accuracy {train_acc:.3f}, "
                                  f"lr {lr:.2e}, {timer.elapsed():.0f}s")
            if d.is_main:
                run.log_metrics(cfg.out_dir, {"iter": it, "loss": train_loss, "accuracy": train_acc,
                                              "lr": lr, "elapsed": timer.elapsed()})
        if it % cfg.eval_interval == 0 and it < max_iters:
            if d.is_main:
                val_loss, val_acc = evaluate(val)
                run.check_finite(val_loss, "the held-out loss", it, ckpt)
                distributed.print0(d, f"iter {it}: val loss {val_loss:.4f}, val accuracy {val_acc:.3f}")
                run.log_metrics(cfg.out_dir, {"iter": it, "val_loss": val_loss, "val_accuracy": val_acc})
            save({"val_accuracy": val_acc, "normalized": False})
    bar.close()

    # ---- normalise, evaluate, save --------------------------------------------------------
    if d.is_main:
        before = demo_mean()
        with torch.no_grad():
            model.head.bias -= before                 # now the demonstrations average 0
        after = demo_mean()
        val_loss, val_acc = evaluate(val)
        run.check_finite(val_loss, "the held-out loss", it, ckpt)
        final = {"iter": it, "val_loss": val_loss, "val_accuracy": val_acc, "labeler_agreement": agreement,
                 "demo_mean_before": before, "demo_mean": after}
        line = f"val accuracy {100 * val_acc:.1f}% on {n_pairs} held-out pairs"
        if second:
            relabeled = [{**c, "ranking": LABELERS[second].rank(c, c["responses"])} for c in val]
            final["val_accuracy_second_labeler"] = evaluate(relabeled)[1]
            line += (f" (inter-labeler agreement {100 * agreement:.1f}%; against the {second} "
                     f"labeler {100 * final['val_accuracy_second_labeler']:.1f}%)")
        run.log_metrics(cfg.out_dir, final)
        print(f"normalised on {norm_on}: mean reward {before:+.4f} -> {after:+.2e}", flush=True)
        checkpoint.save(ckpt, model, {"run": asdict(cfg), "normalized": True, **final},
                        resume={"optimizer": optimizer.state_dict(), "iter": it}, tokenizer=tok)
        print(f"done: reward model {it} steps, val loss {val_loss:.4f}, {line}, "
              f"{timer.elapsed():.0f}s -> {ckpt}", flush=True)
    distributed.finish(d)


if __name__ == "__main__":
    cli_main(main)
