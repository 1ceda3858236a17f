"""collect: sample K responses per prompt from a policy, rank them, append, resume."""

import json
import subprocess
import sys

import pytest
import torch

from nanoinstruct import checkpoint, data
from nanoinstruct.model import GPT, GPTConfig
from nanoinstruct.world import build


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("collect")
    torch.manual_seed(0)
    policy = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=264, block_size=128))
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
    r = collect(setup, out, "--k=3", "--limit=8")                  # resumes: 2 more, no repeats
    assert r.returncode == 0 and "6 prompts already labeled, 2 to go" in r.stderr
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


def test_non_world_prompts_need_a_human(setup):
    p = setup / "plain.jsonl"
    p.write_text(json.dumps({"prompt": "Tell me a joke."}) + "\n")
    r = subprocess.run([sys.executable, "-m", "nanoinstruct.collect", f"--policy={setup / 'policy'}",
                        f"--prompts={p}", f"--out={setup / 'y.jsonl'}"], capture_output=True, text=True)
    assert r.returncode == 2 and "--labeler=human" in r.stderr
