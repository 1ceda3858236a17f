"""The JSONL formats (round trips, file:line errors, long prompts) and batching (layout, masks)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from nanoinstruct.cli import UserError
from nanoinstruct.batching import fit_prompts, join, left_pad, pack_documents, pack_pairs, right_pad
from nanoinstruct.data import (
    _dumps,
    append_jsonl,
    read_comparisons,
    read_demos,
    read_prompts,
    read_text,
    repair_tail,
    require,
    write_jsonl,
)
from nanoinstruct.model import GPT, GPTConfig, last_index
from nanoinstruct.tokenizer import PROMPT_TEMPLATE, get_tokenizer

TOK = get_tokenizer("bytes")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORMATS = {
    "text": (read_text, [
        {"text": "Words that are fruits: apple, pear, plum."},
        {"text": "caf\u00e9 \u65e5\u672c, a line\nbreak and a \u2028 separator", "source": "w"},
    ]),
    "demos": (read_demos, [
        {"prompt": "Reverse the word cat.", "response": "tac"},
        {"prompt": "Say hi.", "response": "hi \u00e9", "style": "terse"},
    ]),
    "comparisons": (read_comparisons, [
        {"prompt": "Add 2 and 3.", "responses": ["5", "6"], "ranking": [1, 0]},
        {"prompt": "Name 3 fruits.", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1],
         "labeler": "train"},
    ]),
    "prompts": (read_prompts, [
        {"prompt": "Is 7 odd or even?", "answer": "odd",
         "meta": {"family": "parity", "n": [7, None, 1.5, True]}},
    ]),
}


def write_lines(path, lines):
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    return str(path)


# ----------------------------------------------------------------------------------------
# formats

@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_and_byte_identical(tmp_path, fmt):
    read, records = FORMATS[fmt]
    path = tmp_path / "new_dir" / f"{fmt}.jsonl"
    write_jsonl(str(path), records)
    got = read(str(path))
    assert got == records
    assert [r.line for r in got] == list(range(1, len(records) + 1))
    first = path.read_bytes()
    assert first.count(b"\n") == len(records) and b"\\u" not in first   # UTF-8, not escapes
    write_jsonl(str(path), got)              # records as read (with .line) write the same bytes
    assert path.read_bytes() == first
    assert os.listdir(path.parent) == [f"{fmt}.jsonl"]                  # no temporary left


def test_pairs_read_as_k2_and_k_varies(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [
        '{"prompt": "p1", "chosen": "good", "rejected": "bad", "source": "hh"}',
        '',
        '{"prompt": "p2", "responses": ["a", "b", "c", "d"], "ranking": [3, 1, 0, 2]}',
        json.dumps({"prompt": "p3", "responses": list("012345678"), "ranking": list(range(8, -1, -1))}),
    ])
    got = read_comparisons(path)
    assert got[0] == {"prompt": "p1", "responses": ["good", "bad"], "ranking": [0, 1], "source": "hh"}
    assert [len(r["responses"]) for r in got] == [2, 4, 9]
    assert [r.line for r in got] == [1, 3, 4]
    assert [got[1]["responses"][i] for i in got[1]["ranking"]] == ["d", "b", "a", "c"]


def test_every_bad_line_reported_at_once(tmp_path):
    ok = '"responses": ["a", "b"], "ranking": [0, 1]'
    path = write_lines(tmp_path / "c.jsonl", [
        '{"prompt": "fine", %s}' % ok,                                          # 1
        '{"prompt": "x", "responses": ["a", "b"], "ranking": [0, 1]',           # 2
        '["prompt"]',                                                           # 3
        '',                                                                     # 4
        '{%s}' % ok,                                                            # 5
        '{"prompt": 3, %s}' % ok,                                               # 6
        '{"prompt": "  ", %s}' % ok,                                            # 7
        '{"prompt": "p", "responses": ["a"], "ranking": [0]}',                  # 8
        '{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}',  # 9
        '{"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}',           # 10 (ok: sampled)
        '{"prompt": "p", "responses": ["a", null], "ranking": [0, 1]}',         # 11
        '{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1.0]}',        # 12
        '{"prompt": "p", "chosen": "a"}',                                       # 13
        '{"prompt": "p", "responses": "ab", "ranking": [0, 1]}',                # 14
        '{"prompt": "p", "responses": ["a", "b"]}',                             # 15
        '{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 2]}',          # 16
        b'{"prompt": "\xff"}',                                                  # 17
        '{"prompt": "p", "responses": ["a", "b"], "ranking": [true, false]}',   # 18
        '{"prompt": "last one is fine", %s}' % ok,                              # 19
    ])
    with pytest.raises(UserError) as e:
        read_comparisons(path)
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{path}: 15 bad lines; each line should be {{\"prompt\": str")
    assert lines[1:] == [f"{path}:{n}: {msg}" for n, msg in [
        (2, "not JSON (Expecting ',' delimiter at column 59)"),
        (3, "expected a JSON object, got a list"),
        (5, "prompt: missing (no known format; nearest is prompt/responses/ranking)"),
        (6, "prompt: expected a string or a list of messages, got a number"),
        (7, "prompt: empty string"),
        (8, "responses: needs at least 2 responses to rank, got 1"),
        (9, "ranking: [0, 0, 2] is not a permutation of 0..2 (3 responses)"),
        (11, "responses[1]: expected a string, got null"),
        (12, "ranking: expected a list of integers, got [0, 1.0]"),
        (13, "rejected: missing (no known format; nearest is prompt/chosen/rejected)"),
        (14, "responses: expected a list of strings, got a string"),
        (15, "ranking: missing (no known format; nearest is prompt/responses/ranking)"),
        (16, "ranking: [1, 2] is not a permutation of 0..1 (2 responses)"),
        (17, "not UTF-8 text"),
        (18, "ranking: expected a list of integers, got [true, false]"),
    ]]


@pytest.mark.parametrize("read, line, msg", [
    (read_text, '{"text": ""}', "text: empty string"),
    (read_text, '42', "expected a JSON object, got a number"),
    (read_demos, '{"prompt": "p"}', "response: missing (no known format; nearest is prompt/response)"),
    (read_demos, '{"prompt": "p", "response": ["r"]}', "response: expected a string, got a list"),
    (read_prompts, '{"prompt": null, "answer": 1}', "prompt: expected a string or a list of messages, got null"),
    (read_prompts, '{"answer": 1}', "prompt: missing (no known format; nearest is prompt; unknown keys: answer)"),
    (read_demos, '{"prompt": "p", "question": "q", "answer": "a"}',
     "response: missing (no known format; nearest is prompt/response; unknown keys: question, answer)"),
    (read_text, '{"txt": "a"}', "text: missing (no known format; nearest is text; unknown keys: txt)"),
])
def test_bad_line_each_format(tmp_path, read, line, msg):
    path = write_lines(tmp_path / "x.jsonl", [line])
    with pytest.raises(UserError) as e:
        read(path)
    assert str(e.value).splitlines()[1:] == [f"{path}:1: {msg}"]


def test_listing_is_capped(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"prompt": "p"}'] * 25)
    with pytest.raises(UserError) as e:
        read_demos(path)
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{path}: 25 bad lines")
    missing = "response: missing (no known format; nearest is prompt/response)"
    assert lines[1] == f"{path}:1: {missing}" and lines[20] == f"{path}:20: {missing}"
    assert lines[21:] == ["... and 5 more"]


def test_empty_and_missing_files(tmp_path):
    for content in ([], ["", "  "]):
        path = write_lines(tmp_path / "e.jsonl", content)
        with pytest.raises(UserError, match=rf"^{path}: empty file; each line should be "):
            read_text(path)
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=rf"^{missing}: file not found$"):
        read_prompts(missing)


def test_bad_file_exits_2_without_traceback(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"prompt": "p", "response": "r"}', '{"prompt": "p"}',
                                              "[" * 100_000, '{"n": 1%s}' % ("0" * 5000)])
    code = ("import sys; from nanoinstruct.cli import cli_main; "
            "from nanoinstruct.data import read_demos; cli_main(read_demos, sys.argv[1])")
    p = subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith(f"error: {path}: 3 bad lines;")
    assert f"{path}:2: response: missing (no known format; nearest is prompt/response)" in p.stderr.splitlines()
    assert f"{path}:3: not JSON we can read (nested deeper than 100 levels)" in p.stderr.splitlines()
    assert "Traceback" not in p.stderr


# ----------------------------------------------------------------------------------------
# hostile data: every case one line naming file:line or the path

@pytest.mark.parametrize("line, msg", [
    ("[" * 100_000, "not JSON we can read (nested deeper than 100 levels)"),
    ('{"prompt": "p", "x": %s}' % ("[" * 100 + "]" * 100), "not JSON we can read (nested deeper than 100 levels)"),
    ('{"prompt": "p", "n": 1%s}' % ("0" * 5000), "not JSON we can read (an integer of more than 4300 digits)"),
    ('{"prompt": "p", "x": NaN}', "not JSON (NaN is not a JSON number)"),
    ('{"prompt": "p", "x": [-Infinity]}', "not JSON (-Infinity is not a JSON number)"),
    ('{"prompt": "p", "x": 1e999}', "not JSON we can read (the number 1e999 overflows a float)"),
    ('{"prompt": "\\ud800 lone"}', r"a \ud800-\udfff escape that is not half of a surrogate pair (not text)"),
    ('{"prompt": "p", "\\uDC00": 1}', r"a \ud800-\udfff escape that is not half of a surrogate pair (not text)"),
])
def test_hostile_lines(tmp_path, line, msg):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "ok \\ud83d\\ude00", "x": 1.5e300}', line])
    with pytest.raises(UserError) as e:
        read_prompts(path)
    assert str(e.value).splitlines()[1:] == [f"{path}:2: {msg}"]
    good = read_prompts(write_lines(tmp_path / "q.jsonl", ['{"prompt": "ok \\ud83d\\ude00", "x": 1.5e300}']))
    assert good == [{"prompt": "ok \U0001F600", "x": 1.5e300}]           # a surrogate pair is one character
    write_jsonl(str(tmp_path / "r.jsonl"), good)                          # and writes
    deepest = '{"prompt": "p", "x": %s, "y": "[[[["}' % ("[" * 99 + "]" * 99)   # 100 levels: fine
    assert len(str(read_prompts(write_lines(tmp_path / "s.jsonl", [deepest]))[0]["x"])) == 198


def test_unreadable_paths(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=rf"^{tmp_path}: is a directory, not a file$"):
        read_prompts(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)                                                       # opening it would block
    with pytest.raises(UserError, match=rf"^{fifo}: not a regular file \(a pipe or a device\)"):
        read_demos(str(fifo))
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "p"}'])

    def denied(*a, **k):                                                 # as root, chmod 000 still reads
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr("nanoinstruct.data.open", denied, raising=False)
    with pytest.raises(UserError, match=rf"^{path}: cannot open \(Permission denied\)$"):
        read_prompts(path)


def test_require_checks_every_record(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a", "family": "add", "answer": "5"}',
                                              '{"prompt": "b", "answer": "6"}', '{"prompt": "c", "family": "x"}'])
    records = read_prompts(path)
    require(records[:1], path, ("family", "answer"))
    with pytest.raises(UserError) as e:
        require(records, path, ("family", "answer"), "the labelers need them")
    assert str(e.value).splitlines() == [f"{path}: 2 bad lines; the labelers need them",
                                         f"{path}:2: family: missing", f"{path}:3: answer: missing"]
    with pytest.raises(UserError, match=rf"^{path}: 1 bad line; \n{path}: record 2: b: missing$"):
        require([{"b": 1}, {"a": 1}], path, lambda r: ("b",) if "a" in r else ())


def test_repair_tail(tmp_path, capsys):
    path = str(tmp_path / "c.jsonl")
    repair_tail(path)                                                     # missing: nothing to do
    first = {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}
    for _ in range(3):
        append_jsonl(path, first)
    whole = open(path, "rb").read()
    repair_tail(path)
    assert open(path, "rb").read() == whole and capsys.readouterr().err == ""
    for torn in [_dumps({"prompt": "q" * 70_000, "responses": ["x", "y"], "ranking": [0, 1]})[:-9].encode(),
                 '{"prompt": "caf\u00e9'.encode()[:-1]]:              # longer than a block; cut mid-character
        with open(path, "ab") as f:
            f.write(torn)                                                 # a kill mid-append
        with pytest.raises(UserError, match=r"c.jsonl:4: not"):
            read_comparisons(path)
        repair_tail(path)
        assert open(path, "rb").read() == whole
        assert capsys.readouterr().err == (f"{path}:4: dropped an incomplete last line ({len(torn)} bytes), "
                                           f"left by a write that was cut short\n")
    with open(path, "ab") as f:                                           # complete, only the newline missing
        f.write(b'{"prompt": "r", "chosen": "a", "rejected": "b"}')
    repair_tail(path)
    append_jsonl(path, first)
    assert [r.line for r in read_comparisons(path)] == [1, 2, 3, 4, 5] and capsys.readouterr().err == ""
    with open(path, "wb") as f:                                           # a torn first line
        f.write(b'{"prompt": ')
    repair_tail(path)
    assert open(path, "rb").read() == b"" and f"{path}:1: dropped" in capsys.readouterr().err


def test_write_is_atomic_and_append_syncs(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"text": "old"}])
    before = path.read_bytes()
    with pytest.raises(TypeError):                       # fails half-way through the records
        write_jsonl(path, [{"text": "new"}, {"text": object()}])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["d.jsonl"]

    def full(fd):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:                     # a full disk: one line, the file as it was
        m.setattr(os, "fsync", full)
        with pytest.raises(UserError, match=rf"^{path}: cannot write \(No space left on device\)$"):
            write_jsonl(str(path), [{"text": "new"}])
        with pytest.raises(UserError, match=rf"^{path}: cannot append \(No space left on device\)$"):
            append_jsonl(str(path), {"text": "new"})
    assert os.listdir(tmp_path) == ["d.jsonl"]
    repair_tail(str(path))
    assert path.read_bytes() == before + b'{"text": "new"}\n'  # the append got through before the sync

    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd)))
    labels = tmp_path / "labels" / "c.jsonl"
    append_jsonl(labels, {"prompt": "p", "chosen": "a", "rejected": "b"})
    assert labels.read_bytes().count(b"\n") == 1 and len(synced) == 1
    append_jsonl(labels, {"prompt": "q", "responses": ["x", "y", "z"], "ranking": [2, 0, 1]})
    assert len(synced) == 2
    assert [r["ranking"] for r in read_comparisons(str(labels))] == [[0, 1], [2, 0, 1]]


def test_long_prompts_counted_and_reported(tmp_path, capsys):
    records = [{"prompt": "short"}, {"prompt": "x" * 100}, {"prompt": "ok", "k": 1}, {"prompt": "y" * 200}]
    path = str(tmp_path / "p.jsonl")
    write_jsonl(path, records)
    got = read_prompts(path)
    limit = len(TOK.encode_prompt("short"))
    kept = fit_prompts(got, TOK, limit, path)
    assert kept == [records[0], records[2]] and [r.line for r in kept] == [1, 3]
    assert capsys.readouterr().err == \
        f"{path}: 2 of 4 prompts longer than {limit} tokens left out (first at line 2)\n"
    assert fit_prompts(got, TOK, 10_000, path) == records and capsys.readouterr().err == ""
    with pytest.raises(UserError, match="all 4 prompts are longer than 3 tokens"):
        fit_prompts(got, TOK, 3, path)


# ----------------------------------------------------------------------------------------
# batching

PROMPTS = ["hi", "add 2 and 3", "caf\u00e9?"]
RESPONSES = ["five it is", "ok", "x"]


def test_left_and_right_pad():
    ids, mask = left_pad([[1, 2, 3], [4], []], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = right_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_pack_pairs_layout():
    b = pack_pairs(TOK, PROMPTS, RESPONSES)
    P = b.P
    R = b.ids.shape[1] - P
    assert P == max(len(TOK.encode_prompt(p)) for p in PROMPTS)
    assert R == max(len(TOK.encode_response(r)) for r in RESPONSES) == b.response_mask.shape[1]
    assert b.response_mask.dtype == torch.float32
    ends = last_index(b.attention_mask)
    for row, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        lp, lr = len(TOK.encode_prompt(p)), len(TOK.encode_response(r))
        real = b.attention_mask[row].bool()
        assert b.attention_mask[row].tolist() == [0] * (P - lp) + [1] * (lp + lr) + [0] * (R - lr)
        assert TOK.decode(b.ids[row, :P][real[:P]].tolist()) == PROMPT_TEMPLATE.format(prompt=p)
        response = b.ids[row, P:][b.response_mask[row].bool()].tolist()     # targets ids[:, P:]
        assert response[-1] == TOK.eos_id and TOK.decode_response(response) == r
        assert (b.ids[row][~real] == TOK.pad_id).all()
        assert ends[row] == P - 1 + lr and b.ids[row, ends[row]] == TOK.eos_id  # reward read here
    assert TOK.pad_id != TOK.eos_id
    assert (b.ids[:, P:][b.response_mask.bool()] != TOK.pad_id).all()     # PAD never a target


def test_logits_at_documented_positions_ignore_padding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=258 + 6, block_size=64)).eval()
    with torch.no_grad():
        for w in model.parameters():        # larger weights than GPT-2's init: logits that differ
            w.normal_(0, 0.3)
        b = pack_pairs(TOK, PROMPTS, RESPONSES)
        pred = model(b.ids, b.attention_mask)[:, b.P - 1:-1]            # (B, R, V) -> ids[:, P:]
        assert pred.shape[1] == b.response_mask.shape[1]
        for row, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
            pi, ri = TOK.encode_prompt(p), TOK.encode_response(r)
            alone = model(torch.tensor([pi + ri]))[0]                   # unpadded, no mask
            want = alone[len(pi) - 1:len(pi) - 1 + len(ri)]             # predicts ri[0..]
            assert (pred[row, :len(ri)] - want).abs().max() < 1e-4
            assert (pred[row, 1:len(ri)] - want[:-1]).abs().max() > 1e-2  # off by one: differs


def test_join_generated_responses():
    pad, eos = TOK.pad_id, TOK.eos_id
    p_ids, p_mask = left_pad([[10, 11, 12], [13]], pad)
    r_ids = torch.tensor([[5, 6, eos], [7, eos, pad]])                  # as generate returns them
    r_mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    ids, mask = join(p_ids, p_mask, r_ids, r_mask)
    assert ids.tolist() == [[10, 11, 12, 5, 6, eos], [pad, pad, 13, 7, eos, pad]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0]] and mask.dtype == torch.long
    assert last_index(mask).tolist() == [5, 4]


def test_pack_documents_contiguous_with_eos():
    texts = ["abc", "de", "fghij", "k"]
    rows = pack_documents(TOK, texts, block_size=4)                     # stream of 15 tokens
    assert rows.shape == (3, 5) and rows.dtype == torch.long
    joined = torch.cat([rows[0]] + [row[1:] for row in rows[1:]]).tolist()
    for i in range(len(rows) - 1):
        assert rows[i, -1] == rows[i + 1, 0]       # consecutive rows share one token
    eos = TOK.decode([TOK.eos_id])
    assert TOK.decode(joined) == f"abc{eos}de{eos}fghij{eos}"           # the tail "k" EOS dropped
    assert joined.count(TOK.eos_id) == 3 and TOK.pad_id not in joined
    with pytest.raises(UserError, match="fewer than one block of 5"):
        pack_documents(TOK, ["a"], block_size=4)
