"""Step 3 of InstructGPT: PPO, and PPO-ptx, against the reward model.

The paper's objective (eq. 2), maximised over the policy pi (started from the SFT model):

    objective = E_{x ~ prompts, y ~ pi(.|x)} [ r(x, y) - beta * log(pi(y|x) / pi_SFT(y|x)) ]
              + gamma * E_{x ~ pretraining text} [ log pi(x) ]

gamma = 0 is "PPO", gamma > 0 is "PPO-ptx". Four models, as in the paper: the policy pi
(trained), the reference pi_SFT (frozen), the reward model r (frozen, normalised so that
demonstrations score 0) and the value function V (trained; started from the reward model).
Dropout is off in all four, so that a log-prob recomputed later equals the rollout's.

One iteration, in the order of openai/lm-human-preferences:
  1. rollout: sample a response to each prompt (KV cache, --temperature, stop at EOS)
  2. log-probs of the sampled tokens under pi and pi_SFT, at the same temperature and
     through the same code (and the same row batches) as the update recomputes them
  3. score prompt + response with r; a response that never emitted EOS scores
     --no_eos_penalty instead (LHP: -1; nan keeps r's score)
  4. per-token rewards: -beta * kl_t on every response token, plus the score on the last
     (kernels.penalized_rewards; kl_t = logp_t - ref_logp_t by default, "k1")
  5. values V(x, y_<t), then advantages and returns by GAE (kernels.gae); advantages
     whitened over the real tokens (of every rank)
  6. --ppo_epochs passes over the rollouts in --minibatches; each minibatch takes ONE
     optimizer step on  policy loss + value loss (+ ptx_coef * the language-model loss of a
     batch of pretraining text: PPO-ptx's gamma term, in the same step, as eq. 2 writes it).
     The two networks share no weights, so that step is taken as two AdamW calls, the
     policy's then the value function's, each right after its own backward (less memory).
     Both losses are means over the minibatch's real tokens on all ranks, so that under DDP
     every token weighs the same whatever rank it landed on. The value function is its own
     network (the paper starts it from the reward model) with its own learning rate,
     --vf_lr; lm-human-preferences put a value head on the policy's trunk and weighed its
     loss with vf_coef instead, a knob that does nothing here: Adam's step does not change
     when a separate network's loss is scaled by a constant.
  7. beta: fixed, or LHP's adaptive controller when --target_kl > 0:
       beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * rollouts / horizon)

When the prompts carry the world's metadata, each iteration also logs `gold`: the rollouts'
mean gold score under the training labeler's weights without its noise (world.gold_score),
beside the reward model's `score`. Plotted against `kl`, the two part where PPO starts to
over-optimise the proxy (Gao et al. 2022), which a run on real data cannot see. With
--reward=gold that score is the reward itself (Gao et al.'s "gold reward model"): a control
that asks what PPO makes of a perfect reward model, so that a shortfall can be laid on the
reward model or on the optimiser. It is scaled as a reward model that fits the labeler
exactly would score: P(i > j) = sigmoid((g_i - g_j) / noise) is Bradley-Terry on g / noise,
so the reward is g / noise and --kl_coef weighs KL against it as against a trained reward
model. The value function then starts from --init's trunk.

    python train_ppo.py --init=out/sft --reward=out/rm --out_dir=out/ppo
    python train_ppo.py --init=out/sft --reward=out/rm --ptx_coef=1 --out_dir=out/ppo_ptx
    python train_ppo.py --init=out/sft --reward=gold --out_dir=out/ppo_gold   # the control
    python train_ppo.py --bench=tiny --max_iters=30   # time the loop on random models; writes nothing
    python train_ppo.py --bench=gpt2 --max_iters=3    # GPT-2 124M's shape, vocabulary 50257
"""

import copy
import math
import statistics
import sys
import types
from dataclasses import asdict, dataclass

import torch

import kernels
from nanoinstruct import batching, checkpoint, collect, data, distributed, losses, run, world
from nanoinstruct.cli import UserError, cli_main, parse_flags
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT


