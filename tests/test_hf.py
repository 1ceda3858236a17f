"""Hugging Face interop: tokenizer files both ways, policy and reward-model export read back by
transformers, released names in a fake cache, HF directories in, checkpoints that carry
their tokenizer. Everything is built here, tiny; nothing is downloaded."""

import base64
import json
import os
import shutil

import pytest
import torch
from tiktoken._educational import bpe_train
from tiktoken_ext.openai_public import r50k_pat_str

from nanoinstruct import checkpoint, hf
from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT, last_index
from nanoinstruct.tokenizer import EOS, PAD, PROMPT_TEMPLATE, RESPONSE_PREFIX, get_tokenizer

transformers = pytest.importorskip("transformers")

TEXT = """The quick brown fox jumps over the lazy dog. It's 3:45 pm; we've got 1,234 reasons.
Instruction: Add 2 and 3.
Response: 5
Instruction: Reverse the word cat.
Response: tac
  Indented lines, tabs\tand   runs of spaces   here.
Unicode: café, naïve, Zürich, 東京, Москва, emoji 😀 and more words for the merges to learn.
def f(x):
    return x ** 2  # squares 0 1 4 9 16 25 36 49 64 81 100
Reinforcement learning from human feedback trains a reward model on comparisons, then
optimises the policy against it with proximal policy optimization and a KL penalty.
"""
VARIED = ["Hello world", " leading space, trailing space ", "two\n\nnewlines\r\nand\ttabs   \n",
          "digits 0 12 345 6789 3.14159 -2e10", "unicode: café Zürich 東京 Москва 😀🚀 e\u0301",
          "it's we've they'll I'd you're", "Instruction: Reverse the word dog.\nResponse: god",
          "   ", "x" * 70]


def tiny_tok(tmp):
    """bytes + 256 merges learned from TEXT, as a .tiktoken file (GPT-2's regex, EOS 512)."""
    ranks = bpe_train(TEXT, 512, r50k_pat_str, visualise=None)
    path = os.path.join(tmp, "mini.tiktoken")
    with open(path, "w") as f:
        f.writelines(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items())
    return get_tokenizer(path)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tok(str(tmp_path_factory.mktemp("enc")))


def randomise(model, std=0.3, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def tiny_gpt(tok, cls=GPT):
    return randomise(cls(GPTConfig(2, 2, 32, hf.padded_vocab(tok), 64, n_real=tok.n_real))).eval()


def hf_gpt2_dir(path, tok, vocab_size=None):
    """A tiny random GPT-2 as transformers saves it, plus our tokenizer files."""
    V = vocab_size or tok.pad_id
    eos = tok.eos_id if tok is not None else V - 1
    c = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=V,
                                bos_token_id=eos, eos_token_id=eos)
    randomise(transformers.GPT2LMHeadModel(c)).save_pretrained(path)
    if tok is not None:
        hf.write_tokenizer(tok, path, tok.pad_id, EOS, "left", 64)
    return str(path)


def encode_all(auto, texts):
    return [auto(t, add_special_tokens=False)["input_ids"] for t in texts]


# ---------------------------------------------------------------------------------------
# tokenizer files

def test_bytes_to_unicode_is_gpt2s_table():
    table = hf.bytes_to_unicode()
    assert len(set(table.values())) == 256 and all(c.isprintable() for c in table.values())
    assert (table[ord(" ")], table[ord("\n")], table[ord("A")], table[0]) == ("Ġ", "Ċ", "A", "Ā")


def test_our_ranks_to_files_and_back(tok, tmp_path):
    hf.write_tokenizer(tok, str(tmp_path), tok.pad_id, EOS, "left", 64)
    merges = open(tmp_path / "merges.txt").read().splitlines()[1:]
    assert len(merges) == 256 and all(len(m.split(" ")) == 2 for m in merges)
    back = hf.read_tokenizer(str(tmp_path))
    assert back.enc._mergeable_ranks == tok.enc._mergeable_ranks and back.eos_id == tok.eos_id
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = [tok.encode(t) for t in VARIED]
    assert encode_all(auto, VARIED) == ours and [back.encode(t) for t in VARIED] == ours
    assert sum(len(t.encode()) - len(ids) for t, ids in zip(VARIED, ours)) > 20   # merges used
    assert [auto.decode(ids) for ids in ours] == VARIED
    assert auto.eos_token_id == tok.eos_id and auto.convert_ids_to_tokens(tok.eos_id) == EOS


