"""The losses of the three stages, each with its equation.

    language modelling (steps 0 and 1):  sum_t m_t * -log p(y_t | x_<=t)

    reward model, K-way ranking (step 2, InstructGPT eq. 1), for one prompt x whose K
    responses are ordered best to worst, y_1 > y_2 > ... > y_K:

        loss(x) = 1 / C(K,2) * sum_{i<j} -log sigma(r(x, y_i) - r(x, y_j))

    and the batch loss is the mean of loss(x) over prompts. All C(K,2) pairs of a prompt
    share its K rewards, so a prompt costs K forward passes, not 2 * C(K,2).

    PPO (step 3; Schulman et al. 2017, as lm-human-preferences computes it), per real
    response token t, with ratio_t = exp(logp_t - old_logp_t) and advantage A_t:

        policy  max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))
        value   1/2 * max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -eps_v, eps_v) - R_t)^2)

    each averaged over the real tokens of the minibatch (mask 1; EOS included). The max
    makes each a pessimistic bound: a token whose ratio has already moved past the clip in
    the direction its advantage pushes gets no gradient.
"""

import torch
import torch.nn.functional as F


def lm_nll_sum(logp, mask):
    """logp (B, T): log p(target) of each token (the model's forward with targets), mask (B, T)
    -> the masked sum of -log p(target).

    A sum, not a mean: the caller divides by the loss tokens of the whole optimizer step,
    so that every token weighs the same whatever micro-batch or rank it landed in."""
    return -(logp * mask).sum()


def _pairs(rewards, valid):
    """rewards (P, K) best -> worst, valid (P, K) bool | None -> the margins r_i - r_j of
    all pairs i < j (P, C), at least float32, and which of them are real (P, C) bool."""
    P, K = rewards.shape
    if valid is None:
        valid = torch.ones(P, K, dtype=torch.bool, device=rewards.device)
    i, j = torch.triu_indices(K, K, offset=1, device=rewards.device)      # (C,), (C,)
    real = valid.bool()[:, i] & valid.bool()[:, j]                         # (P, C)
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))     # bf16 -> fp32; fp64 stays
    r = r.masked_fill(~valid.bool(), 0.0)                  # padding slots may hold anything
    return r[:, i] - r[:, j], real


def ranking_loss(rewards, valid=None):
    """rewards (P, K), each row ordered best to worst; valid (P, K) bool marks the real
    responses (K varies per prompt; None: all real) -> the scalar loss of eq. 1.

    The mean over prompts of the mean over each prompt's valid pairs i < j of
    -log sigma(r_i - r_j). A prompt with fewer than two valid responses has no pair and
    is left out of the mean; with none in the batch the loss is 0 (still differentiable)."""
    margin, real = _pairs(rewards, valid)
    nll = -F.logsigmoid(margin) * real                                     # (P, C)
    n_pairs = real.sum(1)                                                  # (P,)
    per_prompt = nll.sum(1) / n_pairs.clamp(min=1)
    return per_prompt.sum() / (n_pairs > 0).sum().clamp(min=1)


@torch.no_grad()
def ranking_accuracy(rewards, valid=None):
    """-> (agreeing pairs, pairs): over every valid pair i < j, how many the rewards order
    as the ranking does (r_i > r_j); a tie counts half. The RM's pairwise accuracy."""
    margin, real = _pairs(rewards, valid)
    agree = (margin > 0).float() + 0.5 * (margin == 0).float()
    return (agree * real).sum().item(), real.sum().item()


def masked_mean(x, mask, n=None):
    """The mean of x over the entries where mask is 1 (the sum divided by n, default the
    number of such entries); 0 when there are none."""
    n = mask.sum() if n is None else torch.as_tensor(n, dtype=x.dtype, device=x.device)
    return (x * mask).sum() / n.clamp(min=1)


def whiten(x, mask, eps=1e-8, all_sum=None):
    """(x - mean) / std over the real entries (mask 1), as PPO does to advantages; the
    padding comes back 0. all_sum sums a tensor over DDP ranks, so that the statistics
    are those of every rank's entries (None: this process's alone)."""
    all_sum = all_sum or (lambda t: t)
    mask = mask.float()
    x = torch.where(mask > 0, x, 0.0)
    n = all_sum(mask.sum())
    mean = all_sum(x.sum()) / n.clamp(min=1)
    var = all_sum(((x - mean) ** 2 * mask).sum()) / n.clamp(min=1)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def _real(mask, *xs):
    """Zero every masked entry first, so that padding (which may hold anything, even NaN)
    reaches neither a loss nor a gradient: where() passes a zero gradient to the other
    branch, and the ops after it then see only finite numbers."""
    keep = mask > 0
    return [torch.where(keep, x, 0.0) for x in xs]


def ppo_policy_loss(logp, old_logp, advantages, mask, clip, n=None):
    """logp (B, T) under the policy being trained, old_logp (B, T) from the rollout,
    advantages (B, T), mask (B, T) 1 on real tokens, clip eps -> (loss, stats), the
    clipped surrogate above, token-mean over real tokens (summed and divided by n, default
    their count; under DDP the caller passes the global count / ranks).

    stats (detached scalars): clipfrac (tokens where the clipped term is the larger),
    approx_kl (k3 estimate of KL(old || new): ratio - 1 - log ratio, >= 0) and ratio (mean)."""
    mask = mask.float()
    logp, old_logp, advantages = _real(mask, logp, old_logp, advantages)
    log_ratio = logp - old_logp.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, n)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(ratio - 1 - log_ratio, mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def ppo_value_loss(values, old_values, returns, mask, clip, n=None):
    """values (B, T) from the value function being trained, old_values (B, T) from the
    rollout, returns (B, T) (GAE's targets), mask (B, T), clip eps_v -> (loss, stats):
    the clipped squared error above, token-mean over real tokens (divided by n, as above).

    stats: clipfrac (tokens where the clipped error is the larger) and the mean error."""
    mask = mask.float()
    values, old_values, returns = _real(mask, values, old_values, returns)
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask, n)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "error": masked_mean(values - returns, mask)}
    return loss, stats
