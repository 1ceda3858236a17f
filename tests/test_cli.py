"""Flags into a config dataclass, with errors that name the flag."""

import errno
from dataclasses import dataclass

import pytest
import torch

from nanoinstruct.cli import UserError, cli_main, fields_of, help_text, parse_flags


@dataclass
class Config:
    lr: float = 3e-4
    max_iters: int = 100
    out_dir: str = "out/x"
    init: str = None
    compile: bool = False
    kl_coef: float = 0          # an int default on a float field
    max_steps: int = None       # Optional


def test_defaults_and_overrides():
    assert parse_flags(Config, []) == Config()
    c = parse_flags(Config, ["--lr=1e-3", "--max-iters", "5", "--init=a/b", "--compile"])
    assert (c.lr, c.max_iters, c.init, c.compile, c.out_dir) == (1e-3, 5, "a/b", True, "out/x")
    assert parse_flags(Config, ["--compile=false", "--out_dir", "y"]).compile is False
    c = parse_flags(Config, ["--kl_coef=0.1", "--max_steps", "5", "--init", "-h", "--lr", "-1"])
    assert (c.kl_coef, c.max_steps, c.init, c.lr) == (0.1, 5, "-h", -1.0)   # declared types


@pytest.mark.parametrize("argv, msg", [
    (["--lrr=1"], r"--lrr: unknown flag; did you mean --lr\?"),
    (["--lr=fast"], r"--lr='fast': expected a number"),
    (["--max_iters=1.5"], r"--max_iters='1.5': expected an integer"),
    (["--compile=maybe"], r"--compile='maybe': expected true or false"),
    (["--out_dir"], r"--out_dir: needs a value"),
    (["train"], r"unexpected argument 'train'"),
])
def test_bad_flags_name_the_flag(argv, msg):
    with pytest.raises(UserError, match=msg):
        parse_flags(Config, argv)


# ---- ranges from the comments (the grammar in cli.py's docstring) ----------------------

@dataclass
class Ranged:
    # optimization
    lr: float = 1e-3              # > 0; peak learning rate
    min_lr: float = 1e-4          # [0, lr]; cosine decay ends here
    dropout: float = 0.0          # [0, 1); residual dropout
                                  # (a second line of help)
    batch_size: int = 8           # [1, 2**12]
    minibatches: int = 1          # >= 1, divides batch_size; optimizer steps per epoch
    penalty: float = -1.0         # any, nan; the score without EOS (nan: keep it)
    horizon: float = 1.0          # > 0, inf
    # machine
    mode: str = "sft"             # sft | pretrain
    device: str = "cpu"           # auto | cpu | cuda | cuda:N
    out: str = "o"                # required; where it goes
    note: str = ""                # free text; with a semicolon
    flag: bool = False
    plain: float = 1.0

    def check(self):
        if self.mode == "pretrain" and self.dropout:
            raise UserError("--dropout: not with --mode=pretrain")


@pytest.mark.parametrize("argv, msg", [
    (["--lr=0"], r"^--lr=0.0: must be > 0; peak learning rate$"),
    (["--lr=nan"], r"^--lr=nan: must be a number > 0, not nan"),
    (["--lr=inf"], r"^--lr=inf: must be a finite number > 0"),
    (["--lr=1e39"], r"^--lr=1e\+39: must be a finite number > 0 \(a float32 holds at most 3.4e38\)"),
    (["--lr=1e-5", "--min_lr=1e-4"], r"^--min_lr=0.0001: must be in \[0, --lr=1e-05\]; cosine decay ends here"),
    (["--dropout=1"], r"^--dropout=1.0: must be in \[0, 1\); residual dropout \(a second line of help\)"),
    (["--batch_size=4097"], r"^--batch_size=4097: must be in \[1, 2\*\*12\]"),
    (["--minibatches=3"], r"^--minibatches=3 does not divide --batch_size=8"),
    (["--penalty=inf"], r"^--penalty=inf: must be a finite number"),
    (["--horizon=-inf"], r"^--horizon=-inf: must be a finite number > 0"),
    (["--horizon=0"], r"^--horizon=0.0: must be > 0"),
    (["--mode=rlhf"], r"^--mode='rlhf': choose one of sft \| pretrain"),
    (["--device=cuda:x"], r"^--device='cuda:x': choose one of auto \| cpu \| cuda \| cuda:N"),
    (["--device=cuda:99"], r"^--device=cuda:99: (no CUDA GPU|this machine has)"),
    (["--out="], r"^--out is required: where it goes"),
    (["--plain=nan"], r"^--plain=nan: must be a finite number"),
    (["--mode=pretrain", "--dropout=0.1"], r"^--dropout: not with --mode=pretrain"),
])
def test_ranges_are_checked(argv, msg):
    with pytest.raises(UserError, match=msg):
        parse_flags(Ranged, argv)


