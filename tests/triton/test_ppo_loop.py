"""train_ppo.py's loop with every kernel call on the Triton path (interpreter, CPU): the
log-probs of sliced logits, the KL-penalised rewards and GAE, inside the real iteration."""

import json

import torch

import train_ppo
from nanoinstruct import checkpoint, data
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT
from nanoinstruct.world import build


def test_two_iterations_on_triton_kernels(tmp_path):
    files = build(0, corpus_docs=20, sizes=dict(sft=1, sft_val=1, rm=1, rm_val=1, ppo=16, eval=1))
    data.write_jsonl(str(tmp_path / "prompts.jsonl"), files["ppo_prompts.jsonl"])
    data.write_jsonl(str(tmp_path / "corpus.jsonl"), files["corpus.jsonl"])
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=320, block_size=96, n_real=257)
    torch.manual_seed(0)
    checkpoint.save(str(tmp_path / "sft"), GPT(cfg), {"tokenizer": "bytes"})
    checkpoint.save(str(tmp_path / "rm"), ScalarGPT(cfg), {"tokenizer": "bytes", "normalized": True})
    out = tmp_path / "ppo"
    train_ppo.main([f"--init={tmp_path / 'sft'}", f"--reward={tmp_path / 'rm'}",
                    f"--prompts={tmp_path / 'prompts.jsonl'}", f"--ptx_data={tmp_path / 'corpus.jsonl'}",
                    f"--out_dir={out}", "--batch_size=4", "--max_new_tokens=8", "--max_iters=2",
                    "--ppo_epochs=2", "--ptx_coef=0.5", "--ptx_block_size=32", "--threads=1",
                    "--sample_interval=0", "--target_kl=1"])
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[0]["kl"] == 0.0 and len(rows) == 2
    assert all(abs(v) < float("inf") for r in rows for v in r.values() if isinstance(v, float))
    assert rows[1]["kl"] != 0.0                                      # the policy moved
