"""The RLHF hot spots as kernels: per-token log-probs and entropy, the KL penalty, GAE.

Every function here dispatches per call to one of two paths that compute the same thing:

    the torch reference   plain PyTorch, runs anywhere, autograd does the gradients
    the Triton kernel     one launch per call, fp32 accumulation, hand-written backward

    NANOINSTRUCT_KERNELS unset   Triton if the tensor is on CUDA and triton imports, else torch
    NANOINSTRUCT_KERNELS=torch   always the reference
    NANOINSTRUCT_KERNELS=triton  always Triton (an error if triton is missing, or if the
                                 tensors are on the CPU and TRITON_INTERPRET=1 was not set
                                 before this package was imported: that is how CI runs it)

triton is an optional import: without it (macOS, CPU-only installs) the reference runs.
Shapes: logits (B,T,V), hidden (B,T,C), unembedding (V,C), everything per token (B,T),
scores (B,). Outputs are float32.
"""
import math
import os

import torch

try:  # optional: without triton only the torch references below are usable
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

# triton.jit reads TRITON_INTERPRET when it decorates, i.e. when the kernel files are imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def jit(fn):
    """triton.jit when triton is installed; otherwise the kernel is left undecorated (and unused)."""
    return triton.jit(fn) if triton is not None else fn


# (they use jit and tl.) Note kernels.gae is the function below; its file is kernels._gae.
from . import gae as _gae, kl as _kl, linear_logprob as _linear, logprob as _logprob  # noqa: E402

KL_KINDS = ("k1", "k2", "k3")


def _use_triton(x: torch.Tensor) -> bool:
    choice = os.environ.get("NANOINSTRUCT_KERNELS", "")
    if choice not in ("", "torch", "triton"):
        raise ValueError(f"NANOINSTRUCT_KERNELS must be 'triton', 'torch' or unset, got {choice!r}")
    if choice == "torch":
        return False
    if choice == "triton":
        if triton is None:
            raise RuntimeError("NANOINSTRUCT_KERNELS=triton but triton is not installed")
        if not x.is_cuda and not INTERPRET:
            raise RuntimeError("NANOINSTRUCT_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 "
                               "in the environment before `kernels` is imported")
        return True
    return triton is not None and x.is_cuda


def _check_logits(logits, temperature):
    if logits.dim() < 2 or not logits.is_floating_point() or logits.shape[-1] < 1:
        raise ValueError(f"logits must be a float tensor (B,T,V) with V >= 1, got {tuple(logits.shape)} "
                         f"{logits.dtype}")
    _check_temperature(temperature)


def _check_temperature(temperature):
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")


def _check_targets(logits, targets, name="logits"):
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape must equal {name}.shape[:-1] = {tuple(logits.shape[:-1])}, "
                         f"got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer (long) tensor, got {targets.dtype}")