@dataclass
class Config:
    # models and data
    init: str = "out/sft"                 # required; the policy starts here, and this (frozen) is the reference
    tokenizer: str = ""                   # "" (bytes for a preset, an HF dir's own files), a tiktoken name or a .tiktoken file
    template: str = ""                    # instruction or dialogue; "" the init's (the reward model's must match)
    reward: str = "out/rm"                # required; the reward model (train_rm.py's, normalised), or gold
    value_init: str = ""                  # the value function starts here ("": the reward model; --init for gold)
    prompts: str = "data/world/ppo_prompts.jsonl"  # required; prompts JSONL
    ptx_data: str = "data/world/corpus.jsonl"  # pretraining text, read only when ptx_coef > 0
    ptx_coef: float = 0.0                 # >= 0; gamma of eq. 2: 0 is PPO, > 0 is PPO-ptx
    ptx_batch_size: int = 8               # [1, 4096]; pretraining rows per minibatch
    ptx_block_size: int = 128             # >= 1
    out_dir: str = "out/ppo"              # required; the run: ckpt/, metrics.jsonl
    resume: bool = False
    overwrite: bool = False
    # PPO
    max_iters: int = 100                  # >= 1; PPO iterations (rollout + update)
    batch_size: int = 32                  # [1, 4096]; rollouts per iteration per process
    minibatches: int = 1                  # >= 1, divides batch_size; optimizer steps per epoch over the rollouts
    ppo_epochs: int = 4                   # >= 1
    max_new_tokens: int = 48              # >= 1
    temperature: float = 1.0              # > 0; sampling, and every log-prob of the policy and reference
    lr: float = 1e-4                      # > 0; the policy's
    weight_decay: float = 0.0             # >= 0
    beta1: float = 0.9                    # [0, 1)
    beta2: float = 0.95                   # [0, 1)
    grad_clip: float = 1.0                # >= 0; per model; 0: off
    clip: float = 0.2                     # > 0; PPO's ratio clip
    vf_clip: float = 0.2                  # > 0; value clip, around the rollout's values
    vf_lr: float = 0.0                    # >= 0; the value function's learning rate (0: --lr)
    gamma: float = 1.0                    # [0, 1]; GAE discount
    lam: float = 0.95                     # [0, 1]; GAE lambda
    kl_coef: float = 0.02                 # >= 0; beta (the initial beta when adaptive)
    kl_kind: str = "k1"                   # k1 | k2 | k3; the KL estimator inside the reward
    target_kl: float = 0.0                # >= 0; > 0: adapt beta toward this KL per response (nats)
    kl_horizon: int = 10000               # >= 1; the adaptive controller's horizon, in rollouts
    no_eos_penalty: float = -1.0          # any, nan; the score of a response without EOS (nan: keep r's)
    whiten_advantages: bool = True
    # logging, machine
    log_interval: int = 1                 # >= 1
    sample_interval: int = 10             # >= 0; print a few samples every this many iterations (0: never)
    save_interval: int = 20               # >= 1
    seed: int = 1337                      # [0, 2**32)
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    threads: int = 0                      # [0, 1024]; torch CPU threads (0: torch's default)
    gradient_checkpointing: bool = False  # recompute the policy's and value's activations in the backward
    bench: str = ""                       # "" | tiny | gpt2; time iterations on random models of BENCH's shape


# --bench: the models' shape (n_layer, n_head, n_embd, real vocabulary), rollouts per
# iteration, prompt and response tokens. tiny is issue 7's configuration; gpt2 is GPT-2
# 124M with its vocabulary. bench/trl_ppo.py runs TRL's PPOTrainer on the same ones.
BENCH = {"tiny": dict(shape=(2, 2, 64, 512), batch=8, prompt=16, response=32),
         "gpt2": dict(shape=(12, 12, 768, 50257), batch=16, prompt=24, response=128)}


def bench_bytes(c, B, T, R):
    """What a --bench run needs at least, in bytes (fp32): four models' weights, gradients and
    AdamW's two moments for the trained two, the trained trunks' activations (Korthikanti et
    al. 2022: 34 C + 5 n_head T bytes per token and layer in 16-bit, doubled for fp32), and
    three copies of the response logits. B rollouts of T tokens, R of them the response."""
    params = c.vocab_size * c.n_embd + c.block_size * c.n_embd + 12 * c.n_layer * c.n_embd ** 2
    activations = 2 * B * T * c.n_layer * 2 * (34 * c.n_embd + 5 * c.n_head * T)
    return 4 * params * (4 + 2 + 4) + activations + 3 * 4 * B * R * c.n_real


