"""train_ppo.py: learning on a trivially learnable reward, the first iteration's exact
zeros, PPO-ptx's gradient, bit-exact resume, divergence and bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import first_step_grads, kill_at_step, relative_error

import train_ppo
from nanoinstruct import batching, checkpoint, data, losses, run
from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT
from nanoinstruct.tokenizer import get_tokenizer
from nanoinstruct.world import LABELERS, build, gold_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=320, block_size=96, n_real=257)  # bytes
TARGET = ord("e")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppo")
    files = build(0, corpus_docs=60, sizes=dict(sft=1, sft_val=1, rm=1, rm_val=1, ppo=64, eval=1))
    data.write_jsonl(str(d / "prompts.jsonl"), files["ppo_prompts.jsonl"])
    data.write_jsonl(str(d / "corpus.jsonl"), files["corpus.jsonl"])
    data.write_jsonl(str(d / "other_corpus.jsonl"), [{"text": r["text"][::-1]} for r in files["corpus.jsonl"]])
    torch.manual_seed(0)
    checkpoint.save(str(d / "sft"), GPT(SMALL), {"tokenizer": "bytes"})
    checkpoint.save(str(d / "rm"), ScalarGPT(SMALL), {"tokenizer": "bytes", "normalized": True})
    return d


def flags(world, out, *extra):
    return [f"--init={world / 'sft'}", f"--reward={world / 'rm'}", f"--prompts={world / 'prompts.jsonl'}",
            f"--ptx_data={world / 'corpus.jsonl'}", f"--out_dir={out}", "--batch_size=8",
            "--max_new_tokens=16", "--threads=1", "--sample_interval=0", *extra]


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def count_target(self, idx, attention_mask):
    """A reward anyone can check: how many 'e' the sequence holds, per 16 response tokens.
    (The prompt's own 'e' are a constant per prompt, which the value function absorbs.)"""
    return ((idx == TARGET).float() * attention_mask.float()).sum(1) / 16


def test_raises_a_trivially_learnable_reward(world, tmp_path, monkeypatch):
    monkeypatch.setattr(ScalarGPT, "score", count_target)     # the reward model's score only
    out = tmp_path / "learn"
    train_ppo.main(flags(world, out, "--max_iters=50", "--lr=3e-3", "--vf_lr=3e-4", "--kl_coef=0",
                         "--save_interval=100", "--no_eos_penalty=nan"))
    scores = [r["score"] for r in metrics(out)]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.3, (first, last)                   # seen: 0.24 -> 0.85 (a random policy)


def test_first_iteration_is_exact(world, tmp_path, monkeypatch):
    calls, loss_fn = [], losses.ppo_policy_loss

    def recording(*a, **k):
        loss, stats = loss_fn(*a, **k)
        calls.append({k: v.item() for k, v in stats.items()})
        return loss, stats

    monkeypatch.setattr(losses, "ppo_policy_loss", recording)
    out = tmp_path / "first"
    train_ppo.main(flags(world, out, "--max_iters=1", "--minibatches=2", "--ppo_epochs=2"))
    row = metrics(out)[0]
    assert row["kl"] == 0.0                                   # the policy is the reference
    assert len(calls) == 4
    assert calls[0]["approx_kl"] == 0.0 and calls[0]["clipfrac"] == 0.0 and calls[0]["ratio"] == 1.0
    assert calls[1]["approx_kl"] > 0                          # after one step: it moved


def weights(out):
    return checkpoint.load(str(out))[0].state_dict()


def test_ptx_enters_the_gradient_only_when_its_coefficient_is_positive(world, tmp_path):
    common = ["--max_iters=2", "--ppo_epochs=1"]
    runs = {}
    for coef in ("0", "1"):
        for corpus in ("corpus", "other_corpus"):
            out = tmp_path / f"{coef}_{corpus}"
            train_ppo.main(flags(world, out, *common, f"--ptx_coef={coef}", f"--ptx_data={world / corpus}.jsonl"))
            runs[coef, corpus] = weights(out)

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.values(), b.values()))

    assert same(runs["0", "corpus"], runs["0", "other_corpus"])       # gamma = 0: the text is never used
    assert not same(runs["1", "corpus"], runs["1", "other_corpus"])   # gamma > 0: it is in the step
    assert not same(runs["0", "corpus"], runs["1", "corpus"])
    rows = metrics(tmp_path / "1_corpus")
    assert all(r["ptx_loss"] > 0 for r in rows)


