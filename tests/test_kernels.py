"""The torch references in kernels/ against float64 ground truth, and the dispatch.

The Triton kernels are checked against these references under the Triton interpreter in
tests/triton/ (a separate pytest run with TRITON_INTERPRET=1).

Tolerances. Everything is computed in fp32 from values that float64 holds exactly (bf16 and
fp16 logits included), so the error scale is fp32's unit roundoff u = 2^-24 times the size of
the numbers involved: z = logits / T, logsumexp(z) and H <= log V. Measured over a few hundred
random cases (V up to 300, |z| up to ~3000, T in [0.3, 2.3]) the worst forward error was about
4 u (1 + max|z| + log V) and the worst gradient error 0.3 u (1 + max|z| + log V) max|g| / T;
the tolerances below allow 16 u and 8 u of those. A gradient in bf16/fp16 (it has the logits'
dtype) is also rounded once to nearest: relative 2^-8 (bf16) or 2^-11 (fp16).
"""
import math
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels.gae import gae_ref
from kernels.kl import kl_estimate_ref, penalized_rewards_ref
from kernels.logprob import entropy_ref, logprobs_and_entropy_ref, logprobs_ref
from tests.kernel_cases import check_empty, gae_atol, gae_case, plain_gae

U = 2.0 ** -24                                    # fp32 unit roundoff
GRAD_RTOL = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
SETTINGS = settings(max_examples=50, deadline=None)


@pytest.fixture(autouse=True)
def _default_dispatch(monkeypatch):
    monkeypatch.delenv("NANOINSTRUCT_KERNELS", raising=False)

# ----------------------------------------------------------------------------- float64 truth


def truth(logits, targets, temperature=1.0, g_logp=None, g_entropy=None):
    """float64 (log p(target), entropy, d(sum g_logp logp + g_entropy H)/d logits)."""
    x = logits.detach().double().requires_grad_()
    logp_all = torch.log_softmax(x / temperature, -1)
    p = logp_all.exp()
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
    g_logp = torch.ones_like(logp) if g_logp is None else g_logp.double()
    g_entropy = torch.ones_like(logp) if g_entropy is None else g_entropy.double()
    grad, = torch.autograd.grad((g_logp * logp + g_entropy * entropy).sum(), x)
    return logp.detach(), entropy.detach(), grad


def scale(logits, temperature):
    z = logits.double() / temperature
    finite = z[z.isfinite()]
    return 1.0 + (finite.abs().max().item() if finite.numel() else 0.0) + math.log(logits.shape[-1])


def check_logprob(fn, logits, targets, temperature=1.0, seed=0):
    """fn(logits, targets, T) -> (logp, entropy); compares forward and gradient with float64
    for random upstream gradients of both outputs."""
    g = torch.Generator().manual_seed(seed)
    g_logp, g_entropy = torch.randn(targets.shape, generator=g), torch.randn(targets.shape, generator=g)
    logp64, h64, grad64 = truth(logits, targets, temperature, g_logp, g_entropy)
    x = logits.detach().clone().requires_grad_()
    logp, h = fn(x, targets, temperature)
    assert logp.dtype == h.dtype == torch.float32 and logp.shape == h.shape == targets.shape
    grad, = torch.autograd.grad((g_logp * logp + g_entropy * h).sum(), x)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    s = scale(logits, temperature)
    atol = 16 * U * s
    torch.testing.assert_close(logp.double(), logp64, atol=atol, rtol=0)
    torch.testing.assert_close(h.double(), h64, atol=atol, rtol=0)
    g_atol = 8 * U * s * max(g_logp.abs().max().item(), g_entropy.abs().max().item()) / temperature
    torch.testing.assert_close(grad.double(), grad64, atol=g_atol, rtol=GRAD_RTOL[logits.dtype])
    return logp, h, grad


def make_logits(seed, shape, std, dtype=torch.float32, tail=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * std
    if tail:
        x[..., -tail:] = float("-inf")            # a masked vocabulary tail
    return x.to(dtype)

# ----------------------------------------------------------------------------- log-probs, entropy


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 3), T=st.integers(1, 4), V=st.integers(1, 300),
       std=st.floats(0.1, 300.0), temperature=st.floats(0.3, 3.0),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), tail=st.booleans())
