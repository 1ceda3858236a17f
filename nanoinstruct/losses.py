"""The losses of the three stages, each with its equation.

    language modelling (steps 0 and 1):  sum_t m_t * -log p(y_t | x_<=t)

    reward model, K-way ranking (step 2, InstructGPT eq. 1), for one prompt x whose K
    responses are ordered best to worst, y_1 > y_2 > ... > y_K:

        loss(x) = 1 / C(K,2) * sum_{i<j} -log sigma(r(x, y_i) - r(x, y_j))

    and the batch loss is the mean of loss(x) over prompts. All C(K,2) pairs of a prompt
    share its K rewards, so a prompt costs K forward passes, not 2 * C(K,2).
"""

import torch
import torch.nn.functional as F


def lm_nll_sum(logits, targets, mask):
    """logits (B, T, V), targets (B, T) long, mask (B, T) -> the masked sum of -log p(target).

    A sum, not a mean: the caller divides by the loss tokens of the whole optimizer step,
    so that every token weighs the same whatever micro-batch or rank it landed in."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return (nll.view_as(mask) * mask).sum()


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
