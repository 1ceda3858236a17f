"""PPO iteration time, nanoinstruct against TRL 1.12, side by side on this machine.

    python bench/ppo_vs_trl.py --trl_python=.venv-trl/bin/python --sizes=tiny,gpt2   (make bench-trl)

For each size, the two run alternately (ours, TRL, ours, TRL, ...: --rounds times each), in
fresh processes, on the same shapes (train_ppo.BENCH), so that a change of load on the
machine hits both. Each run reports its median seconds per iteration after the first; the
table gives the median over rounds, the ratio TRL / ours, and each side's peak RSS.
"""

import argparse
import re
import statistics
import subprocess
import sys

ITERS = {"tiny": 30, "gpt2": 3}         # iterations per run: the first is left out of the median
THREADS = {"tiny": 1, "gpt2": 2}


def timed(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = out.stdout + out.stderr
    m = re.search(r"([\d.]+)s per iteration.*?peak RSS ([\d.]+) Gi?B", text)
    if out.returncode or not m:
        sys.exit(f"{' '.join(cmd)} failed:\n{text[-2000:]}")
    return float(m.group(1)), float(m.group(2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trl_python", default=".venv-trl/bin/python")
    ap.add_argument("--sizes", default="tiny,gpt2")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.rounds < 1 or not set(args.sizes.split(",")) <= set(ITERS):
        ap.error(f"--rounds must be >= 1 and --sizes a comma list of {', '.join(ITERS)}")
    rows = []
    for size in args.sizes.split(","):
        common = [f"--threads={THREADS[size]}"]
        ours = [sys.executable, "train_ppo.py", f"--bench={size}", f"--max_iters={ITERS[size]}",
                f"--log_interval={ITERS[size]}", "--ppo_epochs=4", "--minibatches=1", *common]
        trl = [args.trl_python, "bench/trl_ppo.py", f"--size={size}", f"--iters={ITERS[size]}", *common]
        runs = {"ours": [], "trl": []}
        for _ in range(args.rounds):
            runs["ours"].append(timed(ours))
            runs["trl"].append(timed(trl))
            print(size, {k: v[-1] for k, v in runs.items()}, flush=True)
        t = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
        mem = {k: max(m for _, m in v) for k, v in runs.items()}
        rows.append(f"| {size} | {t['ours']:.3f} s | {t['trl']:.3f} s | {t['trl'] / t['ours']:.1f}x | "
                    f"{mem['ours']:.2f} GiB | {mem['trl']:.2f} GiB |")
    print("\n| size | nanoinstruct | TRL 1.12 | ratio | peak RSS ours | peak RSS TRL |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
