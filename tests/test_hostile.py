"""Every entry point against a hostile user: one row per mistake. Each row runs the entry
point in-process through cli_main and must end with exit status 2, exactly one `error:`
line holding the expected text, no traceback, and every file the session had (the world,
the trained runs, the row's own directory) unchanged, byte for byte.

The base command of each entry point (BASE) succeeds on the session's tiny world and runs
(test_base_commands_succeed), so each row fails for the reason its flags give. A handful
of rows run as real subprocesses (SUBPROCESS) to show the exit status and the absence of a
traceback for real. Data-file cases (JSON nesting, huge ints, surrogates, torn lines,
.tiktoken ranks) belong to tests/test_data.py and tests/test_tokenizer.py.
"""

import fcntl
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

import train_ppo
import train_rm
import train_sft
from nanoinstruct import bpe, checkpoint, cli, collect, data, evaluate, run, sample, world
from nanoinstruct.cli import cli_main
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT
from nanoinstruct.world import LABELERS, build, demonstrate, flawed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAINS = {"sft": train_sft.main, "rm": train_rm.main, "ppo": train_ppo.main, "collect": collect.main,
         "evaluate": evaluate.main, "sample": sample.main, "world": world.main, "bpe": bpe.main}
BASE = {
    "sft": ["--init={base}", "--data={w}/sft.jsonl", "--val_data={w}/sft_val.jsonl", "--out_dir={t}/out",
            "--batch_size=4", "--max_iters=2", "--eval_interval=2", "--threads=1"],
    "rm": ["--init={sft}", "--data={w}/cmp.jsonl", "--val_data={w}/cmp_val.jsonl", "--demos={w}/sft.jsonl",
           "--out_dir={t}/out", "--batch_size=4", "--threads=1"],
    "ppo": ["--init={sft}", "--reward={rm}", "--prompts={w}/ppo_prompts.jsonl", "--ptx_data={w}/corpus.jsonl",
            "--out_dir={t}/out", "--batch_size=4", "--max_iters=1", "--max_new_tokens=8", "--ppo_epochs=1",
            "--sample_interval=0", "--threads=1"],
    "collect": ["--policy={sft}", "--prompts={w}/rm_prompts.jsonl", "--out={t}/cmp.jsonl", "--k=2",
                "--max_new_tokens=8"],
    "evaluate": ["--policies=sft={sft}", "--prompts={w}/eval_prompts.jsonl", "--heldout={w}/corpus_heldout.jsonl",
                 "--demos={w}/sft.jsonl", "--samples=1", "--max_new_tokens=8", "--heldout_tokens=200",
                 "--out_dir={t}/eval"],
    "sample": ["--ckpt={sft}", "--prompt=Is 3 odd?", "--n=1", "--max_new_tokens=4"],
    "world": ["--out={t}/world", "--corpus_docs=20"],
    "bpe": ["--data={w}/corpus.jsonl", "--demos={w}/sft.jsonl", "--out={t}/world.tiktoken", "--vocab_size=300"],
}
TINY = GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=128, n_real=257)  # bytes


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One tiny world and one run of each stage, shared by every row."""
    root = tmp_path_factory.mktemp("hostile")
    w = root / "world"
    files = build(0, corpus_docs=40, sizes=dict(sft=16, sft_val=4, rm=8, rm_val=4, ppo=8, eval=4))
    for name, recs in files.items():
        data.write_jsonl(str(w / name), recs)
    r = random.Random(0)
    for split, out in (("rm_prompts.jsonl", "cmp.jsonl"), ("rm_val_prompts.jsonl", "cmp_val.jsonl")):
        cmps = []
        for rec in files[split]:
            ys = [demonstrate(rec, "terse"), flawed(rec, r)]
            cmps.append({**rec, "responses": ys, "ranking": LABELERS["train"].rank(rec, ys), "labeler": "train"})
        data.write_jsonl(str(w / out), cmps)
    torch.manual_seed(0)
    checkpoint.save(str(root / "base"), GPT(TINY), {"tokenizer": "bytes"})
    paths = {"w": str(w), "base": str(root / "base"), "sft": str(root / "sft"), "rm": str(root / "rm"),
             "ppo": str(root / "ppo"), "root": str(root)}
    for stage in ("sft", "rm", "ppo"):
        argv = [a.format(**paths, t=root).replace(f"{root}/out", f"{root}/{stage}") for a in BASE[stage]]
        MAINS[stage](argv)
    report = {"baseline": "sft", "labeler": "heldout", "models": {"sft": {"winrate": 0.5}}}
    (root / "report.json").write_text(json.dumps(report))
    return paths


def snapshot(*roots):
    """{path: what is there}: every file's bytes (hashed), directory and symlink."""
    out = {}
    for top in roots:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    out[p] = ("link", os.readlink(p))
                elif os.path.isdir(p):
                    out[p] = ("dir",)
                else:
                    with open(p, "rb") as f:
                        out[p] = ("file", hashlib.sha1(f.read()).hexdigest())
    return out