def _check_same(what, shape, **tensors):
    for name, t in tensors.items():
        if t.shape != shape:
            raise ValueError(f"{name} shape must equal {what} shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_kind(kind):
    if kind not in KL_KINDS:
        raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")


def token_logprobs_and_entropy(logits, targets, temperature=1.0):
    """(log p(targets), entropy) under softmax(logits / temperature) from one read of the logits.

    logits (B,T,V) float (non-contiguous is fine: the Triton path reads any (B,T) strides and
    copies only if the vocab dimension is not unit-stride), targets (B,T) long in [0, V).
    Returns two (B,T) float32 tensors, both differentiable with respect to logits.
    """
    _check_logits(logits, temperature)
    _check_targets(logits, targets)
    if _use_triton(logits):
        return _logprob.logprobs_and_entropy_triton(logits, targets, temperature)
    return _logprob.logprobs_and_entropy_ref(logits, targets, temperature)


def token_logprobs(logits, targets, temperature=1.0):
    """log p(targets[b,t]) under softmax(logits[b,t] / temperature): (B,T,V), (B,T) -> (B,T) float32."""
    _check_logits(logits, temperature)
    _check_targets(logits, targets)
    if _use_triton(logits):  # the kernel's entropy costs nothing extra: it is memory-bound
        return _logprob.logprobs_and_entropy_triton(logits, targets, temperature)[0]
    return _logprob.logprobs_ref(logits, targets, temperature)


def token_entropy(logits, temperature=1.0):
    """Entropy of softmax(logits[b,t] / temperature), in nats: (B,T,V) -> (B,T) float32."""
    _check_logits(logits, temperature)
    if _use_triton(logits):  # the kernel's log-prob of token 0 is computed and dropped
        targets = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
        return _logprob.logprobs_and_entropy_triton(logits, targets, temperature)[1]
    return _logprob.entropy_ref(logits, temperature)


def linear_logprobs(hidden, weight, targets, temperature=1.0):
    """(log p(targets), entropy) under softmax(hidden @ weight.T / temperature), without the logits.

    hidden (B,T,C) float, weight (V,C) float: the unembedding rows of the real vocabulary (pass
    a row slice of a tied embedding, e.g. lm_head.weight[:n_vocab]; its gradient flows back
    into the full parameter), targets (B,T) long in [0, V). Returns two (B,T) float32 tensors,
    differentiable in hidden and weight. Equal to token_logprobs_and_entropy(hidden @ weight.T,
    ...) but no (B,T,V) tensor is ever made, forward or backward. Under autocast the inputs
    are cast as lm_head (torch.nn.functional.linear) would cast them.
    """
    if hidden.dim() < 1 or not hidden.is_floating_point():
        raise ValueError(f"hidden must be a float tensor (B,T,C), got {tuple(hidden.shape)} {hidden.dtype}")
    if weight.dim() != 2 or not weight.is_floating_point() or weight.shape[0] < 1 \
            or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be a float tensor (V,C) with V >= 1 and C = hidden.shape[-1] = "
                         f"{hidden.shape[-1]}, got {tuple(weight.shape)} {weight.dtype}")
    if weight.device != hidden.device or targets.device != hidden.device:
        raise ValueError(f"hidden, weight and targets must be on one device, got {hidden.device}, "
                         f"{weight.device}, {targets.device}")
    _check_temperature(temperature)
    _check_targets(hidden, targets, "hidden")
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # what autocast does to lm_head's F.linear
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    if _use_triton(hidden):
        return _linear.linear_logprobs_triton(hidden, weight, targets, temperature)
    return _linear.linear_logprobs_ref(hidden, weight, targets, temperature)


def kl_estimate(logp, ref_logp, kind="k1"):
    """Per-token estimate of KL(policy || reference) from samples of the policy: (B,T) -> (B,T) float32.

    k1 = logp - ref_logp;  k2 = (ref_logp - logp)^2 / 2;  k3 = e^(ref_logp - logp) - 1 - (ref_logp - logp).
    No gradient: rewards are computed under torch.no_grad().
    """
    _check_kind(kind)
    _check_same("logp", logp.shape, ref_logp=ref_logp)
    if _use_triton(logp):
        return _kl.kl_estimate_triton(logp, ref_logp, kind)
    return _kl.kl_estimate_ref(logp, ref_logp, kind)


def penalized_rewards(scores, logp, ref_logp, mask, kl_coef, kind="k1"):
    """-kl_coef * kl at every masked token (0 elsewhere), plus scores[b] at the LAST token where
    mask[b] != 0. A row with an all-zero mask is all zeros. scores (B,), the rest (B,T).
    Returns (B,T) float32. No gradient (rewards are computed under torch.no_grad())."""
    _check_kind(kind)
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B,T), got {tuple(logp.shape)}")
    _check_same("logp", logp.shape, ref_logp=ref_logp, mask=mask)
    if scores.shape != logp.shape[:1]:
        raise ValueError(f"scores must be (B,) = {tuple(logp.shape[:1])}, got {tuple(scores.shape)}")
    if _use_triton(logp):
        return _kl.penalized_rewards_triton(scores, logp, ref_logp, mask, kl_coef, kind)
    return _kl.penalized_rewards_ref(scores, logp, ref_logp, mask, kl_coef, kind)


def gae(rewards, values, mask, gamma, lam):
    """Generalized advantage estimation (Schulman et al. 2016) over (B,T) -> (advantages, returns),
    both (B,T) float32 and zero where mask == 0. The value after the last real token is 0."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B,T), got {tuple(rewards.shape)}")
    _check_same("rewards", rewards.shape, values=values, mask=mask)
    if _use_triton(rewards):
        return _gae.gae_triton(rewards, values, mask, gamma, lam)
    return _gae.gae_ref(rewards, values, mask, gamma, lam)


__all__ = ["token_logprobs", "token_entropy", "token_logprobs_and_entropy", "linear_logprobs", "kl_estimate",
           "penalized_rewards", "gae"]
