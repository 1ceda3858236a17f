"""Cases shared by the reference tests (tests/test_kernels.py) and the Triton-interpreter
tests (tests/triton/): the same assertions, on whichever path the environment selects."""

import torch

import kernels


def plain_gae(rewards, values, lengths, gamma, lam):
    """The lastgaelam loop of lm-human-preferences, one row and one token at a time, float64."""
    B, T = rewards.shape
    adv, ret = torch.zeros(B, T, dtype=torch.float64), torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        lastgaelam = 0.0
        for t in reversed(range(lengths[b])):
            nextvalue = float(values[b, t + 1]) if t + 1 < lengths[b] else 0.0
            delta = float(rewards[b, t]) + gamma * nextvalue - float(values[b, t])
            lastgaelam = delta + gamma * lam * lastgaelam
            adv[b, t], ret[b, t] = lastgaelam, lastgaelam + float(values[b, t])
    return adv, ret


def gae_case(seed, B, T, garbage=False):
    g = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0], lengths[-1] = 0, T                            # an empty and a full row
    mask = torch.arange(T)[None] < lengths[:, None]
    if garbage:                                               # what padding may hold
        junk = torch.tensor([float("nan"), 1e30, -float("inf"), 7.0]).repeat(B * T)[: B * T].view(B, T)
        rewards, values = torch.where(mask, rewards, junk), torch.where(mask, values, junk.flip(1))
    return rewards, values, mask, lengths


def gae_atol(rewards, values, mask):
    # |A_t| <= sum|r| + 2 T max|V| (per row), and A_t is built from at most 3T fp32 roundings
    U = 2.0 ** -24                                            # fp32 unit roundoff
    T = rewards.shape[1]
    r, v = torch.where(mask, rewards, 0.0).double().abs(), torch.where(mask, values, 0.0).double().abs()
    return 3 * T * U * (r.sum(1, keepdim=True) + 2 * T * v.amax(1, keepdim=True) + 1)


def check_empty(B, T):
    """Zero rows or zero tokens: right shapes, no error, on every function."""
    logits = torch.zeros(B, T, 7, requires_grad=True)
    logp, h = kernels.token_logprobs_and_entropy(logits, torch.zeros(B, T, dtype=torch.long))
    assert logp.shape == h.shape == (B, T)
    assert torch.autograd.grad((logp + h).sum(), logits)[0].shape == logits.shape
    a, mask = torch.zeros(B, T), torch.ones(B, T, dtype=torch.bool)
    assert kernels.kl_estimate(a, a, "k3").shape == (B, T)
    assert torch.equal(kernels.penalized_rewards(torch.ones(B), a, a, mask, 0.1), torch.zeros(B, T))
    adv, ret = kernels.gae(a, a, mask, 0.9, 0.9)
    assert adv.shape == ret.shape == (B, T)