def run_row(entry, argv, capsys):
    """-> (status, stderr) of cli_main(entry's main, argv); any other exception propagates."""
    capsys.readouterr()
    try:
        cli_main(MAINS[entry], argv)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


# ---- what each row's setup leaves in its directory t (paths: the session's) -------------

def copy(name):
    """The session's run `name` copied to t/name (rows that resume or overwrite it)."""
    def setup(t, paths):
        shutil.copytree(paths[name], t / name, symlinks=True)
    return setup


def write(rel, text):
    def setup(t, paths):
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_text(text)
    return setup


def both(*setups):
    def setup(t, paths):
        for s in setups:
            s(t, paths)
    return setup


def edit_config(rel, change):
    """A copy of the base checkpoint at t/rel with its config.json's model edited."""
    def setup(t, paths):
        shutil.copytree(paths["base"], t / rel)
        cfg = json.loads((t / rel / "config.json").read_text())
        change(cfg["model"])
        (t / rel / "config.json").write_text(json.dumps(cfg))
    return setup


def drop(rel):
    def setup(t, paths):
        os.remove(t / rel)
    return setup


def symlink(rel, target):
    def setup(t, paths):
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.format(**paths, t=t), t / rel)
    return setup


def locked(rel):
    """t/rel is a run's out dir whose lock another holder has (this process, through a
    file of its own, as a second process would)."""
    def setup(t, paths):
        copy("sft")(t, paths)
        f = open(t / rel / run.MARKER, "r+")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.write(json.dumps({"stage": "sft", "pid": 4242}))
        f.truncate()
        f.flush()
        setup.held = f
    return setup


def small_vocab(t, paths, cls=GPT):
    torch.manual_seed(0)
    checkpoint.save(str(t / "small"), cls(GPTConfig(1, 2, 32, 100, 64)), {"tokenizer": "bytes"})


def small_vocab_rm(t, paths):
    small_vocab(t, paths, ScalarGPT)


def renamed_old(rel):
    """t/rel/ckpt moved to ckpt.old: a save killed between its two renames."""
    def setup(t, paths):
        os.rename(t / rel / "ckpt", t / rel / "ckpt.old")
    return setup


