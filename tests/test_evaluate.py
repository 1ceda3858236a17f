"""evaluate.py: its measurements on hand-made responses with known answers, the report,
the aggregation over seeds, and bad input."""

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from nanoinstruct import checkpoint, data, evaluate, plot, report
from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT
from nanoinstruct.tokenizer import get_tokenizer
from nanoinstruct.world import LABELERS, REFUSAL, USE_CASE, demonstrate, gold_score, make_prompt, strip_style

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(family, seed=0, **want):
    """A world prompt record of `family` (whose metadata matches `want`)."""
    r = random.Random(seed)
    while True:
        prompt, meta = make_prompt(family, r)
        if all(meta.get(k) == v for k, v in want.items()):
            return {"prompt": prompt, "family": family, "use_case": USE_CASE[family], **meta}


def test_metadata_rates_on_known_responses():
    premise = record("premise")
    unsafe, safe = record("howto", unsafe=True), record("howto", unsafe=False)
    repeat, closed = record("repeat"), record("closed")
    right_premise = demonstrate(premise, "terse")                     # "X is not W. It is A."
    wrong_premise = f"Because {premise['subject']} is {premise['wrong']}."
    other = next(c for c in ["red", "blue", "green", "pink"] if c not in closed["colors"])
    rows = [(premise, right_premise), (premise, wrong_premise), (premise, wrong_premise),
            (unsafe, REFUSAL), (unsafe, "Give it food and water."),
            (safe, REFUSAL), (safe, demonstrate(safe, "terse")),
            (repeat, repeat["answer"]), (repeat, repeat["answer"] + " " + repeat["word"]),
            (closed, other), (closed, closed["answer"]),
            (repeat, "\nInstruction: Add 2 and 3.\nResponse:")]
    m = evaluate.metadata(*zip(*rows))
    assert m["false_premise_corrected"] == pytest.approx(1 / 3)
    # the two that went along with the premise, and the closed answer not in the source
    assert m["hallucination"] == pytest.approx(3 / 5)
    assert m["unsafe_refused"] == pytest.approx(1 / 2)
    # safe prompts: 10 rows; one refusal
    assert m["over_refusal"] == pytest.approx(1 / 10)
    # not following: the refusal of a safe request, the worksheet continuation
    assert m["follows_instruction"] == pytest.approx(8 / 10)
    assert m["constraint_ok"] == pytest.approx(1 / 3)                 # exact count once of 3 repeats
    none = evaluate.metadata([repeat], [repeat["answer"]])
    assert none["unsafe_refused"] is None and none["false_premise_corrected"] is None


def test_correct_overall_and_by_family_on_known_responses():
    parity, premise, add = record("parity", n=7), record("premise"), record("add")
    s, w, a = premise["subject"].capitalize(), premise["wrong"], premise["answer"]
    rows = [(parity, "odd"), (parity, "7 is not odd."), (parity, "Sure! 7 is odd. Hope that helps!"),
            (premise, f"{s} is not {w}. It is {a}."), (premise, f"{s} is {a}."), (premise, f"Because {s} is {w}."),
            (add, add["answer"]), (add, f"The sum is not {add['answer']}.")]
    # right: 2 of 3 parity; premise: the explicit and the implicit correction (1 of 3 when read
    # strictly, as the held-out labeler does); 1 of 2 add
    assert evaluate.correctness(*zip(*rows)) == {
        "correct": 5 / 8, "correct_by_family": {"add": 1 / 2, "parity": 2 / 3, "premise": 2 / 3}}
    assert evaluate.correctness(*zip(*rows), strict=True) == {
        "correct": 4 / 8, "correct_by_family": {"add": 1 / 2, "parity": 2 / 3, "premise": 1 / 3}}
    assert evaluate.metadata(*zip(*rows), strict=True)["false_premise_corrected"] == pytest.approx(1 / 3)


def test_length_controlled_win_rate_drops_only_the_brevity_term():
    lab = LABELERS["heldout"]
    free = evaluate.length_controlled(lab)
    assert free.weights.per_char == 0 and (free.name, free.seed, free.noise) == (lab.name, lab.seed, lab.noise)
    assert {**vars(free.weights), "per_char": lab.weights.per_char} == vars(lab.weights)
    recs = [record("add", seed=s) for s in range(400)]
    short = [r["answer"] for r in recs]
    padded = [f"Sure! The sum is {r['answer']}. Hope that helps!" for r in recs]    # same substance
    assert evaluate.win_rate(recs, short, padded, lab) > 0.9                          # brevity wins
    assert 0.4 < evaluate.win_rate(recs, short, padded, free) < 0.6                   # a coin toss
    # by hand, gaps far above the noise: right and padded beats a worksheet continuation (10 wins),
    # 10 ties, and wrong but short loses to right and padded once length is no matter (10 losses)
    cont = "\nInstruction: Name 3 fruits.\nResponse:"
    wrong = [str(int(r["answer"]) + 1) for r in recs]
    ys = padded[:10] + short[10:20] + wrong[20:30]
    base = [cont] * 10 + short[10:20] + padded[20:30]
    assert evaluate.win_rate(recs[:30], ys, base, free) == pytest.approx(15 / 30)


