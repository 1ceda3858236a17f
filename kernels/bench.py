"""GPU benchmark: the Triton kernels against eager PyTorch and torch.compile (`make bench`).

    python -m kernels.bench

Eager is the torch reference of each file (log_softmax + gather, the Python-loop GAE,
elementwise KL); compiled is torch.compile of that same reference. Sizes are those of RLHF
on one GPU: N = B*T = 8k and 32k tokens, V = 50,257 (GPT-2) and 128,256 (Llama 3), bf16
logits; GAE, KL and rewards at B = 256, T = 1024. Each row of the markdown table gives

    time       median over repeats, L2 flushed between them (triton.testing.do_bench)
    GB/s       the bytes the op must move at least (logits read once forward, read twice and
               written once forward+backward; inputs and outputs once for the others) / time,
               and that as a percentage of a device-to-device copy measured here
    peak mem   torch.cuda.max_memory_allocated during one call minus what was allocated
               before it: the outputs (for fwd+bwd the logits' gradient) plus temporaries
    max|diff|  against eager, on (the first 16M elements of) the first output or the gradient

Needs CUDA and triton; a cell that runs out of memory prints OOM. Results: kernels/BENCH.md.
"""
import os
import sys

import torch


def _bail(msg):
    print(f"kernels.bench: {msg}", file=sys.stderr)
    sys.exit(1)


def bench_ms(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def peak_extra_bytes(fn):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def copy_bandwidth():
    """GB/s of a 1 GiB device-to-device copy (2 GiB moved: read + write)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    del src, dst
    return 2 * (1 << 30) / ms / 1e6


def sample(out):
    """The first output (the gradient for fwd+bwd), its first 16M elements as fp32."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.detach().flatten()[: 1 << 24].float()


def fwd_bwd(f, x, *args):
    """A callable running f forward and backward to the logits; returns d(sum of outputs)/dx."""
    def run():
        outs = f(x, *args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return torch.autograd.grad(sum(o.sum() for o in outs), x)[0]
    return run


def measure(rows, op, size, nbytes, impls, bandwidth):
    """impls: name -> zero-argument callable. Appends one table row per implementation."""
    torch._dynamo.reset()                    # one compile per shape, no recompilation limit
    eager_out = None
    for name, fn in impls.items():
        print(f"  {op} {size} {name} ...", file=sys.stderr, flush=True)
        try:
            out = sample(fn())               # the first call also compiles
            if name == "eager":
                eager_out = out
            diff = "" if name == "eager" or eager_out is None else \
                f"{(out - eager_out).abs().max().item():.1e}"
            del out
            ms = bench_ms(fn)
            mem = peak_extra_bytes(fn)
            gbs = nbytes / ms / 1e6
            rows.append(f"| {op} | {size} | {name} | {ms:.3f} | {gbs:,.0f} | {100 * gbs / bandwidth:.0f}% "
                        f"| {mem / 2**20:,.0f} | {diff} |")
        except torch.cuda.OutOfMemoryError:
            rows.append(f"| {op} | {size} | {name} | OOM | | | | |")
            torch.cuda.empty_cache()


def main():
    if not torch.cuda.is_available():
        _bail("needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured")
    if os.environ.get("TRITON_INTERPRET") == "1":
        _bail("unset TRITON_INTERPRET: the interpreter is for tests, not for timing")
    try:
        import triton  # noqa: F401
    except ImportError:
        _bail("needs triton (pip install triton)")
    import kernels
    from kernels import kl, logprob
    gae_mod = kernels._gae                   # kernels.gae is the function, this is its file

    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    rows = []
    compiled = {fn: torch.compile(fn, dynamic=False) for fn in
                (logprob.logprobs_ref, logprob.logprobs_and_entropy_ref, kl.kl_estimate_ref,
                 kl.penalized_rewards_ref, gae_mod.gae_ref)}

    for N in (8192, 32768):
        for V in (50257, 128256):
            B, T = N // 1024, 1024
            size = f"N={N // 1024}k V={V:,}"
            x = torch.randn(B, T, V, device="cuda", dtype=torch.bfloat16).requires_grad_()
            t = torch.randint(0, V, (B, T), device="cuda")
            logits_bytes = x.numel() * x.element_size()
            for op, ref, triton_fn in [
                ("logprobs", logprob.logprobs_ref,
                 lambda x, t: logprob.logprobs_and_entropy_triton(x, t)[0]),
                ("logprobs+entropy", logprob.logprobs_and_entropy_ref, logprob.logprobs_and_entropy_triton),
            ]:
                with torch.no_grad():
                    measure(rows, f"{op} fwd", size, logits_bytes + 16 * N, {
                        "eager": lambda: ref(x, t), "compiled": lambda: compiled[ref](x, t),
                        "triton": lambda: triton_fn(x, t)}, bandwidth)
                measure(rows, f"{op} fwd+bwd", size, 3 * logits_bytes + 16 * N, {
                    "eager": fwd_bwd(ref, x, t), "compiled": fwd_bwd(compiled[ref], x, t),
                    "triton": fwd_bwd(triton_fn, x, t)}, bandwidth)
            del x, t
            torch.cuda.empty_cache()

    B, T = 256, 1024
    size = f"B={B} T={T}"
    logp = -torch.rand(B, T, device="cuda") * 5
    ref_logp = logp + 0.1 * torch.randn(B, T, device="cuda")
    mask = torch.arange(T, device="cuda")[None] < torch.randint(1, T + 1, (B, 1), device="cuda")
    scores, values = torch.randn(B, device="cuda"), torch.randn(B, T, device="cuda")
    with torch.no_grad():
        for kind in ("k1", "k3"):
            measure(rows, f"kl_estimate {kind}", size, 12 * B * T, {
                "eager": lambda: kl.kl_estimate_ref(logp, ref_logp, kind),
                "compiled": lambda: compiled[kl.kl_estimate_ref](logp, ref_logp, kind),
                "triton": lambda: kl.kl_estimate_triton(logp, ref_logp, kind)}, bandwidth)
        measure(rows, "penalized_rewards k1", size, 13 * B * T, {
            "eager": lambda: kl.penalized_rewards_ref(scores, logp, ref_logp, mask, 0.05),
            "compiled": lambda: compiled[kl.penalized_rewards_ref](scores, logp, ref_logp, mask, 0.05),
            "triton": lambda: kl.penalized_rewards_triton(scores, logp, ref_logp, mask, 0.05)}, bandwidth)
        print("  (compiling the 1024-step GAE loop can take minutes)", file=sys.stderr)
        measure(rows, "gae", size, 17 * B * T, {
            "eager": lambda: gae_mod.gae_ref(logp, values, mask, 0.99, 0.95),
            "compiled": lambda: compiled[gae_mod.gae_ref](logp, values, mask, 0.99, 0.95),
            "triton": lambda: gae_mod.gae_triton(logp, values, mask, 0.99, 0.95)}, bandwidth)

    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"device-to-device copy: {bandwidth:,.0f} GB/s\n")
    print("| op | size | impl | time (ms) | GB/s | % of copy | peak extra mem (MiB) "
          "| max\\|diff\\| vs eager |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
