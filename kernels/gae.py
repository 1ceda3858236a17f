"""Generalized advantage estimation (Schulman et al. 2016, "High-dimensional continuous control
using generalized advantage estimation", eq. 16) as a reverse scan over each response.

The `lastgaelam` loop of openai/lm-human-preferences (train_policy.py), per row b:

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1}
    returns_t = A_t + V_t

Masking: tokens where mask == 0 are not part of the episode. The episode ends after the last
real token, so V_{t+1} = A_{t+1} = 0 there; more generally any masked-out position acts as
the end of an episode (for a prefix mask, the only case the pipeline produces, this is the
same thing). Advantages and returns are 0 where mask == 0, and rewards/values there are
replaced by 0 before use (`where`, not a product), so garbage in them (NaN, 1e30) never leaks.
No autograd: advantages are targets. Outputs are float32.
"""
from __future__ import annotations  # kernel signatures name tl.constexpr; triton may be absent

import torch

from . import jit, tl, triton

# ----------------------------------------------------------------------------- torch reference


def gae_ref(rewards, values, mask, gamma, lam):
    real = mask != 0                                                 # (B,T) bool
    r = torch.where(real, rewards.float(), 0.0)                      # (B,T)
    v = torch.where(real, values.float(), 0.0)
    B, T = r.shape
    advantages = torch.zeros_like(r)
    lastgaelam = r.new_zeros(B)                                      # A_{t+1}
    nextvalue = r.new_zeros(B)                                       # V_{t+1}
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * nextvalue - v[:, t]
        lastgaelam = torch.where(real[:, t], delta + gamma * lam * lastgaelam, 0.0)
        advantages[:, t] = lastgaelam
        nextvalue = v[:, t]                                          # 0 where masked: episode end
    returns = torch.where(real, advantages + v, 0.0)
    return advantages, returns

# ----------------------------------------------------------------------------- Triton kernel
# BLOCK_B rows per program, each program walks t = T-1 .. 0 carrying (A_{t+1}, V_{t+1}) for its
# rows in registers. Reads 3BT elements, writes 2BT; the time is T dependent steps.

BLOCK_B = 32  # rows per program; the tests shrink it


@jit
def _gae_kernel(rewards_ptr, values_ptr, mask_ptr, adv_ptr, ret_ptr, B, T, gamma, lam,
                BLOCK_B: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = rows < B
    base = rows.to(tl.int64) * T                                     # (BLOCK_B,) row offsets
    lastgaelam = tl.zeros([BLOCK_B], dtype=tl.float32)
    nextvalue = tl.zeros([BLOCK_B], dtype=tl.float32)
    for i in range(0, T):
        t = T - 1 - i
        real = tl.load(mask_ptr + base + t, mask=ok, other=0) != 0
        r = tl.where(real, tl.load(rewards_ptr + base + t, mask=ok, other=0.0).to(tl.float32), 0.0)
        v = tl.where(real, tl.load(values_ptr + base + t, mask=ok, other=0.0).to(tl.float32), 0.0)
        delta = r + gamma * nextvalue - v
        lastgaelam = tl.where(real, delta + gamma * lam * lastgaelam, 0.0)
        nextvalue = v
        tl.store(adv_ptr + base + t, lastgaelam, mask=ok)
        tl.store(ret_ptr + base + t, tl.where(real, lastgaelam + v, 0.0), mask=ok)


def gae_triton(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    advantages = torch.empty((B, T), dtype=torch.float32, device=rewards.device)
    returns = torch.empty_like(advantages)
    if B * T:
        mask = mask.contiguous()
        mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
        _gae_kernel[(triton.cdiv(B, BLOCK_B),)](rewards.contiguous(), values.contiguous(), mask,
                                                advantages, returns, B, T, float(gamma), float(lam),
                                                BLOCK_B=BLOCK_B, num_warps=1)
    return advantages, returns