def test_logprobs_and_entropy_property(seed, B, T, V, std, temperature, dtype, tail):
    if dtype == torch.float16:
        std = min(std, 100.0)                     # keep the fp16 logits finite
    n_tail = V // 2 if tail else 0
    logits = make_logits(seed, (B, T, V), std, dtype, n_tail)
    targets = torch.randint(0, V - n_tail, (B, T), generator=torch.Generator().manual_seed(seed))
    logp, h, _ = check_logprob(logprobs_and_entropy_ref, logits, targets, temperature, seed)
    assert (logp <= 0).all()                                  # a log-probability
    tol = 16 * U * scale(logits, temperature)
    assert (h >= -tol).all() and (h <= math.log(V - n_tail) + tol).all()


@pytest.mark.parametrize("V", [1, 7, 259, 4099])
def test_odd_vocab_sizes(V):
    logits = make_logits(V, (2, 3, V), 4.0)
    targets = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(V))
    logp, h, grad = check_logprob(logprobs_and_entropy_ref, logits, targets, 0.8)
    if V == 1:                                                # one token: certain, no entropy
        assert (logp == 0).all() and (h.abs() <= 1e-7).all() and (grad == 0).all()


@pytest.mark.parametrize("temperature", [0.25, 1.0, 1.7])
def test_temperature(temperature):
    logits = make_logits(1, (2, 5, 97), 3.0)
    targets = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    logp, h, _ = check_logprob(logprobs_and_entropy_ref, logits, targets, temperature)
    # temperature T is softmax(z / T): the same as dividing the logits first at T = 1
    logp1, h1 = logprobs_and_entropy_ref(logits / temperature, targets, 1.0)
    torch.testing.assert_close(logp, logp1, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h1, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_neg_inf_vocab_tail(dtype):
    # a padded vocabulary (50257 -> 50304) with -inf logits: the same answer as the unpadded one
    logits = make_logits(2, (2, 3, 64), 5.0, dtype, tail=24)
    targets = torch.randint(0, 40, (2, 3), generator=torch.Generator().manual_seed(2))
    logp, h, grad = check_logprob(logprobs_and_entropy_ref, logits, targets, 1.3)
    logp40, h40 = logprobs_and_entropy_ref(logits[..., :40], targets, 1.3)
    assert torch.equal(logp, logp40) and torch.allclose(h, h40, atol=1e-6, rtol=0)
    assert (grad[..., 40:] == 0).all() and grad.isfinite().all()


def test_huge_logits():
    logits = make_logits(3, (2, 4, 300), 1.0)
    logits[0] *= 1e4
    logits[1, :, ::2] = 1e4                                    # ties at the max
    logits[1, :, 1::2] = -1e4
    targets = torch.randint(0, 300, (2, 4), generator=torch.Generator().manual_seed(3))
    logp, h, grad = check_logprob(logprobs_and_entropy_ref, logits, targets)
    assert logp.isfinite().all() and h.isfinite().all() and grad.isfinite().all()
    torch.testing.assert_close(h[1], torch.full((4,), math.log(150.0)), atol=1e-5, rtol=0)


def test_public_functions_agree_and_are_differentiable():
    logits = make_logits(4, (3, 2, 33), 2.0).requires_grad_()
    targets = torch.randint(0, 33, (3, 2), generator=torch.Generator().manual_seed(4))
    logp, h = kernels.token_logprobs_and_entropy(logits, targets, 0.9)
    assert torch.equal(kernels.token_logprobs(logits, targets, 0.9), logp)
    assert torch.equal(kernels.token_entropy(logits, 0.9), h)
    for out in (kernels.token_logprobs(logits, targets), kernels.token_entropy(logits)):
        grad, = torch.autograd.grad(out.sum(), logits)
        assert grad.abs().sum() > 0
    # and the references equal the combined one
    assert torch.equal(logprobs_ref(logits, targets, 0.9), logp)
    assert torch.equal(entropy_ref(logits, 0.9), h)


def saved_bytes(fn, logits, *args):
    """Bytes autograd keeps for the backward of fn(logits, ...), not counting the logits' own."""
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() != logits.untyped_storage().data_ptr():
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(logits, *args)
    return sum(saved.values())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reference_memory(temperature):
    # log-probs keep log_softmax's fp32 output and nothing else of size N*V; entropy adds p, the
    # filled log p and its bool mask. (The Triton path keeps none: tests/triton.)
    N, V = 6, 1000
    logits = make_logits(7, (2, 3, V), 2.0, torch.bfloat16).requires_grad_()
    targets = torch.zeros(2, 3, dtype=torch.long)
    assert saved_bytes(logprobs_ref, logits, targets, temperature) <= 4 * N * V + 64 * N
    assert saved_bytes(logprobs_and_entropy_ref, logits, targets, temperature) <= 13 * N * V + 64 * N


def test_non_contiguous_logits():
    base = make_logits(5, (2, 6, 40), 2.0)
    logits = base[:, :-1]                                     # the usual shift: not contiguous
    targets = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(5))
    check_logprob(kernels.token_logprobs_and_entropy, logits, targets, 1.0)