HAS_CUDA = torch.cuda.is_available()
BAD = '{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n'
ROWS = [
    # ---- flags: train_sft.py ------------------------------------------------------------
    ("sft", ["--lr=-1"], "--lr=-1.0: must be > 0"),
    ("sft", ["--lr=nan"], "--lr=nan: must be a number > 0, not nan"),
    ("sft", ["--lr=inf"], "--lr=inf: must be a finite number > 0"),
    ("sft", ["--lr=1e-5", "--min_lr=1e-4"], "--min_lr=0.0001: must be in [0, --lr=1e-05]"),
    ("sft", ["--min_lr=-1e-4"], "--min_lr=-0.0001: must be in [0, --lr="),
    ("sft", ["--beta1=1"], "--beta1=1.0: must be in [0, 1)"),
    ("sft", ["--beta2=-0.5"], "--beta2=-0.5: must be in [0, 1)"),
    ("sft", ["--dropout=1"], "--dropout=1.0: must be in [0, 1)"),
    ("sft", ["--dropout=nan"], "--dropout=nan"),
    ("sft", ["--weight_decay=-0.1"], "--weight_decay=-0.1: must be >= 0"),
    ("sft", ["--grad_clip=-1"], "--grad_clip=-1.0: must be >= 0"),
    ("sft", ["--batch_size=0"], "--batch_size=0: must be in [1, 4096]"),
    ("sft", ["--batch_size=-3"], "--batch_size=-3: must be in [1, 4096]"),
    ("sft", ["--batch_size=100000000000000000000"], "--batch_size=100000000000000000000: must be in [1, 4096]"),
    ("sft", ["--grad_accum=0"], "--grad_accum=0: must be in [1, 4096]"),
    ("sft", ["--grad_accum=1000000"], "--grad_accum=1000000: must be in [1, 4096]"),
    ("sft", ["--max_iters=0"], "--max_iters=0: must be >= 1"),
    ("sft", ["--warmup_iters=-1"], "--warmup_iters=-1: must be >= 0"),
    ("sft", ["--eval_interval=0"], "--eval_interval=0: must be >= 1"),
    ("sft", ["--eval_interval=-5"], "--eval_interval=-5: must be >= 1"),
    ("sft", ["--eval_batches=0"], "--eval_batches=0: must be >= 1"),
    ("sft", ["--log_interval=0"], "--log_interval=0: must be >= 1"),
    ("sft", ["--block_size=-1"], "--block_size=-1: must be in [0, 2**20]"),
    ("sft", ["--init=tiny", "--block_size=1000000000000000000000000000000"], "must be in [0, 2**20]"),
    ("sft", ["--seed=-1"], "--seed=-1: must be in [0, 2**32)"),
    ("sft", ["--threads=-1"], "--threads=-1: must be in [0, 1024]"),
    ("sft", ["--device=foo"], "--device='foo': choose one of auto | cpu | cuda | cuda:N"),
    ("sft", ["--device=cuda:99"], "--device=cuda:99"),
    *([("sft", ["--device=cuda"], "--device=cuda: no CUDA GPU is visible")] if not HAS_CUDA else []),
    ("sft", ["--mode=rlhf"], "--mode='rlhf': choose one of sft | pretrain"),
    ("sft", ["--max_itres=3"], "--max_itres: unknown flag; did you mean --max_iters?"),
    ("sft", ["--max_iters=1.5"], "--max_iters='1.5': expected an integer"),
    ("sft", ["--lr=fast"], "--lr='fast': expected a number"),
    ("sft", ["--resume=maybe"], "--resume='maybe': expected true or false"),
    ("sft", ["--out_dir"], "--out_dir: needs a value"),
    ("sft", ["train"], "unexpected argument 'train'"),
    # ---- flags: train_rm.py --------------------------------------------------------------
    ("rm", ["--epochs=0"], "--epochs=0.0: must be > 0"),
    ("rm", ["--epochs=nan"], "--epochs=nan"),
    ("rm", ["--epochs=inf"], "--epochs=inf: must be a finite number"),
    ("rm", ["--batch_size=-1"], "--batch_size=-1: must be in [1, 4096]"),
    ("rm", ["--grad_accum=0"], "--grad_accum=0: must be in [1, 4096]"),
    ("rm", ["--lr=nan"], "--lr=nan"),
    ("rm", ["--min_lr=1"], "--min_lr=1.0: must be in [0, --lr=0.0003]"),
    ("rm", ["--grad_clip=-1"], "--grad_clip=-1.0: must be >= 0"),
    ("rm", ["--dropout=1.5"], "--dropout=1.5: must be in [0, 1)"),
    ("rm", ["--beta1=1.2"], "--beta1=1.2: must be in [0, 1)"),
    ("rm", ["--eval_interval=0"], "--eval_interval=0: must be >= 1"),
    ("rm", ["--threads=-1"], "--threads=-1"),
    # ---- flags: train_ppo.py -------------------------------------------------------------
    ("ppo", ["--minibatches=3"], "--minibatches=3 does not divide --batch_size=4"),
    ("ppo", ["--minibatches=0"], "--minibatches=0: must be >= 1"),
    ("ppo", ["--temperature=0"], "--temperature=0.0: must be > 0"),
    ("ppo", ["--temperature=nan"], "--temperature=nan"),
    ("ppo", ["--temperature=inf"], "--temperature=inf"),
    ("ppo", ["--clip=-1"], "--clip=-1.0: must be > 0"),
    ("ppo", ["--vf_clip=0"], "--vf_clip=0.0: must be > 0"),
    ("ppo", ["--ptx_coef=nan"], "--ptx_coef=nan"),
    ("ppo", ["--ptx_coef=-1"], "--ptx_coef=-1.0: must be >= 0"),
    ("ppo", ["--ptx_block_size=0"], "--ptx_block_size=0: must be >= 1"),
    ("ppo", ["--ptx_batch_size=0"], "--ptx_batch_size=0: must be in [1, 4096]"),
    ("ppo", ["--gamma=1.5"], "--gamma=1.5: must be in [0, 1]"),
    ("ppo", ["--lam=-0.1"], "--lam=-0.1: must be in [0, 1]"),
    ("ppo", ["--kl_kind=k4"], "--kl_kind='k4': choose one of k1 | k2 | k3"),
    ("ppo", ["--target_kl=0.1", "--kl_horizon=0"], "--kl_horizon=0: must be >= 1"),
    ("ppo", ["--target_kl=-1"], "--target_kl=-1.0: must be >= 0"),
    ("ppo", ["--kl_coef=-0.1"], "--kl_coef=-0.1: must be >= 0"),
    ("ppo", ["--vf_lr=nan"], "--vf_lr=nan"),
    ("ppo", ["--no_eos_penalty=inf"], "--no_eos_penalty=inf: must be a finite number"),
    ("ppo", ["--max_new_tokens=0"], "--max_new_tokens=0: must be >= 1"),
    ("ppo", ["--ppo_epochs=0"], "--ppo_epochs=0: must be >= 1"),
    ("ppo", ["--save_interval=0"], "--save_interval=0: must be >= 1"),
    ("ppo", ["--sample_interval=-1"], "--sample_interval=-1: must be >= 0"),
    ("ppo", ["--lr=-1e-4"], "--lr=-0.0001: must be > 0"),
    ("ppo", ["--batch_size=0"], "--batch_size=0: must be in [1, 4096]"),
    ("ppo", ["--batch_size=1000000"], "--batch_size=1000000: must be in [1, 4096]"),
    # ---- flags: collect, evaluate, sample, world -----------------------------------------
    ("collect", ["--k=1"], "--k=1: must be in [2, 100]"),
    ("collect", ["--k=1000"], "--k=1000: must be in [2, 100]"),
    ("collect", ["--batch_size=-1"], "--batch_size=-1: must be in [1, 4096]"),
    ("collect", ["--labeler=bob"], "--labeler='bob': choose one of train | heldout | human"),
    ("collect", ["--temperature=0"], "--temperature=0.0: must be > 0"),
    ("collect", ["--max_new_tokens=0"], "--max_new_tokens=0: must be >= 1"),
    ("collect", ["--limit=-1"], "--limit=-1: must be >= 0"),
    ("collect", ["--policy="], "--policy is required"),
    ("collect", ["--device=cuda:7"], "--device=cuda:7"),
    ("evaluate", ["--samples=0"], "--samples=0: must be in [1, 1000]"),
    ("evaluate", ["--max_new_tokens=0"], "--max_new_tokens=0: must be >= 1"),
    ("evaluate", ["--aggregate={root}/report.json"], "--aggregate=" ),
    ("evaluate", ["--labeler=heldout,bob"], "--labeler='bob'"),
    ("evaluate", ["--temperature=-1"], "--temperature=-1.0: must be >= 0"),
    ("evaluate", ["--batch_size=0"], "--batch_size=0: must be in [1, 4096]"),
    ("evaluate", ["--shots=-1"], "--shots=-1: must be >= 0"),
    ("evaluate", ["--heldout_tokens=-1"], "--heldout_tokens=-1: must be >= 0"),
    ("sample", ["--n=0"], "--n=0: must be in [1, 4096]"),
    ("sample", ["--n=1000000000"], "--n=1000000000: must be in [1, 4096]"),
    ("sample", ["--top_p=2"], "--top_p=2.0: must be in (0, 1]"),
    ("sample", ["--top_p=0"], "--top_p=0.0: must be in (0, 1]"),
    ("sample", ["--temperature=-1"], "--temperature=-1.0: must be >= 0"),
    ("sample", ["--temperature=nan"], "--temperature=nan"),
    ("sample", ["--top_k=-1"], "--top_k=-1: must be >= 0"),
    ("sample", ["--bench", "--batch=0"], "--batch=0: must be in [1, 4096]"),
    ("sample", ["--bench", "--preset=huge"], "--preset='huge': choose one of tiny"),
    ("sample", ["--ckpt="], "--ckpt and --prompt (or --prompts and --out) are required"),
    ("world", ["--corpus_docs=0"], "--corpus_docs=0: must be in [20, 1000000]"),
    ("world", ["--corpus_docs=1000000000000"], "--corpus_docs=1000000000000: must be in [20, 1000000]"),
    ("world", ["--seed=-1"], "--seed=-1: must be in [0, 2**32)"),
    ("bpe", ["--vocab_size=256"], "--vocab_size=256: must be in [257, 65536]"),
    ("bpe", ["--out="], "--out is required"),
    ("bpe", ["--data={t}/bad.jsonl"], "bad.jsonl:2: text: missing", write("bad.jsonl", '{"text": "a"}\n{"txt": 1}\n')),
    ("bpe", ["--demos={t}/bad.jsonl"], "bad.jsonl:2: response: missing", write("bad.jsonl", BAD)),
    ("bpe", ["--out={t}/w.tiktoken"], "exists; pass --overwrite", write("w.tiktoken", "mine")),
    ("bpe", ["--out={w}", "--overwrite"], "a directory"),
    ("bpe", ["--out={t}/no/such/dir/w.tiktoken"], "no/such/dir"),
    # ---- out dirs and paths --------------------------------------------------------------
    ("sft", ["--out_dir="], "--out_dir is required"),
    ("sft", ["--init="], "--init is required"),
    ("rm", ["--demos={w}"], "is a directory, not a file"),
    ("ppo", ["--reward="], "--reward is required"),
    ("evaluate", ["--heldout={w}"], "no such file"),
    ("world", ["--out="], "--out is required"),
    ("sft", ["--out_dir={sft}/ckpt"], "/ckpt: a checkpoint directory; --out_dir names the run's directory"),
    ("sft", ["--out_dir={t}/file"], "/file: a file, not a directory", write("file", "mine")),
    ("sft", ["--out_dir={t}/link"], "/link: a symlink to", symlink("link", "{t}/nowhere")),
    ("sft", ["--out_dir={t}/mine"], "holds files that are not a nanoinstruct run (notes.txt)",
     write("mine/notes.txt", "my notes")),
    ("sft", ["--out_dir={t}/mine", "--overwrite"], "holds files that are not a nanoinstruct run (metrics.jsonl)",
     write("mine/metrics.jsonl", '{"mine": 1}\n')),
    ("sft", ["--out_dir={t}/sft"], "already holds a checkpoint; pass --resume", copy("sft")),
    ("sft", ["--out_dir={t}/sft"], "holds the log (metrics.jsonl) of a run that saved no checkpoint",
     both(copy("sft"), lambda t, p: shutil.rmtree(t / "sft" / "ckpt"))),
    ("sft", ["--out_dir={t}/fresh", "--resume"], "--resume: {t}/fresh has no checkpoint to resume"),
    ("sft", ["--out_dir={t}/sft", "--overwrite", "--data={t}/bad.jsonl"], "bad.jsonl:2: response: missing",
     both(copy("sft"), write("bad.jsonl", BAD))),
    ("sft", ["--out_dir={t}/sft", "--overwrite", "--init={t}/nope"], "nope: not a preset", copy("sft")),
    ("sft", ["--out_dir={t}/rm", "--resume"], "holds a rm run, not a sft run", copy("rm")),
    ("rm", ["--out_dir={t}/sft", "--resume"], "holds a sft run, not a rm run", copy("sft")),
    ("ppo", ["--out_dir={t}/sft", "--resume"], "holds a sft run, not a ppo run", copy("sft")),
    ("sft", ["--out_dir={t}/sft", "--resume"], "has no resume state", both(copy("sft"), drop("sft/ckpt/resume.pt"))),
    ("rm", ["--out_dir={t}/rm", "--resume"], "is a finished, normalised reward model", copy("rm")),
    ("sft", ["--out_dir={t}/sft", "--resume"], "ckpt is a symlink",
     both(copy("sft"), lambda t, p: shutil.move(t / "sft" / "ckpt", t / "real"), symlink("sft/ckpt", "{t}/real"))),
    ("sft", ["--out_dir={t}/sft", "--resume"], "another run (pid 4242) is using it", locked("sft")),
    ("ppo", ["--out_dir={t}/sft"], "holds a checkpoint", copy("sft")),
    ("world", ["--out={t}/file"], "--out={t}/file: not a directory", write("file", "mine")),
    ("world", ["--out={w}"], "already holds corpus.jsonl"),
    ("evaluate", ["--out_dir={t}/eval"], "already holds report.md", write("eval/report.md", "mine")),
    ("evaluate", ["--out_dir={t}/file"], "--out_dir={t}/file: not a directory", write("file", "mine")),
    ("evaluate", ["--aggregate={root}/report.json,{t}/bad.json"], "bad.json:1: not valid JSON",
     write("bad.json", "{oops")),
    ("evaluate", ["--aggregate={root}/report.json,{t}/none.json"], "none.json: no such file"),
    ("evaluate", ["--aggregate={root}/report.json,{t}/list.json"], "list.json: not a report.json",
     write("list.json", "[1, 2]")),
    ("collect", ["--out={t}/dir"], "--out={t}/dir: a directory", write("dir/x", "")),
    ("collect", ["--prompts={t}/none.jsonl"], "none.jsonl: file not found"),
    ("sample", ["--ckpt={t}/none"], "none: not a checkpoint"),
    # ---- checkpoints ---------------------------------------------------------------------
    ("sft", ["--init={t}/c"], 'model.n_layer is "4", expected an integer',
     edit_config("c", lambda m: m.update(n_layer="4"))),
    ("sft", ["--init={t}/c"], "model.n_head: missing", edit_config("c", lambda m: m.pop("n_head"))),
    ("sft", ["--init={t}/c"], "model.block_size is 0, expected at least 1",
     edit_config("c", lambda m: m.update(block_size=0))),
    ("sft", ["--init={t}/c"], "model.n_embd 32 is not a multiple of n_head 3",
     edit_config("c", lambda m: m.update(n_head=3))),
    ("sft", ["--init={t}/c"], "model.bias is 1, expected true or false", edit_config("c", lambda m: m.update(bias=1))),
    ("sft", ["--init={t}/c"], "config.json:1: not valid JSON", write("c/config.json", "{not json")),
    ("sft", ["--init={t}/c"], "checkpoint has no model.safetensors", both(copy("base"), lambda t, p: os.rename(
        t / "base", t / "c"), drop("c/model.safetensors"))),
    ("sft", ["--init={t}/c"], "model.safetensors: not a readable safetensors file",
     both(copy("base"), lambda t, p: os.rename(t / "base", t / "c"), write("c/model.safetensors", "garbage"))),
    ("sft", ["--init={t}/small"], "the model predicts 100 token ids (100 embedding rows); its tokenizer bytes has 257 (+ PAD)", small_vocab),
    ("sft", ["--init={t}/file"], "not a preset", write("file", "x")),
    ("rm", ["--init={t}/small"], "the model predicts 100 token ids (100 embedding rows); its tokenizer bytes has 257 (+ PAD)", small_vocab),
    ("ppo", ["--reward={sft}"], "a gpt checkpoint, not a reward model"),
    ("ppo", ["--init={rm}"], "a scalar checkpoint, not a language model"),
    ("ppo", ["--reward={t}/small"], "the model predicts 100 token ids (100 embedding rows); its tokenizer bytes has 257 (+ PAD)", small_vocab_rm),
    ("collect", ["--policy={rm}"], "a scalar checkpoint cannot generate"),
    ("collect", ["--policy={t}/small"], "the model predicts 100 token ids (100 embedding rows); its tokenizer bytes has 257 (+ PAD)", small_vocab),
    ("sample", ["--ckpt={rm}"], "a scalar model has no language-model head"),
    ("sample", ["--ckpt={t}/small"], "the model predicts 100 token ids (100 embedding rows); its tokenizer bytes has 257 (+ PAD)", small_vocab),
    ("evaluate", ["--policies=sft={rm}"], "a scalar checkpoint, not a language model"),
    ("evaluate", ["--reward={sft}", "--comparisons={w}/cmp_val.jsonl"], "a language model, not a reward model"),
    # ---- messages that named the wrong thing ---------------------------------------------
    ("ppo", ["--max_new_tokens=1000"], "--max_new_tokens=1000 leaves no room for a prompt in a context of 128 tokens"),
    ("collect", ["--max_new_tokens=1000"], "--max_new_tokens=1000 leaves no room for a prompt"),
    ("evaluate", ["--max_new_tokens=1000"], "--max_new_tokens=1000 leaves no room for a prompt in sft's"),
    ("evaluate", ["--prompted=sft", "--shots=1000"], "--shots=1000: the few-shot prefix with --max_new_tokens=8 fills"),
]
KEEP_CKPT = [  # rows that diverge: the run may log, but the checkpoint it had must survive
    ("sft", ["--out_dir={t}/sft", "--resume", "--lr=1e10", "--eval_interval=1", "--max_iters=6"],
     "the held-out loss is nan at iteration 3; stopped. The last good checkpoint is {t}/sft/ckpt (iteration 2)",
     copy("sft")),
    ("sft", ["--out_dir={t}/sft", "--resume", "--lr=1e30", "--warmup_iters=0", "--eval_interval=1", "--max_iters=4"],
     "The last good checkpoint is {t}/sft/ckpt (iteration 2), untouched", copy("sft")),
    ("sft", ["--lr=1e30", "--max_iters=1", "--warmup_iters=0"], "No checkpoint was saved to"),
    ("rm", ["--lr=1e30", "--warmup_iters=0", "--eval_interval=1"], "No checkpoint was saved to"),
    ("ppo", ["--lr=1e30"], "is nan at iteration 1; stopped. No checkpoint was saved to {t}/out/ckpt"),
    ("ppo", ["--lr=1e30", "--max_iters=3", "--save_interval=5"], "the policy's logits are not finite at iteration 1; stopped. No checkpoint"),
    ("ppo", ["--out_dir={t}/ppo", "--resume", "--lr=1e30", "--max_iters=3", "--save_interval=1"],
     "The last good checkpoint is {t}/ppo/ckpt (iteration 1), untouched", copy("ppo")),
]


