"""nanoinstruct.sample: a prompts file in any format sampled to JSONL."""

import json

import pytest

from nanoinstruct import checkpoint, data, sample
from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig
from nanoinstruct.tokenizer import get_tokenizer


def test_prompts_file_to_jsonl(tmp_path):
    tok = get_tokenizer("bytes", "dialogue")
    checkpoint.save(str(tmp_path / "m"), GPT(GPTConfig(1, 2, 32, 320, 64, n_real=257)), {}, tokenizer=tok)
    lines = [{"prompt": "Hi", "id": 7}, {"messages": [{"role": "user", "content": "Yo"},
                                                      {"role": "assistant", "content": "Hey"}]},
             {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D", "rejected": "\n\nHuman: A"
              "\n\nAssistant: B\n\nHuman: C\n\nAssistant: E"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = [f"--ckpt={tmp_path / 'm'}", f"--prompts={tmp_path / 'p.jsonl'}", f"--out={tmp_path / 's.jsonl'}",
            "--n=3", "--max_new_tokens=6", "--batch_size=4"]
    sample.main(args)
    out = data.read_demos(str(tmp_path / "s.jsonl"))          # the demonstrations format, read back
    prompts = data.read_prompts(str(tmp_path / "p.jsonl"))
    assert [(r["prompt"], r["sample"]) for r in out] == [(p["prompt"], s) for p in prompts for s in range(3)]
    assert out[0]["id"] == 7 and out[6]["prompt"][-1] == {"role": "user", "content": "C"}
    before = (tmp_path / "s.jsonl").read_bytes()
    with pytest.raises(UserError, match="s.jsonl: exists; not overwriting"):
        sample.main(args)
    assert (tmp_path / "s.jsonl").read_bytes() == before
    with pytest.raises(UserError, match="--prompts and --out"):
        sample.main([f"--ckpt={tmp_path / 'm'}", f"--prompts={tmp_path / 'p.jsonl'}"])
