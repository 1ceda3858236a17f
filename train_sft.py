"""Step 0 and step 1 of InstructGPT: pretraining and supervised fine-tuning (SFT).

    --mode=pretrain   text documents ({"text"} JSONL) packed into block_size chunks;
                      the loss is on every token
    --mode=sft        demonstrations ({"prompt", "response"} JSONL); the loss is on the
                      response tokens and EOS only, the prompt is context

Both minimise the masked next-token negative log-likelihood

    L = - sum_{b,t} m_{b,t} log p(x_{b,t+1} | x_{b,<=t}) / sum_{b,t} m_{b,t}

normalised by the real tokens of the whole optimizer step (all micro-steps, all ranks),
so a DDP run and a one-process run with the same global batch take the same step. The
paper fine-tuned GPT-3 for 16 epochs with cosine decay and residual dropout 0.2; here the
defaults suit the tiny byte-level preset on a CPU, where dropout only slowed SFT down and made
it forget more of the pretraining.

    python train_sft.py --mode=pretrain --init=tiny --data=data/world/corpus.jsonl \\
        --val_data=data/world/corpus_heldout.jsonl --out_dir=out/base
    python train_sft.py --init=out/base --out_dir=out/sft
    torchrun --nproc_per_node=8 train_sft.py --init=path/to/hf/gpt2 --tokenizer=gpt2 ...
"""

import sys
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nanoinstruct import batching, checkpoint, data, distributed, losses, run
from nanoinstruct.cli import UserError, cli_main, parse_flags


@dataclass
class Config:
    # data and model
    mode: str = "sft"                        # sft | pretrain
    data: str = "data/world/sft.jsonl"       # required; demonstrations (sft) or text (pretrain)
    val_data: str = "data/world/sft_val.jsonl"  # required; held-out, the same format
    out_dir: str = "out/sft"                 # required; the run: ckpt/, metrics.jsonl
    init: str = "out/base"                   # required; a preset (tiny, gpt2-random, ...), gpt2 (the released
                                             # weights, from the local Hugging Face cache), a checkpoint, an HF GPT-2 dir
    tokenizer: str = ""                      # "" (bytes for a preset, an HF dir's own files), a tiktoken name or a .tiktoken file
    template: str = ""                       # instruction or dialogue (HH-RLHF's); "" the init's, else instruction
    block_size: int = 0                      # [0, 2**20]; preset init only: context length (0: the preset's)
    resume: bool = False                     # continue out_dir's checkpoint
    overwrite: bool = False                  # start over in an out_dir that holds a checkpoint
    # optimization
    batch_size: int = 32                     # [1, 4096]; sequences per micro-step per process
    grad_accum: int = 1                      # [1, 4096]; micro-steps per optimizer step
    max_iters: int = 600                     # >= 1; optimizer steps
    lr: float = 1e-3                         # > 0; peak learning rate
    min_lr: float = 1e-4                     # [0, lr]; cosine decay ends here
    warmup_iters: int = 30                   # >= 0
    weight_decay: float = 0.1                # >= 0
    beta1: float = 0.9                       # [0, 1)
    beta2: float = 0.95                      # [0, 1)
    grad_clip: float = 1.0                   # >= 0; 0: off
    dropout: float = 0.0                     # [0, 1); residual, attention and embedding dropout (the paper: 0.2;
                                             # on the 0.8M tiny model 0.1 made SFT worse, see README)
    # evaluation, logging, machine
    eval_interval: int = 200                 # >= 1; held-out loss and a checkpoint every this many steps
    eval_batches: int = 8                    # >= 1; held-out batches per evaluation
    log_interval: int = 20                   # >= 1
    seed: int = 1337                         # [0, 2**32)
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    threads: int = 0                         # [0, 1024]; torch CPU threads (0: torch's default)
    gradient_checkpointing: bool = False     # recompute each block's activations in the backward: less memory


