"""Per-token log-probabilities and entropy of a softmax policy, forward and backward.

PPO (Schulman et al. 2017) as InstructGPT uses it (Ouyang et al. 2022, eq. 2) needs, at every
step and for every response token, log pi(y_t | x, y_<t) under the policy (and under the frozen
SFT reference) and the policy's entropy, from logits z of shape (B,T,V) with V = 50k..128k:

    log p_t = z_t - logsumexp(z)                  H = logsumexp(z) - sum_j p_j z_j

with z = logits / temperature. Materialising softmax(z) in fp32 costs 4*N*V bytes (16 GB at
N = 32k tokens, V = 128k); the kernel never does. It reads the logits once with an online
max and sum-exp (Milakov & Gimelshein 2018), saves two floats per row (logsumexp, entropy),
and its backward recomputes p from those:

    d log p_t / dz_j = onehot(t)_j - p_j          d H / dz_j = -p_j (log p_j + H)

(times 1/temperature for the gradient with respect to the logits). All arithmetic is fp32
whatever the logits' dtype; outputs are fp32; the gradient has the logits' dtype.

Non-contiguous logits: the kernels take (B,T) strides, so a slice along T such as the usual
shift logits[:, :-1] is read in place; logits whose vocabulary dimension is not unit-stride
are first copied with .contiguous(). The gradient is always a new contiguous tensor.
Targets must lie in [0, V); the kernel returns NaN for one outside (the reference raises).
"""
from __future__ import annotations  # kernel signatures name tl.constexpr; triton may be absent

import torch

from . import jit, tl, triton

# ----------------------------------------------------------------------------- torch reference


def _log_softmax_fp32(logits, temperature):
    # log softmax(logits / T) in fp32, (..., V); autograd keeps this output, one (N,V) fp32 tensor.
    # At T = 1 log_softmax upcasts bf16/fp16 itself (on CUDA without an fp32 copy of the
    # logits); otherwise z = logits / T is an fp32 copy that lives only during the call.
    if temperature == 1.0:
        return torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    z = logits.float()                                               # the caller's own if fp32
    z = z / temperature if z is logits else z.div_(temperature)      # never write into theirs
    return torch.log_softmax(z, dim=-1)


def logprobs_ref(logits, targets, temperature=1.0):
    logp_all = _log_softmax_fp32(logits, temperature)                      # (B,T,V)
    return logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)   # (B,T)


def _entropy_from(logp_all):
    # H = -sum_j p_j log p_j. Where z_j = -inf, p_j = 0 and log p_j = -inf: the term is 0. Filling
    # log p with 0 there keeps 0 * -inf = NaN out of the forward and of the backward (a clamp to
    # the most negative float, as torch.distributions does, overflows once grad_H > 1).
    # Autograd keeps p and the filled log p as well: entropy costs two more (N,V) fp32 tensors.
    p = logp_all.exp()                                                        # (B,T,V)
    return -(p * logp_all.masked_fill(logp_all == float("-inf"), 0.0)).sum(-1)


def entropy_ref(logits, temperature=1.0):
    return _entropy_from(_log_softmax_fp32(logits, temperature))


def logprobs_and_entropy_ref(logits, targets, temperature=1.0):
    logp_all = _log_softmax_fp32(logits, temperature)                      # (B,T,V), shared
    logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return logp, _entropy_from(logp_all)

# ----------------------------------------------------------------------------- Triton kernels
# One program per token row (b, t); it walks the vocabulary in chunks of BLOCK_V. Row offsets are
# int64: N*V passes 2^31 at N = 16k tokens and V = 128k. Lanes past V load as -inf (a 0 there
# would add exp(0 - max) to the sum); every "x - max" is guarded so that a chunk, or a whole
# prefix, of -inf gives exp(-inf) = 0 and never -inf - (-inf) = NaN.

BLOCK_V = 4096  # vocabulary chunk; the tests shrink it to exercise many chunks on small V


@jit
def _fwd_kernel(x_ptr, targets_ptr, logp_ptr, entropy_ptr, lse_ptr,
                T, stride_b, stride_t, V, inv_temp, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // T) * stride_b + (row % T) * stride_t
    target = tl.load(targets_ptr + row)
    m = float("-inf")  # running max of z over the chunks read so far
    s = 0.0            # sum_j exp(z_j - m)
    w = 0.0            # sum_j exp(z_j - m) (z_j - m), <= 0; entropy without cancellation
    for start in range(0, V, BLOCK_V):                               # read N*V elements in all
        cols = start + tl.arange(0, BLOCK_V)
        # z = x * (1/T), fp32 from here on (may differ from torch's x / T in the last bit)
        z = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)      # all -inf so far: s = w = 0 stay
        alpha = tl.exp(m - m_ref)                                    # rescales the old sums
        shift = tl.where(m == float("-inf"), 0.0, m - m_ref)        # old (z - m) -> (z - m_new)
        e = tl.exp(z - m_ref)
        zc = tl.where(z == float("-inf"), 0.0, z - m_ref)
        w = alpha * (w + s * shift) + tl.sum(e * zc, axis=0)
        s = alpha * s + tl.sum(e, axis=0)
        m = m_new
    # an out-of-range target reads nothing and gives NaN
    ok = (target >= 0) & (target < V)
    z_t = tl.load(x_row + target, mask=ok, other=float("nan")).to(tl.float32) * inv_temp
    log_s = tl.log(s)
    tl.store(logp_ptr + row, (z_t - m) - log_s)                      # write 3N floats
    tl.store(entropy_ptr + row, log_s - w / s)                       # H = log s - w / s
    tl.store(lse_ptr + row, m + log_s)


