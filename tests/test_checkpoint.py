"""Checkpoints: round trip, resume state, refusing pickles, atomic replacement."""

import os
import pickle
import random
import subprocess
import sys

import pytest
import torch

from nanoinstruct import checkpoint
from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT

CFG = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=64, block_size=16)


@pytest.mark.parametrize("cls", [GPT, ScalarGPT])
def test_round_trip(tmp_path, cls):
    torch.manual_seed(0)
    m = cls(CFG)
    path = str(tmp_path / "ckpt")
    checkpoint.save(path, m, {"tokenizer": "bytes", "run": {"lr": 3e-4}})
    back, config = checkpoint.load(path)
    assert type(back) is cls and config["run"] == {"lr": 3e-4} and config["tokenizer"] == "bytes"
    assert back.config == CFG
    for (k, a), b in zip(m.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    gpt = back if cls is GPT else back.gpt
    assert gpt.lm_head.weight is gpt.transformer.wte.weight        # still tied
    assert checkpoint.load_resume(path) is None


def test_resume_state_round_trip(tmp_path):
    torch.manual_seed(0)
    m = GPT(CFG)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randint(0, 64, (2, 8))).sum().backward()
    opt.step()
    random.seed(1)
    torch.manual_seed(2)
    state = {"optimizer": opt.state_dict(), "rng": checkpoint.rng_state(), "step": 7,
             "data": {"epoch": 1, "index": 12}}
    checkpoint.save(str(tmp_path / "c"), m, {}, resume=state)
    expected_py, expected_torch = random.random(), torch.rand(3)
    random.seed(99)
    torch.manual_seed(99)
    back = checkpoint.load_resume(str(tmp_path / "c"))
    checkpoint.set_rng_state(back["rng"])
    assert random.random() == expected_py and torch.equal(torch.rand(3), expected_torch)
    assert back["step"] == 7 and back["data"] == {"epoch": 1, "index": 12}
    opt2 = torch.optim.AdamW(m.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "bare pickle"])
def test_crafted_pickle_is_refused(tmp_path, how):
    path = tmp_path / "c"
    checkpoint.save(str(path), GPT(CFG), {})
    Exploit.marker = str(tmp_path / "pwned")
    if how == "torch.save":                                   # what a poisoned download holds
        torch.save({"step": Exploit()}, path / "resume.pt")
    else:
        with open(path / "resume.pt", "wb") as f:
            pickle.dump({"step": Exploit()}, f, protocol=2)
    with pytest.raises(UserError, match="resume.pt: refused"):
        checkpoint.load_resume(str(path))
    assert not os.path.exists(Exploit.marker)
    with open(path / "resume.pt", "rb") as f:                 # the file would have run it
        pickle.load(f) if how == "bare pickle" else torch.load(f, weights_only=False)
    assert os.path.exists(Exploit.marker)


