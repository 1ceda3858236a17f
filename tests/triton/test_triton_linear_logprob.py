"""The fused linear log-prob kernels (kernels/linear_logprob.py) under the Triton interpreter,
through kernels.linear_logprobs, against float64 with the bounds of tests/linear_cases.py.

The tiles are shrunk to 16 (tl.dot's least) and the backward's scratch share to its least, so
that tiny shapes run several ragged blocks in N, V and C and several backward super-chunks
(the interpreter runs programs one by one in Python: these few cases take seconds).
"""
import math

import pytest
import torch

import kernels
from kernels import linear_logprob as LL
from tests.linear_cases import check_linear, largest_alloc, make_case


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    for name in ("BLOCK_N", "BLOCK_V", "BLOCK_C"):
        monkeypatch.setattr(LL, name, 16)
    monkeypatch.setattr(LL, "SCRATCH_SHARE", 0.0)     # super-chunks of 16 x 16: N = 21 -> 16 + 5


def super_chunks(N):
    return math.ceil(N / 16)                           # dW is rounded once per token super-chunk


@pytest.mark.parametrize("dtype,V,C,temperature,entropy_grad", [
    (torch.float32, 37, 35, 0.7, True),                # 3 x 3 x 3 ragged blocks (N = 21)
    (torch.float32, 1, 17, 2.0, True),                 # a one-token vocabulary
    (torch.bfloat16, 37, 35, 1.0, True),
    (torch.float32, 37, 20, 1.0, False),               # no entropy gradient: HAS_GH off
])
def test_against_float64(dtype, V, C, temperature, entropy_grad):
    hidden, weight, targets = make_case(V + C, (3, 7), C, V, dtype, std=3.0)
    logp, entropy, dh, dw = check_linear(kernels.linear_logprobs, hidden, weight, targets, temperature,
                                         seed=V, entropy_grad=entropy_grad, dw_roundings=super_chunks(21))
    assert (logp <= 0).all()
    assert (entropy >= -1e-5).all() and (entropy <= math.log(V) + 1e-5).all()
    if V == 1:
        assert (logp == 0).all() and (dh == 0).all() and (dw == 0).all()


def test_matches_the_reference_and_row_slice():
    # the same numbers as the torch reference, and a row slice of a larger table as the weight
    hidden, weight, targets = make_case(3, (2, 9), 18, 40)
    table = torch.cat([weight, torch.randn(9, 18)]).requires_grad_()
    h = hidden.requires_grad_()
    logp, entropy = kernels.linear_logprobs(h, table[:40], targets, 0.8)
    dh, dtable = torch.autograd.grad((logp + 0.5 * entropy).sum(), (h, table))
    ref = LL.linear_logprobs_ref(h, table[:40], targets, 0.8)
    dh_ref, dtable_ref = torch.autograd.grad((ref[0] + 0.5 * ref[1]).sum(), (h, table))
    for got, want in [(logp, ref[0]), (entropy, ref[1]), (dh, dh_ref), (dtable, dtable_ref)]:
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    assert (dtable[40:] == 0).all()


def test_empty_and_zero_mask():
    hidden, weight, targets = make_case(4, (0, 5), 18, 40)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    logp, entropy = kernels.linear_logprobs(h, w, targets)
    assert logp.shape == (0, 5) and (torch.autograd.grad((logp + entropy).sum(), w)[0] == 0).all()
    hidden, weight, targets = make_case(5, (2, 9), 18, 40, std=30.0)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    logp, entropy = kernels.linear_logprobs(h, w, targets)
    mask = torch.zeros(2, 9)
    dh, dw = torch.autograd.grad((logp * mask).sum() + (entropy * mask).sum(), (h, w))
    assert (dh == 0).all() and (dw == 0).all()


def test_no_tensor_of_n_times_v():
    # the launchers allocate outputs, gradients and the fp32 scratch; never an (N,V) tensor
    hidden, weight, targets = make_case(6, (3, 7), 5, 70)
    nbytes, op = largest_alloc(kernels.linear_logprobs, hidden, weight, targets)
    assert nbytes <= 4 * max(21 * 5, 70 * 5) < 4 * 21 * 70, (nbytes, op)