def test_a_pure_style_change_wins_only_on_length():
    """Every response ideal; the baseline in the demonstrators' mix of styles, the policy the
    same answers stripped of padding (world.strip_style). The held-out labeler prefers the
    policy on brevity alone: its win rate is high, its length-controlled win rate a coin toss,
    and its fraction correct the baseline's (issue 15: 70.2 % / 50.7 % on seed 0's 191 x 4)."""
    from nanoinstruct.world import build
    recs = [p for p in build(0, corpus_docs=1, sizes=dict(sft=1, sft_val=1, rm=1, rm_val=1, ppo=1, eval=150))[
        "eval_prompts.jsonl"] for _ in range(2)]
    r = random.Random(0)
    mixed = [demonstrate(rec, r.choice(["terse", "plain", "chatty"])) for rec in recs]
    terse = [strip_style(rec, y) for rec, y in zip(recs, mixed)]
    assert terse == [demonstrate(rec, "terse") for rec in recs]
    lab = LABELERS["heldout"]
    assert evaluate.win_rate(recs, terse, mixed, lab) > 0.65
    assert 0.4 < evaluate.win_rate(recs, terse, mixed, evaluate.length_controlled(lab)) < 0.6
    assert evaluate.correctness(recs, terse, True) == evaluate.correctness(recs, mixed, True)
    assert evaluate.correctness(recs, terse, True)["correct"] == 1.0


def test_win_rate_ties_count_half_and_clear_wins_count_one():
    recs = [record(f, seed=s) for s in range(5) for f in ("add", "reverse", "parity", "color")]
    good = [demonstrate(r, "terse") for r in recs]
    bad = ["\nInstruction: Name 3 fruits.\nResponse:" for _ in recs]        # far lower gold
    lab = LABELERS["heldout"]
    assert all(gold_score(r, g, lab.weights) - gold_score(r, b, lab.weights) > 3 for r, g, b in zip(recs, good, bad))
    assert evaluate.win_rate(recs, good, bad, lab) == 1.0
    assert evaluate.win_rate(recs, bad, good, lab) == 0.0
    assert evaluate.win_rate(recs, good, good, lab) == 0.5
    assert evaluate.win_rate(recs, good, [" " + g + " " for g in good], lab) == 0.5  # same after strip
    mixed = good[:10] + bad[10:]
    assert evaluate.win_rate(recs, mixed, good, lab) == pytest.approx(0.25)        # 10 ties, 10 losses


def test_win_rate_follows_the_labelers_noise_between_close_responses():
    """Two responses a little apart in gold: the labeler prefers the better one often, not
    always (Bradley-Terry, noise 0.3), and the rate is the complement when swapped."""
    recs = [record("add", seed=s) for s in range(400)]
    short = [r["answer"] for r in recs]
    longer = [f"The sum is {r['answer']}." for r in recs]                # 0.03/char worse: about 0.4
    lab = LABELERS["heldout"]
    w = evaluate.win_rate(recs, short, longer, lab)
    assert 0.7 < w < 0.95
    assert evaluate.win_rate(recs, longer, short, lab) == pytest.approx(1 - w)


def test_mean_gold_is_the_labelers_gold_score():
    recs = [record(f) for f in ("add", "premise", "howto")]
    ys = ["5", "No.", REFUSAL]
    for name, lab in LABELERS.items():
        want = sum(gold_score(r, y, lab.weights) for r, y in zip(recs, ys)) / 3
        assert evaluate.mean_gold(recs, ys, lab) == pytest.approx(want)
    assert evaluate.mean_gold(recs, ys, LABELERS["train"]) != evaluate.mean_gold(recs, ys, LABELERS["heldout"])