def main(argv=None):
    cfg = parse_flags(Config, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = distributed.setup(cfg.device)
    ckpt = run.prepare_out_dir(cfg.out_dir, "sft", cfg.resume, cfg.overwrite)    # checks; writes nothing yet

    # ---- model ------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)                                   # a preset's initial weights
    model, tok = run.init_gpt(ckpt if cfg.resume else cfg.init, cfg.tokenizer, cfg.dropout,
                              cfg.block_size or None, cfg.template)
    model.to(d.device)
    model.checkpointing = cfg.gradient_checkpointing
    T = model.config.block_size

    # ---- data: a list of examples, each a (tokens, loss mask) pair ----------------------
    def load(path):
        if cfg.mode == "pretrain":
            rows = batching.pack_documents(tok, [r["text"] for r in data.read_text(path)], T)
            return [(row, torch.ones(T)) for row in rows]                     # (T+1,), (T,)
        demos = data.check_template(data.read_demos(path), path, tok.template)
        out = [ex for ex in (batching.sft_example(tok, r["prompt"], r["response"]) for r in demos)
               if len(ex[1]) <= T]
        if len(out) < len(demos):
            distributed.print0(d, f"{path}: {len(demos) - len(out)} of {len(demos)} demonstrations "
                                  f"longer than block_size {T} left out", file=sys.stderr)
        if not out:
            raise UserError(f"{path}: no demonstration fits in block_size {T}")
        return out

    train, val = load(cfg.data), load(cfg.val_data)
    N = len(train)
    example = run.epoch_sampler(train, cfg.seed)                  # global sample position -> example

    def collate(examples):
        """-> inputs x (B, L), targets y (B, L), loss mask m (B, L), right-padded with PAD.
        Right padding needs no attention mask: the causal mask already keeps real tokens
        from attending to the padding after them, and padded positions carry no loss."""
        L = max(len(m) for _, m in examples)
        x = torch.full((len(examples), L + 1), tok.pad_id)
        m = torch.zeros(len(examples), L)
        for b, (ids, mask) in enumerate(examples):
            x[b, :len(ids)], m[b, :len(mask)] = ids, mask
        y = x[:, 1:].masked_fill(x[:, 1:] == tok.pad_id, 0)       # PAD targets carry no loss
        return x[:, :-1].to(d.device), y.to(d.device), m.to(d.device)

    def nll_sum(net, batch):
        x, y, m = batch
        with run.autocast(d.device):
            logp, _ = net(x, targets=y)                  # (B, L) over the real vocabulary
        return losses.lm_nll_sum(logp, m)

    # ---- optimizer, resume ------------------------------------------------------------
    optimizer = run.make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    it = 0
    if cfg.resume:
        state = checkpoint.load_resume(ckpt, keys=("optimizer", "iter"))
        run.load_optimizer(optimizer, state["optimizer"], ckpt)
        it = state["iter"]
        distributed.print0(d, f"resuming {ckpt} at iteration {it}")
    net = DDP(model) if d.ddp else model
    B, A, W = cfg.batch_size, cfg.grad_accum, d.world_size
    n_params = model.num_params()
    distributed.print0(d, f"{cfg.mode}: {n_params / 1e6:.2f}M parameters, {N} training examples, "
                          f"global batch {B * A * W}, {cfg.max_iters} steps")

    @torch.no_grad()
    def evaluate():
        model.eval()
        total = count = 0.0
        for i in range(0, min(len(val), cfg.eval_batches * B), B):
            batch = collate(val[i:i + B])
            total += nll_sum(model, batch).item()
            count += batch[2].sum().item()
        model.train()
        return total / count

    def save(val_loss):
        if d.is_main:
            checkpoint.save(ckpt, model, {"run": asdict(cfg), "iter": it, "val_loss": val_loss},
                            resume={"optimizer": optimizer.state_dict(), "iter": it}, tokenizer=tok)

    # ---- the loop ---------------------------------------------------------------------
    run.claim_out_dir(d, cfg.out_dir, "sft", cfg.resume, cfg.overwrite)   # models and data loaded: now write
    timer, tokens, total_tokens, train_losses, val_loss = run.Timer(), 0, 0, [], None
    start_iter = it
    model.train()
    bar = run.progress(cfg.max_iters, it, cfg.mode, d.is_main)
    while it < cfg.max_iters:
        lr = run.lr_at(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank + it)    # dropout: a function of (rank, step)
        step = [example((it * A * W + a * W + r) * B + i) for a in range(A) for r in range(W) for i in range(B)]
        n_real = sum(m.sum().item() for _, m in step)             # loss tokens in the whole step
        step_loss = torch.zeros((), device=d.device)   # no host sync until it is logged
        for a in range(A):
            mine = step[(a * W + d.rank) * B:(a * W + d.rank + 1) * B]
            batch = collate(mine)
            sync = a == A - 1 or not d.ddp
            with net.no_sync() if not sync else torch.enable_grad():
                loss = nll_sum(net, batch) / n_real
                run.check_finite(loss, "the loss", it, ckpt)
                (loss * W).backward()        # DDP averages over ranks; * W makes it a sum
            step_loss += loss.detach()
            tokens += batch[0].numel()
            total_tokens += batch[0].numel()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        bar.update()
        if it % cfg.log_interval == 0 or it == cfg.max_iters:
            train_losses.append(distributed.all_mean(d, step_loss.item()) * W)
            dt = timer.lap()
            tok_s = tokens * W / dt
            distributed.print0(d, f"iter {it}: loss {train_losses[-1]:.4f}, lr {lr:.2e}, {tok_s:.0f} tok/s, "
                                  f"{timer.elapsed():.0f}s")
            if d.is_main:
                run.log_metrics(cfg.out_dir, {"iter": it, "loss": train_losses[-1], "lr": lr,
                                              "tok_s": tok_s, "elapsed": timer.elapsed()})
            tokens = 0
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            if d.is_main:
                val_loss = evaluate()
                run.check_finite(val_loss, "the held-out loss", it, ckpt)
                distributed.print0(d, f"iter {it}: val loss {val_loss:.4f}")
                run.log_metrics(cfg.out_dir, {"iter": it, "val_loss": val_loss})
            save(val_loss)
    bar.close()
    if d.is_main and it > start_iter:
        tok_s = total_tokens * W / timer.elapsed()
        flops, peak = tok_s * run.train_flops_per_token(model, T), run.matmul_peak(d.device)
        print(f"throughput: {tok_s:.0f} tok/s, {flops / 1e9:.2f} GFLOP/s = {100 * flops / peak:.0f}% "
              f"of a {peak / 1e9:.1f} GFLOP/s matmul measured now", flush=True)
    if d.is_main:
        print(f"done: {cfg.mode} {it} steps, train loss {train_losses[-1] if train_losses else float('nan'):.4f}, "
              f"val loss {val_loss if val_loss is not None else float('nan'):.4f}, "
              f"{timer.elapsed():.0f}s -> {ckpt}", flush=True)
    distributed.finish(d)


if __name__ == "__main__":
    cli_main(main)
