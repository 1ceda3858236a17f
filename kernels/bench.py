"""GPU benchmark: the Triton kernels against eager PyTorch and torch.compile (`make bench`).

    python -m kernels.bench          # the GPU tables below (needs CUDA)
    python -m kernels.bench --cpu    # linear_logprobs' torch reference against the unfused path
                                     # on the CPU, 2 threads: time and peak RSS, see cpu_main()

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

The fused linear log-prob (hidden (N,C), unembedding (V,C) -> log p, H; kernels.linear_logprobs)
gets a second table: unfused eager (hidden @ W^T, then the log-prob reference), torch.compile of
it, and the Triton kernels, at N = 8k, 32k with (V, C) = (50,257, 768) for GPT-2 and (128,256,
4096) for Llama 3 8B, bf16. It is compute-bound, so the rate is TFLOP/s of the model's matmuls
(2NVC forward, 6NVC forward+backward; the fused backward does 8NVC, it recomputes the logits).
Its peak memory is compared with the target 1.1 x (hidden + W + their gradients): the inputs
plus the extra memory of one call.

Needs CUDA and triton; a cell that runs out of memory prints OOM. Results: kernels/BENCH.md.
"""
import os
import statistics
import subprocess
import sys
import time

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


def measure(rows, op, size, impls, cells):
    """impls: name -> zero-argument callable; cells(ms, peak extra bytes) -> the row's middle
    columns. Appends one table row per implementation."""
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
            rows.append(f"| {op} | {size} | {name} | {ms:.3f} | {cells(ms, peak_extra_bytes(fn))} | {diff} |")
        except torch.cuda.OutOfMemoryError:
            rows.append(f"| {op} | {size} | {name} | OOM | | | | |")
            torch.cuda.empty_cache()


def bandwidth_cells(nbytes, bandwidth):
    """GB/s for nbytes moved, as a share of the measured copy bandwidth, and the peak in MiB."""
    def cells(ms, mem):
        gbs = nbytes / ms / 1e6
        return f"{gbs:,.0f} | {100 * gbs / bandwidth:.0f}% | {mem / 2**20:,.0f}"
    return cells


def linear_cells(flops, target_bytes, input_bytes):
    """TFLOP/s, the peak in MiB, and (inputs + peak) against target_bytes."""
    return lambda ms, mem: (f"{flops / ms / 1e9:,.0f} | {mem / 2**20:,.0f} | "
                            f"{(input_bytes + mem) / target_bytes:.2f}")


def linear_fwd_bwd(f, h, w, t):
    """A callable running f(h, w, t) forward and backward; returns (dh, dW) of sum(log p + H)."""
    def run():
        logp, entropy = f(h, w, t)
        return torch.autograd.grad(logp.sum() + entropy.sum(), (h, w))
    return run


LINEAR_SHAPES = ((8192, 50257, 768), (8192, 128256, 4096), (32768, 50257, 768), (32768, 128256, 4096))


