"""collect: sample K responses per prompt from a policy, rank them, append, resume."""

import json
import subprocess
import sys

import pytest
import torch

from nanoinstruct import checkpoint, data
from nanoinstruct import collect as collect_mod
from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig
from nanoinstruct.world import build


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("collect")
    torch.manual_seed(0)
    policy = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=264, block_size=128, n_real=257))
    checkpoint.save(str(d / "policy"), policy, {"tokenizer": "bytes"})
    prompts = build(0, corpus_docs=10, sizes=dict(sft=1, sft_val=1, rm=30, rm_val=1, ppo=1, eval=1))
    data.write_jsonl(str(d / "prompts.jsonl"), prompts["rm_prompts.jsonl"])
    return d


def collect(d, out, *flags, stdin=None):
    return subprocess.run([sys.executable, "-m", "nanoinstruct.collect", f"--policy={d / 'policy'}",
                           f"--prompts={d / 'prompts.jsonl'}", f"--out={out}",
                           "--max_new_tokens=12", *flags],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_world_labeler_end_to_end_and_resume(setup):
    out = setup / "cmp.jsonl"
    r = collect(setup, out, "--k=3", "--limit=6", "--batch_size=4")
    assert r.returncode == 0, r.stderr
    assert "labeler agreement (train vs heldout) on 18 pairs" in r.stdout
    rows = data.read_comparisons(str(out))
    assert len(rows) == 6 and all(len(c["responses"]) == 3 for c in rows)
    assert all(sorted(c["ranking"]) == [0, 1, 2] and c["labeler"] == "train" for c in rows)
    assert all("family" in c and "answer" in c for c in rows)      # metadata carried along
    whole = out.read_bytes()
    out.write_bytes(whole + whole.splitlines(keepends=True)[0][:40])   # a run killed mid-append
    r = collect(setup, out, "--k=3", "--limit=8")                  # resumes: 2 more, no repeats
    assert r.returncode == 0 and "6 prompts already labeled, 2 to go" in r.stderr
    assert f"{out}:7: dropped an incomplete last line (40 bytes)" in r.stderr
    rows2 = data.read_comparisons(str(out))
    assert rows2[:6] == rows and len({c["prompt"] for c in rows2}) == 8


def test_human_labeler_through_stdin(setup):
    out = setup / "human.jsonl"
    # prompt 1: a ranking; prompt 2: an invalid answer, then a ranking; then the person leaves
    r = collect(setup, out, "--k=2", "--labeler=human", "--limit=3", stdin="2 1\n1 1\nx\n1 2\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("not a ranking of 1..2") == 2 and "rerun the same command" in r.stderr
    rows = data.read_comparisons(str(out))
    assert [c["ranking"] for c in rows] == [[1, 0], [0, 1]]
    r = collect(setup, out, "--k=2", "--labeler=human", "--limit=3", stdin="2 1\n")
    assert r.returncode == 0 and "2 prompts already labeled, 1 to go" in r.stderr
    assert len(data.read_comparisons(str(out))) == 3


@pytest.mark.parametrize("flags, msg", [
    (["--k=1"], "--k=1: must be in [2, 100]"),
    (["--labeler=bob"], "--labeler='bob'"),
])
def test_bad_flags(setup, flags, msg):
    r = collect(setup, setup / "x.jsonl", *flags)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_every_prompt_needs_the_world_metadata(setup):
    p = setup / "plain.jsonl"
    world = data.read_prompts(str(setup / "prompts.jsonl"))
    repeat = next(w for w in world if w["family"] == "repeat")
    p.write_text("".join(json.dumps(r) + "\n" for r in [                # only later lines are bad
        world[0], {"prompt": "Tell me a joke."}, {k: v for k, v in repeat.items() if k != "word"}]))
    r = subprocess.run([sys.executable, "-m", "nanoinstruct.collect", f"--policy={setup / 'policy'}",
                        f"--prompts={p}", f"--out={setup / 'y.jsonl'}"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        f"error: {p}: 2 bad lines; the train labeler needs the world's prompt metadata; use "
        f"--labeler=human for other prompts", f"{p}:2: family: missing", f"{p}:3: word: missing"]
    assert not (setup / "y.jsonl").exists()


@pytest.mark.parametrize("rec, problem", [
    ({"prompt": "p", "answer": "a"}, "family: missing"),
    ({"prompt": "p", "family": "poem", "answer": "a"}, "family: \"poem\" is not one of the world's"),
    ({"prompt": "p", "family": ["add"], "answer": "a"}, "family: [\"add\"] is not one of the world's"),
    ({"prompt": "p", "family": "add"}, "answer: missing"),
    ({"prompt": "p", "family": "howto", "unsafe": False, "answer": "a"}, "key: missing"),
    ({"prompt": "p", "family": "premise", "wrong": "odd", "answer": "even"}, "subject: missing"),
    ({"prompt": "p", "family": "parity", "n": "five", "answer": "odd"}, 'n: "five" is not an integer'),
    ({"prompt": "p", "family": "parity", "n": True, "answer": "odd"}, "n: true is not an integer"),
    ({"prompt": "p", "family": "add", "a": 1, "b": 2, "answer": 3}, "answer: 3 is not a string"),
    ({"prompt": "p", "family": "closed", "colors": "red", "answer": "red"}, 'colors: "red" is not a list of strings'),
    ({"prompt": "p", "family": "howto", "unsafe": "no", "answer": "a"}, 'unsafe: "no" is not true or false'),
    ({"prompt": "p", "family": "list", "category": "spaceship", "n": 2, "answer": "a"},
     'category: "spaceship" is not one of the world\'s (animal, fruit, tool, vehicle)'),
    ({"prompt": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "q"},
                 {"role": "user", "content": "r"}], "family": "add", "answer": "a"},
     "prompt: a world prompt is a single turn"),
])
def test_world_fields(rec, problem):
    with pytest.raises(UserError) as e:
        collect_mod.require_world([rec], "w.jsonl")
    assert str(e.value).splitlines()[1].startswith(f"w.jsonl: record 1: {problem}")
    collect_mod.require_world([{"prompt": "p", "family": "howto", "unsafe": True, "answer": "a"}], "w.jsonl")


def test_second_labeler_checks_world_comparisons(setup):
    c = {"prompt": "Add 2 and 3.", "family": "add", "a": 2, "b": 3, "answer": "5", "responses": ["5", "6"],
         "ranking": [0, 1], "labeler": "train"}
    assert collect_mod.second_labeler([c], "c.jsonl") == "heldout"
    assert collect_mod.second_labeler([c, {"prompt": "x", "responses": ["a", "b"], "ranking": [0, 1]}]) is None
    with pytest.raises(UserError, match="c.jsonl: record 2: answer: missing"):
        collect_mod.second_labeler([c, {k: v for k, v in c.items() if k != "answer"}], "c.jsonl")