def row_id(row):
    return f"{row[0]}:{' '.join(row[1])}"[:80]


def fill(args, paths, t):
    return [a.format(**paths, t=t) for a in args]


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_hostile_row(env, row, tmp_path, capsys):
    entry, extra, expected, *setup = row
    if setup:
        setup[0](tmp_path, env)
    argv = fill(BASE[entry] + extra, env, tmp_path)
    before = snapshot(env["root"], tmp_path)
    status, err = run_row(entry, argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, (status, err)
    message = err[err.index("error:"):]          # a data error lists its bad lines under it
    assert expected.format(**env, t=tmp_path) in message, message
    assert snapshot(env["root"], tmp_path) == before, "an output changed"


@pytest.mark.parametrize("row", KEEP_CKPT, ids=row_id)
def test_divergence_keeps_the_last_good_checkpoint(env, row, tmp_path, capsys):
    entry, extra, expected, *setup = row
    if setup:
        setup[0](tmp_path, env)
    argv = fill(BASE[entry] + extra, env, tmp_path)
    ckpts = {p: v for p, v in snapshot(env["root"], tmp_path).items() if "/ckpt" in p}
    status, err = run_row(entry, argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, (status, err)
    assert expected.format(**env, t=tmp_path) in errors[0], errors[0]
    assert {p: v for p, v in snapshot(env["root"], tmp_path).items() if "/ckpt" in p} == ckpts


def test_base_commands_succeed(env, tmp_path, capsys):
    """The rows' base commands work: each row fails for the reason its own flags give."""
    for entry, argv in BASE.items():
        (tmp_path / entry).mkdir()
        status, err = run_row(entry, fill(argv, env, tmp_path / entry), capsys)
        assert status == 0, (entry, err)
    for stage in ("sft", "rm", "ppo"):
        assert checkpoint.read_config(str(tmp_path / stage / "out"))["iter"] >= 1
    assert (tmp_path / "evaluate" / "eval" / "report.json").is_file()
    assert len(data.read_comparisons(str(tmp_path / "collect" / "cmp.jsonl"))) == \
        len(data.read_prompts(os.path.join(env["w"], "rm_prompts.jsonl")))


def test_help_lists_every_flag_with_its_range(capsys):
    for entry, main in MAINS.items():
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0
        module = sys.modules[main.__module__]
        assert out.startswith(module.__doc__.strip().split("\n\n")[0])
        lines = out.splitlines()
        for f in cli.fields_of(module.Config).values():
            i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"--{f.name}={f.default}"))
            text = " ".join(lines[i:i + 2])
            assert f.range in text and f.help in text, (entry, f.name, text)
            if f.kind in (int, float):
                assert f.range, f"{entry}: --{f.name} states no range"


