"""The evaluation's report: report.json, report.md (the tables) and report.png (the bars and
the PPO runs' over-optimisation curves),
and the merge of several seeds' reports into means with their spread (make paper).
evaluate.py measures; this file only lays the numbers out."""

import json
import math
import os

COLUMNS = [("winrate", "win rate", "{:.1%}"), ("winrate_length_controlled", "win rate, no length", "{:.1%}"),
           ("gold_score", "gold", "{:+.2f}"), ("reward_score", "RM score", "{:+.2f}"), ("correct", "correct", "{:.0%}"),
           ("follows_instruction", "follows", "{:.0%}"), ("constraint_ok", "constraint", "{:.0%}"),
           ("hallucination", "halluc.", "{:.0%}"), ("false_premise_corrected", "premise fixed", "{:.0%}"),
           ("unsafe_refused", "unsafe refused", "{:.0%}"), ("over_refusal", "over-refusal", "{:.0%}"),
           ("pretrain_loss", "pretrain loss", "{:.3f}"), ("n_params", "params", "{:,.0f}"),
           ("mean_length", "length", "{:.1f}")]


def cell(fmt, value, spread=None):
    if value is None:
        return "n/a"
    s = fmt.format(value)
    return s if spread is None else f"{s} ± {fmt.format(spread).lstrip('+')}"


def row(name, values, spread, keys_fmts):
    """A table row; a key the model does not have is an empty cell (None, a rate that applies
    to no prompt, is n/a)."""
    return f"| {name} | " + " | ".join(cell(fmt, values[k], spread.get(k)) if k in values else ""
                                       for k, fmt in keys_fmts) + " |"


def style_control(models, baseline):
    """Lines that read each NAME_terse control row (NAME's samples, padding removed) against the
    models that beat the baseline: a model that does not beat the control's win rate, or NAME's
    fraction correct, has gained style, not substance."""
    def pct(name, key):
        return cell("{:.1%}", models[name].get(key))

    lines = []
    for t in [n for n in models if n.endswith("_terse") and n[:-len("_terse")] in models]:
        src, control = t[:-len("_terse")], models[t]
        lines.append(f"\nStyle control: **{t}** is {src}'s own samples with the demonstrators' padding "
                     f"removed, a change of style only: win rate {pct(t, 'winrate')} against {baseline} "
                     f"({pct(t, 'winrate_length_controlled')} with length controlled), correct "
                     f"{pct(t, 'correct')} ({src}: {pct(src, 'correct')}).")
        for n, m in models.items():
            values = (m.get("winrate"), control.get("winrate"), m.get("correct"), models[src].get("correct"))
            if n in (t, src) or n.endswith("_terse") or None in values or m["winrate"] <= 0.5:
                continue
            beyond = values[0] > values[1] and values[2] > values[3]
            lines.append(f"- {n}: win rate {pct(n, 'winrate')} against {t}'s {pct(t, 'winrate')}; correct "
                         f"{pct(n, 'correct')} against {src}'s {pct(src, 'correct')}: "
                         + ("a gain beyond style." if beyond else "**no gain beyond style**."))
    return lines