@jit
def _bwd_kernel(x_ptr, targets_ptr, grad_logp_ptr, grad_entropy_ptr, lse_ptr, entropy_ptr, dx_ptr,
                T, stride_b, stride_t, V, inv_temp, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // T) * stride_b + (row % T) * stride_t
    dx_row = dx_ptr + row * V                                        # dx is contiguous (N,V)
    target = tl.load(targets_ptr + row)
    g_logp = tl.load(grad_logp_ptr + row)
    g_h = tl.load(grad_entropy_ptr + row)
    lse = tl.load(lse_ptr + row)
    h = tl.load(entropy_ptr + row)
    for start in range(0, V, BLOCK_V):                               # read N*V, write N*V
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_temp
        logp = z - lse                                               # log p_j, recomputed
        p = tl.exp(logp)
        # dlogp_t/dz_j = onehot_j - p_j ; dH/dz_j = -p_j (log p_j + H), 0 where p_j = 0
        d_logp = tl.where(cols == target, 1.0, 0.0) - p
        d_h = -p * tl.where(p > 0.0, logp + h, 0.0)
        dz = g_logp * d_logp + g_h * d_h
        tl.store(dx_row + cols, (dz * inv_temp).to(dx_ptr.dtype.element_ty), mask=cols < V)

# ----------------------------------------------------------------------------- launchers


def _rows(logits):
    # (..., V) -> (B', T', V) with unit stride along V, a view whenever possible. Logits sliced
    # along T (logits[:, :-1], the usual shift) are read in place; otherwise this copies.
    V = logits.shape[-1]
    x = logits.reshape(-1, logits.shape[-2], V)
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch_fwd(x, targets, temperature):
    B, T, V = x.shape
    N = B * T
    logp, entropy, lse = (torch.empty(N, dtype=torch.float32, device=x.device) for _ in range(3))
    block = min(BLOCK_V, triton.next_power_of_2(V))
    _fwd_kernel[(N,)](x, targets, logp, entropy, lse, T, x.stride(0), x.stride(1), V,
                      1.0 / temperature, BLOCK_V=block, num_warps=8 if block >= 2048 else 4)
    return logp, entropy, lse


def _launch_bwd(x, targets, grad_logp, grad_entropy, lse, entropy, temperature):
    B, T, V = x.shape
    dx = torch.empty((B * T, V), dtype=x.dtype, device=x.device)
    block = min(BLOCK_V, triton.next_power_of_2(V))
    _bwd_kernel[(B * T,)](x, targets, grad_logp, grad_entropy, lse, entropy, dx,
                          T, x.stride(0), x.stride(1), V, 1.0 / temperature,
                          BLOCK_V=block, num_warps=8 if block >= 2048 else 4)
    return dx


class _LogprobsAndEntropy(torch.autograd.Function):
    # Saves the logits (the caller holds them anyway) and 2N floats; never the (N,V) softmax.

    @staticmethod
    def forward(ctx, logits, targets, temperature):
        x = _rows(logits)                                            # (B',T',V)
        targets = targets.reshape(-1).contiguous()                   # (N,)
        logp, entropy, lse = _launch_fwd(x, targets, temperature)
        ctx.save_for_backward(x, targets, lse, entropy)
        ctx.temperature, ctx.shape = temperature, logits.shape
        out_shape = logits.shape[:-1]
        return logp.view(out_shape), entropy.view(out_shape)

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        x, targets, lse, entropy = ctx.saved_tensors
        # upstream grads may be expanded (stride 0) views, e.g. from .sum(): materialise them
        g_logp = grad_logp.float().reshape(-1).contiguous()
        g_h = grad_entropy.float().reshape(-1).contiguous()
        dx = _launch_bwd(x, targets, g_logp, g_h, lse, entropy, ctx.temperature)
        return dx.view(ctx.shape), None, None


def logprobs_and_entropy_triton(logits, targets, temperature=1.0):
    if logits.numel() == 0:  # nothing to launch; keep the graph so .backward() still works
        return logprobs_and_entropy_ref(logits, targets, temperature)
    return _LogprobsAndEntropy.apply(logits, targets, temperature)
