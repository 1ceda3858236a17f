"""train_rm.py: K forward passes per prompt, order invariance, normalisation, resume,
bad input, and a tiny run that beats chance on the world's comparisons."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from helpers import first_step_grads, kill_at_step, relative_error

import train_rm
from nanoinstruct import batching, checkpoint, collect, data, losses
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT
from nanoinstruct.tokenizer import get_tokenizer
from nanoinstruct.world import LABELERS, build, demonstrate, flawed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ranked(records, r, k):
    """World comparisons without a policy: each prompt gets demonstrations and flawed
    responses (wrong answers, refusals, continuations, rambling), ranked by the train
    labeler; k varies per prompt when given a range."""
    out = []
    for rec in records:
        kk = r.choice(k) if isinstance(k, range) else k
        responses = [demonstrate(rec, r.choice(["terse", "plain", "chatty"])) if r.random() < 0.4
                     else flawed(rec, r) for _ in range(kk)]
        out.append({**rec, "responses": responses, "ranking": LABELERS["train"].rank(rec, responses),
                    "labeler": "train"})
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    files = build(0, corpus_docs=10, sizes=dict(sft=40, sft_val=1, rm=160, rm_val=60, ppo=1, eval=1))
    r = random.Random(0)
    data.write_jsonl(str(d / "cmp.jsonl"), ranked(files["rm_prompts.jsonl"], r, range(2, 6)))
    data.write_jsonl(str(d / "cmp_val.jsonl"), ranked(files["rm_val_prompts.jsonl"], r, 4))
    data.write_jsonl(str(d / "sft.jsonl"), files["sft.jsonl"])
    torch.manual_seed(0)
    sft = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=256, n_real=257))
    checkpoint.save(str(d / "sft"), sft, {"tokenizer": "bytes"})
    return d


def flags(world, out, *extra, data="cmp.jsonl"):
    return [f"--data={world / data}", f"--val_data={world / 'cmp_val.jsonl'}",
            f"--demos={world / 'sft.jsonl'}", f"--init={world / 'sft'}", f"--out_dir={out}",
            "--threads=1", "--log_interval=1", *extra]


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def test_exactly_k_forward_passes_per_prompt(world, tmp_path, monkeypatch):
    rows, forward = [], ScalarGPT.forward

    def counting(self, idx, attention_mask=None):
        if torch.is_grad_enabled():                 # training passes (evaluation runs no_grad)
            rows.append(idx.shape[0])
        return forward(self, idx, attention_mask)

    monkeypatch.setattr(ScalarGPT, "forward", counting)
    comparisons = data.read_comparisons(str(world / "cmp.jsonl"))[:150]    # K = 2..5
    data.write_jsonl(str(tmp_path / "cmp.jsonl"), comparisons)
    train_rm.main(flags(world, tmp_path / "rm", "--batch_size=15", "--eval_interval=1000",
                        f"--data={tmp_path / 'cmp.jsonl'}"))
    assert len(rows) == 10                                           # one epoch: 150 / 15 steps
    assert sum(rows) == sum(len(c["responses"]) for c in comparisons)
    assert len({len(c["responses"]) for c in comparisons}) == 4


def test_order_of_responses_in_the_file_does_not_matter():
    tok = get_tokenizer()
    torch.manual_seed(0)
    model = ScalarGPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=64)).eval()
    c = {"prompt": "Add 2 and 3.", "responses": ["6", "5", "five", "7 or so"], "ranking": [1, 2, 0, 3]}
    perm = [2, 0, 3, 1]                                  # response i of the new file is old perm[i]
    moved = {"prompt": c["prompt"], "responses": [c["responses"][i] for i in perm],
             "ranking": [perm.index(i) for i in c["ranking"]]}
    other = {"prompt": "Is 7 odd?", "responses": ["odd", "even"], "ranking": [0, 1]}

    def loss(comparisons):
        b = batching.pack_rankings(tok, comparisons)
        with torch.no_grad():
            scores = model.score(b.ids, b.attention_mask)
        return losses.ranking_loss(scores[b.rank], b.valid)

    assert loss([c, other]).item() == loss([moved, other]).item()
    wrong = {**moved, "ranking": c["ranking"]}           # permuted responses, ranking not remapped
    assert loss([wrong, other]).item() != loss([c, other]).item()
    b = batching.pack_rankings(tok, [other, c])
    assert b.rank.tolist() == [[0, 1, 0, 0], [2, 3, 4, 5]] and b.valid.sum(1).tolist() == [2, 4]
    assert tok.decode(b.ids[2][b.attention_mask[2].bool()].tolist()) == tok.decode(
        tok.encode_prompt("Add 2 and 3.") + tok.encode_response("5"))             # c's best first


def test_tiny_run_beats_chance_and_normalises(world, tmp_path):
    out = tmp_path / "rm"
    train_rm.main(flags(world, out, "--epochs=3", "--batch_size=8",
                        "--lr=1e-3", "--eval_interval=30", "--log_interval=10"))
    final = metrics(out)[-1]
    val = data.read_comparisons(str(world / "cmp_val.jsonl"))
    assert final["labeler_agreement"] == collect.agreement(val, LABELERS["heldout"])[0]
    assert final["val_accuracy"] > 0.65, final              # chance is 0.5
    # the checkpoint's output is the normalised reward: the demonstrations average 0
    model, meta = checkpoint.load(str(out))
    demos = data.read_demos(str(world / "sft.jsonl"))
    ids, mask = batching.pack_sequences(get_tokenizer(), [r["prompt"] for r in demos], [r["response"] for r in demos])
    with torch.no_grad():
        mean = model.score(ids, mask).mean().item()
    assert abs(mean) < 1e-5 and abs(meta["demo_mean_before"]) > 1e-3, (mean, meta["demo_mean_before"])
    assert meta["normalized"] and meta["val_accuracy"] == final["val_accuracy"]


def test_without_demos_normalises_on_the_preferred_responses(world, tmp_path, capsys):
    out = tmp_path / "rm"
    train_rm.main([a for a in flags(world, out, "--epochs=0.2", "--batch_size=8") if not a.startswith("--demos")])
    assert "normalised on the preferred responses of" in capsys.readouterr().out
    model, meta = checkpoint.load(str(out))
    best = [(c["prompt"], c["responses"][c["ranking"][0]]) for c in data.read_comparisons(str(world / "cmp.jsonl"))]
    ids, mask = batching.pack_sequences(get_tokenizer(), [p for p, _ in best], [y for _, y in best])
    with torch.no_grad():
        assert abs(model.score(ids, mask).mean().item()) < 1e-5 and abs(meta["demo_mean_before"]) > 1e-3


def test_pairs_are_k2_and_resume_is_bit_identical(world, tmp_path, monkeypatch):
    pairs = [{"prompt": c["prompt"], "chosen": c["responses"][c["ranking"][0]],
              "rejected": c["responses"][c["ranking"][-1]]}
             for c in data.read_comparisons(str(world / "cmp.jsonl"))[:48]]
    data.write_jsonl(str(world / "pairs.jsonl"), pairs)
    args = ["--batch_size=8", "--eval_interval=3", "--dropout=0.1", "--warmup_iters=2"]
    train_rm.main(flags(world, tmp_path / "a", *args, data="pairs.jsonl"))
    undo = kill_at_step(monkeypatch, 5)                       # killed during the 5th step
    with pytest.raises(KeyboardInterrupt):
        train_rm.main(flags(world, tmp_path / "b", *args, data="pairs.jsonl"))
    undo()
    train_rm.main(flags(world, tmp_path / "b", *args, "--resume", data="pairs.jsonl"))
    a, b = checkpoint.load(str(tmp_path / "a"))[0], checkpoint.load(str(tmp_path / "b"))[0]
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    losses_a = [r["loss"] for r in metrics(tmp_path / "a") if "loss" in r]
    losses_b = [r["loss"] for r in metrics(tmp_path / "b") if "loss" in r]
    assert len(losses_a) == 6 and losses_b[-3:] == losses_a[-3:]


def run_script(*args):
    return subprocess.run([sys.executable, "train_rm.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "responses": ["x", "y"], "ranking": [0, 1]}\n'
                   '{"prompt": "b", "responses": ["x", "y", "z"], "ranking": [0, 0, 2]}\n'
                   '{"prompt": "c", "responses": ["x"], "ranking": [0]}\n'
                   '{"prompt": "d", "chosen": "x"}\n')
    r = run_script(*flags(world, tmp_path / "o", f"--data={bad}"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for expected in (":2: ranking: [0, 0, 2] is not a permutation of 0..2",
                     ":3: responses: needs at least 2 responses", ":4: rejected: missing"):
        assert expected in r.stderr, r.stderr
    assert not (tmp_path / "o" / "ckpt").exists()
    r = run_script(*flags(world, tmp_path / "o", "--epochs=0"))
    assert r.returncode == 2 and "--epochs=0" in r.stderr
    r = run_script(*flags(world, tmp_path / "o", "--init=nope"))
    assert r.returncode == 2 and "--init=nope" in r.stderr and "Traceback" not in r.stderr
    # an existing checkpoint is not written over
    out = tmp_path / "keep"
    train_rm.main(flags(world, out, "--batch_size=80", "--eval_interval=1000", data="cmp.jsonl"))
    before = (out / "ckpt" / "model.safetensors").read_bytes()
    r = run_script(*flags(world, out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (out / "ckpt" / "model.safetensors").read_bytes() == before


def test_ddp_two_processes_equal_one(world, tmp_path):
    """Each prompt weighs 1/(prompts in the global step) wherever it lands: 2 ranks x 4
    prompts take the step of 1 rank x 8 (K varies, so rows per rank differ). Compared on the
    first step's gradient."""
    common = ["--epochs=0.15", "--eval_interval=1000", "--warmup_iters=1"]
    one, _ = first_step_grads("train_rm", tmp_path / "one.safetensors",
                              flags(world, tmp_path / "one", *common, "--batch_size=8"))
    two, r = first_step_grads("train_rm", tmp_path / "two.safetensors",
                              flags(world, tmp_path / "two", *common, "--batch_size=4"), nproc=2)
    assert relative_error(one, two) < 1e-5, relative_error(one, two)
    assert "3 steps" in r.stdout and r.stdout.count("done:") == 1     # rank 0 alone reports
