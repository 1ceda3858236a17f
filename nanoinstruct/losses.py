"""The losses of the three stages, each with its equation.

    language modelling (steps 0 and 1):  sum_t m_t * -log p(y_t | x_<=t)
"""

import torch.nn.functional as F


def lm_nll_sum(logits, targets, mask):
    """logits (B, T, V), targets (B, T) long, mask (B, T) -> the masked sum of -log p(target).

    A sum, not a mean: the caller divides by the loss tokens of the whole optimizer step,
    so that every token weighs the same whatever micro-batch or rank it landed in."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return (nll.view_as(mask) * mask).sum()