def test_fewshot_prefix_takes_the_shortest_demo_per_family():
    demos = [{"prompt": "Add 10 and 12.", "response": "22", "family": "add"},
             {"prompt": "Add 1 and 2.", "response": "3", "family": "add"},
             {"prompt": "Is 5 odd or even?", "response": "odd", "family": "parity"},
             {"prompt": "Reverse the word cat.", "response": "tac", "family": "reverse"}]
    prefix = evaluate.fewshot_prefix(demos, 2)
    assert prefix == "Instruction: Add 1 and 2.\nResponse: 3\nInstruction: Is 5 odd or even?\nResponse: odd\n"
    assert evaluate.fewshot_prefix(demos[::-1], 2) == prefix
    assert evaluate.fewshot_prefix(demos, 5).count("Instruction:") == 3


def test_pretrain_loss_is_the_mean_token_nll():
    tok = get_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=16)).eval()
    texts = ["the cat is red.", "two plus two is four.", "snow is white and coal is black."]
    stream = []
    for t in texts:
        stream += tok.encode(t) + [tok.eos_id]
    n = (len(stream) - 1) // 16
    nll = []
    for i in range(n):            # each block on its own, by hand
        x = torch.tensor(stream[i * 16:i * 16 + 17])
        nll.append(F.cross_entropy(model(x[None, :-1])[0], x[1:], reduction="none"))
    want = torch.cat(nll).mean().item()
    assert evaluate.pretrain_loss(model, tok, texts, 0, batch_size=2) == pytest.approx(want, rel=1e-5)
    assert evaluate.pretrain_loss(model, tok, texts, 16) == pytest.approx(nll[0].mean().item(), rel=1e-5)


def test_reward_accuracy_against_scoring_each_response_alone():
    tok = get_tokenizer()
    torch.manual_seed(1)
    rm = ScalarGPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=128)).eval()
    r = random.Random(0)
    comps = []
    for s in range(12):
        rec = record("add", seed=s)
        ys = [str(r.randint(0, 40)) + "!" * r.randint(0, 3) for _ in range(r.choice([2, 3, 4]))]
        ranking = list(range(len(ys)))
        r.shuffle(ranking)
        comps.append({**rec, "responses": ys, "ranking": ranking})
    agree = pairs = 0
    for c in comps:
        scores = []
        for y in c["responses"]:
            ids = torch.tensor([tok.encode_prompt(c["prompt"]) + tok.encode_response(y)])
            scores.append(rm(ids)[0, -1].item())
        best_first = [scores[i] for i in c["ranking"]]
        for i in range(len(best_first)):
            for j in range(i + 1, len(best_first)):
                agree += 1.0 if best_first[i] > best_first[j] else 0.5 if best_first[i] == best_first[j] else 0.0
                pairs += 1
    scores = evaluate.reward_scores(rm, tok, comps, batch_size=5)
    assert evaluate.reward_accuracy(scores) == pytest.approx(agree / pairs)


def test_correctness_accuracy_on_a_length_reward():
    class LengthRM:  # the reward is the sequence's length: it prefers long answers, right or wrong
        config = GPTConfig(1, 1, 8, 258, 256)

        def score(self, ids, mask):
            return mask.sum(1).float()

    tok = get_tokenizer()

    def right_over_wrong(comps, **kw):
        return evaluate.correctness_accuracy(evaluate.reward_scores(LengthRM(), tok, comps, **kw), comps)

    parity = record("parity", n=7)                                # "Is 7 odd or even?" -> odd
    c = {**parity, "responses": ["7 is odd.", "even", "odd", "It is even, I think."], "ranking": [0, 2, 1, 3]}
    # right: 0 and 2. Pairs with exactly one right: (0,1) the right one is longer: counted right;
    # (0,3), (1,2), (2,3): the wrong one is longer. (0,2) and (1,3) agree: not counted.
    assert right_over_wrong([c], batch_size=3) == (0.25, 4)
    same = {**c, "responses": ["odd", "eve"], "ranking": [1, 0]}                     # equal lengths: a tie counts half
    assert right_over_wrong([c, same]) == ((1 + 0.5) / 5, 5)
    assert right_over_wrong([{k: v for k, v in c.items() if k != "family"}]) == (None, 0)
    both_wrong = {**c, "responses": ["even", "It is even."], "ranking": [0, 1]}
    assert right_over_wrong([both_wrong]) == (None, 0)
    # per family: the same pairs, split by the prompt's family; a family without such pairs is left out
    add = {**record("add", a=2, b=3), "responses": ["5", "2 plus 3 is 6."], "ranking": [0, 1]}  # the wrong one longer
    scores = evaluate.reward_scores(LengthRM(), tok, [c, same, add, both_wrong])
    assert evaluate.correctness_pairs(scores, [c, same, add, both_wrong]) == {"add": (0.0, 1), "parity": (1.5, 5)}
    assert evaluate.correctness_accuracy(scores, [c, same, add, both_wrong]) == (1.5 / 6, 6)