def linear_rows(shapes=LINEAR_SHAPES, device="cuda"):
    """(N, V, C) -> table rows; device and shapes are parameters only for a smoke run on CPU."""
    from kernels import linear_logprob as LL
    compiled = torch.compile(LL.linear_logprobs_unfused, dynamic=False)
    rows = []
    for N, V, C in shapes:
        size = f"N={N // 1024}k V={V:,} C={C}"
        h = (torch.randn(N, C, device=device) * 2).bfloat16().requires_grad_()
        w = (torch.randn(V, C, device=device) / C ** 0.5).bfloat16().requires_grad_()
        t = torch.randint(0, V, (N,), device=device)
        io = 2 * (N + V) * C                                  # bytes of h and W (bf16)
        impls = {"eager": LL.linear_logprobs_unfused, "compiled": compiled,
                 "triton": LL.linear_logprobs_triton}
        with torch.no_grad():
            measure(rows, "linear_logprobs fwd", size, {name: (lambda f=f: f(h, w, t)) for name, f in impls.items()},
                    linear_cells(2 * N * V * C, 1.1 * io, io))
        measure(rows, "linear_logprobs fwd+bwd", size, {name: linear_fwd_bwd(f, h, w, t) for name, f in impls.items()},
                linear_cells(6 * N * V * C, 1.1 * 2 * io, io))
        del h, w, t
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def main():
    if "--cpu" in sys.argv[1:]:
        return cpu_main()
    if "--cpu-one" in sys.argv[1:]:
        return cpu_one(*sys.argv[sys.argv.index("--cpu-one") + 1:][:2])
    if not torch.cuda.is_available():
        _bail("needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured "
              "(python -m kernels.bench --cpu times linear_logprobs' CPU reference)")
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
                    measure(rows, f"{op} fwd", size, {
                        "eager": lambda: ref(x, t), "compiled": lambda: compiled[ref](x, t),
                        "triton": lambda: triton_fn(x, t)}, bandwidth_cells(logits_bytes + 16 * N, bandwidth))
                measure(rows, f"{op} fwd+bwd", size, {
                    "eager": fwd_bwd(ref, x, t), "compiled": fwd_bwd(compiled[ref], x, t),
                    "triton": fwd_bwd(triton_fn, x, t)}, bandwidth_cells(3 * logits_bytes + 16 * N, bandwidth))
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
            measure(rows, f"kl_estimate {kind}", size, {
                "eager": lambda: kl.kl_estimate_ref(logp, ref_logp, kind),
                "compiled": lambda: compiled[kl.kl_estimate_ref](logp, ref_logp, kind),
                "triton": lambda: kl.kl_estimate_triton(logp, ref_logp, kind)}, bandwidth_cells(12 * B * T, bandwidth))
        measure(rows, "penalized_rewards k1", size, {
            "eager": lambda: kl.penalized_rewards_ref(scores, logp, ref_logp, mask, 0.05),
            "compiled": lambda: compiled[kl.penalized_rewards_ref](scores, logp, ref_logp, mask, 0.05),
            "triton": lambda: kl.penalized_rewards_triton(scores, logp, ref_logp, mask, 0.05)}, bandwidth_cells(13 * B * T, bandwidth))
        print("  (compiling the 1024-step GAE loop can take minutes)", file=sys.stderr)
        measure(rows, "gae", size, {
            "eager": lambda: gae_mod.gae_ref(logp, values, mask, 0.99, 0.95),
            "compiled": lambda: compiled[gae_mod.gae_ref](logp, values, mask, 0.99, 0.95),
            "triton": lambda: gae_mod.gae_triton(logp, values, mask, 0.99, 0.95)}, bandwidth_cells(17 * B * T, bandwidth))

    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"device-to-device copy: {bandwidth:,.0f} GB/s\n")
    print("| op | size | impl | time (ms) | GB/s | % of copy | peak extra mem (MiB) "
          "| max\\|diff\\| vs eager |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))

    rows = linear_rows()
    print("\n| op | size | impl | time (ms) | TFLOP/s | peak extra mem (MiB) | peak / target "
          "| max\\|diff\\| vs eager |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))

# ----------------------------------------------------------------------------- CPU


CPU_SHAPES = {  # name: (tokens N, width C, vocabulary V)
    "demo": (32 * 60, 128, 258),     # make demo's tiny model and PPO batch
    "124M": (16 * 176, 768, 50257),  # GPT-2 124M, a 16 x 176-token PPO batch
}


def cpu_case(shape, impl):
    """fp32 inputs of a CPU_SHAPES entry and a zero-argument fwd+bwd callable for impl."""
    from kernels import linear_logprob as LL
    N, C, V = CPU_SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, C, generator=g).mul_(2).requires_grad_()         # logits ~ N(0, 4)
    w = torch.randn(V, C, generator=g).div_(C ** 0.5).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    f = {"fused": LL.linear_logprobs_ref, "unfused": LL.linear_logprobs_unfused}[impl]
    return linear_fwd_bwd(f, h, w, t)


def peak_rss_kib():
    # VmHWM, the peak RSS of this process image (getrusage's ru_maxrss would carry over the
    # peak of the parent that spawned it: Linux keeps it across fork and exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def cpu_one(shape, impl):
    """Peak RSS of one call, in a process of its own: prints it in MiB."""
    torch.set_num_threads(2)
    run = cpu_case(shape, impl)
    before = peak_rss_kib()
    run()
    print((peak_rss_kib() - before) / 1024)


def cpu_main():
    """Forward + backward of log p + H, fused (the chunked reference) against unfused (logits,
    then kernels.logprob's reference), fp32, torch.set_num_threads(2).

    time     the two alternate in one process, after a warm-up call each; median and min of
             the wall time and min of the process's CPU time (both threads; on a shared
             machine the min is the figure least moved by other processes)
    memory   the peak RSS of a fresh process during one call minus the peak before it (inputs
             made): the gradients, saved tensors and temporaries
    """
    torch.set_num_threads(2)
    rows, load = [], os.getloadavg()[0]
    for shape, repeats in (("demo", 30), ("124M", 3)):
        N, C, V = CPU_SHAPES[shape]
        runs = {impl: cpu_case(shape, impl) for impl in ("unfused", "fused")}
        wall, cpu = {impl: [] for impl in runs}, {impl: [] for impl in runs}
        print(f"  {shape} ...", file=sys.stderr, flush=True)
        for i in range(repeats + 1):
            for impl, run in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                run()
                if i:                                                # the first is the warm-up
                    wall[impl].append(time.perf_counter() - t0)
                    cpu[impl].append(time.process_time() - c0)
        for impl in runs:
            rss = subprocess.run([sys.executable, "-m", "kernels.bench", "--cpu-one", shape, impl],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(f"| {shape} N={N} C={C} V={V:,} | {impl} | {statistics.median(wall[impl]) * 1e3:,.1f} "
                        f"| {min(wall[impl]) * 1e3:,.1f} | {min(cpu[impl]) * 1e3:,.1f} "
                        f"| {float(rss.strip().splitlines()[-1]):,.0f} | {4 * (N + V) * C / 2**20:,.0f} |")
    print(f"\nCPU, torch {torch.__version__}, 2 threads; fwd+bwd of linear_logprobs, fp32; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| shape | impl | median (ms) | min (ms) | min CPU time (ms) | peak RSS over inputs (MiB) "
          "| inputs (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