def test_values_in_range_pass():
    c = parse_flags(Ranged, ["--lr=1e-4", "--min_lr=1e-4", "--batch_size=4096", "--minibatches=4096",
                             "--penalty=nan", "--horizon=inf", "--device=cuda:0" if torch.cuda.is_available()
                             else "--device=auto", "--note=a; b", "--plain=-3"])
    assert c.min_lr == c.lr and c.penalty != c.penalty and c.horizon == float("inf") and c.note == "a; b"


def test_the_comments_are_read_as_the_grammar_says():
    f = fields_of(Ranged)
    assert [(n, x.range) for n, x in f.items()][:7] == [
        ("lr", "> 0"), ("min_lr", "[0, lr]"), ("dropout", "[0, 1)"), ("batch_size", "[1, 2**12]"),
        ("minibatches", ">= 1, divides batch_size"), ("penalty", "any, nan"), ("horizon", "> 0, inf")]
    assert f["dropout"].help == "residual dropout (a second line of help)"
    assert (f["mode"].range, f["device"].range, f["out"].range) == ("sft | pretrain", "auto | cpu | cuda | cuda:N",
                                                                    "required")
    assert (f["note"].range, f["note"].help) == ("", "free text; with a semicolon")
    assert (f["flag"].range, f["plain"].range) == ("", "")
    assert [x.group for x in f.values()] == ["optimization"] * 7 + ["machine"] * 6
    text = help_text(Ranged)
    assert text.startswith("Flags into a config dataclass")
    assert "  optimization:\n  --lr=0.001" in text and "  machine:\n  --mode=sft" in text
    assert "--min_lr=0.0001" in text and "[0, lr]; cosine decay ends here" in text


def test_a_range_off_the_grammar_is_a_bug_in_the_config():
    @dataclass
    class Bad:
        lr: float = 1e-3          # >= zero; typo

    with pytest.raises(ValueError, match=r"Bad.lr: range '>= zero' does not follow the grammar"):
        fields_of(Bad)

    @dataclass
    class Later:
        min_lr: float = 0.0       # [0, lr]
        lr: float = 1e-3          # > 0

    with pytest.raises(ValueError, match=r"Later.min_lr: range '\[0, lr\]' .* an earlier field"):
        fields_of(Later)


# ---- failures at the top --------------------------------------------------------------

def raising(e):
    def main():
        raise e
    return main


@pytest.mark.parametrize("exc, line", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/data.jsonl"),
     "error: /x/data.jsonl: No such file or directory (check the path)"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/out"), "error: /x/out: Permission denied (check its"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/ckpt.tmp-1"),
     "error: /mnt/ro/ckpt.tmp-1: Read-only file system (a read-only file system; write elsewhere)"),
    (OSError(errno.ENOSPC, "No space left on device"), "error: No space left on device (the disk is full;"),
    (OSError(errno.EFBIG, "File too large", "/x/model.safetensors"), "error: /x/model.safetensors: File too large"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/file/ckpt"), "error: /x/file/ckpt: Not a directory"),
    (MemoryError(), "error: out of memory: could not allocate more; lower --batch_size"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 512000000000000 bytes. Error code 12"), "error: out of memory: could not allocate a tensor of 465.7 TiB"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; ...)"), "error: out of memory: could not allocate a tensor of 2.00 GiB;"),
    (FloatingPointError("the model's logits are not finite"), "error: the model's logits are not finite"),
])
def test_the_systems_refusals_are_one_line(exc, line, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(raising(exc))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(line) and err.count("\n") == 1, err


@pytest.mark.parametrize("exc", [RuntimeError("shape mismatch"), KeyError("iter"),
                                 OSError(errno.ECONNREFUSED, "Connection refused"), ValueError("bug")])
def test_programming_errors_keep_their_traceback(exc):
    with pytest.raises(type(exc)):
        cli_main(raising(exc))
