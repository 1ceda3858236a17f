"""Per-token log-probabilities and entropy straight from hidden states: the unembedding fused in.

PPO (Ouyang et al. 2022, eq. 2) needs, for every response token, log pi(y_t | x, y_<t) and
the policy's entropy. Computed as logits = hidden @ W^T and then kernels.logprob, the logits
(N, V) dominate memory: 4*N*V bytes in fp32 per copy, 0.57 GB at N = 16 x 176 tokens and
V = 50,257, and autograd keeps several. Liger-Kernel's fused linear cross-entropy and Cut
Cross-Entropy (Wijmans et al. 2024) compute a mean loss without them; this file does the same
for the two per-token outputs PPO needs. With h (N,C) hidden, W (V,C) unembedding, tau the
sampling temperature:

    z = h W^T / tau                  (N,V), never materialised: one (tokens x vocab) chunk at a time
    log p_t = z_t - lse(z)           lse(z) = log sum_j e^{z_j}, by an online max and sum-exp
    H = lse(z) - sum_j p_j z_j       = log s - w / s with s = sum_j e^{z_j - m}, w = sum_j e^{z_j - m} (z_j - m)

Autograd keeps h, W, the targets and two numbers per token (lse, H). The backward recomputes
each chunk of z and, from the upstream gradients g_logp and g_H of the two (N,) outputs,

    dz_j = g_logp (onehot(t)_j - p_j) + g_H (-p_j (log p_j + H))
    dh = (dz W) / tau                dW = (dz^T h) / tau

All arithmetic is fp32 or wider, whatever the input dtype (bf16 in: fp32 math); logp and H
are fp32; dh and dW have the dtypes of h and W. Under autocast the inputs are first cast as
torch.nn.functional.linear would cast them (to bf16 on CUDA), so this replaces lm_head()
exactly. Targets must lie in [0, V): the reference raises, the kernel returns NaN.
"""
from __future__ import annotations  # kernel signatures name tl.constexpr; triton may be absent

import torch

from . import INTERPRET, jit, tl, triton
from .logprob import logprobs_and_entropy_ref

# ----------------------------------------------------------------------------- torch reference


def linear_logprobs_unfused(hidden, weight, targets, temperature=1.0):
    """The plain path the fused one replaces: (N,V) logits, then kernels.logprob's reference."""
    return logprobs_and_entropy_ref(hidden @ weight.T, targets, temperature)


# Chunks of the reference: up to TOKEN_CHUNK tokens and as many vocabulary rows as keep a chunk
# of z near CHUNK_ELEMS elements (32 MB in fp32). Few, long token chunks keep the CPU matmuls
# efficient (a (V,C) x (C,n) product with n in the thousands runs as fast as the unfused one);
# at the demo's N = 1920 and V = 258 the whole vocabulary is one chunk and the loops add nothing.
TOKEN_CHUNK = 4096
CHUNK_ELEMS = 1 << 23


