"""kernels.linear_logprobs through its torch reference (the chunked autograd Function in
kernels/linear_logprob.py) against the unfused path in float64; the error bounds are derived in
tests/linear_cases.py. The chunks are shrunk so that every case walks several token and
vocabulary chunks, with ragged last ones. The Triton kernels: tests/triton/."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import linear_logprob as LL
from tests.linear_cases import assert_within, check_linear, largest_alloc, make_case, truth

SETTINGS = settings(max_examples=40, deadline=None)


@pytest.fixture(autouse=True)
def _reference(monkeypatch):
    monkeypatch.setenv("NANOINSTRUCT_KERNELS", "torch")


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(LL, "TOKEN_CHUNK", 7)       # N = 2 x 11 = 22 tokens: chunks 7 + 7 + 7 + 1
    monkeypatch.setattr(LL, "CHUNK_ELEMS", 7 * 64)  # V = 259: chunks 64 + 64 + 64 + 64 + 3


# (V, temperature, vocabulary chunk): one chunk, several with a ragged last one, V = 1
CASES = [(1, 0.7, 64), (7, 2.0, 4), (259, 1.0, 64), (259, 0.7, 100), (4099, 0.7, 1024), (4099, 2.0, 4099)]


@pytest.mark.parametrize("V,temperature,vocab_chunk", CASES)
def test_float64_matches_unfused(small_chunks, monkeypatch, V, temperature, vocab_chunk):
    # float64 in: float64 arithmetic, so the bounds are 2^-53-tight; a wrong term shows at once
    monkeypatch.setattr(LL, "CHUNK_ELEMS", 7 * vocab_chunk)
    hidden, weight, targets = make_case(V, (2, 11), 33, V, torch.float64, std=3.0)
    logp, entropy, dh, dw = check_linear(kernels.linear_logprobs, hidden, weight, targets, temperature, seed=V)
    assert (logp <= 0).all() and (entropy >= 0).all() and (entropy <= math.log(V) + 1e-6).all()
    if V == 1:                                                   # one token: certain, no gradient
        assert (logp == 0).all() and (dh == 0).all() and (dw == 0).all()


@pytest.mark.parametrize("V,temperature,vocab_chunk", CASES[1:5])
def test_fp32_against_float64(small_chunks, monkeypatch, V, temperature, vocab_chunk):
    monkeypatch.setattr(LL, "CHUNK_ELEMS", 7 * vocab_chunk)
    hidden, weight, targets = make_case(V + 1, (3, 7), 17, V, std=4.0)
    check_linear(kernels.linear_logprobs, hidden, weight, targets, temperature, seed=V)


@pytest.mark.parametrize("entropy_grad", [True, False])
def test_bf16_inputs(small_chunks, entropy_grad):
    # fp32 math on the bf16 values (exact in fp32), so the fp32 bounds hold up to the one
    # rounding of dh and dW to bf16 (the unfused bf16 path rounds the (N,V) logits and their
    # gradient as well, which this path does not)
    hidden, weight, targets = make_case(5, (2, 11), 33, 259, torch.bfloat16, std=3.0)
    check_linear(kernels.linear_logprobs, hidden, weight, targets, 0.7, seed=5, entropy_grad=entropy_grad)


def test_logp_only_and_entropy_only(small_chunks):
    # an output without a gradient reaches the backward as None (dz drops its term)
    hidden, weight, targets = make_case(6, (2, 9), 11, 100, torch.float64)
    check_linear(kernels.linear_logprobs, hidden, weight, targets, 1.3, seed=6, entropy_grad=False)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    entropy = kernels.linear_logprobs(h, w, targets)[1]
    dh, dw = torch.autograd.grad(entropy.sum(), (h, w))
    h64, w64 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    p = torch.softmax(h64 @ w64.T, -1)
    dh64, dw64 = torch.autograd.grad(-(p * p.log()).sum(), (h64, w64))
    torch.testing.assert_close(dh, dh64, atol=1e-12, rtol=0)
    torch.testing.assert_close(dw, dw64, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)])
def test_empty(shape):
    hidden, weight, targets = make_case(7, shape, 9, 13)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    logp, entropy = kernels.linear_logprobs(h, w, targets)
    assert logp.shape == entropy.shape == shape and logp.dtype == torch.float32
    dh, dw = torch.autograd.grad((logp + entropy).sum(), (h, w))
    assert dh.shape == h.shape and (dw == 0).all()


def test_all_zero_mask_gives_zero_grads(small_chunks):
    hidden, weight, targets = make_case(8, (2, 11), 9, 259, std=30.0)   # peaked: p underflows
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    logp, entropy = kernels.linear_logprobs(h, w, targets)
    mask = torch.zeros(2, 11)
    loss = -(logp * mask).sum() / mask.sum().clamp(min=1) - 0.01 * (entropy * mask).sum()
    dh, dw = torch.autograd.grad(loss, (h, w))
    assert (dh == 0).all() and (dw == 0).all()                          # and so no NaN


def test_weight_as_a_row_slice_of_the_embedding(small_chunks):
    # the caller passes wte.weight[:n_real]: the gradient lands in those rows of the parameter
    hidden, weight, targets = make_case(9, (2, 11), 9, 259, torch.float64)
    table = torch.cat([weight, torch.randn(45, 9, dtype=torch.float64)]).requires_grad_()   # 304 rows
    logp, entropy = kernels.linear_logprobs(hidden, table[:259], targets, 0.9)
    (logp.sum() + entropy.sum()).backward()
    ones = torch.ones(2, 11)
    want, bounds, _ = truth(hidden, weight, targets, 0.9, ones, ones)
    assert_within("dW", table.grad[:259], want[3], bounds[3])
    assert (table.grad[259:] == 0).all()


def test_non_contiguous_hidden_and_leading_dims(small_chunks):
    hidden, weight, targets = make_case(10, (3, 8), 9, 70, torch.float64)
    shifted = hidden[:, :-1]                                            # the usual shift
    check_linear(kernels.linear_logprobs, shifted, weight, targets[:, 1:], 1.0, seed=10)
    check_linear(kernels.linear_logprobs, hidden[0], weight, targets[0], 1.0, seed=11)   # (T, C)


def test_no_tensor_of_n_times_v(small_chunks):
    # N x V = 22 x 259 = 5698 fp32; a chunk is at most 7 x 64 = 448, the gradients N x C and
    # V x C are 198 and 2331. The fused path stays under that in forward and backward; the same
    # probe on the unfused path sees the (N,V) logits.
    hidden, weight, targets = make_case(11, (2, 11), 9, 259)
    bound = 4 * max(7 * 64, 22 * 9, 259 * 9)
    nbytes, op = largest_alloc(kernels.linear_logprobs, hidden, weight, targets)
    assert nbytes <= bound, (nbytes, op)
    nbytes, op = largest_alloc(LL.linear_logprobs_unfused, hidden, weight, targets)
    assert nbytes >= 4 * 22 * 259 > bound, (nbytes, op)


def test_saves_no_logits():
    # autograd keeps the caller's hidden and weight, the targets and 2 floats per token
    hidden, weight, targets = make_case(12, (2, 11), 9, 259)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in (h.untyped_storage().data_ptr(), w.untyped_storage().data_ptr()):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kernels.linear_logprobs(h, w, targets)
    assert sum(saved.values()) == 22 * (8 + 4 + 4)              # targets int64, lse, entropy fp32


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 3), T=st.integers(1, 9), C=st.integers(1, 40),
       V=st.integers(1, 300), std=st.floats(0.1, 30.0), temperature=st.floats(0.3, 3.0),
       chunk=st.sampled_from([(4, 64), (5, 400), (4096, 1 << 22)]))
def test_property(seed, B, T, C, V, std, temperature, chunk):
    LL.TOKEN_CHUNK, LL.CHUNK_ELEMS, old = chunk[0], chunk[1], (LL.TOKEN_CHUNK, LL.CHUNK_ELEMS)
    try:                                                        # hypothesis and monkeypatch don't mix
        hidden, weight, targets = make_case(seed, (B, T), C, V, std=std)
        logp, entropy, _, _ = check_linear(kernels.linear_logprobs, hidden, weight, targets, temperature, seed)
        assert (logp <= 0).all()                                # exactly: (z_t - m) - log s, both <= 0
        assert (entropy >= -1e-5).all() and (entropy <= math.log(V) + 1e-5).all()
    finally:
        LL.TOKEN_CHUNK, LL.CHUNK_ELEMS = old


def test_autocast_casts_like_lm_head():
    hidden, weight, targets = make_case(13, (2, 5), 16, 40)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, entropy = kernels.linear_logprobs(h, w, targets)
    want = kernels.linear_logprobs(hidden.bfloat16(), weight.bfloat16(), targets)
    assert torch.equal(logp, want[0]) and torch.equal(entropy, want[1])
    dh, dw = torch.autograd.grad((logp + entropy).sum(), (h, w))
    assert dh.dtype == dw.dtype == torch.float32                # back into the fp32 parameters


def test_dispatch(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the Triton path ran on CPU tensors")
    monkeypatch.delenv("NANOINSTRUCT_KERNELS")
    monkeypatch.setattr(LL, "linear_logprobs_triton", boom)
    hidden, weight, targets = make_case(14, (1, 3), 4, 5)
    kernels.linear_logprobs(hidden, weight, targets)
    monkeypatch.setenv("NANOINSTRUCT_KERNELS", "triton")
    monkeypatch.setattr(kernels, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.linear_logprobs(hidden, weight, targets)


def test_validation():
    hidden, weight, targets = make_case(15, (2, 3), 4, 5)
    with pytest.raises(ValueError, match="weight must be"):
        kernels.linear_logprobs(hidden, weight[:, :3], targets)
    with pytest.raises(ValueError, match="hidden.shape"):
        kernels.linear_logprobs(hidden, weight, targets[:, :2])
    with pytest.raises(ValueError, match="integer"):
        kernels.linear_logprobs(hidden, weight, targets.float())
    with pytest.raises(ValueError, match="temperature"):
        kernels.linear_logprobs(hidden, weight, targets, 0.0)
    with pytest.raises(IndexError, match="targets must lie in"):
        kernels.linear_logprobs(hidden, weight, targets + 5)
