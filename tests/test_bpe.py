"""nanoinstruct.bpe: a byte-level BPE trained on a corpus, read back by the tokenizer."""

import base64

from nanoinstruct import bpe, data
from nanoinstruct.tokenizer import get_tokenizer

TEXT = ["The owl is white. The owl is tan.", "479 is odd. 480 is even.", "Snow is white. 12 plus 7 is 19."]


def test_every_byte_then_merges_of_the_most_frequent_pairs():
    ranks = bpe.train(TEXT * 5, vocab_size=270)
    assert [ranks[bytes([i])] for i in range(256)] == list(range(256))
    assert sorted(ranks.values()) == list(range(len(ranks))) and len(ranks) == 270
    merged = [t for t, r in sorted(ranks.items(), key=lambda kv: kv[1]) if r >= 256]
    assert merged[0] == b" i"          # " i" of " is" (8 per text, 40 in all) is the commonest pair
    assert b" owl" in ranks and b" white" in ranks
    assert bpe.train(TEXT * 5, vocab_size=270) == ranks          # a function of the text


def test_digits_are_never_merged_so_a_number_is_its_digits():
    ranks = bpe.train(["101 is odd. 101 101 101 101 101 1010 7 7 7 77 77"] * 20, vocab_size=400)
    assert not [t for t, r in ranks.items() if r >= 256 and set(t) & set(b"0123456789")]
    assert len(ranks) < 400            # merges run out: every piece is one token or digits


def test_the_file_round_trips_through_get_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    data.write_jsonl(str(corpus), [{"text": t} for t in TEXT * 5])
    out = tmp_path / "world.tiktoken"
    bpe.main([f"--data={corpus}", f"--out={out}", "--vocab_size=270"])
    tok = get_tokenizer(str(out))
    assert [tok.decode([i]) for i in tok.encode(" owl is white")] == [" owl", " is", " white"]
    assert [tok.decode([i]) for i in tok.encode(" 479")] == [" ", "4", "7", "9"]
    for text in ["Why is 7 an even number?", "ünïcödé, \n\t and emoji 🦉", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.n_vocab == 272 and tok.eos_id == 270 and tok.pad_id == 271
    lines = out.read_text().splitlines()
    assert base64.b64decode(lines[256].split()[0]) == b" i" and lines[256].split()[1] == "256"


def test_demonstrations_add_the_words_of_responses(tmp_path):
    corpus, demos = tmp_path / "corpus.jsonl", tmp_path / "sft.jsonl"
    data.write_jsonl(str(corpus), [{"text": "Snow is white."}])
    data.write_jsonl(str(demos), [{"prompt": "What color is snow?", "response": "Sure! Hope that helps!"}] * 9)
    for flags, single in (([], False), ([f"--demos={demos}"], True)):
        out = tmp_path / f"w{len(flags)}.tiktoken"
        bpe.main([f"--data={corpus}", f"--out={out}", "--vocab_size=400", *flags])
        assert (len(get_tokenizer(str(out)).encode(" Hope")) == 1) == single