def test_backward_equations():
    # the gradients the Triton backward implements, against float64 autograd:
    #   d logp_t / dx = (onehot(t) - p) / T        d H / dx = -p (log p + H) / T
    x = make_logits(6, (5, 23), 3.0).double()
    targets = torch.randint(0, 23, (5,), generator=torch.Generator().manual_seed(6))
    T = 0.7
    logp_all = torch.log_softmax(x / T, -1)
    p, h = logp_all.exp(), -(logp_all.exp() * logp_all).sum(-1, keepdim=True)
    onehot = torch.nn.functional.one_hot(targets, 23).double()
    _, _, g_logp = truth(x, targets, T, torch.ones(5), torch.zeros(5))
    _, _, g_h = truth(x, targets, T, torch.zeros(5), torch.ones(5))
    torch.testing.assert_close(g_logp, (onehot - p) / T, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_h, -p * (logp_all + h) / T, atol=1e-12, rtol=0)
    # and the float64 formula behind truth() against finite differences
    def naive(y):
        logp_all = torch.log_softmax(y / T, -1)
        return logp_all.gather(-1, targets[:2, None] % 7), -(logp_all.exp() * logp_all).sum(-1)
    assert torch.autograd.gradcheck(naive, (x[:2, :7].clone().requires_grad_(),))

# ----------------------------------------------------------------------------- KL


def kl64(logp, ref_logp, kind):
    d = ref_logp.double() - logp.double()
    return {"k1": -d, "k2": d * d / 2, "k3": torch.expm1(d) - d}[kind]


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), spread=st.floats(1e-6, 5.0), kind=st.sampled_from(["k1", "k2", "k3"]))
def test_kl_estimate_property(seed, spread, kind):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(4, 17, generator=g) * 10
    ref_logp = logp + torch.randn(4, 17, generator=g) * spread
    kl = kl_estimate_ref(logp, ref_logp, kind)
    assert kl.dtype == torch.float32
    truth64 = kl64(logp, ref_logp, kind)
    # fp32 inputs are exact; d = ref - logp is rounded once (u|d|, which k3 amplifies by
    # e^d - 1), then a few roundings of d^2 or of e^d, 1 and d
    d = (ref_logp - logp).double()
    atol = {"k1": U * d.abs(), "k2": 4 * U * d * d,
            "k3": 4 * U * (d.exp() * (1 + d.abs()) + 1 + d.abs())}[kind]
    assert ((kl.double() - truth64).abs() <= atol).all()
    if kind != "k1":
        assert (kl >= 0).all()                                # k2 and k3 are non-negative


def test_k3_is_nonnegative_near_zero():
    # d = ref - logp near 0, where e^d - 1 - d cancels (e^d rounds to 1 for |d| < 6e-8)
    d = torch.cat([torch.logspace(-12, -2, 500), -torch.logspace(-12, -2, 500)])
    k3 = kl_estimate_ref(torch.zeros(1000), d, "k3")
    assert (k3 >= 0).all()
    assert ((k3.double() - kl64(torch.zeros(1000), d, "k3")).abs() <= 4 * U * d.double().abs()).all()


