"""Flags into a config dataclass, with errors that name the flag."""

from dataclasses import dataclass

import pytest

from nanoinstruct.cli import UserError, parse_flags


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