def test_resume_equals_uninterrupted(world, tmp_path, monkeypatch):
    args = ["--max_iters=4", "--save_interval=2", "--minibatches=2", "--ptx_coef=0.5", "--target_kl=0.01",
            "--kl_horizon=100"]
    train_ppo.main(flags(world, tmp_path / "a", *args))
    undo = kill_at_step(monkeypatch, 36)    # killed in iteration 3 (4 epochs x 2 minibatches x policy, value)
    with pytest.raises(KeyboardInterrupt):
        train_ppo.main(flags(world, tmp_path / "b", *args))
    undo()
    assert json.load(open(tmp_path / "b" / "ckpt" / "config.json"))["iter"] == 2
    train_ppo.main(flags(world, tmp_path / "b", *args, "--resume"))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.values(), b.values()))
    ra, rb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    keys = ("score", "kl", "kl_coef", "approx_kl", "pg_loss", "vf_loss", "ptx_loss")
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb[:2] + rb[-2:]]
    assert ra[-1]["kl_coef"] != 0.02                            # the adaptive controller moved it


def test_divergence_stops_and_keeps_the_last_checkpoint(world, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    train_ppo.main(flags(world, out, "--max_iters=2", "--save_interval=1"))
    before = (out / "ckpt" / "model.safetensors").read_bytes()
    calls, loss_fn = [0], losses.ppo_value_loss

    def poisoned(*a, **k):
        calls[0] += 1
        loss, stats = loss_fn(*a, **k)
        return (loss * float("nan") if calls[0] == 3 else loss), stats

    monkeypatch.setattr(losses, "ppo_value_loss", poisoned)
    with pytest.raises(Exception) as e:
        train_ppo.main(flags(world, out, "--max_iters=4", "--save_interval=1", "--resume"))
    assert "the value loss is nan at iteration 2" in str(e.value) and "ckpt" in str(e.value)
    assert (out / "ckpt" / "model.safetensors").read_bytes() == before


def test_value_learning_rate_sets_the_value_update_alone(world, tmp_path):
    """--vf_lr is the value function's own step size (a separate network: a constant factor
    on its loss would not change Adam's step). Adam's first step moves every parameter by
    lr * sign(gradient), so 10x vf_lr moves the value function 10x as far, and the policy
    exactly as far."""
    runs = {}
    for vf_lr in ("1e-4", "1e-3"):
        out = tmp_path / vf_lr
        train_ppo.main(flags(world, out, "--max_iters=1", "--ppo_epochs=1", f"--vf_lr={vf_lr}"))
        runs[vf_lr] = weights(out), checkpoint.load_resume(str(out))["value"]
    start = checkpoint.load(str(world / "rm"))[0].state_dict()
    (pa, va), (pb, vb) = runs["1e-4"], runs["1e-3"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    moved = {k: ((vb[k] - start[k]).abs().sum() / (va[k] - start[k]).abs().sum()).item()
             for k in va if (va[k] - start[k]).abs().sum() > 0}
    assert len(moved) > 10 and all(abs(r - 10) < 0.5 for r in moved.values()), moved


def test_ddp_two_processes_equal_one_with_ragged_lengths(world, tmp_path):
    """2 ranks x 4 rollouts take the step of 1 process x 8: the policy and value losses are
    means over the real tokens of every rank, and advantages are whitened with every rank's
    statistics. Rollouts of ragged lengths that depend on the prompt alone (not on each
    rank's sampling generator), so both runs see the same ones."""
    common = ["--max_iters=1", "--ppo_epochs=1", "--whiten_advantages"]
    one, _ = first_step_grads("train_ppo", tmp_path / "one.safetensors",
                              flags(world, tmp_path / "one", *common, "--batch_size=8"), fixed_rollouts=True)
    two, r = first_step_grads("train_ppo", tmp_path / "two.safetensors",
                              flags(world, tmp_path / "two", *common, "--batch_size=4"), nproc=2, fixed_rollouts=True)
    assert relative_error(one, two) < 1e-5, relative_error(one, two)
    assert r.stdout.count("done:") == 1


def test_gold_is_the_worlds_score_of_the_rollouts(world, tmp_path, monkeypatch):
    """On world prompts PPO logs `gold`: the mean noise-free gold score, under the training
    labeler's weights, of what was sampled. Under --reward=gold that score over the labeler's
    noise (its Bradley-Terry logit) is each rollout's reward, row by row, in minibatches. Row i of every batch answers SAYS[i % 4]."""
    tok = get_tokenizer("bytes")
    SAYS = ["odd", "It is even.", "Owls are brown.", "No, 7 is not even; it is odd."]

    def says(self, prompt, *a, **k):
        rows = [tok.encode_response(SAYS[i % 4]) for i in range(len(prompt))]
        n = max(map(len, rows))
        ids = torch.tensor([r + [tok.pad_id] * (n - len(r)) for r in rows])
        return ids, torch.tensor([[1.0] * len(r) + [0.0] * (n - len(r)) for r in rows])
    monkeypatch.setattr(GPT, "generate", says)
    records = batching.fit_prompts(data.read_prompts(str(world / "prompts.jsonl")), tok, 96 - 16, "")
    at = run.epoch_sampler(range(len(records)), 1337)
    w = LABELERS["train"].weights
    want = [[gold_score(records[at(it * 8 + i)], SAYS[i % 4], w) for i in range(8)] for it in range(2)]
    assert all(len(set(g)) > 2 for g in want)                          # rows differ: a shuffle would show
    train_ppo.main(flags(world, tmp_path / "g", "--max_iters=2", "--ppo_epochs=1"))
    for it, row in enumerate(metrics(tmp_path / "g")):
        assert row["gold"] == pytest.approx(sum(want[it]) / 8, abs=1e-12), (it, row["gold"], want[it])
    # --reward=gold: the control whose reward IS that score (no reward model is read), per row
    seen, penalized = [], train_ppo.kernels.penalized_rewards
    monkeypatch.setattr(train_ppo.kernels, "penalized_rewards",
                        lambda scores, *a: seen.append(scores.tolist()) or penalized(scores, *a))
    train_ppo.main(flags(world, tmp_path / "o", "--max_iters=2", "--ppo_epochs=1", "--minibatches=2",
                         "--reward=gold"))
    noise = LABELERS["train"].noise                                    # the reward is in logit units
    assert seen == [pytest.approx([x / noise for x in g], abs=1e-5) for g in want], (seen, want)
    assert [r["gold"] for r in metrics(tmp_path / "o")] == [r["gold"] for r in metrics(tmp_path / "g")]
    r = tmp_path / "plain.jsonl"                                       # prompts without world metadata
    data.write_jsonl(str(r), [{"prompt": x["prompt"]} for x in records])
    train_ppo.main(flags(world, tmp_path / "p", "--max_iters=1", "--ppo_epochs=1", f"--prompts={r}"))
    assert "gold" not in metrics(tmp_path / "p")[0]
    with pytest.raises(UserError, match=f"(?s){r}: .*world's metadata \\(--reward=gold\\).*{r}:1: family: missing"):
        train_ppo.main(flags(world, tmp_path / "q", "--max_iters=1", f"--prompts={r}", "--reward=gold"))
    assert not (tmp_path / "q").exists()                               # nothing written
    # prompts that carry a family are the world's, and each must carry what its gold score
    # reads: a file:line error before anything is written, even under --overwrite (the
    # earlier run's metrics stay): a missing answer, a family the world lacks, a mixed file
    before = open(tmp_path / "p" / "metrics.jsonl").read()
    for expected, spoil in (("answer: missing", lambda x: x.pop("answer")),
                            ('family: "colour" is not one of the world', lambda x: x.update(family="colour")),
                            ("family: missing", lambda x: x.pop("family"))):   # a mixed file
        bad = [dict(x) for x in records]
        spoil(bad[5])
        data.write_jsonl(str(r), bad)
        with pytest.raises(UserError, match=f"{r}:6: {expected}"):
            train_ppo.main(flags(world, tmp_path / "p", "--max_iters=1", f"--prompts={r}", "--overwrite"))
        assert open(tmp_path / "p" / "metrics.jsonl").read() == before


def run_script(*args):
    return subprocess.run([sys.executable, "train_ppo.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_bad_input_is_one_line(world, tmp_path):
    for extra, expected in ((["--kl_kind=k4"], "--kl_kind='k4'"),
                            (["--minibatches=3"], "--minibatches=3 does not divide --batch_size=8"),
                            ([f"--reward={world / 'sft'}"], "a gpt checkpoint, not a reward model"),
                            ([f"--prompts={tmp_path / 'none.jsonl'}"], "none.jsonl: file not found")):
        r = run_script(*flags(world, tmp_path / "o", *extra))
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)


def test_gradient_checkpointing_trains_the_same_weights(world, tmp_path):
    for name, extra in (("a", []), ("b", ["--gradient_checkpointing"])):
        train_ppo.main(flags(world, tmp_path / name, "--max_iters=1", "--ppo_epochs=2", *extra))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    va, vb = (checkpoint.load_resume(str(tmp_path / n))["value"] for n in "ab")
    assert all(torch.equal(va[k], vb[k]) for k in va)


def test_bench_sizes_and_a_size_that_does_not_fit(monkeypatch, capsys):
    train_ppo.main(["--bench=tiny", "--max_iters=2", "--threads=1", "--ppo_epochs=1"])
    assert "per iteration (median; rollout + scoring" in capsys.readouterr().out
    monkeypatch.setattr(run, "available_memory", lambda: 2 ** 30)
    with pytest.raises(UserError, match=r"--bench=gpt2: needs about 9.\d GiB of memory; 1.0 GiB are available"):
        train_ppo.main(["--bench=gpt2"])


def test_fused_log_probs_give_the_losses_of_the_unfused_path(world, tmp_path, monkeypatch):
    """The same PPO-ptx run with every log-prob through the fused linear log-prob (the
    default) and through logits materialised then log-softmaxed: the same losses, KL and
    scores to float32 tolerance (the two sum in different orders)."""
    from kernels.linear_logprob import linear_logprobs_unfused
    args = ["--max_iters=2", "--ppo_epochs=2", "--ptx_coef=0.5"]
    train_ppo.main(flags(world, tmp_path / "fused", *args))
    monkeypatch.setattr(GPT, "logprobs", lambda self, h, y, t=1.0: linear_logprobs_unfused(
        h, self.lm_head.weight[:self.config.n_real], y, t))
    train_ppo.main(flags(world, tmp_path / "unfused", *args))
    keys = ("score", "kl", "entropy", "approx_kl", "pg_loss", "vf_loss", "ptx_loss")
    for a, b in zip(metrics(tmp_path / "fused"), metrics(tmp_path / "unfused")):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a[k], b[k])


def test_models_that_each_carry_the_same_tokenizer_file(world, tmp_path):
    """Checkpoints carry their tokenizer's ranks file: the SFT model's and the reward model's
    are two copies of the same tokenizer, which PPO must see as one (and a different one as
    a mismatch, before any work)."""
    import base64
    ranks = tmp_path / "mine.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)) +
                     f"{base64.b64encode(b'th').decode()} 256\n")
    tok = get_tokenizer(str(ranks))                                   # 257 ranks + EOS: 258 real ids
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=96, n_real=tok.n_real)
    checkpoint.save(str(tmp_path / "sft"), GPT(cfg), {}, tokenizer=tok)
    checkpoint.save(str(tmp_path / "rm"), ScalarGPT(cfg), {"normalized": True}, tokenizer=tok)
    args = [f"--init={tmp_path / 'sft'}", f"--reward={tmp_path / 'rm'}", f"--prompts={world / 'prompts.jsonl'}",
            "--batch_size=4", "--max_new_tokens=8", "--max_iters=1", "--ppo_epochs=1", "--threads=1"]
    train_ppo.main(args + [f"--out_dir={tmp_path / 'ok'}"])
    assert metrics(tmp_path / "ok")[0]["iter"] == 1
    checkpoint.save(str(tmp_path / "rm_dialogue"), ScalarGPT(cfg), {"normalized": True},
                    tokenizer=get_tokenizer(str(ranks), "dialogue"))
    with pytest.raises(UserError, match="is not the policy's"):
        train_ppo.main(args + [f"--reward={tmp_path / 'rm_dialogue'}", f"--out_dir={tmp_path / 'no'}"])