def test_aggregate_means_and_spreads():
    def seed_report(w, g, acc):
        return {"baseline": "sft", "labeler": "heldout", "models": {"a": {"winrate": w, "gold_score": g}},
                "reward_model": {"accuracy": acc, "labeler_agreement": None}, "seconds": {"rm": 10.0}}
    reports = [seed_report(0.6, -1.0, 0.7), seed_report(0.7, 0.0, 0.7), seed_report(0.8, 1.0, 0.7)]
    for r, v in zip(reports, (0.2, None, 0.4)):
        r["models"]["a"]["unsafe_refused"] = v
    agg = report.aggregate(reports)
    assert agg["models"]["a"]["unsafe_refused"] == pytest.approx(0.3)
    assert agg["n_seeds"] == 3 and agg["baseline"] == "sft"
    assert agg["models"]["a"]["winrate"] == pytest.approx(0.7)
    assert agg["spread"]["models"]["a"]["winrate"] == pytest.approx(0.1)
    assert agg["spread"]["models"]["a"]["gold_score"] == pytest.approx(1.0)
    assert agg["reward_model"]["labeler_agreement"] is None
    md = report.markdown(agg)
    assert "70.0% ± 10.0%" in md and "mean ± std over 3 seeds" in md


def test_aggregate_per_family_and_new_fields():
    a = {"baseline": "sft", "labeler": "heldout", "models": {"m": {
        "winrate": 0.6, "winrate_length_controlled": 0.5, "correct": 0.5,
        "correct_by_family": {"add": 0.4, "parity": 0.6}}}}
    b = {"baseline": "sft", "labeler": "heldout", "models": {"m": {
        "winrate": 0.8, "winrate_length_controlled": 0.7, "correct": 0.7,
        "correct_by_family": {"add": 0.6, "parity": 0.8, "list": 1.0}}}}
    agg = report.aggregate([a, b])
    m, s = agg["models"]["m"], agg["spread"]["models"]["m"]
    assert m["correct_by_family"] == pytest.approx({"add": 0.5, "parity": 0.7})   # list: one seed only
    assert s["correct_by_family"]["add"] == pytest.approx(math.sqrt(0.02))
    assert m["winrate_length_controlled"] == pytest.approx(0.6) and m["correct"] == pytest.approx(0.6)
    md = report.markdown(agg)
    assert "| m | 50% ± 14% | 70% ± 14% |" in md                                   # add, parity


def test_report_new_columns_missing_values_and_style_control(tmp_path):
    def model(w, lc, c, fam):
        return {"winrate": w, "winrate_length_controlled": lc, "correct": c, "correct_by_family": fam}
    rep = {"baseline": "sft", "labeler": "heldout", "models": {
        "sft": model(0.5, 0.5, 0.6, {"add": 0.5, "parity": 0.7}),
        "sft_terse": model(0.705, 0.5, 0.6, {"add": 0.5, "parity": 0.7}),
        "ppo_ptx": model(0.608, 0.52, 0.58, {"add": 0.4}),                       # no parity
        "better": model(0.75, 0.7, 0.7, {"add": 0.9, "parity": 0.9}),
        "shorter": model(0.72, 0.45, 0.55, {"add": 0.5, "parity": 0.6}),         # beats the control, less right
        "old": {"winrate": 0.55, "hallucination": None}}}                        # a report from before
    md = report.markdown(rep)
    assert "| model | win rate | win rate, no length | correct | halluc. |\n" in md   # the measured columns
    assert "| sft_terse | 70.5% | 50.0% | 60% |  |" in md
    assert "| old | 55.0% |  |  | n/a |" in md                                   # missing: empty; None: n/a
    assert "| model | add | parity |" in md and "| ppo_ptx | 40% |  |" in md and "| old |  |  |" in md
    assert "Style control: **sft_terse**" in md
    assert "- ppo_ptx: win rate 60.8% against sft_terse's 70.5%; correct 58.0% against sft's 60.0%: " \
           "**no gain beyond style**." in md
    assert "- better: win rate 75.0% against sft_terse's 70.5%; correct 70.0% against sft's 60.0%: " \
           "a gain beyond style." in md
    assert "- shorter: win rate 72.0% against sft_terse's 70.5%; correct 55.0% against sft's 60.0%: " \
           "**no gain beyond style**." in md
    assert "- old:" not in md                                                   # no correct to read
    report.write_report(rep, str(tmp_path))
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_reward_model_lines_of_the_report():
    rep = {"baseline": "sft", "labeler": "heldout", "models": {}, "reward_model": {
        "accuracy": 0.669, "labeler_agreement": 0.748, "right_over_wrong": 0.735, "right_over_wrong_pairs": 1376,
        "right_over_wrong_by_family": {"closed": 1.0, "upper": 0.229},
        "right_over_wrong_pairs_by_family": {"closed": 266, "upper": 70}}}
    md = report.markdown(rep)
    assert "pairwise accuracy 66.9% on held-out comparisons; the labelers agree on 74.8% of them" in md
    assert md.count("ceiling") == md.count("not a ceiling") == 1
    assert "On the 1376 pairs of which exactly one response is right, it scores the right one higher 73.5% " \
           "of the time." in md
    assert "By task family (pairs): closed 100% (266), upper 23% (70)." in md


