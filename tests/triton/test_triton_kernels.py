"""The Triton kernels (under the interpreter, see conftest.py) against float64 and the torch
references, through the public kernels.* functions.

Tolerances follow tests/test_kernels.py (fp32 unit roundoff u = 2^-24 times the size of the
numbers; measured worst cases were 3 u and 0.7 u for forward and gradient, the tolerances
are 16 u and 8 u), with one difference: the interpreter converts fp32 to bf16 by truncation
(measured: relative error up to 2^-7, where the GPU's round-to-nearest gives 2^-8), so a bf16
gradient here is allowed one bf16 ulp, 2^-7 relative. fp16 is converted by numpy, rounded.
The kernel shapes are small because the interpreter runs programs one by one in Python; the
chunk sizes are shrunk so that the multi-chunk paths run anyway.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import logprob as LP
from kernels.kl import kl_estimate_ref, penalized_rewards_ref
from tests.kernel_cases import check_empty, gae_atol, gae_case, plain_gae

GAE = kernels._gae                    # kernels.gae is the function; the module is kernels._gae
U = 2.0 ** -24
GRAD_RTOL = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -11}
SETTINGS = settings(max_examples=25, deadline=None)


def truth(logits, targets, temperature, g_logp, g_entropy):
    """float64 (log p(target), entropy, d(sum g_logp logp + g_entropy H)/d logits)."""
    x = logits.detach().double().requires_grad_()
    logp_all = torch.log_softmax(x / temperature, -1)
    p = logp_all.exp()
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
    grad, = torch.autograd.grad((g_logp.double() * logp + g_entropy.double() * entropy).sum(), x)
    return logp.detach(), entropy.detach(), grad


def scale(logits, temperature):
    z = logits.double() / temperature
    finite = z[z.isfinite()]
    return 1.0 + (finite.abs().max().item() if finite.numel() else 0.0) + math.log(logits.shape[-1])


def check(logits, targets, temperature=1.0, seed=0):
    """Triton (log p, H) and gradient against float64; returns them for further checks."""
    g = torch.Generator().manual_seed(seed)
    g_logp, g_entropy = torch.randn(targets.shape, generator=g), torch.randn(targets.shape, generator=g)
    logp64, h64, grad64 = truth(logits, targets, temperature, g_logp, g_entropy)
    x = logits.detach().clone().requires_grad_()
    logp, h = kernels.token_logprobs_and_entropy(x, targets, temperature)
    assert logp.dtype == h.dtype == torch.float32 and logp.shape == targets.shape
    grad, = torch.autograd.grad((g_logp * logp + g_entropy * h).sum(), x)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    s = scale(logits, temperature)
    torch.testing.assert_close(logp.double(), logp64, atol=16 * U * s, rtol=0)
    torch.testing.assert_close(h.double(), h64, atol=16 * U * s, rtol=0)
    g_atol = 8 * U * s * max(g_logp.abs().max().item(), g_entropy.abs().max().item()) / temperature
    torch.testing.assert_close(grad.double(), grad64, atol=g_atol, rtol=GRAD_RTOL[logits.dtype])
    return logp, h, grad


def make_logits(seed, shape, std, dtype=torch.float32):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std).to(dtype)


def make_targets(seed, shape, high):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))

# ----------------------------------------------------------------------------- log-probs, entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("V,block", [(1, 4096), (7, 4096), (259, 4096), (259, 64), (1000, 128), (4099, 4096)])
def test_logprobs_and_entropy(monkeypatch, V, block, dtype):
    monkeypatch.setattr(LP, "BLOCK_V", block)             # block < V: several chunks per row
    logits = make_logits(V, (2, 3, V), 4.0, dtype)
    logp, h, grad = check(logits, make_targets(V, (2, 3), V), 0.9, seed=V)
    assert (logp <= 0).all()
    tol = 16 * U * scale(logits, 0.9)
    assert (h >= -tol).all() and (h <= math.log(V) + tol).all()
    if V == 1:
        assert (logp == 0).all() and (grad == 0).all()


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), V=st.integers(1, 300), std=st.floats(0.1, 300.0),
       temperature=st.floats(0.3, 3.0), block=st.sampled_from([16, 64, 4096]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), tail=st.booleans())
def test_logprobs_and_entropy_property(seed, V, std, temperature, block, dtype, tail):
    LP.BLOCK_V, old = block, LP.BLOCK_V                   # hypothesis and monkeypatch don't mix
    try:
        logits = make_logits(seed, (2, 2, V), std, dtype)
        n_tail = V // 2 if tail else 0
        if n_tail:
            logits[..., -n_tail:] = float("-inf")
        logp, h, _ = check(logits, make_targets(seed, (2, 2), V - n_tail), temperature, seed)
        assert (logp <= 0).all()
    finally:
        LP.BLOCK_V = old


def test_all_neg_inf_chunks(monkeypatch):
    # chunks of 64: the first chunk of every row, and two more in the middle, are all -inf;
    # the running max starts at -inf and must not turn -inf - (-inf) into NaN
    monkeypatch.setattr(LP, "BLOCK_V", 64)
    logits = make_logits(11, (2, 4, 300), 3.0)
    logits[..., :64] = float("-inf")
    logits[..., 128:256] = float("-inf")
    targets = 64 + make_targets(11, (2, 4), 64)
    logp, h, grad = check(logits, targets, 1.0, seed=11)
    assert logp.isfinite().all() and h.isfinite().all() and grad.isfinite().all()
    assert (grad[..., :64] == 0).all() and (grad[..., 128:256] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_neg_inf_vocab_tail(dtype):
    logits = make_logits(12, (2, 3, 64), 5.0, dtype)
    logits[..., 40:] = float("-inf")
    logp, h, grad = check(logits, make_targets(12, (2, 3), 40), 1.3, seed=12)
    assert (grad[..., 40:] == 0).all() and grad.isfinite().all()


def test_huge_logits(monkeypatch):
    monkeypatch.setattr(LP, "BLOCK_V", 64)
    logits = make_logits(13, (2, 4, 300), 1.0)
    logits[0] *= 1e4
    logits[1, :, ::2], logits[1, :, 1::2] = 1e4, -1e4      # 150-way ties at the max
    logp, h, grad = check(logits, make_targets(13, (2, 4), 300), 1.0, seed=13)
    torch.testing.assert_close(h[1], torch.full((4,), math.log(150.0)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [0.25, 1.7])
def test_temperature(temperature):
    check(make_logits(14, (2, 5, 97), 3.0), make_targets(14, (2, 5), 97), temperature, seed=14)


def test_strided_logits(monkeypatch):
    monkeypatch.setattr(LP, "BLOCK_V", 32)
    base = make_logits(15, (3, 7, 80), 2.0)
    shifted = base[:, :-1]                                # the usual shift: rows read in place
    assert LP._rows(shifted).data_ptr() == base.data_ptr()
    check(shifted, make_targets(15, (3, 6), 80))
    check(base.transpose(0, 1), make_targets(16, (7, 3), 80))
    check(base[..., ::2], make_targets(17, (3, 7), 40))    # vocabulary not unit-stride: copied
    check(base.view(3, 7, 2, 40)[:, :, 1], make_targets(18, (3, 7), 40))


def test_saves_no_softmax():
    # autograd keeps the logits (the caller's own tensor), the targets and 2 floats per row
    logits = make_logits(19, (2, 3, 1000), 2.0, torch.bfloat16).requires_grad_()
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kernels.token_logprobs_and_entropy(logits[:, 1:], make_targets(19, (2, 2), 1000))
    assert sum(saved.values()) == 4 * (8 + 4 + 4)         # targets int64, logsumexp, entropy


def test_matches_reference_and_public_functions():
    logits = make_logits(20, (3, 4, 130), 2.5, torch.bfloat16).requires_grad_()
    targets = make_targets(20, (3, 4), 130)
    logp, h = kernels.token_logprobs_and_entropy(logits, targets, 0.8)
    logp_ref, h_ref = LP.logprobs_and_entropy_ref(logits, targets, 0.8)
    torch.testing.assert_close(logp, logp_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)
    assert torch.equal(kernels.token_logprobs(logits, targets, 0.8), logp)
    assert torch.equal(kernels.token_entropy(logits, 0.8), h)
    for out, ref in [(kernels.token_logprobs(logits, targets), LP.logprobs_ref(logits, targets)),
                     (kernels.token_entropy(logits), LP.entropy_ref(logits))]:
        grad, = torch.autograd.grad(out.sum(), logits)
        grad_ref, = torch.autograd.grad(ref.sum(), logits)
        torch.testing.assert_close(grad.float(), grad_ref.float(), atol=1e-5, rtol=2.0 ** -7)
        assert grad.abs().sum() > 0

# ----------------------------------------------------------------------------- KL


def kl64(logp, ref_logp, kind):
    d = ref_logp.double() - logp.double()
    return {"k1": -d, "k2": d * d / 2, "k3": torch.expm1(d) - d}[kind]


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimate(kind):
    g = torch.Generator().manual_seed(21)
    logp = -torch.rand(5, 300, generator=g) * 10                       # 1500: two blocks of 1024
    ref_logp = logp + torch.randn(5, 300, generator=g) * torch.logspace(-6, 0.5, 300)
    kl = kernels.kl_estimate(logp, ref_logp, kind)
    assert kl.dtype == torch.float32 and kl.shape == logp.shape
    d = (ref_logp - logp).double()
    # no expm1 in the kernel: e^d - 1 - d, each term rounded (u e^d, u, u|d|), d itself rounded
    atol = {"k1": U * d.abs(), "k2": 4 * U * d * d,
            "k3": 4 * U * (d.exp() * (1 + d.abs()) + 1 + d.abs())}[kind]
    assert ((kl.double() - kl64(logp, ref_logp, kind)).abs() <= atol).all()
    if kind != "k1":
        assert (kl >= 0).all()
    torch.testing.assert_close(kl, kl_estimate_ref(logp, ref_logp, kind), atol=2e-6, rtol=1e-6)


def test_k3_is_nonnegative_near_zero():
    d = torch.cat([torch.logspace(-12, -2, 500), -torch.logspace(-12, -2, 500)])  # e^d - 1 - d cancels
    k3 = kernels.kl_estimate(torch.zeros(1000), d, "k3")
    assert (k3 >= 0).all()
    assert ((k3.double() - kl64(torch.zeros(1000), d, "k3")).abs() <= 4 * U * (2 + d.double().abs())).all()


def test_kl_estimate_bf16_and_many_blocks():
    g = torch.Generator().manual_seed(22)
    logp = (-torch.rand(3, 1100, generator=g) * 5).bfloat16()              # 3300 > one block
    ref_logp = (logp.float() + torch.randn(3, 1100, generator=g)).bfloat16()
    for kind in ("k1", "k2", "k3"):
        kl = kernels.kl_estimate(logp, ref_logp, kind)
        d = (ref_logp.double() - logp.double())
        atol = 4 * U * (d.exp() * (1 + d.abs()) + 1 + d.abs())          # inputs exact in fp32
        assert ((kl.double() - kl64(logp, ref_logp, kind)).abs() <= atol).all(), kind


@pytest.mark.parametrize("block", [8, 1024])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_penalized_rewards(monkeypatch, block, mask_dtype, kind):
    monkeypatch.setattr(kernels._kl, "BLOCK_T", block)
    g = torch.Generator().manual_seed(23)
    B, T = 6, 21
    logp, ref_logp = -torch.rand(B, T, generator=g) * 5, -torch.rand(B, T, generator=g) * 5
    lengths = torch.tensor([0, 1, 8, 9, 20, 21])                      # empty ... full; chunk edges
    mask = (torch.arange(T)[None] < lengths[:, None]).to(mask_dtype)
    scores = torch.tensor([float("nan"), 20.0, 30.0, 40.0, 50.0, 60.0])  # row 0 has no last token
    r = kernels.penalized_rewards(scores, logp, ref_logp, mask, 0.1, kind)
    torch.testing.assert_close(r, penalized_rewards_ref(scores, logp, ref_logp, mask, 0.1, kind),
                               atol=1e-6, rtol=1e-6)
    no_kl = kernels.penalized_rewards(scores, logp, ref_logp, mask, 0.0, kind)
    for b, n in enumerate(lengths.tolist()):                          # the score on EOS, not after
        expected = torch.zeros(T)
        if n:
            expected[n - 1] = scores[b]
        assert torch.equal(no_kl[b], expected), (b, no_kl[b])


def test_penalized_rewards_garbage_and_holes(monkeypatch):
    monkeypatch.setattr(kernels._kl, "BLOCK_T", 2)
    nan, inf = float("nan"), float("inf")
    logp = torch.tensor([[-1.0, nan, -2.0, -inf, nan], [nan, nan, nan, nan, nan]])
    ref_logp = torch.tensor([[-1.5, -1.0, -1.0, inf, 1e30], [-1.0, -1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)  # not a prefix
    r = kernels.penalized_rewards(torch.tensor([3.0, nan]), logp, ref_logp, mask, 0.5, "k1")
    assert torch.equal(r, torch.tensor([[-0.25, 0.0, 0.5 + 3.0, 0.0, 0.0], [0.0] * 5]))

# ----------------------------------------------------------------------------- GAE


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.0, 0.5)])
@pytest.mark.parametrize("garbage", [False, True])
def test_gae(monkeypatch, gamma, lam, garbage):
    monkeypatch.setattr(GAE, "BLOCK_B", 4)                # 7 rows: two programs, one partial
    rewards, values, mask, lengths = gae_case(24, 7, 19, garbage)
    adv, ret = kernels.gae(rewards, values, mask, gamma, lam)
    assert adv.dtype == ret.dtype == torch.float32
    adv64, ret64 = plain_gae(rewards, values, lengths, gamma, lam)
    atol = gae_atol(rewards, values, mask)
    assert ((adv.double() - adv64).abs() <= atol).all() and ((ret.double() - ret64).abs() <= atol).all()
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()
    v, r = torch.where(mask, values, 0.0), torch.where(mask, rewards, 0.0)
    if lam == 0.0:                                        # the TD residual
        next_v = torch.cat([v[:, 1:], torch.zeros(7, 1)], 1)
        torch.testing.assert_close(adv, torch.where(mask, r + gamma * next_v - v, 0.0), atol=1e-6, rtol=0)
    if gamma == lam == 1.0:                               # reward-to-go minus value
        to_go = r.flip(1).cumsum(1).flip(1)
        torch.testing.assert_close(adv, torch.where(mask, to_go - v, 0.0), atol=1e-5, rtol=0)
    if garbage:                                           # nothing leaked: same as clean inputs
        clean_r, clean_v, _, _ = gae_case(24, 7, 19)
        clean_adv, clean_ret = kernels.gae(clean_r, clean_v, mask, gamma, lam)
        assert torch.equal(adv, clean_adv) and torch.equal(ret, clean_ret)


def test_gae_masked_positions_end_episodes():
    # left padding gives the right-aligned answer; a hole splits a row into two episodes
    g = torch.Generator().manual_seed(26)
    rewards, values = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    adv, ret = kernels.gae(rewards, values, mask, 0.9, 0.8)
    episodes = [(0, slice(3, 8)), (1, slice(0, 3)), (1, slice(4, 8))]   # (row, tokens)
    for b, ts in episodes:
        a, r = adv[b:b + 1, ts], ret[b:b + 1, ts]
        a64, r64 = plain_gae(rewards[b:b + 1, ts], values[b:b + 1, ts], [ts.stop - ts.start], 0.9, 0.8)
        torch.testing.assert_close(a.double(), a64, atol=1e-6, rtol=0)
        torch.testing.assert_close(r.double(), r64, atol=1e-6, rtol=0)
    assert (adv[0, :3] == 0).all() and adv[1, 3] == 0 and ret[1, 3] == 0


def test_gae_float_mask_bf16_values():
    rewards, values, mask, lengths = gae_case(25, 5, 12)
    values = values.bfloat16()
    adv, ret = kernels.gae(rewards, values, mask.float(), 0.95, 0.9)
    adv64, ret64 = plain_gae(rewards, values.double(), lengths, 0.95, 0.9)
    atol = gae_atol(rewards, values.float(), mask)
    assert ((adv.double() - adv64).abs() <= atol).all() and ((ret.double() - ret64).abs() <= atol).all()


@pytest.mark.parametrize("B,T", [(0, 5), (3, 0)])
def test_empty(B, T):
    check_empty(B, T)