def test_killed_save_keeps_previous(tmp_path):
    path = str(tmp_path / "c")
    checkpoint.save(path, GPT(CFG), {"step": 1})
    with pytest.raises(RuntimeError):
        with checkpoint.atomic_dir(path) as tmp:
            open(os.path.join(tmp, "model.safetensors"), "wb").write(b"half")
            raise RuntimeError("killed")
    assert checkpoint.read_config(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c"]          # no temporary left behind


def test_save_killed_by_sigkill_keeps_previous(tmp_path):
    path = str(tmp_path / "c")
    checkpoint.save(path, GPT(CFG), {"step": 1})
    code = ("import os, sys, torch; from nanoinstruct import checkpoint, model\n"
            "orig = torch.save\n"
            "def die(*a, **k): os.kill(os.getpid(), 9)\n"
            "torch.save = die\n"
            f"checkpoint.save({path!r}, model.GPT(model.GPTConfig(1,2,16,64,16)), {{'step': 2}}, resume={{}})\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    m, config = checkpoint.load(path)
    assert config["step"] == 1
    checkpoint.save(path, m, {"step": 3})                 # the next save clears the temporary
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_interrupted_between_renames_recovers(tmp_path):
    path = str(tmp_path / "c")
    checkpoint.save(path, GPT(CFG), {"step": 1})
    os.rename(path, path + ".old")                       # killed after the first rename
    assert checkpoint.read_config(path)["step"] == 1      # readers take the old copy ...
    assert checkpoint.load(path)[1]["step"] == 1
    assert os.path.isdir(path + ".old")                   # ... without renaming anything
    checkpoint.save(path, GPT(CFG), {"step": 2})          # and a save replaces it
    assert checkpoint.read_config(path)["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_bad_checkpoints(tmp_path):
    with pytest.raises(UserError, match="not a checkpoint"):
        checkpoint.load(str(tmp_path / "nope"))
    path = tmp_path / "c"
    checkpoint.save(str(path), GPT(CFG), {})
    cfg = (path / "config.json").read_text().replace('"n_embd": 16', '"n_embd": 32')
    (path / "config.json").write_text(cfg)
    with pytest.raises(UserError, match="does not match its config.json"):
        checkpoint.load(str(path))
    (path / "config.json").write_text("{\n  oops")
    with pytest.raises(UserError, match=r"config.json:2: not valid JSON"):
        checkpoint.load(str(path))


def test_user_error_exits_2_without_traceback(tmp_path):
    code = ("from nanoinstruct.cli import cli_main; from nanoinstruct.checkpoint import load\n"
            f"cli_main(load, {str(tmp_path / 'missing')!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "missing: not a checkpoint" in r.stderr


def test_sigkill_at_every_point_of_a_save_then_resume_is_bit_identical(tmp_path, monkeypatch):
    """A real SIGKILL at every line of checkpoint.save (each distinct line of save,
    atomic_dir, recover, ... the first time it runs; and in the middle of writing the
    weights), in a forked copy of a training run at its second save; then --resume. Every
    time: the weights and the metrics equal those of a run never killed."""
    import itertools
    import json
    import shutil
    import signal

    from safetensors.torch import load_file

    import train_sft
    from nanoinstruct import data
    from nanoinstruct.world import build

    files = build(0, corpus_docs=20, sizes=dict(sft=8, sft_val=2, rm=1, rm_val=1, ppo=1, eval=1))
    for name in ("sft.jsonl", "sft_val.jsonl"):
        data.write_jsonl(str(tmp_path / name), files[name])
    torch.manual_seed(0)
    checkpoint.save(str(tmp_path / "base"), GPT(GPTConfig(1, 2, 32, 320, 128, n_real=257)), {"tokenizer": "bytes"})

    def train(out, *extra):
        train_sft.main([f"--init={tmp_path / 'base'}", f"--data={tmp_path / 'sft.jsonl'}",
                        f"--val_data={tmp_path / 'sft_val.jsonl'}", f"--out_dir={out}", "--batch_size=2",
                        "--max_iters=4", "--eval_interval=2", "--eval_batches=1", "--log_interval=1",
                        "--warmup_iters=1", "--dropout=0.1", "--threads=1", *extra])

    train(tmp_path / "a")                                     # never killed

    def kill_at(k):
        """SIGKILL this process on the k-th distinct line of checkpoint.py it reaches."""
        seen = set()

        def local(frame, event, arg):
            if event == "line" and frame.f_lineno not in seen:
                seen.add(frame.f_lineno)
                if len(seen) == k:
                    os.kill(os.getpid(), signal.SIGKILL)
            return local

        def calls(frame, event, arg):
            code = frame.f_code
            if code.co_filename == checkpoint.__file__ and code.co_name not in ("_nonfinite", "intact"):
                return local
            return None
        sys.settrace(calls)

    def half_written(model, file):                            # dies in the middle of the weights
        from safetensors.torch import save_model as real
        real(model, file)
        with open(file, "r+b") as f:
            f.truncate(os.path.getsize(file) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    real_save, saves, killed = checkpoint.save, [], []

    def forking_save(path, model, config, resume=None, tokenizer=None):
        saves.append(path)
        if len(saves) == 2:                                   # the save at iteration 4
            for k in itertools.count(0):
                dst = tmp_path / f"b{k}"
                shutil.copytree(tmp_path / "b", dst)
                pid = os.fork()
                if pid == 0:                                  # the child: save into the copy, killed at k
                    try:
                        if k == 0:
                            checkpoint.save_model = half_written
                        else:
                            kill_at(k)
                        real_save(str(dst / "ckpt"), model, config, resume, tokenizer)
                    finally:
                        os._exit(0)
                _, status = os.waitpid(pid, 0)
                if not os.WIFSIGNALED(status):                # k is past the last line: every point done
                    break
                assert os.WTERMSIG(status) == signal.SIGKILL
                killed.append(dst)
        return real_save(path, model, config, resume, tokenizer)

    monkeypatch.setattr(checkpoint, "save", forking_save)
    train(tmp_path / "b")
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert len(killed) > 20, len(killed)

    def rows(out):                                            # the last row logged for each iteration
        last = {}
        for line in open(out / "metrics.jsonl"):
            r = json.loads(line)
            last[r["iter"], "val_loss" in r] = {k: v for k, v in r.items() if k not in ("tok_s", "elapsed")}
        return last

    a = load_file(str(tmp_path / "a" / "ckpt" / "model.safetensors"))
    states = set()
    for dst in killed:
        states.add(tuple(sorted(os.listdir(dst))))
        train(dst, "--resume")
        b = load_file(str(dst / "ckpt" / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), dst.name
        assert rows(dst) == rows(tmp_path / "a"), dst.name
        assert sorted(n for n in os.listdir(dst) if n.startswith("ckpt")) == ["ckpt"], os.listdir(dst)
        assert sorted(os.listdir(dst / "ckpt")) == ["config.json", "model.safetensors", "resume.pt"]
    # the kills left every state a save passes through: before, tmp only, between the renames, after
    assert {("ckpt.old" in s, "ckpt" in s, any(".tmp-" in n for n in s)) for s in states} >= {
        (False, True, False), (False, True, True), (True, False, True), (True, True, False)}, states


def test_a_non_finite_model_or_optimizer_state_is_never_saved(tmp_path):
    path = str(tmp_path / "c")
    m = GPT(CFG)
    with pytest.raises(UserError, match=r"No checkpoint was saved to .*c\."):
        with torch.no_grad():
            m.transformer.h[0].mlp.c_fc.weight[3, 1] = float("nan")
        checkpoint.save(path, m, {"iter": 5})
    assert os.listdir(tmp_path) == []
    checkpoint.save(path, GPT(CFG), {"iter": 4})
    before = open(os.path.join(path, "model.safetensors"), "rb").read()
    with pytest.raises(UserError, match=r"transformer.h.0.mlp.c_fc.weight is not finite at iteration 5; stopped "
                                        r"without saving .* The last good checkpoint is .*c \(iteration 4\), untouched"):
        checkpoint.save(path, m, {"iter": 5})
    state = {"optimizer": {"state": {0: {"exp_avg": torch.tensor([1.0, float("inf")])}}}}
    with pytest.raises(UserError, match=r"resume.optimizer.state.0.exp_avg is not finite"):
        checkpoint.save(path, GPT(CFG), {"iter": 5}, resume=state)
    assert open(os.path.join(path, "model.safetensors"), "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_only_our_own_temporaries_are_cleared(tmp_path):
    path = str(tmp_path / "c")
    (tmp_path / "c.tmp-123").mkdir()
    (tmp_path / "c.tmp-123" / "notes.txt").write_text("mine")          # a user's directory
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ours = tmp_path / f"c.tmp-{dead.stdout.strip()}"                     # a killed save of ours
    ours.mkdir()
    (ours / checkpoint.PARTIAL).touch()
    (ours / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f"c.tmp-{os.getppid()}"                          # a live process's save
    live.mkdir()
    (live / checkpoint.PARTIAL).touch()
    checkpoint.save(path, GPT(CFG), {})
    assert sorted(os.listdir(tmp_path)) == sorted(["c", "c.tmp-123", live.name])
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