def test_choices_match_what_the_code_accepts():
    import kernels
    from nanoinstruct.model import PRESETS
    fields = cli.fields_of(train_ppo.Config)
    assert fields["kl_kind"].range.split(" | ") == list(kernels.KL_KINDS)
    assert cli.fields_of(sample.Config)["preset"].range.split(" | ") == list(PRESETS)
    assert cli.fields_of(collect.Config)["labeler"].range.split(" | ") == [*LABELERS, "human"]


def test_a_users_directory_named_like_a_temporary_survives(env, tmp_path, capsys):
    copy("sft")(tmp_path, env)
    mine = tmp_path / "sft" / "ckpt.tmp-123"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    status, err = run_row("sft", fill(BASE["sft"] + ["--out_dir={t}/sft", "--resume", "--max_iters=3",
                                                      "--eval_interval=1"], env, tmp_path), capsys)
    assert status == 0, err
    assert (mine / "notes.txt").read_text() == "mine"
    assert checkpoint.read_config(str(tmp_path / "sft"))["iter"] == 3


@pytest.mark.parametrize("flag", ["--resume", "--init"])
def test_a_save_killed_between_its_renames_resumes(env, tmp_path, capsys, flag):
    """ckpt.old and no ckpt: --resume and --init take the old copy."""
    copy("sft")(tmp_path, env)
    renamed_old("sft")(tmp_path, env)
    extra = ["--out_dir={t}/sft", "--resume", "--max_iters=3"] if flag == "--resume" else \
        ["--init={t}/sft/ckpt", "--out_dir={t}/new"]
    status, err = run_row("sft", fill(BASE["sft"] + extra, env, tmp_path), capsys)
    assert status == 0, err
    done = tmp_path / ("sft" if flag == "--resume" else "new")
    assert checkpoint.read_config(str(done))["iter"] == (3 if flag == "--resume" else 2)