def overoptimisation(curves, spread):
    """A table of each PPO run's logged iterations: KL from SFT, reward-model score, gold."""
    if not curves:
        return []
    lines = ["", "Reward over-optimisation (Gao et al. 2022), each PPO run's rollouts as it logged them: "
                 "the reward model's mean score and the training labeler's noise-free gold score, against "
                 "the KL from SFT (nats per response). Where gold turns down while the score rises, PPO "
                 "is exploiting the reward model.", "",
             "| model | iteration | KL | RM score | gold |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, c in curves.items():
        s = spread.get(name) or {}
        for i, it in enumerate(c["iter"]):
            lines.append(f"| {name} | {it:.0f} | " + " | ".join(
                cell(fmt, c[k][i], (s.get(k) or [None] * len(c[k]))[i])
                for k, fmt in (("kl", "{:.2f}"), ("score", "{:+.2f}"), ("gold", "{:+.2f}"))) + " |")
    return lines


def judge_name(name):
    """A world labeler's name, or a reward model's checkpoint path (the paper's proxy)."""
    return f"the **{name}** labeler" if name in ("heldout", "train") else f"the reward model **{name}**"


def markdown(report):
    models, spread = report["models"], report.get("spread", {}).get("models", {})
    columns = [c for c in COLUMNS if any(c[0] in m for m in models.values())]   # the measured ones
    lines = []
    if models:
        lines = [f"Judged by {judge_name(report['labeler'])}; win rate against **{report['baseline']}**"
                 + (f"; mean ± std over {report['n_seeds']} seeds" if "n_seeds" in report else "") + ".", "",
                 "| model | " + " | ".join(title for _, title, _ in columns) + " |",
                 "| --- |" + " ---: |" * len(columns)]
    for name, m in models.items():
        lines.append(row(name, m, spread.get(name, {}), [(k, fmt) for k, _, fmt in columns]))
    families = sorted({f for m in models.values() for f in m.get("correct_by_family", {})})
    if families:
        lines += ["", "Correct, by task family:", "", "| model | " + " | ".join(families) + " |",
                  "| --- |" + " ---: |" * len(families)]
        for name, m in models.items():
            lines.append(row(name, m.get("correct_by_family", {}),
                             spread.get(name, {}).get("correct_by_family", {}), [(f, "{:.0%}") for f in families]))
    lines += style_control(models, report["baseline"])
    for other, by_model in report.get("labelers", {}).items():
        if other != report["labeler"]:
            lines.append(f"\nJudged by {judge_name(other)}: " + ", ".join(
                f"{n} {cell('{:.1%}', v.get('winrate'))} " + (
                    f"(RM score {cell('{:+.2f}', v.get('reward_score'))})" if "reward_score" in v else
                    f"({cell('{:.1%}', v.get('winrate_length_controlled'))} with length controlled, "
                    f"gold {cell('{:+.2f}', v.get('gold_score'))})")
                for n, v in by_model.items()) + ".")
    for pair, by_judge in report.get("versus", {}).items():
        s = report.get("spread", {}).get("versus", {}).get(pair, {})
        lines.append(f"\nHead to head, {pair}: " + ", ".join(
            f"{cell('{:.1%}', w, s.get(j))} ({judge_name(j).replace('**', '')})" for j, w in by_judge.items()) + ".")
    rm = report.get("reward_model")
    if rm:
        lines.append(f"\nReward model: pairwise accuracy {cell('{:.1%}', rm['accuracy'])} on held-out comparisons"
                     + ("." if rm.get("labeler_agreement") is None else
                        f"; the labelers agree on {cell('{:.1%}', rm['labeler_agreement'])} of them "
                        "(inter-labeler agreement, the paper's yardstick; not a ceiling: a model of one "
                        "labeler can agree with it more often than another labeler does)."))
        if rm.get("right_over_wrong") is not None:
            lines.append(f"On the {rm['right_over_wrong_pairs']:.0f} pairs of which exactly one response is right, "
                         f"it scores the right one higher {cell('{:.1%}', rm['right_over_wrong'])} of the time.")
        by_family, pairs = rm.get("right_over_wrong_by_family", {}), rm.get("right_over_wrong_pairs_by_family", {})
        if by_family:
            lines.append("By task family (pairs): " + ", ".join(
                f"{f} {cell('{:.0%}', v)} ({pairs.get(f, 0):.0f})" for f, v in by_family.items()) + ".")
    lines += overoptimisation(report.get("ppo_curves", {}), report.get("spread", {}).get("ppo_curves", {}))
    if report.get("seconds"):
        lines.append("\nWall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items())
                     + f" (total {sum(report['seconds'].values()):.0f}).")
    return "\n".join(lines) + "\n"


def plot(report, path):
    """report.png: a bar panel per rate, then the PPO runs' gold and reward-model score
    against KL (ppo_curves), if any. -> the figure (closed), or None without models."""
    if not report["models"]:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(report["models"])
    spread = report.get("spread", {}).get("models", {})
    keys = [k for k, _, fmt in COLUMNS if fmt.endswith("%}")                 # the win rates and the rates
            and any(k in m for m in report["models"].values())]
    curves = report.get("ppo_curves", {})
    n = len(keys) + bool(curves)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * max(n, 2), 3.2), squeeze=False)
    axes = axes[0]
    if curves:  # reward over-optimisation: proxy and gold against the KL from SFT
        ax = axes[-1]
        for i, (name, c) in enumerate(curves.items()):   # points: KL need not rise every iteration
            ax.plot(c["kl"], c["score"], "x", ms=4, color=f"C{i}", label=f"{name} RM score")
            ax.plot(c["kl"], c["gold"], "o", ms=3, color=f"C{i}", label=f"{name} gold")
        ax.set_title("score and gold vs KL from SFT", fontsize=8)
        ax.set_xlabel("KL (nats per response)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax, k in zip(axes, keys):
        if ax is not axes[0]:
            ax.sharey(axes[0])
            ax.tick_params(labelleft=False)
        vals = [report["models"][n].get(k) for n in names]
        err = [spread.get(n, {}).get(k) or 0 for n in names] if spread else None
        ax.bar(range(len(names)), [v or 0 for v in vals], yerr=err, color="C0")
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_title(k.replace("_", " ").replace("length controlled", "no length"), fontsize=8)
        ax.set_ylim(0, 1)
        if k.startswith("winrate"):
            ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    fig.suptitle(f"vs {report['baseline']}, judged by {judge_name(report['labeler']).replace('**', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return fig


def write_report(report, out_dir):
    """report.json, report.md and report.png, each written beside itself and renamed into
    place once all three are made: a report that cannot be laid out, or a run stopped while
    writing, leaves the old files whole."""
    md = markdown(report)
    os.makedirs(out_dir, exist_ok=True)
    tmp = {name: os.path.join(out_dir, f".{name}.tmp-{os.getpid()}")
           for name in ("report.json", "report.md", "report.png")}
    try:
        plot(report, tmp["report.png"])
        with open(tmp["report.json"], "w") as f:
            json.dump(report, f, indent=1)
        with open(tmp["report.md"], "w") as f:
            f.write(md)
        for name, path in tmp.items():
            if os.path.exists(path):                   # no png without models
                os.replace(path, os.path.join(out_dir, name))
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)


def aggregate(reports):
    """Several seeds' reports -> one: every number the mean over the seeds that have it, its
    standard deviation under "spread" (same shape; nested dicts such as correct_by_family
    too, and lists of numbers point by point, as the PPO curves), n_seeds the count. A key
    that some seed lacks, or a PPO curve logged at other iterations, is left out."""
    def merge(values):
        if isinstance(values[0], dict):
            keys = [k for k in values[0] if all(isinstance(v, dict) and k in v for v in values)]
            pairs = {k: merge([v[k] for v in values]) for k in keys}
            return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
        if all(isinstance(v, list) and v and len(v) == len(values[0]) for v in values) \
                and all(isinstance(x, (int, float)) for x in values[0]):   # a curve: point by point
            pairs = [merge(list(column)) for column in zip(*values)]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums and all(v is None or v in nums for v in values):
            mean = sum(nums) / len(nums)
            return mean, math.sqrt(sum((v - mean) ** 2 for v in nums) / max(1, len(nums) - 1))
        return values[0], None
    # a PPO curve is averaged over the seeds only where every seed logged the same iterations
    first = reports[0].get("ppo_curves", {})
    same = {n for n, c in first.items() if all(r.get("ppo_curves", {}).get(n, {}).get("iter") == c.get("iter")
                                               for r in reports)}
    reports = [{**r, "ppo_curves": {n: c for n, c in r["ppo_curves"].items() if n in same}} if "ppo_curves" in r
               else r for r in reports]
    if not same:
        reports = [{k: v for k, v in r.items() if k != "ppo_curves"} for r in reports]
    mean, spread = merge(reports)
    return {**mean, "spread": spread, "n_seeds": len(reports)}
