"""Tokenizers: bytes, local .tiktoken files (and tiktoken's cache trap), EOS/PAD, the template."""

import base64

import pytest
import tiktoken

from nanoinstruct.cli import UserError
from nanoinstruct.tokenizer import PROMPT_TEMPLATE, get_tokenizer


def test_bytes_round_trip_and_specials():
    tok = get_tokenizer("bytes")
    text = "héllo\nwörld <|endoftext|> 123"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))           # one id per byte, specials as text
    assert tok.decode(ids) == text
    assert (tok.eos_id, tok.pad_id, tok.n_vocab) == (256, 257, 258)


def test_template_and_response():
    tok = get_tokenizer()
    assert tok.decode(tok.encode_prompt("Add 2 and 3.")) == PROMPT_TEMPLATE.format(prompt="Add 2 and 3.")
    r = tok.encode_response("5")
    assert r[-1] == tok.eos_id and tok.eos_id not in r[:-1]
    assert tok.decode_response(r + [tok.pad_id] * 3) == "5"
    assert tok.decode_response(tok.encode(" 5 and more")) == "5 and more"   # no EOS: all of it


def write_ranks(path, merges):
    ranks = [bytes([i]) for i in range(256)] + merges
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))


def test_local_tiktoken_file_and_stale_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "mine.tiktoken"
    write_ranks(f, [b"ab"])
    tok = get_tokenizer(str(f))
    assert tok.encode("ab") == [256]
    assert tok.eos_id == 257 and tok.pad_id == 258 and tok.eos_id != tok.pad_id
    write_ranks(f, [b"ab", b"abab"])                   # edit the file: the edit is seen
    assert get_tokenizer(str(f)).encode("abab") == [257]


def test_local_file_named_like_an_encoding_uses_its_specials(tmp_path):
    f = tmp_path / "cl100k_base.tiktoken"
    write_ranks(f, [])
    tok = get_tokenizer(str(f))
    assert tok.eos_id == 100257                       # cl100k's <|endoftext|>
    assert tok.pad_id == tok.n_vocab - 1 and tok.pad_id != tok.eos_id


def test_bad_tiktoken_file(tmp_path):
    f = tmp_path / "bad.tiktoken"
    f.write_text("YQ== 0\nnot base64 at all\n")
    with pytest.raises(UserError, match=r"bad.tiktoken:2:"):
        get_tokenizer(str(f))
    with pytest.raises(UserError, match="not found"):
        get_tokenizer(str(tmp_path / "missing.tiktoken"))
    with pytest.raises(UserError, match="unknown tokenizer"):
        get_tokenizer("gpt5")


def test_named_encoding_without_network_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def offline(*a, **k):
        raise ConnectionError("network unreachable")
    monkeypatch.setattr(tiktoken.load, "read_file_cached", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    with pytest.raises(UserError, match=r"could not fetch.*cl100k_base.*cl100k_base\.tiktoken"):
        get_tokenizer("cl100k_base")
    with pytest.raises(UserError, match=r"r50k_base\.tiktoken"):
        get_tokenizer("gpt2")
