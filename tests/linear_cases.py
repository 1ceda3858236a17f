"""Cases shared by the tests of kernels.linear_logprobs: the reference (tests/test_linear_logprob.py)
and the Triton kernels under the interpreter (tests/triton/test_triton_linear_logprob.py).

Ground truth is the unfused path in float64: z = h W^T / tau, log_softmax, gather, entropy,
autograd. Error bounds, with u the unit roundoff of the arithmetic (2^-24 for fp32 and bf16
inputs, which fp32 holds exactly; 2^-53 for float64 inputs):

    delta = (C + 2) u A            |z - z_exact|, any summation order: A = max (|h| |W|^T) / tau
    logp:   2 delta + 16 u S       z_t and lse each move by <= delta; 16 u S is the log-softmax's
                                   own rounding, S = 1 + max|z| + log V (as tests/test_kernels.py)
    H:      (2 log V + 1) delta + 16 u S    H moves by sum_j p_j |log p_j + H| <= 2 log V per unit of z
    dh:     (eps + (V + 2) u) Mh   eps = 2 delta + err(H) + 16 u S bounds the error of log p_j and
    dW:     (eps + (N + 2) u) Mw   H inside dz; Mh = P |W| / tau and Mw = P^T |h| / tau, with
                                   P = p (|g_logp| + |g_H| (|log p + H| + 2)) + |g_logp| onehot >= |dz|
                                   elementwise, are the sizes of the sums that make dh and dW

In fp32, a p_j below 2^-126 is subnormal and exact only to 2^-149: both gradient bounds have
an absolute floor of 2^-140 x (1 + max|g|) S (N + V) max(|h|, |W|) / tau, which matters only there.
The dz part is first order in eps; the matmul parts are rigorous (gamma_k <= k u) for any
summation order, the 16 u S parts are measured as in tests/test_kernels.py. Over 150 random
cases (C <= 60, V <= 1000, |z| <= ~200, several chunkings) fp32 errors reached 7 % of these
bounds on the reference and 4 % on the Triton interpreter; a bf16 gradient's rounding reached
98 % of its 2^-8 (it is the rounding itself, bounded exactly). Outputs logp and H are
fp32, so float64 inputs add one rounding, 2^-24 relative. A bf16 gradient is rounded to nearest
once per accumulation into it: 2^-8 of the size of the sum per rounding (2^-11 for fp16).
"""
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROUNDING = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 0.0, torch.float64: 0.0}


def make_case(seed, shape, C, V, dtype=torch.float32, std=1.0):
    """hidden (*shape, C) ~ N(0, std^2), weight (V, C) ~ N(0, 1/C) (logits ~ N(0, std^2)), targets."""
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*shape, C, generator=g) * std).to(dtype)
    weight = (torch.randn(V, C, generator=g) / math.sqrt(C)).to(dtype)
    targets = torch.randint(0, V, shape, generator=g)
    return hidden, weight, targets


