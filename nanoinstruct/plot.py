"""A run's training curves, from its metrics.jsonl, drawn into curves.png beside it.

    python -m nanoinstruct.plot out/sft out/rm out/ppo_ptx

Each numeric metric a stage logs gets a panel against the iteration; `x` and `val_x` share
one (loss and lr for pretraining and SFT; loss, accuracy and lr for the reward model;
score, gold, kl, entropy, the clip fractions and the rest for PPO, README "Metrics").
A PPO run on the world's prompts, which logs `gold` beside the reward model's `score`, gets
one more panel: both against the KL from the SFT model. The proxy keeps rising where the
gold score turns down: reward over-optimisation (Gao et al. 2022). `ppo_curve` reads those
points for the evaluation's report.

The stage scripts draw it when a run ends; this command redraws any run, e.g. while it runs.
"""

import json
import math
import os
import sys
from dataclasses import dataclass

from nanoinstruct.cli import UserError

SKIP = ("iter", "elapsed", "seconds")   # the x axis, and wall-clock bookkeeping


def read_metrics(path):
    """metrics.jsonl -> its rows (dicts with a number for "iter"). A torn last line (a run
    killed mid-write), or any line that is not such a row, is skipped."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and number(row.get("iter")):
                rows.append(row)
    return rows


def number(v):
    """An int or float (not a bool) that a panel can draw: finite, and below 1e100 in size
    (matplotlib overflows on its axis near 1e308; no metric here comes near either)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return abs(float(v)) < 1e100               # False for NaN and inf
    except OverflowError:                          # an int beyond any float
        return False


CURVE = ("iter", "kl", "score", "gold")


def ppo_curve(path):
    """Reward over-optimisation on record (Gao et al. 2022): the rows of a PPO run's
    metrics.jsonl, beside its checkpoint, that logged `gold` (prompts with the world's
    metadata) -> {"iter", "kl", "score", "gold"}, each a list over the logged iterations: the
    KL from SFT (nats per response), the reward model's mean score and the training labeler's
    noise-free gold score of that iteration's rollouts. None for any other run. A resumed
    run logs some iterations twice: the last row of each counts."""
    from nanoinstruct.checkpoint import CKPT
    if os.path.basename(os.path.normpath(path)) in (CKPT, CKPT + ".old"):
        path = os.path.dirname(os.path.normpath(path))          # given the checkpoint inside the run
    f = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(f):
        return None
    try:
        rows = {r["iter"]: r for r in read_metrics(f) if all(number(r.get(k)) for k in CURVE)}
    except OSError as e:
        raise UserError(f"{f}: cannot be read ({e})")
    rows = [rows[i] for i in sorted(rows)]
    return {k: [r[k] for r in rows] for k in CURVE} if rows else None


def series(rows):
    """rows -> {panel: {metric: ([iter], [value])}}: finite numbers only; val_x joins x."""
    panels = {}
    for row in rows:
        for k, v in row.items():
            if k in SKIP or not number(v):
                continue
            xs, ys = panels.setdefault(k.removeprefix("val_"), {}).setdefault(k, ([], []))
            xs.append(row["iter"])
            ys.append(v)
    return panels


def curves(out_dir):
    """Draw out_dir/metrics.jsonl into out_dir/curves.png; -> its path, or None without metrics."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    fig = figure(read_metrics(path), os.path.normpath(out_dir))
    if fig is None:
        return None
    png = os.path.join(out_dir, "curves.png")
    fig.savefig(png, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return png


def figure(rows, title):
    """metrics rows -> the figure of their panels (matplotlib), or None without numbers."""
    panels = series(rows)
    if not panels:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gold = [r for r in rows if all(number(r.get(k)) for k in ("gold", "kl", "score"))]
    n = len(panels) + bool(gold)
    cols = min(4, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.6 * cols, 2.6 * math.ceil(n / cols)),
                             squeeze=False)
    axes = axes.flatten()
    for ax, (panel, lines) in zip(axes, panels.items()):
        for name, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, ms=3, label=name)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    if gold:  # reward over-optimisation: proxy and gold against the KL from the reference
        ax = axes[len(panels)]
        kl = [r["kl"] for r in gold]
        ax.plot(kl, [r["score"] for r in gold], ".", ms=3, label="reward model score")
        ax.plot(kl, [r["gold"] for r in gold], ".", ms=3, label="gold score")
        ax.set_title("score and gold vs KL from SFT", fontsize=9)
        ax.set_xlabel("KL (nats per response)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None):
    from nanoinstruct.cli import parse_flags

    @dataclass
    class Config:
        runs: str = ""          # comma-separated run directories (or give them as arguments)

    argv = sys.argv[1:] if argv is None else list(argv)
    dirs = [a for a in argv if not a.startswith("--")]
    cfg = parse_flags(Config, [a for a in argv if a.startswith("--")])
    dirs += list(filter(None, cfg.runs.split(",")))
    if not dirs:
        raise UserError("give one or more run directories: python -m nanoinstruct.plot out/sft out/rm")
    for d in dirs:
        png = curves(d)
        if png is None:
            raise UserError(f"{d}: no metrics.jsonl with logged iterations")
        print(png)


if __name__ == "__main__":
    from nanoinstruct.cli import cli_main
    cli_main(main)