def plain_rewards(scores, logp, ref_logp, mask, kl_coef, kind):
    out = torch.zeros(logp.shape, dtype=torch.float64)
    kl = kl64(logp, ref_logp, kind)
    for b in range(logp.shape[0]):
        last = None
        for t in range(logp.shape[1]):
            if mask[b, t]:
                out[b, t] = -kl_coef * kl[b, t]
                last = t
        if last is not None:
            out[b, last] += scores[b].double()
    return out


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_penalized_rewards(mask_dtype, kind):
    g = torch.Generator().manual_seed(7)
    B, T = 5, 9
    logp, ref_logp = -torch.rand(B, T, generator=g) * 5, -torch.rand(B, T, generator=g) * 5
    lengths = torch.tensor([0, 1, 4, 8, 9])                   # empty, ..., full
    mask = (torch.arange(T)[None] < lengths[:, None]).to(mask_dtype)
    scores = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    r = penalized_rewards_ref(scores, logp, ref_logp, mask, 0.1, kind)
    torch.testing.assert_close(r.double(), plain_rewards(scores, logp, ref_logp, mask, 0.1, kind),
                               atol=1e-5, rtol=1e-6)
    # the score lands on the last real token (EOS), not one past it
    no_kl = penalized_rewards_ref(scores, logp, ref_logp, mask, 0.0, kind)
    for b, n in enumerate(lengths.tolist()):
        expected = torch.zeros(T)
        if n:
            expected[n - 1] = scores[b]
        assert torch.equal(no_kl[b], expected), (b, no_kl[b])