def _chunks(N, V):
    n_chunk = max(1, min(N, TOKEN_CHUNK))
    return n_chunk, max(1, min(V, CHUNK_ELEMS // n_chunk))


def _chunk_buffers(n_chunk, v_chunk, acc, device):
    # two flat buffers that every chunk reuses, rather than two new (n,v) tensors per chunk
    bufs = [torch.empty(n_chunk * v_chunk, dtype=acc, device=device) for _ in range(2)]
    return lambda i, n, v: bufs[i][:n * v].view(n, v)


def _acc_dtype(*tensors):
    """fp32, or float64 if an input is float64 (the tests' exact comparisons)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _forward_ref(h, w, targets, temperature):
    # h (N,C), w (V,C), targets (N,) -> log p(target), lse, H: three (N,) in the accumulation dtype
    N, V = h.shape[0], w.shape[0]
    acc = _acc_dtype(h, w)
    logp, lse, entropy = (torch.empty(N, dtype=acc, device=h.device) for _ in range(3))
    n_chunk, v_chunk = _chunks(N, V)
    buf = _chunk_buffers(n_chunk, v_chunk, acc, h.device)           # the largest temporaries
    for n0 in range(0, N, n_chunk):
        rows = slice(n0, n0 + n_chunk)
        hs, t = h[rows].to(acc) / temperature, targets[rows]         # (n,C), (n,)
        z_t = torch.empty(len(t), dtype=acc, device=h.device)
        for v0 in range(0, V, v_chunk):
            wv = w[v0:v0 + v_chunk].to(acc)                          # (v,C)
            z = torch.mm(hs, wv.T, out=buf(0, len(t), len(wv)))     # (n,v)
            here = ((t >= v0) & (t < v0 + len(wv))).nonzero().squeeze(1)
            z_t[here] = z[here, t[here] - v0]
            m_new = z.amax(1) if v0 == 0 else torch.maximum(m, z.amax(1))
            z -= m_new[:, None]                                      # z - m <= 0
            e = torch.exp(z, out=buf(1, *z.shape))                  # (n,v)
            s_new, w_new = e.sum(1), e.mul_(z).sum(1)                # sum e^{z - m}, sum e^{z - m} (z - m)
            if v0 == 0:
                s, w_sum = s_new, w_new
            else:  # rescale the old sums from the old max m to m_new (shift <= 0)
                shift = m - m_new
                alpha = shift.exp()
                w_sum = alpha * (w_sum + s * shift) + w_new
                s = alpha * s + s_new
            m = m_new
        log_s = s.log()                                              # s >= 1: the max adds e^0
        logp[rows] = (z_t - m) - log_s                               # both terms <= 0
        lse[rows] = m + log_s
        entropy[rows] = log_s - w_sum / s
    return logp, lse, entropy


def _backward_ref(h, w, targets, lse, entropy, g_logp, g_h, temperature):
    # -> dh (N,C), dW (V,C) in the accumulation dtype. g_h is None when the entropy has no
    # gradient; dz then drops its term (two passes over each chunk instead of four).
    N, V = h.shape[0], w.shape[0]
    acc = lse.dtype
    dh = torch.zeros(h.shape, dtype=acc, device=h.device)
    dw = torch.zeros(w.shape, dtype=acc, device=h.device)
    n_chunk, v_chunk = _chunks(N, V)
    buf = _chunk_buffers(n_chunk, v_chunk, acc, h.device)
    for n0 in range(0, N, n_chunk):
        rows = slice(n0, n0 + n_chunk)
        hs, t = h[rows].to(acc) / temperature, targets[rows]         # (n,C), (n,)
        gl, neg_lse = g_logp[rows, None].to(acc), -lse[rows, None]   # (n,1)
        if g_h is not None:
            gh = g_h[rows, None]
            c = gl + gh * entropy[rows, None]                        # g_logp + g_H H
        for v0 in range(0, V, v_chunk):
            wv = w[v0:v0 + v_chunk].to(acc)                          # (v,C)
            logp = torch.addmm(neg_lse, hs, wv.T, out=buf(0, len(t), len(wv)))   # (n,v) log p_j
            p = torch.exp(logp, out=buf(1, *logp.shape))
            # -dz = p (g_logp + g_H (log p + H)) - g_logp onehot(t)
            minus_dz = p.mul_(gl) if g_h is None else p.mul_(torch.addcmul(c, logp, gh, out=logp))
            here = ((t >= v0) & (t < v0 + len(wv))).nonzero().squeeze(1)
            minus_dz[here, t[here] - v0] -= gl[here, 0]
            dh[rows].addmm_(minus_dz, wv, alpha=-1)                  # (n,v) @ (v,C)
            dw[v0:v0 + v_chunk].addmm_(minus_dz.T, hs, alpha=-1)     # (v,n) @ (n,C), 1/tau in hs
    return dh.div_(temperature), dw


class _LinearLogprobs(torch.autograd.Function):
    """One Function for both paths: forward/backward are _forward_ref/_backward_ref or the
    Triton launchers below. Saves h, W, targets and 2 numbers per token; no (N,V) tensor."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, use_triton):
        with torch.autocast(hidden.device.type, enabled=False):
            h, t = _rows(hidden), targets.reshape(-1).contiguous()
            logp, lse, entropy = (_forward_triton if use_triton else _forward_ref)(h, weight, t, temperature)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.use_triton = temperature, use_triton
        ctx.set_materialize_grads(False)                             # an unused output: None
        shape = targets.shape
        return logp.float().view(shape), entropy.float().view(shape)

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None
        h, t = _rows(hidden), targets.reshape(-1).contiguous()
        # upstream grads may be expanded (stride 0) views, e.g. from .sum(): materialise them
        g_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.reshape(-1).to(lse.dtype).contiguous()
        g_h = None if grad_entropy is None else grad_entropy.reshape(-1).to(lse.dtype).contiguous()
        if g_h is not None and not ctx.use_triton and not g_h.any():
            g_h = None                     # (the reference only: on CUDA .any() would synchronise)
        with torch.autocast(hidden.device.type, enabled=False):
            backward = _backward_triton if ctx.use_triton else _backward_ref
            dh, dw = backward(h, weight, t, lse, entropy, g_logp, g_h, ctx.temperature)
        return dh.to(hidden.dtype).view(hidden.shape), dw.to(weight.dtype), None, None, None


def _rows(hidden):
    # (..., C) -> (N, C) with unit stride along C: a view when the layout allows, else a copy
    h = hidden.reshape(-1, hidden.shape[-1])
    return h if h.stride(-1) == 1 else h.contiguous()


def _check_targets_in_range(targets, V):
    if targets.numel() and (targets.min() < 0 or targets.max() >= V):
        raise IndexError(f"targets must lie in [0, V = {V}), got [{targets.min().item()}, "
                         f"{targets.max().item()}]")


def linear_logprobs_ref(hidden, weight, targets, temperature=1.0):
    _check_targets_in_range(targets, weight.shape[0])
    return _LinearLogprobs.apply(hidden, weight, targets, temperature, False)

# ----------------------------------------------------------------------------- Triton kernels
# Tiles of BLOCK_N tokens x BLOCK_V vocabulary rows; z of a tile is a tl.dot over C in steps of
# BLOCK_C, accumulated in fp32 (bf16 x bf16 on the tensor cores on CUDA). Offsets are int64: a
# row offset n*C or v*C passes 2^31 at V*C = 128k x 16k. Lanes past N, V or C load 0 and are
# masked out of every sum. Under TRITON_INTERPRET=1 (CI) bf16 arithmetic is wrong, so every
# load is cast to fp32 there (UPCAST); on CUDA only mixed or fp32/fp64 inputs are.

# Not tuned on a GPU (none was at hand): compiled for sm_90 with 8 warps, the bf16 kernels use
# wgmma and spill no registers; fp32 inputs (tl.dot in full fp32) take BLOCK_C = 32 to spill
# almost none. The tests shrink all three to 16, tl.dot's least.
BLOCK_N, BLOCK_V, BLOCK_C, NUM_WARPS = 64, 64, 64, 8
SCRATCH_SHARE = 0.025                   # the backward's fp32 scratch rows per (N + V): see below


@jit
def _logits_tile(h_ptr, w_ptr, rows, cols, N, V, C, stride_h, stride_w, inv_temp,
                 UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    # z[rows, cols] = h[rows] W[cols]^T / tau, (BLOCK_N, BLOCK_V) fp32; read (BN + BV) * C
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ks = c0 + tl.arange(0, BLOCK_C)
        hb = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :],
                     mask=(rows[:, None] < N) & (ks[None, :] < C), other=0.0)      # (BN, BC)
        wb = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None],
                     mask=(cols[None, :] < V) & (ks[:, None] < C), other=0.0)      # (BC, BV) = W^T
        if UPCAST:
            hb, wb = hb.to(tl.float32), wb.to(tl.float32)
        acc = tl.dot(hb, wb, acc, input_precision="ieee")
    return acc * inv_temp


