"""python -m nanoinstruct.export: a checkpoint (policy or reward model) -> a Hugging Face directory."""

import base64
import os

import pytest
import torch

from nanoinstruct import checkpoint, export
from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT
from nanoinstruct.tokenizer import format_prompt, get_tokenizer

transformers = pytest.importorskip("transformers")
CFG = GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=64, n_real=257)


def test_export_policy_and_reward_model(tmp_path, capsys):
    tok = get_tokenizer("bytes")
    torch.manual_seed(0)
    checkpoint.save(str(tmp_path / "sft" / "ckpt"), GPT(CFG), {"run": {}, "template": "instruction"},
                    tokenizer=tok)
    export.main([f"--ckpt={tmp_path / 'sft'}", f"--out={tmp_path / 'hf-sft'}"])
    assert "GPT2LMHeadModel, 257 ids" in capsys.readouterr().out
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf-sft"))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf-sft"))
    assert model.config.vocab_size == 257 and auto("héllo")["input_ids"] == list("héllo".encode())
    text = auto.apply_chat_template([{"role": "user", "content": "Add 2 and 3."}], tokenize=False,
                                    add_generation_prompt=True)
    assert text == "Instruction: Add 2 and 3.\nResponse:"
    # the dialogue template: a conversation renders as format_prompt writes it
    chat = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Add 2 and 3."}]
    checkpoint.save(str(tmp_path / "hh"), GPT(CFG), {"run": {}}, tokenizer=get_tokenizer("bytes", "dialogue"))
    export.main([f"--ckpt={tmp_path / 'hh'}", f"--out={tmp_path / 'hf-hh'}"])
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf-hh"))
    assert auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        format_prompt(chat, "dialogue") == "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: Add 2 and 3.\n\nAssistant:"

    rm = ScalarGPT(CFG)
    checkpoint.save(str(tmp_path / "rm"), rm, {"run": {}, "normalized": True}, tokenizer=tok)
    export.main([f"--ckpt={tmp_path / 'rm'}", f"--out={tmp_path / 'hf-rm'}"])
    assert "pad_token_id 257" in capsys.readouterr().out
    rm_hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf-rm"))
    ids = torch.tensor([tok.encode_prompt("Add 2 and 3.") + tok.encode_response("5")])
    with torch.no_grad():
        assert (rm_hf(ids).logits[0, 0] - rm.score(ids, torch.ones_like(ids))[0]).abs() < 1e-4


def test_export_refuses(tmp_path, capsys):
    tok = get_tokenizer("bytes")
    checkpoint.save(str(tmp_path / "sft"), GPT(CFG), {}, tokenizer=tok)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"taken: exists and is not empty; not overwriting"):
        export.main([f"--ckpt={tmp_path / 'sft'}", f"--out={tmp_path / 'taken'}"])
    assert os.listdir(tmp_path / "taken") == ["mine.txt"]
    with pytest.raises(UserError, match="--out is required"):
        export.main([f"--ckpt={tmp_path / 'sft'}"])
    with pytest.raises(UserError, match="not a checkpoint"):
        export.main([f"--ckpt={tmp_path / 'taken'}", f"--out={tmp_path / 'x'}"])
    # an encoding with another split regex (cl100k's) is not GPT-2's byte-level BPE
    ranks = tmp_path / "cl100k_base.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
    other = get_tokenizer(str(ranks))
    checkpoint.save(str(tmp_path / "cl"), GPT(GPTConfig(1, 2, 32, other.n_vocab, 64, n_real=other.n_real)), {}, tokenizer=other)
    with pytest.raises(UserError, match="GPT-2's regex"):
        export.main([f"--ckpt={tmp_path / 'cl'}", f"--out={tmp_path / 'cl-hf'}"])
    assert not os.path.exists(tmp_path / "cl-hf")
