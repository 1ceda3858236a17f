"""train_sft.py: loss falls, prompt masking, bit-exact resume, DDP = one process, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import first_step_grads, kill_at_step, relative_error
from safetensors.torch import load_file

import train_sft
from nanoinstruct import batching, data
from nanoinstruct.losses import lm_nll_sum
from nanoinstruct.model import GPT, GPTConfig
from nanoinstruct.tokenizer import get_tokenizer
from nanoinstruct.world import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(sft=64, sft_val=8, rm=1, rm_val=1, ppo=1, eval=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    for name, recs in build(0, corpus_docs=120, sizes=SMALL).items():
        data.write_jsonl(str(d / name), recs)
    return d


def flags(world, out, *extra, mode="pretrain"):
    files = ("corpus.jsonl", "corpus_heldout.jsonl") if mode == "pretrain" else ("sft.jsonl", "sft_val.jsonl")
    return [f"--mode={mode}", "--init=tiny", "--block_size=64", f"--data={world / files[0]}",
            f"--val_data={world / files[1]}", f"--out_dir={out}", "--batch_size=8", "--threads=1",
            "--log_interval=1", "--eval_batches=2", *extra]


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def test_pretrain_then_sft_loss_falls(world, tmp_path):
    train_sft.main(flags(world, tmp_path / "base", "--max_iters=30", "--eval_interval=30",
                         "--warmup_iters=5", "--dropout=0"))
    rows = [r for r in metrics(tmp_path / "base") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0, (rows[0], rows[-1])
    train_sft.main(flags(world, tmp_path / "sft", "--max_iters=20", "--eval_interval=20",
                         f"--init={tmp_path / 'base'}", mode="sft"))
    rows = [r for r in metrics(tmp_path / "sft") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    cfg = json.load(open(tmp_path / "sft" / "ckpt" / "config.json"))
    assert cfg["run"]["mode"] == "sft" and cfg["iter"] == 20 and cfg["tokenizer"] == "bytes"


def test_prompt_targets_carry_no_loss():
    tok = get_tokenizer()
    ids, mask = batching.sft_example(tok, "Add 2 and 3.", "5")
    P = len(tok.encode_prompt("Add 2 and 3."))
    assert mask.tolist() == [0.0] * (P - 1) + [1.0, 1.0, 1.0]     # " ", "5", EOS
    torch.manual_seed(0)
    model = GPT(GPTConfig(1, 2, 32, 320, 64)).eval()
    x, y = ids[None, :-1], ids[None, 1:]

    def loss(y):
        with torch.no_grad():
            return lm_nll_sum(model(x, targets=y)[0], mask[None])
    base = loss(y)
    y2 = y.clone()
    y2[0, 3] = (y2[0, 3] + 1) % 256                              # a prompt token's target
    assert loss(y2) == base
    y3 = y.clone()
    y3[0, -2] = (y3[0, -2] + 1) % 256                            # a response token's target
    assert loss(y3) != base


def test_resume_is_bit_identical(world, tmp_path, monkeypatch):
    args = ["--max_iters=6", "--eval_interval=3", "--dropout=0.1", "--warmup_iters=2"]
    train_sft.main(flags(world, tmp_path / "a", *args, mode="sft"))
    undo = kill_at_step(monkeypatch, 5)                       # killed during the 5th step
    with pytest.raises(KeyboardInterrupt):
        train_sft.main(flags(world, tmp_path / "b", *args, mode="sft"))
    undo()
    assert json.load(open(tmp_path / "b" / "ckpt" / "config.json"))["iter"] == 3
    train_sft.main(flags(world, tmp_path / "b", *args, "--resume", mode="sft"))
    a = load_file(str(tmp_path / "a" / "ckpt" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "ckpt" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [(r["iter"], r["loss"]) for r in metrics(tmp_path / "a") if "loss" in r]
    lb = [(r["iter"], r["loss"]) for r in metrics(tmp_path / "b") if "loss" in r]
    assert [i for i, _ in lb] == [1, 2, 3, 4, 4, 5, 6]         # killed in step 5; redone from 3
    assert la == lb[:4] + lb[5:] and la[3] == lb[4]


def test_ddp_two_processes_equal_one(world, tmp_path):
    """2 ranks x 2 demonstrations take the step of 1 rank x 4: every response token weighs
    1 / (tokens in the global step) wherever it lands (the demonstrations differ in length,
    so a per-rank mean would weigh them differently). Compared on the first step's gradient."""
    common = ["--max_iters=2", "--eval_interval=2", "--dropout=0", "--warmup_iters=1"]
    one, _ = first_step_grads("train_sft", tmp_path / "one.safetensors",
                              flags(world, tmp_path / "one", *common, "--batch_size=4", mode="sft"))
    two, r = first_step_grads("train_sft", tmp_path / "two.safetensors",
                              flags(world, tmp_path / "two", *common, "--batch_size=2", mode="sft"), nproc=2)
    assert relative_error(one, two) < 1e-5, relative_error(one, two)
    assert r.stdout.count("iter 2: loss") == 1 and r.stdout.count("done:") == 1  # rank 0 logs


