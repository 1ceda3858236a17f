"""KL estimators and the KL-penalised per-token reward of RLHF.

InstructGPT (Ouyang et al. 2022, eq. 2) maximises  r_theta(x, y) - beta log(pi_RL(y|x) / pi_SFT(y|x)).
As in openai/lm-human-preferences, the penalty is paid per token and the reward model's score
at the last token of the response:

    rewards[b, t] = -kl_coef * kl[b, t]                     where mask[b, t] != 0, else 0
    rewards[b, last_b] += scores[b]                         last_b = the last t with mask[b, t] != 0

(TRL and DeepSpeed-Chat both once added the score one position past the end.) A row whose mask
is all zero has no last token: it stays all zero. kl is one of Schulman's estimators of
KL(pi || pi_ref) from tokens sampled from pi ("Approximating KL divergence", 2020), with
d = ref_logp - logp = log(pi_ref / pi):

    k1 = -d        k2 = d^2 / 2        k3 = e^d - 1 - d   (>= 0; unbiased, low variance)

No autograd: rewards are computed under torch.no_grad(). Outputs are float32; masked-out
positions are chosen with `where`, so garbage (inf, NaN) there never reaches the output.
"""
from __future__ import annotations  # kernel signatures name tl.constexpr; triton may be absent

import torch

from . import jit, tl, triton

_KIND = {"k1": 1, "k2": 2, "k3": 3}

# ----------------------------------------------------------------------------- torch reference


def kl_estimate_ref(logp, ref_logp, kind="k1"):
    logp, ref_logp = logp.float(), ref_logp.float()                 # (B,T)
    if kind == "k1":
        return logp - ref_logp
    d = ref_logp - logp
    if kind == "k2":
        return 0.5 * d * d
    # e^d - 1 - d via expm1 (no cancellation in e^d - 1); the clamp removes a last-ulp dip below 0
    return (torch.expm1(d) - d).clamp(min=0.0)


def penalized_rewards_ref(scores, logp, ref_logp, mask, kl_coef, kind="k1"):
    real = mask != 0                                                 # (B,T) bool
    rewards = torch.where(real, -kl_coef * kl_estimate_ref(logp, ref_logp, kind), 0.0)
    if rewards.numel() == 0:
        return rewards
    t = torch.arange(real.shape[1], device=real.device)
    last = torch.where(real, t, -1).amax(dim=1)                      # (B,) -1: no real token
    bonus = torch.where(last >= 0, scores.float(), 0.0)             # (B,)
    return rewards.scatter_add(1, last.clamp(min=0).unsqueeze(1), bonus.unsqueeze(1))

# ----------------------------------------------------------------------------- Triton kernels

BLOCK_T = 1024  # tokens per chunk of a row in penalized_rewards; the tests shrink it


@jit
def _kl(logp, ref_logp, KIND: tl.constexpr):
    d = ref_logp - logp
    if KIND == 1:
        kl = logp - ref_logp
    elif KIND == 2:
        kl = 0.5 * d * d
    else:  # no expm1 outside libdevice: e^d - 1 - d loses bits near d = 0 (error ~1e-7, absolute)
        kl = tl.maximum(tl.exp(d) - 1.0 - d, 0.0)
    return kl


@jit
def _kl_kernel(logp_ptr, ref_ptr, out_ptr, n, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    logp = tl.load(logp_ptr + offs, mask=ok, other=0.0).to(tl.float32)   # read 2n, write n
    ref_logp = tl.load(ref_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, _kl(logp, ref_logp, KIND), mask=ok)


@jit
def _penalized_rewards_kernel(scores_ptr, logp_ptr, ref_ptr, mask_ptr, out_ptr, T, kl_coef,
                              KIND: tl.constexpr, BLOCK_T: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)                                # one program per row
    row = b * T
    # pass 1: the last real token of the row, -1 if there is none (reads the mask only)
    last = -1
    for start in range(0, T, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        real = tl.load(mask_ptr + row + t, mask=t < T, other=0) != 0
        last = tl.maximum(last, tl.max(tl.where(real, t, -1), axis=0))
    score = tl.load(scores_ptr + b).to(tl.float32)
    # pass 2: -kl_coef * kl on real tokens, the score at t == last (never matches when last = -1)
    for start in range(0, T, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        real = tl.load(mask_ptr + row + t, mask=t < T, other=0) != 0
        logp = tl.load(logp_ptr + row + t, mask=t < T, other=0.0).to(tl.float32)
        ref_logp = tl.load(ref_ptr + row + t, mask=t < T, other=0.0).to(tl.float32)
        r = tl.where(real, -kl_coef * _kl(logp, ref_logp, KIND), 0.0)
        r = tl.where(t == last, r + score, r)
        tl.store(out_ptr + row + t, r, mask=t < T)

# ----------------------------------------------------------------------------- launchers


def _flat_mask(mask):
    mask = mask.contiguous()
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def kl_estimate_triton(logp, ref_logp, kind="k1"):
    logp, ref_logp = logp.contiguous(), ref_logp.contiguous()
    out = torch.empty(logp.shape, dtype=torch.float32, device=logp.device)
    n = logp.numel()
    if n:
        BLOCK = 1024
        _kl_kernel[(triton.cdiv(n, BLOCK),)](logp, ref_logp, out, n, KIND=_KIND[kind], BLOCK=BLOCK)
    return out


def penalized_rewards_triton(scores, logp, ref_logp, mask, kl_coef, kind="k1"):
    B, T = logp.shape
    out = torch.empty((B, T), dtype=torch.float32, device=logp.device)   # every element written
    if B * T:
        block = min(BLOCK_T, triton.next_power_of_2(T))
        _penalized_rewards_kernel[(B,)](scores.contiguous(), logp.contiguous(), ref_logp.contiguous(),
                                        _flat_mask(mask), out, T, float(kl_coef),
                                        KIND=_KIND[kind], BLOCK_T=block)
    return out