def test_penalized_rewards_garbage_and_holes():
    # masked-out log-probs may hold anything (pad tokens): nothing leaks into the rewards
    nan, inf = float("nan"), float("inf")
    logp = torch.tensor([[-1.0, nan, -2.0, -inf], [nan, nan, nan, nan]])
    ref_logp = torch.tensor([[-1.5, -1.0, -1.0, inf], [-1.0, -1.0, -1.0, -1.0]])
    scores = torch.tensor([3.0, nan])                         # the empty row's score is never used
    # the mask need not be a prefix: the score goes to the last real token all the same
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    r = penalized_rewards_ref(scores, logp, ref_logp, mask, 0.5, "k1")
    # k1 = logp - ref: 0.5 at t=0, -1 at t=2; rewards -0.5 k1, plus the score at t=2
    assert torch.equal(r, torch.tensor([[-0.25, 0.0, 0.5 + 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    for kind in ("k2", "k3"):
        r = penalized_rewards_ref(scores, logp, ref_logp, mask.bool(), 0.5, kind)
        assert r.isfinite().all() and (r[:, [1, 3]] == 0).all() and (r[1] == 0).all()


# ----------------------------------------------------------------------------- GAE


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(2, 6), T=st.integers(1, 40),
       gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0), garbage=st.booleans())
def test_gae_matches_the_plain_loop(seed, B, T, gamma, lam, garbage):
    rewards, values, mask, lengths = gae_case(seed, B, T, garbage)
    adv, ret = gae_ref(rewards, values, mask.float(), gamma, lam)
    adv64, ret64 = plain_gae(rewards, values, lengths, gamma, lam)
    assert adv.dtype == ret.dtype == torch.float32
    atol = gae_atol(rewards, values, mask)
    assert ((adv.double() - adv64).abs() <= atol).all() and ((ret.double() - ret64).abs() <= atol).all()
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_lambda_zero_is_the_td_residual():
    rewards, values, mask, lengths = gae_case(8, 4, 12)
    adv, _ = gae_ref(rewards, values, mask, 0.9, 0.0)
    v = torch.where(mask, values, 0.0)
    next_v = torch.cat([v[:, 1:], torch.zeros(4, 1)], 1)      # 0 after the last real token
    td = torch.where(mask, rewards + 0.9 * next_v - v, 0.0)
    torch.testing.assert_close(adv, td, atol=1e-6, rtol=0)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards, values, mask, lengths = gae_case(9, 4, 12, garbage=True)
    adv, ret = gae_ref(rewards, values, mask, 1.0, 1.0)
    r = torch.where(mask, rewards, 0.0)
    to_go = r.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, torch.where(mask, to_go - values, 0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(ret, torch.where(mask, to_go, 0.0), atol=1e-5, rtol=0)


def test_gae_masked_positions_end_episodes():
    # left padding gives the right-aligned answer; a hole splits a row into two episodes
    g = torch.Generator().manual_seed(11)
    rewards, values = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    left = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    adv, ret = gae_ref(rewards, values, left, 0.9, 0.8)
    adv5, ret5 = gae_ref(rewards[:, 3:], values[:, 3:], torch.ones(1, 5), 0.9, 0.8)
    assert torch.equal(adv[:, 3:], adv5) and torch.equal(ret[:, 3:], ret5) and (adv[:, :3] == 0).all()
    hole = torch.tensor([[1, 1, 1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    adv, _ = gae_ref(rewards, values, hole, 0.9, 0.8)
    adv_a, _ = gae_ref(rewards[:, :3], values[:, :3], torch.ones(1, 3), 0.9, 0.8)
    adv_b, _ = gae_ref(rewards[:, 4:], values[:, 4:], torch.ones(1, 4), 0.9, 0.8)
    assert torch.equal(adv[:, :3], adv_a) and torch.equal(adv[:, 4:], adv_b) and adv[0, 3] == 0


def test_gae_garbage_does_not_leak():
    rewards, values, mask, _ = gae_case(10, 5, 16)
    dirty_r, dirty_v, _, _ = gae_case(10, 5, 16, garbage=True)
    assert torch.equal(torch.stack(gae_ref(dirty_r, dirty_v, mask, 0.99, 0.95)),
                       torch.stack(gae_ref(rewards, values, mask, 0.99, 0.95)))

# ----------------------------------------------------------------------------- dispatch


def test_dispatch_env_var(monkeypatch):
    cpu = types.SimpleNamespace(is_cuda=False)
    cuda = types.SimpleNamespace(is_cuda=True)
    assert kernels._use_triton(cpu) is False
    assert kernels._use_triton(cuda) is (kernels.triton is not None)
    monkeypatch.setenv("NANOINSTRUCT_KERNELS", "torch")
    assert kernels._use_triton(cuda) is False
    monkeypatch.setenv("NANOINSTRUCT_KERNELS", "Triton")
    with pytest.raises(ValueError, match="NANOINSTRUCT_KERNELS"):
        kernels.token_entropy(torch.zeros(1, 1, 3))
    monkeypatch.setenv("NANOINSTRUCT_KERNELS", "triton")
    monkeypatch.setattr(kernels, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 1.0, 1.0)
    monkeypatch.setattr(kernels, "triton", None)              # as on a machine without triton
    with pytest.raises(RuntimeError, match="not installed"):
        kernels.kl_estimate(torch.zeros(2), torch.zeros(2))
    monkeypatch.delenv("NANOINSTRUCT_KERNELS")
    assert kernels._use_triton(cuda) is False


def test_default_cpu_path_is_the_reference(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the Triton path ran on CPU tensors")
    for mod, name in [(kernels._logprob, "logprobs_and_entropy_triton"), (kernels._kl, "kl_estimate_triton"),
                      (kernels._kl, "penalized_rewards_triton"), (kernels._gae, "gae_triton")]:
        monkeypatch.setattr(mod, name, boom)
    x, t = torch.randn(1, 2, 5), torch.zeros(1, 2, dtype=torch.long)
    kernels.token_logprobs(x, t), kernels.token_entropy(x), kernels.token_logprobs_and_entropy(x, t)
    a, m = torch.randn(1, 2), torch.ones(1, 2)
    kernels.kl_estimate(a, a), kernels.penalized_rewards(a[:, 0], a, a, m, 0.1), kernels.gae(a, a, m, 1, 1)


def test_shape_validation():
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="targets shape must equal"):
        kernels.token_logprobs(x, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        kernels.token_logprobs(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        kernels.token_entropy(x, 0.0)
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        kernels.kl_estimate(a, a, "k4")
    with pytest.raises(ValueError, match="ref_logp shape"):
        kernels.kl_estimate(a, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="scores must be"):
        kernels.penalized_rewards(torch.zeros(3), a, a, a, 0.1)
    with pytest.raises(ValueError, match="mask shape"):
        kernels.gae(a, a, torch.ones(2, 2), 1.0, 1.0)


@pytest.mark.parametrize("B,T", [(0, 5), (3, 0)])
def test_empty(B, T):
    check_empty(B, T)