def run_script(*argv):
    return subprocess.run([sys.executable, "train_sft.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_bad_input_is_one_line_and_touches_nothing(world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    r = run_script(*flags(world, tmp_path / "x", "--max_iters=1", mode="sft"), f"--data={bad}")
    assert r.returncode == 2 and f"{bad}:2: response: missing" in r.stderr and "Traceback" not in r.stderr
    r = run_script("--max_itres=3")
    assert r.returncode == 2 and "--max_itres: unknown flag; did you mean --max_iters?" in r.stderr
    r = run_script(*flags(world, tmp_path / "x", mode="sft"), "--mode=rlhf")
    assert r.returncode == 2 and "--mode='rlhf'" in r.stderr
    r = run_script(*flags(world, tmp_path / "x", mode="sft"), f"--init={tmp_path / 'nope'}")
    assert r.returncode == 2 and "nope: not a preset" in r.stderr
    out = tmp_path / "done"
    assert run_script(*flags(world, out, "--max_iters=1", mode="sft")).returncode == 0
    before = (out / "ckpt" / "model.safetensors").read_bytes()
    r = run_script(*flags(world, out, "--max_iters=1", mode="sft"))      # forgot --resume
    assert r.returncode == 2 and "already holds a checkpoint" in r.stderr
    assert (out / "ckpt" / "model.safetensors").read_bytes() == before
    assert len(metrics(out)) > 0                                          # log kept too
    r = run_script(*flags(world, tmp_path / "fresh", mode="sft"), "--resume")
    assert r.returncode == 2 and "no checkpoint to resume" in r.stderr


def test_init_from_hf_directory(world, tmp_path):
    transformers = pytest.importorskip("transformers")
    c = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=257, n_positions=64,
                                bos_token_id=256, eos_token_id=256)
    transformers.GPT2LMHeadModel(c).save_pretrained(tmp_path / "hf")
    r = run_script(*flags(world, tmp_path / "o0", "--max_iters=1", mode="sft"), f"--init={tmp_path / 'hf'}")
    assert r.returncode == 2 and "no tokenizer files (vocab.json + merges.txt) and no --tokenizer" in r.stderr
    train_sft.main(flags(world, tmp_path / "o", "--max_iters=2", mode="sft") + [f"--init={tmp_path / 'hf'}",
                                                                                "--tokenizer=bytes"])
    cfg = json.load(open(tmp_path / "o" / "ckpt" / "config.json"))
    assert cfg["model"]["vocab_size"] == 320 and cfg["model"]["n_real"] == 257   # grown for PAD
    c.vocab_size = 300                                # a model that does not fit the byte tokenizer
    transformers.GPT2LMHeadModel(c).save_pretrained(tmp_path / "hf300")
    r = run_script(*flags(world, tmp_path / "o2", "--max_iters=1", mode="sft"), f"--init={tmp_path / 'hf300'}",
                   "--tokenizer=bytes")
    assert r.returncode == 2 and "predicts 300 token ids and tokenizer bytes has 257" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o2" / "ckpt").exists()


def bpe_ranks_file(path, n):
    """A .tiktoken file of n ranks: the 256 bytes, then two-byte tokens of printable ASCII
    (reachable merges). An unknown stem gets GPT-2's regex and EOS = n, PAD = n + 1."""
    import base64
    pairs = [bytes([a, b]) for a in range(97, 123) for b in range(32, 127)]
    tokens = [bytes([i]) for i in range(256)] + pairs[:n - 256]
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    return path


def test_gpt2_shaped_checkpoint_loss_equals_transformers(world, tmp_path):
    """Released GPT-2's logits sit far below zero. The embedding grown for PAD (and to a
    multiple of 64) must not enter the softmax: a zero row there would have logit 0 and take
    almost all the probability (the first SFT loss was 64.2 where transformers gives 11.2).
    With a negligible learning rate, train_sft's held-out loss equals transformers' on the
    same weights and demonstrations."""
    transformers = pytest.importorskip("transformers")
    V = 1000                                          # 999 ranks + EOS, as GPT-2 is 50256 + 1
    tok_file = bpe_ranks_file(tmp_path / "ranks.tiktoken", V - 1)
    c = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=V, n_positions=128,
                                bos_token_id=V - 1, eos_token_id=V - 1)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(c).eval()
    with torch.no_grad():  # shift every real logit by about -60 (softmax-invariant over real ids)
        u = torch.nn.functional.normalize(torch.randn(32), dim=0)
        hf.transformer.ln_f.bias += 15 * u
        hf.transformer.wte.weight -= 6 * u
    hf.save_pretrained(tmp_path / "hf")
    tok = get_tokenizer(str(tok_file))
    val = data.read_demos(str(world / "sft_val.jsonl"))
    nll = count = 0.0
    with torch.no_grad():
        for r in val:
            ids, mask = batching.sft_example(tok, r["prompt"], r["response"])
            logits = hf(ids[None, :-1]).logits[0]                           # (L, V)
            assert logits.max() < -40                                      # far below zero
            lp = torch.log_softmax(logits.double(), -1).gather(-1, ids[1:, None])[:, 0]
            nll, count = nll - (lp * mask).sum().item(), count + mask.sum().item()
    train_sft.main(flags(world, tmp_path / "o", "--max_iters=1", "--lr=1e-12", "--min_lr=0", "--warmup_iters=1",
                         "--eval_batches=100", "--batch_size=4", mode="sft")
                   + [f"--init={tmp_path / 'hf'}", f"--tokenizer={tok_file}", "--block_size=0"])
    val_loss = [r for r in metrics(tmp_path / "o") if "val_loss" in r][-1]["val_loss"]
    assert abs(val_loss - nll / count) < 1e-4, (val_loss, nll / count)
    cfg = json.load(open(tmp_path / "o" / "ckpt" / "config.json"))["model"]
    assert (cfg["vocab_size"], cfg["n_real"]) == (1024, V)


def test_gradient_checkpointing_trains_the_same_weights(world, tmp_path):
    args = ["--max_iters=2", "--eval_interval=2", "--dropout=0.1", "--warmup_iters=1"]
    train_sft.main(flags(world, tmp_path / "a", *args, mode="sft"))
    train_sft.main(flags(world, tmp_path / "b", *args, "--gradient_checkpointing", mode="sft"))
    a = load_file(str(tmp_path / "a" / "ckpt" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "ckpt" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_a_torn_last_metrics_line(world, tmp_path, capsys):
    out = tmp_path / "torn"
    train_sft.main(flags(world, out, "--max_iters=2", "--eval_interval=2", mode="sft"))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 3, "lo')                                # a kill in the middle of a write
    train_sft.main(flags(world, out, "--max_iters=3", "--eval_interval=3", "--resume", mode="sft"))
    assert "dropped an incomplete last line" in capsys.readouterr().err
    rows = metrics(out)                                           # every line parses again
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3]