def test_bytes_encoding_to_files(tmp_path):
    tok = get_tokenizer("bytes")
    hf.write_tokenizer(tok, str(tmp_path), tok.pad_id + 1, PAD, "right", 64)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert encode_all(auto, VARIED) == [list(t.encode("utf-8")) for t in VARIED]   # byte values
    assert (auto.eos_token_id, auto.pad_token_id) == (256, 257)
    assert hf.read_tokenizer(str(tmp_path)).name == "bytes"


def test_reads_files_that_transformers_wrote(tmp_path):
    """A byte-level BPE trained by `tokenizers` (bytes in GPT-2's character order, not byte
    values) and saved by transformers 5 (tokenizer.json alone), and as vocab.json + merges.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    t.add_special_tokens([EOS])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=t, eos_token=EOS)
    fast.save_pretrained(tmp_path / "v5")
    assert not os.path.exists(tmp_path / "v5" / "vocab.json")
    ours = hf.read_tokenizer(str(tmp_path / "v5"))
    assert ours.eos_id == 400 and ours.encode(" ") != [32]          # GPT-2's order, not bytes
    assert [ours.encode(x) for x in VARIED] == encode_all(fast, VARIED)
    os.makedirs(tmp_path / "files")
    t.model.save(str(tmp_path / "files"))                             # vocab.json + merges.txt
    vocab = json.loads((tmp_path / "files" / "vocab.json").read_text())
    (tmp_path / "files" / "vocab.json").write_text(json.dumps({**vocab, EOS: 400}))  # as GPT-2's
    again = hf.read_tokenizer(str(tmp_path / "files"))
    assert again.enc._mergeable_ranks == ours.enc._mergeable_ranks


def test_read_tokenizer_refuses_what_tiktoken_would_read_differently(tok, tmp_path):
    hf.write_tokenizer(tok, str(tmp_path), tok.pad_id, EOS, "left", 64)
    lines = (tmp_path / "merges.txt").read_text().splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]                           # merges out of id order
    (tmp_path / "merges.txt").write_text("".join(lines))
    with pytest.raises(UserError, match=r"merges.txt:5: .* merges must follow ids"):
        hf.read_tokenizer(str(tmp_path))
    hf.write_tokenizer(tok, str(tmp_path), tok.pad_id, EOS, "left", 64)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps({**vocab, "<|user|>": tok.pad_id}))
    with pytest.raises(UserError, match=r"'<\|user\|>' is made by no merge"):
        hf.read_tokenizer(str(tmp_path))
    os.remove(tmp_path / "merges.txt")
    with pytest.raises(UserError, match="merges.txt: not found"):
        hf.read_tokenizer(str(tmp_path))


# ---------------------------------------------------------------------------------------
# export: the policy

@pytest.fixture(scope="module")
def policy_dir(tok, tmp_path_factory):
    gpt = tiny_gpt(tok)
    path = str(tmp_path_factory.mktemp("export") / "policy")
    gpt.to_hf(path, tok, hf.chat_template("instruction"))
    return gpt, path


def test_policy_export_matches_ours(tok, policy_dir):
    gpt, path = policy_dir
    n_real = tok.pad_id
    config = json.load(open(os.path.join(path, "config.json")))
    assert (config["vocab_size"], config["eos_token_id"], config["bos_token_id"]) == \
        (n_real, tok.eos_id, tok.eos_id)
    gen = json.load(open(os.path.join(path, "generation_config.json")))
    assert gen["eos_token_id"] == gen["pad_token_id"] == tok.eos_id
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()   # tied
    ours, theirs = gpt.double(), model.double()
    x = torch.randint(0, n_real, (3, 40))
    with torch.no_grad():
        assert (theirs(x).logits - ours(x)[..., :n_real]).abs().max() < 1e-9
        # greedy: transformers' generate and ours agree token for token, up to EOS
        prompt = torch.tensor([tok.encode_prompt("Add 2 and 3.")])
        mine, mask = ours.generate(prompt, torch.ones_like(prompt), 20, tok.eos_id, tok.pad_id,
                                   tok.n_vocab, temperature=0)
        mine = mine[0, :int(mask.sum())]
        out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=20)[0, prompt.shape[1]:]
        assert out[:len(mine)].tolist() == mine.tolist()
        torch.manual_seed(0)   # sampling hot from the exported model: never a padding id
        sampled = theirs.generate(prompt.repeat(8, 1), attention_mask=torch.ones_like(prompt).repeat(8, 1),
                                  do_sample=True, temperature=3.0, top_k=0, max_new_tokens=40)
    assert sampled.max() < n_real and len(set(sampled[:, prompt.shape[1]:].flatten().tolist())) > 100
    gpt.float()


def test_policy_export_tokenizer_pipeline_and_chat(tok, policy_dir):
    _, path = policy_dir
    auto = transformers.AutoTokenizer.from_pretrained(path)
    assert encode_all(auto, VARIED) == [tok.encode(t) for t in VARIED]
    assert auto.pad_token_id == tok.eos_id and auto.padding_side == "left"
    chat = [{"role": "user", "content": "Add 2 and 3."}]
    ids = auto.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == tok.encode_prompt("Add 2 and 3.")
    text = auto.apply_chat_template(chat + [{"role": "assistant", "content": "5"}], tokenize=False)
    assert text == PROMPT_TEMPLATE.format(prompt="Add 2 and 3.") + RESPONSE_PREFIX + "5" + EOS
    pipe = transformers.pipeline("text-generation", model=path)
    out = pipe("Instruction: Reverse the word cat.\nResponse:", max_new_tokens=8, do_sample=False)
    assert out[0]["generated_text"].startswith("Instruction: Reverse the word cat.\nResponse:")
    assert len(out[0]["generated_text"]) > len("Instruction: Reverse the word cat.\nResponse:")


def test_to_hf_refuses_a_non_empty_directory(tok, policy_dir, tmp_path):
    gpt, _ = policy_dir
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        gpt.to_hf(str(tmp_path), tok)
    assert os.listdir(tmp_path) == ["keep.txt"]


# ---------------------------------------------------------------------------------------
# export: the reward model

def padded(rows, pad_id, left):
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), pad_id)
    mask = torch.zeros(len(rows), S, dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(S - len(r), S) if left else slice(0, len(r))
        ids[b, sl], mask[b, sl] = torch.tensor(r), 1
    return ids, mask


def test_reward_export_scores_equal_ours(tok, tmp_path):
    rm = tiny_gpt(tok, ScalarGPT)
    with torch.no_grad():
        rm.head.bias.fill_(0.7)                      # as normalisation leaves it: not zero
    path = str(tmp_path / "rm")
    hf.export_reward(rm, tok, path)
    config = json.load(open(os.path.join(path, "config.json")))
    assert config["pad_token_id"] == tok.pad_id != tok.eos_id and config["vocab_size"] == tok.pad_id + 1
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert type(model).__name__ == "GPT2ForSequenceClassification" and model.num_labels == 1
    auto = transformers.AutoTokenizer.from_pretrained(path)
    assert auto.pad_token_id == tok.pad_id
    rows = [tok.encode_prompt(p) + tok.encode_response(r) for p, r in
            [("Add 2 and 3.", "5"), ("Reverse the word cat.", "tac"), ("Say hi.", "hello there")]]
    rm, model = rm.double(), model.double()
    with torch.no_grad():
        for left in (False, True):
            ids, mask = padded(rows, tok.pad_id, left)
            # ScalarGPT.score in float64 (score itself casts the head's input to float32)
            values = rm.head(rm.gpt.hidden(ids, mask)).squeeze(-1)          # (B, T)
            ours = values.gather(1, last_index(mask)[:, None]).squeeze(1)  # (B,)
            assert torch.allclose(ours.float(), rm.float().score(ids, mask), atol=1e-4)
            rm.double()
            pos = (mask.cumsum(-1) - 1).clamp(min=0)          # our positions; HF counts from column 0
            theirs = model(ids, attention_mask=mask, position_ids=pos).logits[:, 0]
            assert (theirs - ours).abs().max() < 1e-5, left
            assert ours.std() > 1e-2                            # distinct rewards, not a constant


# ---------------------------------------------------------------------------------------
# HF directories and released names in

def test_load_hf_dir_with_its_tokenizer(tok, tmp_path):
    path = hf_gpt2_dir(tmp_path / "m", tok)
    model, got = hf.load(path)
    assert got.enc._mergeable_ranks == tok.enc._mergeable_ranks
    assert model.config.vocab_size == hf.padded_vocab(tok) == 576
    theirs = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    x = torch.randint(0, tok.pad_id, (2, 20))
    with torch.no_grad():
        assert (model.double()(x)[..., :tok.pad_id] - theirs.double()(x).logits).abs().max() < 1e-9
    model, again = hf.load(path, tokenizer=tok.name)        # the same vocabulary by --tokenizer
    assert again.name == tok.name


def test_load_hf_dir_errors(tok, tmp_path):
    bare = hf_gpt2_dir(tmp_path / "bare", None, vocab_size=50257)   # GPT-2's size, no tokenizer
    with pytest.raises(UserError, match=r"no tokenizer files .* predicts 50257 token ids .*--tokenizer=gpt2"):
        hf.load(bare)
    with pytest.raises(UserError, match=r"predicts 50257 token ids and tokenizer bytes has 257"):
        hf.load(bare, tokenizer="bytes")
    path = hf_gpt2_dir(tmp_path / "m", tok)
    with pytest.raises(UserError, match="--tokenizer=bytes differs from"):
        hf.load(path, tokenizer="bytes")


def fake_snapshot(cache, repo, tok, commit="0123abc"):
    os.makedirs(os.path.join(cache, repo, "refs"))
    with open(os.path.join(cache, repo, "refs", "main"), "w") as f:
        f.write(commit + "\n")
    return hf_gpt2_dir(os.path.join(cache, repo, "snapshots", commit), tok)


def test_released_names_from_the_cache(tok, tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hf.resolve_init("tiny") is None and hf.resolve_init("out/sft") is None
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError) as e:
        hf.resolve_init("gpt2-medium")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--init=gpt2-medium: ") and str(tmp_path / "hub") in msg
    assert "hf download openai-community/gpt2-medium config.json model.safetensors vocab.json " \
           "merges.txt" in msg and "huggingface-cli download" in msg
    snap = fake_snapshot(str(tmp_path / "hub"), "models--openai-community--gpt2", tok)
    assert hf.resolve_init("gpt2") == snap
    model, got = hf.load(hf.resolve_init("gpt2"))
    assert got.eos_id == tok.eos_id and model.config.n_layer == 1
    os.remove(os.path.join(snap, "merges.txt"))                      # incomplete: says so
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        hf.resolve_init("gpt2")
    monkeypatch.delenv("HF_HUB_CACHE")                               # HF_HOME/hub, old repo name
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snap = fake_snapshot(str(tmp_path / "home" / "hub"), "models--gpt2-xl", tok, "feed")
    assert hf.resolve_init("gpt2-xl") == snap


# ---------------------------------------------------------------------------------------
# checkpoints carry their tokenizer

def test_checkpoint_moved_elsewhere_keeps_its_tokenizer(tmp_path):
    tok = tiny_tok(str(tmp_path))
    gpt = tiny_gpt(tok)
    checkpoint.save(str(tmp_path / "a" / "ckpt"), gpt, {"run": {}}, tokenizer=tok)
    os.remove(tmp_path / "mini.tiktoken")                 # the original ranks file is gone
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))  # and the checkpoint moved
    model, config = checkpoint.load(str(tmp_path / "b"))
    assert config["tokenizer"] == "mini.tiktoken"
    back = checkpoint.load_tokenizer(str(tmp_path / "b"), config)
    assert back.enc._mergeable_ranks == tok.enc._mergeable_ranks
    assert (back.eos_id, back.pad_id, back.encode(VARIED[4])) == (tok.eos_id, tok.pad_id, tok.encode(VARIED[4]))
    checkpoint.save(str(tmp_path / "c"), model, {}, tokenizer=back)      # saved again from there
    assert checkpoint.read_config(str(tmp_path / "c"))["tokenizer"] == "mini.tiktoken"
    os.remove(tmp_path / "c" / "mini.tiktoken")
    with pytest.raises(UserError, match=r"mini.tiktoken: missing"):
        checkpoint.load_tokenizer(str(tmp_path / "c"), checkpoint.read_config(str(tmp_path / "c")))
    checkpoint.save(str(tmp_path / "d"), model, {}, tokenizer=get_tokenizer("bytes"))
    assert checkpoint.read_config(str(tmp_path / "d"))["tokenizer"] == "bytes"
    assert sorted(os.listdir(tmp_path / "d")) == ["config.json", "model.safetensors"]


def test_checkpoint_of_an_hf_vocabulary(tok, tmp_path):
    _, got = hf.load(hf_gpt2_dir(tmp_path / "m", tok))        # vocabulary from vocab.json
    checkpoint.save(str(tmp_path / "ck"), tiny_gpt(tok), {}, tokenizer=got)
    config = checkpoint.read_config(str(tmp_path / "ck"))
    assert config["tokenizer"] == "gpt2.tiktoken"
    back = checkpoint.load_tokenizer(str(tmp_path / "ck"), config)
    assert back.enc._mergeable_ranks == tok.enc._mergeable_ranks and back.eos_id == tok.eos_id
