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


@pytest.mark.parametrize("lines, msg", [
    (["YWI= 97"], r":257: rank 97 already given at line 98$"),                 # ab: a's rank
    (["YWI= 256", "YWI= 257"], r":258: token b'ab' already has rank 256 \(line 257\)$"),
    (["YWI= -1"], r":257: rank '-1' is not an integer from 0 to 2\*\*32-1$"),
    ([f"YWI= {2 ** 32}"], r":257: rank '4294967296' is not an integer from 0 to 2\*\*32-1$"),
    (["YWI= " + "9" * 5000], r":257: rank '99999999999999999999' is not an integer"),
    (["YWI= 2.5"], r":257: rank '2.5' is not an integer"),
    (["YWI= 1 2"], r":257: expected 'base64-token rank'"),
])
def test_bad_ranks_name_the_line(tmp_path, lines, msg):
    f = tmp_path / "mine.tiktoken"
    f.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
                 + "".join(line + "\n" for line in lines))
    with pytest.raises(UserError, match=f"^{f}{msg}"):
        get_tokenizer(str(f))


def test_ranks_missing_a_byte_or_clashing_with_a_special(tmp_path):
    f = tmp_path / "mine.tiktoken"
    f.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(2, 256)))
    with pytest.raises(UserError, match=rf"^{f}: no token for the single bytes 0x00, 0x01 \(2 of 256\)"):
        get_tokenizer(str(f))                   # tiktoken would panic on encoding either byte
    f = tmp_path / "cl100k_base.tiktoken"
    write_ranks(f, [])
    with f.open("a") as out:
        out.write(f"{base64.b64encode(b'ab').decode()} 100257\n")
    with pytest.raises(UserError, match=r"rank 100257 is also cl100k_base's special token <\|endoftext\|>"):
        get_tokenizer(str(f))
    with pytest.raises(UserError, match=rf"^{tmp_path}: not a .tiktoken file"):
        get_tokenizer(str(tmp_path))


def test_rank_gaps_are_allowed(tmp_path):
    f = tmp_path / "gap.tiktoken"                # p50k and cl100k have gaps below their last id
    f.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
                 + f"{base64.b64encode(b'ab').decode()} 300\n")
    tok = get_tokenizer(str(f))
    assert tok.encode("abab") == [300, 300] and tok.decode([300, 270, 97]) == "aba"
    assert tok.eos_id == 301 and tok.pad_id == 302