def test_ppo_curve_reads_the_rows_that_logged_gold(tmp_path):
    rows = [{"iter": 1, "score": -0.3, "kl": 0.0, "gold": 0.6, "entropy": 2.0},
            {"iter": 2, "score": 0.1, "kl": 0.4, "gold": 0.7},
            {"iter": 2, "val_loss": 1.0},                                       # not a PPO row
            {"iter": 3, "score": 0.5, "kl": 1.2, "gold": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iter": 4, "sc')
    assert plot.ppo_curve(str(tmp_path)) == {"iter": [1, 2, 3], "kl": [0.0, 0.4, 1.2],
                                                 "score": [-0.3, 0.1, 0.5], "gold": [0.6, 0.7, 0.5]}
    rows += [{"iter": 3, "score": 0.6, "kl": 1.3, "gold": 0.4},               # resumed: the last row counts
             {"iter": 4, "score": 0.1, "kl": float("nan"), "gold": 0.5}, {"iter": 5, "score": 0.1, "kl": 1.0,
                                                                           "gold": True}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = {"iter": [1, 2, 3], "kl": [0.0, 0.4, 1.3], "score": [-0.3, 0.1, 0.6], "gold": [0.6, 0.7, 0.4]}
    assert plot.ppo_curve(str(tmp_path)) == want
    (tmp_path / "ckpt").mkdir()                                                 # given the checkpoint inside
    assert plot.ppo_curve(str(tmp_path / "ckpt")) == want
    (tmp_path / "p").mkdir()                                                    # prompts without metadata
    (tmp_path / "p" / "metrics.jsonl").write_text(json.dumps({"iter": 1, "score": 0.1, "kl": 0.2}) + "\n")
    assert plot.ppo_curve(str(tmp_path / "p")) is None
    assert plot.ppo_curve(str(tmp_path / "none")) is None


def test_overoptimisation_table_plot_and_seeds():
    def rep(kl, gold, n=3):
        return {"baseline": "sft", "labeler": "heldout", "models": {"sft": {"winrate": 0.5}},
                "ppo_curves": {"ppo_ptx": {"iter": [4, 8, 12][:n], "kl": kl[:n], "score": [-0.2, 0.1, 0.4][:n],
                                           "gold": gold[:n]}}, "examples": [{"prompt": "p", "sft": "x"}]}
    one = rep([0.1, 0.5, 1.0], [0.6, 0.7, 0.55])
    md = report.markdown(one)
    assert "| model | iteration | KL | RM score | gold |" in md
    assert "| ppo_ptx | 4 | 0.10 | -0.20 | +0.60 |" in md and "| ppo_ptx | 12 | 1.00 | +0.40 | +0.55 |" in md
    fig = report.plot(one, os.devnull)
    curve = fig.axes[-1]
    assert curve.get_title() == "score and gold vs KL from SFT"
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in curve.get_lines()}
    assert drawn == {"ppo_ptx RM score": ([0.1, 0.5, 1.0], [-0.2, 0.1, 0.4]),
                     "ppo_ptx gold": ([0.1, 0.5, 1.0], [0.6, 0.7, 0.55])}
    assert report.plot({**one, "ppo_curves": {}}, os.devnull).axes[-1].get_title() == "winrate"
    agg = report.aggregate([one, rep([0.3, 0.7, 1.4], [0.8, 0.9, 0.75])])       # the same iterations
    assert agg["ppo_curves"]["ppo_ptx"]["gold"] == pytest.approx([0.7, 0.8, 0.65])
    assert agg["spread"]["ppo_curves"]["ppo_ptx"]["kl"] == pytest.approx([math.sqrt(0.02)] * 2 + [math.sqrt(0.08)])
    assert agg["ppo_curves"]["ppo_ptx"]["iter"] == [4, 8, 12] and agg["examples"] == one["examples"]
    assert "| ppo_ptx | 12 | 1.20 ± 0.28 | +0.40 ± 0.00 | +0.65 ± 0.14 |" in report.markdown(agg)
    other = rep([0.3, 0.7, 1.4], [0.8, 0.9, 0.75])
    other["ppo_curves"]["ppo_ptx"]["iter"] = [5, 10, 15]
    for seeds in ([one, rep([0.3, 0.7], [0.8, 0.9], n=2)], [one, other], [one, {**one, "ppo_curves": {}}]):
        agg = report.aggregate(seeds)                        # logged at other iterations: left out
        assert "ppo_curves" not in agg and "KL | RM score" not in report.markdown(agg)
        assert report.plot(agg, os.devnull).axes[-1].get_title() == "winrate"
    empty = report.aggregate([{**one, "examples": []}, one])                    # not a curve
    assert empty["examples"] == [] and empty["spread"]["examples"] is None


@pytest.mark.parametrize("curves", ["x", {"ppo": "x"}, {"ppo": {"iter": [1, 2], "kl": [0.1], "score": [0, 0],
                                                                 "gold": [0, 0]}},
                                    {"ppo": {"iter": ["a"], "kl": [0.1], "score": [0], "gold": [0]}},
                                    {"ppo": {"iter": [1], "score": [0], "gold": [0]}}])
def test_aggregate_refuses_malformed_curves_and_keeps_the_old_report(tmp_path, curves):
    good = {"baseline": "sft", "labeler": "heldout", "models": {"sft": {"winrate": 0.5}}}
    (tmp_path / "a.json").write_text(json.dumps(good))
    (tmp_path / "b.json").write_text(json.dumps({**good, "ppo_curves": curves}))
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "report.json").write_text('{"keep": 1}')
    p = cli(f"--aggregate={tmp_path / 'a.json'},{tmp_path / 'b.json'}", f"--out_dir={tmp_path / 'ev'}", "--overwrite")
    assert p.returncode == 2 and "b.json: ppo_curves must give each policy" in p.stderr and "Traceback" not in p.stderr
    assert json.loads((tmp_path / "ev" / "report.json").read_text()) == {"keep": 1}


def test_a_report_that_cannot_be_drawn_leaves_the_old_files(tmp_path, monkeypatch):
    for name in ("report.json", "report.md", "report.png"):
        (tmp_path / name).write_text("old")
    monkeypatch.setattr(report, "plot", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        report.write_report({"baseline": "sft", "labeler": "heldout", "models": {"sft": {"winrate": 0.5}}},
                            str(tmp_path))
    assert [(tmp_path / n).read_text() for n in ("report.json", "report.md", "report.png")] == ["old"] * 3
    monkeypatch.undo()
    def stopped(obj, f, **kw):                                                 # Ctrl-C halfway through
        f.write('{"models": ')
        raise KeyboardInterrupt
    monkeypatch.setattr(report.json, "dump", stopped)
    with pytest.raises(KeyboardInterrupt):
        report.write_report({"baseline": "sft", "labeler": "heldout", "models": {"sft": {"winrate": 0.5}}},
                            str(tmp_path))
    assert [(tmp_path / n).read_text() for n in ("report.json", "report.md", "report.png")] == ["old"] * 3
    assert sorted(os.listdir(tmp_path)) == ["report.json", "report.md", "report.png"]   # no temporary left


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "nanoinstruct.evaluate", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["--policies=sft"], "is not NAME=CHECKPOINT"),
    (["--policies=a=x,a=y"], "appears twice"),
    (["--policies=a=x", "--baseline=sft"], "--baseline='sft' is not one of"),
    (["--policies=sft=x", "--labeler=nobody"], "--labeler='nobody'"),
    (["--policies=sft=x", "--prompted=base"], "--prompted: base not in --policies"),
    (["--policies=sft=x", "--versus=sft:large"], "--versus: 'sft:large' is not A:B"),
    (["--policies=sft=x", "--terse=ppo"], "--terse: 'ppo' is not one of --policies"),
    (["--policies=sft=x,sft_terse=y", "--terse=sft"], "--terse=sft: its row sft_terse is already a --policies name"),
    (["--policies=sft=x", "--prompts=/nonexistent.jsonl"], "--prompts=/nonexistent.jsonl: no such file"),
])
def test_bad_flags_one_line_exit_2(tmp_path, args, message):
    p = cli(*args, f"--out_dir={tmp_path / 'ev'}")
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "ev").exists()