def main(argv=None):
    cfg = parse_flags(Config, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = distributed.setup(cfg.device)
    dev = d.device

    # ---- the four models ----------------------------------------------------------------
    torch.manual_seed(cfg.seed)                                   # a preset's initial weights
    if cfg.bench:  # random models and prompts of a BENCH shape; responses run to their length
        if cfg.bench not in BENCH:
            raise UserError(f"--bench={cfg.bench!r}: choose one of {', '.join(BENCH)}")
        b = BENCH[cfg.bench]
        L, H, C, V = b["shape"]
        cfg.batch_size, cfg.max_new_tokens, ckpt = b["batch"], b["response"], None
        tok = types.SimpleNamespace(eos_id=V - 1, pad_id=V, n_vocab=V + 1, n_real=V)   # EOS last, then PAD
        shape = GPTConfig(L, H, C, 64 * math.ceil((V + 1) / 64), max(64, b["prompt"] + b["response"]), n_real=V)
        need = bench_bytes(shape, cfg.batch_size, b["prompt"] + b["response"], b["response"])
        free = run.available_memory()
        if free is not None and need > free:
            raise UserError(f"--bench={cfg.bench}: needs about {need / 2**30:.1f} GiB of memory; "
                            f"{free / 2**30:.1f} GiB are available")
        ref, reward, value = GPT(shape), ScalarGPT(shape), ScalarGPT(shape)
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, V - 1, (1024, b["prompt"]), generator=g).tolist()
        records, world_prompts = [], False
    else:
        ckpt = run.prepare_out_dir(cfg.out_dir, "ppo", cfg.resume, cfg.overwrite)  # checks; writes nothing yet
        ref, tok = run.init_gpt(cfg.init, cfg.tokenizer, 0.0, template=cfg.template)   # pi_SFT
        reward, reward_tok = None, tok                            # --reward=gold: the world's labeler
        if cfg.reward != "gold":
            reward, reward_tok, meta = checkpoint.load_with_tokenizer(cfg.reward)
            if not isinstance(reward, ScalarGPT):
                raise UserError(f"--reward={cfg.reward}: a {meta['kind']} checkpoint, not a reward model")
            if not meta.get("normalized"):
                distributed.print0(d, f"warning: --reward={cfg.reward} was not normalised on demonstrations",
                                   file=sys.stderr)
        value_init = cfg.value_init or (cfg.init if reward is None else cfg.reward)
        value, value_tok = run.init_scalar(value_init, cfg.tokenizer, 0.0, template=cfg.template)
        # one tokenizer for all four models, and room in every one's context for the rollouts
        for flag, path, t in (("reward", cfg.reward, reward_tok), ("value_init", value_init, value_tok)):
            if t != tok:
                raise UserError(f"--{flag}={path}: its tokenizer ({t.name}) is not "
                                f"the policy's ({tok.name}); policy, reference, reward model and value "
                                f"function must share one")
        block = min(m.config.block_size for m in (ref, reward, value) if m is not None)
        if block <= cfg.max_new_tokens:
            raise UserError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in a context "
                            f"of {block} tokens (the smallest block_size of policy, reward model and value)")
        records = data.check_template(data.read_prompts(cfg.prompts), cfg.prompts, tok.template)
        records = batching.fit_prompts(records, tok, block - cfg.max_new_tokens, cfg.prompts)
        prompts = [tok.encode_prompt(r["prompt"]) for r in records]
        # the world's prompts must carry what the gold score reads; prompts without its
        # metadata are valid for a learned reward, and then gold is not logged
        world_prompts = collect.is_world(records)
        if world_prompts or reward is None:
            collect.require_world(records, cfg.prompts, "the gold score reads the world's metadata"
                                  + (" (--reward=gold)" if reward is None else ""))
    # the policy starts as an exact copy of the reference (a resumed one from its checkpoint)
    policy = run.init_gpt(ckpt, cfg.tokenizer, 0.0, template=cfg.template)[0] if cfg.resume else copy.deepcopy(ref)
    for m in filter(None, (policy, ref, reward, value)):
        m.to(dev)
    for m in filter(None, (ref, reward)):
        m.eval().requires_grad_(False)
    policy.checkpointing = value.gpt.checkpointing = cfg.gradient_checkpointing   # the two trained

    ptx_rows = None
    if cfg.ptx_coef > 0:
        texts = [r["text"] for r in data.read_text(cfg.ptx_data)]
        ptx_rows = batching.pack_documents(tok, texts, min(cfg.ptx_block_size, policy.config.block_size))

    B, M, W = cfg.batch_size, cfg.batch_size // cfg.minibatches, d.world_size
    index_at = run.epoch_sampler(range(len(prompts)), cfg.seed)   # global rollout position -> prompt
    gold_of = None                                                # the world's gold score, when it applies
    if world_prompts:
        gold_of = lambda rec, y: world.gold_score(rec, y, world.LABELERS["train"].weights)  # noqa: E731

    def response_logprobs(model, ids, mask, P):
        """(log pi(y_t | x, y_<t), entropy) at --temperature for the response tokens ids[:, P:],
        each (B, N): the sampler's own distribution, over the real vocabulary it samples from.
        Only the response positions reach the unembedding."""
        targets = ids[:, P:].masked_fill(ids[:, P:] == tok.pad_id, 0)     # PAD after EOS: masked later
        with run.autocast(dev):
            h = model.hidden(ids, mask)[:, P - 1:-1]                       # (B, N, C)
            return model.logprobs(h, targets, cfg.temperature)

    def values_of(model, ids, mask, P):
        """V of the state before each response token: the head at positions P-1 .. end-1 (B, N)."""
        with run.autocast(dev):
            return model(ids, mask)[:, P - 1:-1]

    # ---- optimizer, resume ------------------------------------------------------------
    optimizer = torch.optim.AdamW([{"params": list(policy.parameters()), "lr": cfg.lr},
                                   {"params": list(value.parameters()), "lr": cfg.vf_lr or cfg.lr}],
                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, fused=True)

    def step(model):
        """Average model's gradients over ranks, clip them, take AdamW's step on them, free them."""
        distributed.average_gradients(d, list(model.parameters()))
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        optimizer.step()                                   # parameters without a gradient are skipped
        optimizer.zero_grad(set_to_none=True)

    it, kl_coef = 0, cfg.kl_coef
    if cfg.resume:
        state = checkpoint.load_resume(ckpt, keys=("optimizer", "iter", "kl_coef", "value"))
        run.load_optimizer(optimizer, state["optimizer"], ckpt)
        value.load_state_dict(state["value"])
        it, kl_coef = state["iter"], state["kl_coef"]
        distributed.print0(d, f"resuming {ckpt} at iteration {it}")
    distributed.print0(d, f"ppo{'-ptx' if cfg.ptx_coef > 0 else ''}: policy {policy.num_params() / 1e6:.2f}M, "
                          f"value {value.gpt.num_params() / 1e6:.2f}M, {len(prompts)} prompts, {B * W} rollouts "
                          f"x {cfg.ppo_epochs} epochs x {cfg.minibatches} minibatches per iteration, "
                          f"{cfg.max_iters} iterations")

    def save():
        if d.is_main and not cfg.bench:
            with torch.no_grad():  # the updated weights on the last rollouts: finite, or nothing is saved
                run.check_finite(response_logprobs(policy, ids[:M], mask[:M], P)[0].sum() + values_of(
                    value, ids[:M], mask[:M], P).sum(), "the updated models' forward pass", it, ckpt)
            checkpoint.save(ckpt, policy, {"run": asdict(cfg), "iter": it, "kl_coef": kl_coef},
                            resume={"optimizer": optimizer.state_dict(), "iter": it, "kl_coef": kl_coef,
                                    "value": value.state_dict()}, tokenizer=tok)

    # ---- the loop ---------------------------------------------------------------------
    if not cfg.bench:
        run.claim_out_dir(d, cfg.out_dir, "ppo", cfg.resume, cfg.overwrite)  # models and data loaded: now write
    timer, times = run.Timer(), []
    bar = run.progress(cfg.max_iters, it, "ppo", d.is_main)
    while it < cfg.max_iters:
        t_start = timer.elapsed()
        seed = cfg.seed + 1_000_003 * d.rank + it                 # a function of (rank, iteration)
        g = torch.Generator(dev).manual_seed(seed)                # sampling
        g_cpu = torch.Generator().manual_seed(seed)               # minibatch shuffles, pretraining rows
        # 1. rollout
        batch = [index_at((it * W + d.rank) * B + i) for i in range(B)]
        p_ids, p_mask = batching.left_pad([prompts[i] for i in batch], tok.pad_id)  # (B, P)
        p_ids, p_mask, P = p_ids.to(dev), p_mask.to(dev), p_ids.shape[1]
        try:
            response, r_mask = policy.generate(p_ids, p_mask, cfg.max_new_tokens, tok.eos_id, tok.pad_id,
                                               tok.n_vocab, cfg.temperature, generator=g)  # (B, N)
        except FloatingPointError:  # the last update diverged
            raise run.stopped("the policy's logits are not finite", it, ckpt) from None
        ids, mask = batching.join(p_ids, p_mask, response, r_mask)                # (B, P+N)
        golds = None  # the world's gold score of what was sampled, noise-free: logged, or the reward (gold)
        if gold_of:
            golds = [gold_of(records[i], tok.decode_response(y)) for i, y in zip(batch, response.tolist())]
            gold_t = torch.tensor(golds, device=dev) / world.LABELERS["train"].noise  # (B,) logit units
        # 2.-3. log-probs, entropy, values, scores: in the update's minibatches, no grad
        with torch.no_grad():
            logp, ent, ref_logp, old_values, scores = [], [], [], [], []
            for mb in torch.arange(B, device=dev).split(M):
                lp, h = response_logprobs(policy, ids[mb], mask[mb], P)
                logp.append(lp), ent.append(h)
                ref_logp.append(response_logprobs(ref, ids[mb], mask[mb], P)[0])
                old_values.append(values_of(value, ids[mb], mask[mb], P))
                with run.autocast(dev):
                    scores.append(gold_t[mb] if reward is None
                                  else reward.score(ids[mb], mask[mb]))
            logp, ent, ref_logp, old_values, scores = map(torch.cat, (logp, ent, ref_logp, old_values, scores))
            has_eos = (response == tok.eos_id).any(1)
            if not math.isnan(cfg.no_eos_penalty):
                scores = torch.where(has_eos, scores, cfg.no_eos_penalty)     # (B,)
            # 4. per-token rewards; 5. advantages and returns
            rewards = kernels.penalized_rewards(scores, logp, ref_logp, r_mask, kl_coef, cfg.kl_kind)
            advantages, returns = kernels.gae(rewards, old_values, r_mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = losses.whiten(advantages, r_mask, all_sum=lambda t: distributed.all_sum(d, t))
            kl = (kernels.kl_estimate(logp, ref_logp, "k1") * r_mask).sum(1)  # (B,) nats per response
        t_rollout = timer.elapsed()

        # 6. PPO epochs over minibatches; each minibatch is one update (two AdamW calls)
        stats = []
        for epoch in range(cfg.ppo_epochs):
            # the first epoch keeps the rollout's row batches, so that its first minibatch
            # recomputes exactly the rollout's log-probs (ratio 1, approx_kl 0)
            order = torch.arange(B) if epoch == 0 else torch.randperm(B, generator=g_cpu)
            for mb in order.to(dev).split(M):
                # token means over the minibatch's real tokens on every rank: the gradients are
                # averaged over ranks below, so each rank divides by the global count / W
                n = distributed.all_sum(d, r_mask[mb].sum()) / W
                # the step's loss is policy loss + value loss (+ ptx): two separate networks, so
                # each takes its backward and its AdamW step in turn, and only one graph's
                # activations and one network's gradients are alive at a time (AdamW's update of
                # a parameter depends on that parameter's gradient alone: the same step)
                new_logp = response_logprobs(policy, ids[mb], mask[mb], P)[0]
                pg_loss, pg = losses.ppo_policy_loss(new_logp, logp[mb], advantages[mb], r_mask[mb], cfg.clip, n)
                loss = pg_loss
                if ptx_rows is not None:  # gamma * E[-log pi(x)] on pretraining text, same step
                    rows = ptx_rows[torch.randint(len(ptx_rows), (cfg.ptx_batch_size,), generator=g_cpu)].to(dev)
                    with run.autocast(dev):
                        lm_logp, _ = policy(rows[:, :-1], targets=rows[:, 1:])       # (ptx_batch, T)
                    ptx_loss = -lm_logp.mean()
                    loss = loss + cfg.ptx_coef * ptx_loss
                for name, x in (("policy loss", pg_loss), ("loss", loss)):
                    run.check_finite(x, f"the {name}", it, ckpt)
                loss.backward()
                step(policy)
                vpred = values_of(value, ids[mb], mask[mb], P)
                vf_loss, vf = losses.ppo_value_loss(vpred, old_values[mb], returns[mb], r_mask[mb], cfg.vf_clip, n)
                run.check_finite(vf_loss, "the value loss", it, ckpt)
                vf_loss.backward()
                step(value)
                stats.append(torch.stack([pg_loss.detach(), vf_loss.detach(), pg["approx_kl"], pg["clipfrac"],
                                          vf["clipfrac"], pg["ratio"],
                                          ptx_loss.detach() if ptx_rows is not None else torch.zeros((), device=dev)]))
        it += 1
        bar.update()
        # 7. the KL coefficient (LHP's adaptive controller)
        kl_mean = distributed.all_mean(d, kl.mean().item())
        if cfg.target_kl > 0:
            error = min(max(kl_mean / cfg.target_kl - 1, -0.2), 0.2)
            kl_coef *= 1 + error * B * W / cfg.kl_horizon
        times.append((timer.elapsed() - t_start, t_rollout - t_start))

        if it % cfg.log_interval == 0 or it == cfg.max_iters:
            pg_l, vf_l, approx_kl, pg_cf, vf_cf, ratio, ptx_l = torch.stack(stats).mean(0).tolist()
            real = r_mask > 0
            var = returns[real].var()
            explained = (1 - (returns - old_values)[real].var() / var).item() if var > 0 else float("nan")
            row = {"iter": it, "score": scores.mean().item(), "kl": kl_mean, "kl_coef": kl_coef,
                   "entropy": ent[real].mean().item(), "approx_kl": approx_kl, "pg_clipfrac": pg_cf,
                   "vf_clipfrac": vf_cf, "explained_variance": explained, "length": r_mask.sum(1).mean().item(),
                   "no_eos": 1 - has_eos.float().mean().item(), "ratio": ratio, "pg_loss": pg_l,
                   "vf_loss": vf_l, "ptx_loss": ptx_l, "seconds": times[-1][0], "elapsed": timer.elapsed()}
            if gold_of:
                row["gold"] = sum(golds) / B
            for k in ("score", "entropy", "length", *(["gold"] if gold_of else [])):
                row[k] = distributed.all_mean(d, row[k])
            distributed.print0(d, f"iter {it}: score {row['score']:+.3f}, "
                                  + (f"gold {row['gold']:+.3f}, " if gold_of else "") + f"kl {row['kl']:.3f}, "
                                  f"entropy {row['entropy']:.3f}, approx_kl {approx_kl:.4f}, "
                                  f"clipfrac {pg_cf:.3f}/{vf_cf:.3f}, ev {explained:.2f}, "
                                  f"len {row['length']:.1f}" + (f", ptx {ptx_l:.3f}" if ptx_rows is not None else "")
                                  + f", {times[-1][0]:.2f}s/it")
            if d.is_main and not cfg.bench:
                run.log_metrics(cfg.out_dir, row)
        if cfg.sample_interval and it % cfg.sample_interval == 0 and d.is_main and not cfg.bench:
            for b in range(min(3, B)):
                distributed.print0(d, f"  [{scores[b].item():+.2f} kl {kl[b].item():.2f}] "
                                      f"{tok.decode(prompts[batch[b]])!r} -> {tok.decode_response(response[b].tolist())!r}")
        if not cfg.bench and (it % cfg.save_interval == 0 or it == cfg.max_iters):
            save()
    bar.close()

    if d.is_main and times:
        steady = times[1:] or times
        per_it = statistics.median(t for t, _ in steady)
        per_rollout = statistics.median(r for _, r in steady)
        print(f"done: {it} iterations, {per_it:.3f}s per iteration (median; rollout + scoring {per_rollout:.3f}s, "
              f"{100 * per_rollout / per_it:.0f}%), peak RSS {run.peak_memory() / 2**30:.2f} GiB, "
              f"{timer.elapsed():.0f}s" + ("" if cfg.bench else f" -> {ckpt}"), flush=True)
    distributed.finish(d)


if __name__ == "__main__":
    cli_main(main)
