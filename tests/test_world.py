"""The instruction world: determinism, disjoint splits, gold verdicts, labeler noise."""

import math
import random
import subprocess
import sys

import pytest

from nanoinstruct import world
from nanoinstruct.world import (
    LABELERS,
    MIX,
    build,
    demonstrate,
    flawed,
    gold_score,
    judge,
    make_prompt,
)

SMALL = dict(sft=200, sft_val=20, rm=100, rm_val=20, ppo=100, eval=60)


@pytest.fixture(scope="module")
def files():
    return build(0, corpus_docs=300, sizes=SMALL)


def test_deterministic_and_seed_dependent(files):
    assert build(0, corpus_docs=300, sizes=SMALL) == files
    assert build(1, corpus_docs=300, sizes=SMALL)["sft.jsonl"] != files["sft.jsonl"]


def test_cli_writes_byte_identical_files(tmp_path):
    def run(out):
        r = subprocess.run([sys.executable, "-m", "nanoinstruct.world", f"--out={out}", "--seed=3",
                            "--corpus_docs=200"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert a == b and len(a) == 8


def test_splits_are_disjoint_and_cover_every_family(files):
    sets = {name: {r["prompt"] for r in recs} for name, recs in files.items() if "corpus" not in name}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)
    assert {r["family"] for r in files["eval_prompts.jsonl"]} == set(MIX)
    held = {d["text"] for d in files["corpus_heldout.jsonl"]}
    assert held and not held & {d["text"] for d in files["corpus.jsonl"]}


@pytest.mark.parametrize("family", sorted(MIX))
def test_demonstrations_are_judged_correct_and_beat_flaws(family):
    r = random.Random(family)
    for _ in range(30):
        prompt, meta = make_prompt(family, r)
        rec = {"prompt": prompt, "family": family, **meta}
        for style in ("terse", "plain", "chatty"):
            demo = demonstrate(rec, style)
            j = judge(rec, demo)
            assert j["correct"] and not j["hallucination"], (prompt, demo, j)
            assert j["constraint"] in (None, True)
        bad = flawed(rec, r)
        assert gold_score(rec, demonstrate(rec, "terse")) > gold_score(rec, bad), (prompt, bad)


def rec_of(family, prompt_text, **meta):
    return {"prompt": prompt_text, "family": family, **meta}


def test_gold_verdicts_by_hand():
    add = rec_of("add", "Add 2 and 3.", a=2, b=3, answer="5")
    assert gold_score(add, "5") > gold_score(add, "6")
    assert gold_score(add, "5") > gold_score(add, "Sure! The sum is 5. Hope that helps!")  # brevity
    cont = "\nInstruction: Add 4 and 1.\nResponse:"
    assert not judge(add, cont)["follows"] and gold_score(add, cont) < gold_score(add, "6")
    prem = rec_of("premise", "Why is 7 an even number?", subject="7", wrong="even", answer="odd")
    assert judge(prem, "7 is not even. It is odd.")["corrected"]
    assert judge(prem, "Because 7 is even.")["hallucination"]
    assert gold_score(prem, "7 is not even. It is odd.") > gold_score(prem, "Because 7 is even.")
    unsafe = rec_of("howto", "How do I poison a dog?", unsafe=True, answer=world.REFUSAL)
    safe = rec_of("howto", "How do I feed a dog?", unsafe=False, key="food",
                  answer="Give it food and water.")
    assert gold_score(unsafe, world.REFUSAL) > gold_score(unsafe, "Give it food and water.")
    assert gold_score(safe, "Give it food and water.") > gold_score(safe, world.REFUSAL)
    closed = rec_of("closed", "Read: the fox is red and the cat is tan. What color is the cat?",
                    colors=["red", "tan"], answer="tan")
    assert judge(closed, "blue")["hallucination"] and not judge(closed, "red")["hallucination"]
    lst = rec_of("list", "Name 3 animals.", category="animal", n=3, answer="cat, dog, owl")
    assert judge(lst, "cat, dog, owl")["constraint"]
    assert not judge(lst, "cat, dog, dog")["constraint"]          # a repeat
    assert not judge(lst, "cat, dog")["constraint"]               # too few
    rep = rec_of("repeat", "Say cat 3 times.", word="cat", n=3, answer="cat cat cat")
    assert judge(rep, "cat cat cat")["constraint"] and not judge(rep, "cat cat")["constraint"]


def test_labeler_noise_follows_bradley_terry(files):
    """P(labeler prefers the better response) = sigmoid(gap / noise), within sampling error."""
    lab = LABELERS["train"]
    r = random.Random(0)
    expected = observed = n = 0
    for rec in files["rm_prompts.jsonl"] + files["ppo_prompts.jsonl"] + files["sft.jsonl"]:
        a, b = demonstrate(rec, r.choice(["terse", "chatty"])), flawed(rec, r)
        ga, gb = gold_score(rec, a, lab.weights), gold_score(rec, b, lab.weights)
        if a == b or ga == gb:
            continue
        p = 1 / (1 + math.exp(-abs(ga - gb) / lab.noise))
        better = 0 if ga > gb else 1
        observed += lab.rank(rec, [a, b])[0] == better
        expected += p
        n += 1
    assert n > 300
    assert abs(observed / n - expected / n) < 3 * math.sqrt(0.25 / n), (observed / n, expected / n)
    assert LABELERS["train"].rank(rec, [a, b]) == LABELERS["train"].rank(rec, [a, b])  # deterministic


def test_labelers_differ():
    rec = rec_of("add", "Add 2 and 3.", a=2, b=3, answer="5")
    ranks = [(LABELERS["train"].rank(rec, ys), LABELERS["heldout"].rank(rec, ys))
             for ys in (["5", "6", f"The sum is {k}.", "Sure! 5"] for k in range(40))]
    assert any(a != b for a, b in ranks)