def truth(hidden, weight, targets, temperature, g_logp, g_entropy):
    """float64 (logp, H, dh, dW) of the unfused path and the bounds above for them."""
    C, V = hidden.shape[-1], weight.shape[0]
    h = hidden.detach().double().reshape(-1, C).requires_grad_()
    w = weight.detach().double().requires_grad_()
    t, g, gh = targets.reshape(-1), g_logp.double().reshape(-1, 1), g_entropy.double().reshape(-1, 1)
    z = h @ w.T / temperature                                               # (N,V)
    logp_all = torch.log_softmax(z, -1)
    p = logp_all.exp()
    logp, entropy = logp_all.gather(1, t[:, None])[:, 0], -(p * logp_all).sum(-1)
    dh, dw = torch.autograd.grad((g[:, 0] * logp + gh[:, 0] * entropy).sum(), (h, w))

    u = 2.0 ** -53 if torch.float64 in (hidden.dtype, weight.dtype) else 2.0 ** -24
    with torch.no_grad():
        N, log_v = h.shape[0], math.log(V)
        A = (h.abs() @ w.abs().T).max().item() / temperature if N else 0.0
        S = 1.0 + (z.abs().max().item() if N else 0.0) + log_v
        delta = (C + 2) * u * A
        err_h = (2 * log_v + 1) * delta + 16 * u * S
        eps = 2 * delta + err_h + 16 * u * S
        onehot = torch.nn.functional.one_hot(t, V).double()
        P = p * (g.abs() + gh.abs() * ((logp_all + entropy[:, None]).abs() + 2)) + g.abs() * onehot
        Mh, Mw = P @ w.abs() / temperature, P.T @ h.abs() / temperature
        # p_j below fp32's smallest normal (2^-126) is subnormal and keeps only its absolute
        # precision, 2^-149 per rounding: a floor far below any number that is not underflowed
        tiny = 2.0 ** -140 if u == 2.0 ** -24 else 0.0
        G = max(g.abs().max().item(), gh.abs().max().item()) if N else 0.0
        floor = tiny * (1 + G) * S * (N + V) * max(h.abs().max().item() if N else 0.0, w.abs().max().item()) / temperature
        bounds = (2 * delta + 16 * u * S, err_h, (eps + (V + 2) * u) * Mh + floor, (eps + (N + 2) * u) * Mw + floor)
    shape = targets.shape
    bounds = (bounds[0], bounds[1], bounds[2].view(hidden.shape), bounds[3])
    return ((logp.detach().view(shape), entropy.detach().view(shape), dh.view(hidden.shape), dw), bounds,
            (Mh.view(hidden.shape), Mw))


def assert_within(name, got, want, bound):
    err = (got.double() - want).abs()
    bad = err > bound
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {err.numel()} beyond the bound; worst error "
                           f"{err.max().item():.3g}, worst error / bound {(err / bound).max().item():.3g}")


def check_linear(fn, hidden, weight, targets, temperature=1.0, seed=0, entropy_grad=True, dw_roundings=1):
    """fn(hidden, weight, targets, tau) -> (logp, H): forward and both gradients against float64
    for random upstream gradients (g_H = 0 and unused when entropy_grad is False). Returns
    (logp, H, dh, dW). dw_roundings: how many times dW is rounded to its dtype."""
    g = torch.Generator().manual_seed(seed)
    g_logp = torch.randn(targets.shape, generator=g)
    g_entropy = torch.randn(targets.shape, generator=g) if entropy_grad else torch.zeros(targets.shape)
    want, bounds, (Mh, Mw) = truth(hidden, weight, targets, temperature, g_logp, g_entropy)
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    logp, entropy = fn(h, w, targets, temperature)
    assert logp.dtype == entropy.dtype == torch.float32 and logp.shape == entropy.shape == targets.shape
    loss = (g_logp * logp).sum() + ((g_entropy * entropy).sum() if entropy_grad else 0.0)
    dh, dw = torch.autograd.grad(loss, (h, w))
    assert dh.dtype == hidden.dtype and dh.shape == hidden.shape
    assert dw.dtype == weight.dtype and dw.shape == weight.shape
    out32 = 2.0 ** -24                                        # logp, H are rounded to fp32
    assert_within("logp", logp, want[0], bounds[0] + out32 * want[0].abs())
    assert_within("entropy", entropy, want[1], bounds[1] + out32 * want[1].abs())
    assert_within("dh", dh, want[2], bounds[2] + ROUNDING[hidden.dtype] * Mh)
    assert_within("dW", dw, want[3], bounds[3] + dw_roundings * ROUNDING[weight.dtype] * Mw)
    return logp, entropy, dh, dw


class LargestAlloc(TorchDispatchMode):
    """Records the largest storage, in bytes, that any op returns (views report the storage they
    look into: a slice of the caller's weight counts as the whole parameter)."""

    def __init__(self):
        super().__init__()
        self.nbytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.nbytes:
                self.nbytes, self.op = t.untyped_storage().nbytes(), str(func)
        return out


def largest_alloc(fn, hidden, weight, targets):
    """(bytes, op) of the largest storage made by fn's forward and backward of logp + H."""
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    with LargestAlloc() as probe:
        logp, entropy = fn(h, w, targets, 1.0)
        torch.autograd.grad((logp + entropy).sum(), (h, w))
    return probe.nbytes, probe.op