@jit
def _fwd_kernel(h_ptr, w_ptr, targets_ptr, logp_ptr, lse_ptr, entropy_ptr, N, V, C,
                stride_h, stride_w, inv_temp, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    # one program per BLOCK_N tokens; it walks the whole vocabulary with an online max / sum-exp
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    target = tl.load(targets_ptr + rows, mask=rows < N, other=0)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)    # running max of z
    s = tl.zeros((BLOCK_N,), tl.float32)                   # sum_j e^{z_j - m}
    w = tl.zeros((BLOCK_N,), tl.float32)                   # sum_j e^{z_j - m} (z_j - m) <= 0
    z_t = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(0, V, BLOCK_V):                        # N*V*C multiply-adds in all
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        z = _logits_tile(h_ptr, w_ptr, rows, cols, N, V, C, stride_h, stride_w, inv_temp,
                         UPCAST, BLOCK_N, BLOCK_V, BLOCK_C)
        col_ok = (cols < V)[None, :]
        z_t += tl.sum(tl.where(cols[None, :] == target[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(tl.where(col_ok, z, float("-inf")), axis=1))  # finite
        zc = tl.where(col_ok, z - m_new[:, None], 0.0)
        e = tl.where(col_ok, tl.exp(zc), 0.0)
        alpha = tl.exp(m - m_new)                           # 0 on the first chunk (m = -inf)
        shift = tl.where(m == float("-inf"), 0.0, m - m_new)
        w = alpha * (w + s * shift) + tl.sum(e * zc, axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new
    log_s = tl.log(s)
    ok = (target >= 0) & (target < V)                      # else NaN: the reference raises
    tl.store(logp_ptr + rows, tl.where(ok, (z_t - m) - log_s, float("nan")), mask=rows < N)
    tl.store(lse_ptr + rows, m + log_s, mask=rows < N)     # write 3N floats
    tl.store(entropy_ptr + rows, log_s - w / s, mask=rows < N)


@jit
def _bwd_kernel(h_ptr, w_ptr, targets_ptr, g_logp_ptr, g_h_ptr, lse_ptr, entropy_ptr, dh_ptr, dw_ptr,
                N, V, C, stride_h, stride_w, col0, inv_temp, HAS_GH: tl.constexpr,
                UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                BLOCK_C: tl.constexpr):
    # one program per (BLOCK_N x BLOCK_V) tile: recompute z, form dz, and add its share of
    # dh = dz W / tau and dW = dz^T h / tau into the fp32 scratch dh (N,C), dw (V,C) with atomics
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok, col_ok = rows < N, cols < V
    z = _logits_tile(h_ptr, w_ptr, rows, cols, N, V, C, stride_h, stride_w, inv_temp,
                     UPCAST, BLOCK_N, BLOCK_V, BLOCK_C)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_logp_ptr + rows, mask=row_ok, other=0.0)[:, None]
    target = tl.load(targets_ptr + rows, mask=row_ok, other=-1)          # a global vocabulary id
    logp = z - lse[:, None]                                              # log p_j
    p = tl.exp(tl.where(row_ok[:, None] & col_ok[None, :], logp, float("-inf")))   # 0 off the edges
    # dz_j = g_logp (onehot_j - p_j) + g_H (-p_j (log p_j + H)), then / tau
    dz = tl.where(col0 + cols[None, :] == target[:, None], g, 0.0) - p * g
    if HAS_GH:
        g_h = tl.load(g_h_ptr + rows, mask=row_ok, other=0.0)
        h = tl.load(entropy_ptr + rows, mask=row_ok, other=0.0)
        dz -= p * (logp + h[:, None]) * g_h[:, None]
    dz = dz * inv_temp
    if not UPCAST:
        dz = dz.to(h_ptr.dtype.element_ty)   # bf16 x bf16 tensor-core dots, as a bf16 matmul would
    for c0 in range(0, C, BLOCK_C):                                      # 2 (BN + BV) C atomics
        ks = c0 + tl.arange(0, BLOCK_C)
        k_ok = (ks < C)[None, :]
        hb = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok, other=0.0)
        wb = tl.load(w_ptr + cols[:, None] * stride_w + ks[None, :], mask=col_ok[:, None] & k_ok, other=0.0)
        if UPCAST:
            hb, wb = hb.to(tl.float32), wb.to(tl.float32)
        tl.atomic_add(dh_ptr + rows[:, None] * C + ks[None, :], tl.dot(dz, wb, input_precision="ieee"),
                      mask=row_ok[:, None] & k_ok, sem="relaxed")        # (BN, BC) += (BN,BV)(BV,BC)
        tl.atomic_add(dw_ptr + cols[:, None] * C + ks[None, :],
                      tl.dot(tl.trans(dz), hb, input_precision="ieee"),
                      mask=col_ok[:, None] & k_ok, sem="relaxed")        # (BV, BC) += (BV,BN)(BN,BC)

# ----------------------------------------------------------------------------- launchers


def _config(h, w):
    # bf16 x bf16 (or fp16 x fp16) runs natively on CUDA; anything else, and the interpreter, in fp32
    upcast = INTERPRET or h.dtype != w.dtype or h.dtype not in (torch.bfloat16, torch.float16)
    return dict(UPCAST=upcast, BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_C=min(BLOCK_C, 32) if upcast else BLOCK_C,
                num_warps=NUM_WARPS)


def _forward_triton(h, w, targets, temperature):
    N, C = h.shape
    V = w.shape[0]
    w = w if w.stride(-1) == 1 else w.contiguous()
    logp, lse, entropy = (torch.empty(N, dtype=torch.float32, device=h.device) for _ in range(3))
    _fwd_kernel[(triton.cdiv(N, BLOCK_N),)](
        h, w, targets, logp, lse, entropy, N, V, C, h.stride(0), w.stride(0), 1.0 / temperature,
        **_config(h, w))
    return logp, lse, entropy


def _backward_triton(h, w, targets, lse, entropy, g_logp, g_h, temperature):
    # The atomics need fp32 accumulators, but an fp32 copy of dh (N,C) and dW (V,C) would double
    # the memory of bf16 gradients. So the (N,V) plane is walked in super-chunks of R tokens x R
    # vocabulary rows, R = SCRATCH_SHARE (N + V): two fp32 scratch buffers of R x C, 5 % of
    # h + W + dh + dW in bf16. dh is rounded to its dtype once; dW once per token super-chunk.
    # The atomics make the gradient's last bits vary from run to run (the order of the adds).
    N, C = h.shape
    V = w.shape[0]
    w = w if w.stride(-1) == 1 else w.contiguous()
    tile = max(BLOCK_N, BLOCK_V)
    R = tile * triton.cdiv(max(tile, int(SCRATCH_SHARE * (N + V))), tile)
    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    dw = torch.zeros(w.shape, dtype=w.dtype, device=w.device)
    dh32 = torch.empty(min(R, N), C, dtype=torch.float32, device=h.device)
    dw32 = torch.empty(min(R, V), C, dtype=torch.float32, device=h.device)
    for n0 in range(0, N, R):
        n = min(R, N - n0)
        acc_h = dh32[:n].zero_()
        for v0 in range(0, V, R):
            v = min(R, V - v0)
            acc_w = dw32[:v].zero_()
            _bwd_kernel[(triton.cdiv(n, BLOCK_N), triton.cdiv(v, BLOCK_V))](
                h[n0:], w[v0:], targets[n0:], g_logp[n0:], (g_logp if g_h is None else g_h)[n0:],
                lse[n0:], entropy[n0:], acc_h, acc_w, n, v, C, h.stride(0), w.stride(0), v0,
                1.0 / temperature, HAS_GH=g_h is not None, **_config(h, w))
            dw[v0:v0 + v] += acc_w
        dh[n0:n0 + n] = acc_h
    return dh, dw


def linear_logprobs_triton(hidden, weight, targets, temperature=1.0):
    if targets.numel() == 0:  # nothing to launch; the reference keeps the graph for .backward()
        return linear_logprobs_ref(hidden, weight, targets, temperature)
    return _LinearLogprobs.apply(hidden, weight, targets, temperature, True)