# ---- a handful for real: exit status and stderr of a separate process ---------------------

SUBPROCESS = [
    (["train_sft.py", "--lr=nan"], "--lr=nan: must be a number > 0, not nan"),
    (["train_rm.py", "--epochs=0"], "--epochs=0.0: must be > 0"),
    (["-m", "nanoinstruct.sample", "--bench", "--batch=0"], "--batch=0: must be in [1, 4096]"),
    (["-m", "nanoinstruct.world", "--out={w}"], "already holds corpus.jsonl"),
    # GPT-2 XL's shape (1.5B parameters, random) in a process allowed 3 GB of address space
    (["train_sft.py", "--init=gpt2-xl-random", "--data={w}/sft.jsonl", "--val_data={w}/sft_val.jsonl",
      "--out_dir={t}/out"], "out of memory: could not allocate a tensor of"),
]


def limit_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.parametrize("argv, expected", SUBPROCESS, ids=lambda x: " ".join(x)[:60] if isinstance(x, list) else "")
def test_for_real(env, tmp_path, argv, expected):
    before = snapshot(env["root"], tmp_path)
    r = subprocess.run([sys.executable, *fill(argv, env, tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, preexec_fn=limit_memory)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [r.stderr.strip().splitlines()[-1]]
    assert expected in r.stderr, r.stderr
    assert snapshot(env["root"], tmp_path) == before


def test_a_second_process_in_the_same_out_dir_stops_naming_the_first(env, tmp_path, capsys):
    """Two processes, for real: one holds the out dir (claim_out_dir, then waits); a run
    in this process stops with the holder's pid and leaves the dir as it was."""
    copy("sft")(tmp_path, env)
    out = tmp_path / "sft"
    code = ("import sys, time; from nanoinstruct import distributed, run\n"
            f"run.claim_out_dir(distributed.Dist(), {str(out)!r}, 'sft', True, False)\n"
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(tmp_path)
        status, err = run_row("sft", fill(BASE["sft"] + ["--out_dir={t}/sft", "--resume", "--max_iters=3"],
                                          env, tmp_path), capsys)
        assert status == 2 and f"another run (pid {holder.pid}) is using it" in err, err
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    status, err = run_row("sft", fill(BASE["sft"] + ["--out_dir={t}/sft", "--resume", "--max_iters=3"],
                                      env, tmp_path), capsys)
    assert status == 0, err                                   # the lock died with its holder


def test_a_read_only_out_dir_is_one_line(env, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway: the kernel's answer for a non-root user, for this path
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: access(p, mode, **k) and not (
            os.path.realpath(p) == os.path.realpath(ro) and mode & os.W_OK))
    status, err = run_row("sft", fill(BASE["sft"] + ["--out_dir={t}/ro/out"], env, tmp_path), capsys)
    assert status == 2 and f"{ro} is not writable" in err, err


def test_under_torchrun_every_rank_stops_on_a_held_out_dir(env, tmp_path):
    """Rank 0 takes the lock; when it cannot, every rank stops with the same line at once
    (none waits for rank 0 at the next collective)."""
    locked("sft")(tmp_path, env)
    before = snapshot(tmp_path)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train_sft.py", *fill(BASE["sft"] + ["--out_dir={t}/sft", "--resume", "--max_iters=3",
                                                             "--batch_size=2"], env, tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0
    assert r.stderr.count("error: --out_dir=") == 2 and r.stderr.count("another run (pid 4242) is using it") == 2, \
        r.stderr[-3000:]
    assert snapshot(tmp_path) == before