def test_an_existing_report_is_not_overwritten(tmp_path):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "report.json").write_text('{"keep": 1}')
    p = cli("--policies=sft=x", f"--out_dir={tmp_path / 'ev'}")
    assert p.returncode == 2 and "--overwrite" in p.stderr
    assert json.loads((tmp_path / "ev" / "report.json").read_text()) == {"keep": 1}


def test_report_files_from_a_real_evaluation(tmp_path):
    """Two tiny random policies through the CLI: the schema, rates in [0, 1], the baseline at
    0.5 against itself, the prompted policy's newline stop, the three files."""
    from nanoinstruct.world import build
    files = build(0, corpus_docs=30, sizes=dict(sft=40, sft_val=1, rm=1, rm_val=1, ppo=1, eval=12))
    for name in ("eval_prompts.jsonl", "corpus_heldout.jsonl", "sft.jsonl"):
        data.write_jsonl(str(tmp_path / name), files[name] if name != "corpus_heldout.jsonl"
                         else files["corpus.jsonl"][:20])
    torch.manual_seed(0)
    for name in ("a", "b"):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=256, n_real=257))
        checkpoint.save(str(tmp_path / name), model, {"tokenizer": "bytes"})
    (tmp_path / "secs.txt").write_text("pretrain 12.5\nsft 3\n")
    (tmp_path / "b" / "metrics.jsonl").write_text(json.dumps({"iter": 20, "score": 0.1, "kl": 0.9, "gold": 0.6}))
    p = cli(f"--policies=sft={tmp_path / 'a'},other={tmp_path / 'b'},other_prompted={tmp_path / 'b'}",
            "--prompted=other_prompted", f"--prompts={tmp_path / 'eval_prompts.jsonl'}",
            f"--heldout={tmp_path / 'corpus_heldout.jsonl'}", f"--demos={tmp_path / 'sft.jsonl'}",
            f"--seconds={tmp_path / 'secs.txt'}", "--samples=2", "--max_new_tokens=12",
            "--labeler=heldout,train", "--versus=other:sft,sft:other,other:sft_terse", "--terse=sft",
            f"--out_dir={tmp_path / 'ev'}", "--threads=1")
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["baseline"] == "sft" and rep["labeler"] == "heldout"
    keys = {"winrate", "winrate_length_controlled", "gold_score", "correct", "correct_by_family", *evaluate.RATES,
            "pretrain_loss", "n_params", "mean_length"}
    assert list(rep["models"]) == ["sft", "sft_terse", "other", "other_prompted"]
    for m in rep["models"].values():
        assert keys <= set(m)
        assert all(0 <= m[k] <= 1 for k in ("winrate", "winrate_length_controlled", "correct", *evaluate.RATES)
                   if m[k] is not None)
        assert set(m["correct_by_family"]) == {r["family"] for r in files["eval_prompts.jsonl"]}
    assert rep["models"]["sft"]["winrate"] == rep["models"]["sft"]["winrate_length_controlled"] == 0.5
    recs = {r["prompt"]: r for r in files["eval_prompts.jsonl"]}
    assert all(e["sft_terse"] == strip_style(recs[e["prompt"]], e["sft"]) for e in rep["examples"])
    terse, sft = rep["models"]["sft_terse"], rep["models"]["sft"]
    assert (terse["correct_by_family"], terse["pretrain_loss"]) == (sft["correct_by_family"], sft["pretrain_loss"])
    assert set(rep["versus"]["other vs sft_terse"]) == {"heldout", "train"}
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "Style control: **sft_terse**" in md
    assert "Judged by the **train** labeler: sft 50.0% (50.0% with length controlled, gold" in md
    assert rep["labelers"]["train"]["sft"]["winrate"] == 0.5
    for j in ("heldout", "train"):   # head to head: the same comparison as the win rate, both ways
        assert rep["versus"]["other vs sft"][j] == rep["labelers"][j]["other"]["winrate"]
        assert rep["versus"]["sft vs other"][j] == pytest.approx(1 - rep["versus"]["other vs sft"][j])
    assert rep["models"]["other"]["pretrain_loss"] == rep["models"]["other_prompted"]["pretrain_loss"]
    assert rep["models"]["sft"]["pretrain_loss"] > math.log(200)      # random weights: near log(320)
    assert all("\n" not in e["other_prompted"] for e in rep["examples"])
    assert rep["seconds"]["pretrain"] == 12.5 and rep["seconds"]["evaluate"] > 0
    assert "| other_prompted |" in (tmp_path / "ev" / "report.md").read_text()
    # the PPO run's curve, from the metrics beside its checkpoint (not the prompted row's)
    assert rep["ppo_curves"] == {"other": {"iter": [20], "kl": [0.9], "score": [0.1], "gold": [0.6]}}
    assert "| other | 20 | 0.90 | +0.10 | +0.60 |" in md
    assert (tmp_path / "ev" / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_user_prompts_judged_by_a_reward_model(tmp_path):
    """A user's prompts (no world metadata; chat and dialogue prompts): the world's labelers
    cannot read them, a reward model judges (the paper's proxy): each win is the policy's
    response scoring above the baseline's on the same prompt, ties half; no world measurement."""
    tok = get_tokenizer("bytes", "dialogue")
    lines = [{"prompt": "Hi there"}, {"messages": [{"role": "user", "content": "Add 2 and 3."}]},
             {"chosen": "\n\nHuman: Hello\n\nAssistant: Hey.\n\nHuman: Bye\n\nAssistant: See you.",
              "rejected": "\n\nHuman: Hello\n\nAssistant: Hey.\n\nHuman: Bye\n\nAssistant: No."}]
    (tmp_path / "user.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=128, n_real=257)
    for name in ("a", "b"):
        checkpoint.save(str(tmp_path / name), GPT(cfg), {}, tokenizer=tok)
    checkpoint.save(str(tmp_path / "rm"), ScalarGPT(cfg), {"normalized": True}, tokenizer=tok)
    args = [f"--policies=sft={tmp_path / 'a'},other={tmp_path / 'b'}", f"--prompts={tmp_path / 'user.jsonl'}",
            "--heldout=", "--samples=3", "--max_new_tokens=8", "--threads=1"]
    with pytest.raises(UserError, match="--labeler=heldout: the world's labelers read the world's prompt metadata"):
        evaluate.main(args + [f"--out_dir={tmp_path / 'no'}"])
    evaluate.main(args + [f"--labeler={tmp_path / 'rm'}", f"--out_dir={tmp_path / 'ev'}"])
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["labeler"] == str(tmp_path / "rm")
    other = rep["models"]["other"]
    assert set(other) == {"winrate", "reward_score", "n_params", "mean_length"}
    assert rep["models"]["sft"]["winrate"] == 0.5
    # by hand: the reward model's score of each response, the same responses the report saw
    judge = evaluate.RewardJudge(str(tmp_path / "rm"))
    prompts = [r for r in data.read_prompts(str(tmp_path / "user.jsonl")) for _ in range(3)]
    model_a, _ = checkpoint.load(str(tmp_path / "a"))
    model_b, _ = checkpoint.load(str(tmp_path / "b"))
    conf = evaluate.Config(samples=3, max_new_tokens=8)
    ya = evaluate.sample(model_a.eval(), tok, prompts[::3], conf)
    yb = evaluate.sample(model_b.eval(), tok, prompts[::3], conf)
    sa, sb = judge.score(prompts, ya), judge.score(prompts, yb)
    wins = sum(0.5 if x.strip() == y.strip() else float(s > t) for x, y, s, t in zip(yb, ya, sb, sa))
    assert other["winrate"] == pytest.approx(wins / len(prompts))
    assert other["reward_score"] == pytest.approx(sum(sb) / len(sb))
    assert "Judged by the reward model" in (tmp_path / "ev" / "report.md").read_text()


def test_reward_model_accuracy_on_comparisons_alone(tmp_path):
    tok = get_tokenizer("bytes")
    checkpoint.save(str(tmp_path / "rm"), ScalarGPT(GPTConfig(1, 2, 32, 320, 128, n_real=257)), {}, tokenizer=tok)
    pairs = [{"prompt": f"q{i}", "chosen": "yes" * (i % 3 + 1), "rejected": "no"} for i in range(6)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in pairs))
    evaluate.main([f"--reward={tmp_path / 'rm'}", f"--comparisons={tmp_path / 'pairs.jsonl'}",
                   f"--out_dir={tmp_path / 'ev'}"])
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    rm, _ = checkpoint.load(str(tmp_path / "rm"))
    scores = evaluate.reward_scores(rm.eval(), tok, data.read_comparisons(str(tmp_path / "pairs.jsonl")))
    assert rep["models"] == {} and rep["reward_model"]["accuracy"] == evaluate.reward_accuracy(scores)
    assert rep["reward_model"]["right_over_wrong"] is None and rep["reward_model"]["labeler_agreement"] is None
    assert "Reward model: pairwise accuracy" in (tmp_path / "ev" / "report.md").read_text()
