"""The whole recipe at micro scale, in one process, as make demo runs it: world -> pretrain ->
SFT -> labeling SFT samples -> reward model -> PPO-ptx -> labeling that policy's samples ->
reward model on both rounds -> PPO-ptx -> evaluation, a handful of steps each. It checks that the stages
fit together (each reads what the previous one wrote) and that the report comes out whole;
make demo is the run that shows what the recipe does."""

import json
import math

import train_ppo
import train_rm
import train_sft
from nanoinstruct import collect, data, evaluate
from nanoinstruct.world import build


def test_micro_pipeline_end_to_end(tmp_path):
    d = tmp_path
    files = build(0, corpus_docs=200, sizes=dict(sft=60, sft_val=10, rm=16, rm_val=8, ppo=16, eval=12))
    for name, records in files.items():
        data.write_jsonl(str(d / name), records)
    common = ["--threads=1", "--log_interval=1"]
    train_sft.main(["--mode=pretrain", "--init=tiny", f"--data={d / 'corpus.jsonl'}",
                    f"--val_data={d / 'corpus_heldout.jsonl'}", f"--out_dir={d / 'base'}",
                    "--max_iters=3", "--batch_size=2", "--eval_interval=3", *common])
    train_sft.main([f"--init={d / 'base'}", f"--data={d / 'sft.jsonl'}", f"--val_data={d / 'sft_val.jsonl'}",
                    f"--out_dir={d / 'sft'}", "--max_iters=3", "--batch_size=4", "--eval_interval=3", *common])
    for split, seed in (("rm", 0), ("rm_val", 1)):
        collect.main([f"--policy={d / 'sft'}", f"--prompts={d / f'{split}_prompts.jsonl'}",
                      f"--out={d / f'{split}_cmp.jsonl'}", "--k=3", "--max_new_tokens=12", f"--seed={seed}"])

    def rm(data_file, out):
        train_rm.main([f"--init={d / 'sft'}", f"--data={d / data_file}", f"--val_data={d / 'rm_val_cmp.jsonl'}",
                       f"--demos={d / 'sft.jsonl'}", f"--out_dir={d / out}", "--batch_size=4", *common])

    def ppo(reward, out):
        train_ppo.main([f"--init={d / 'sft'}", f"--reward={d / reward}", f"--prompts={d / 'ppo_prompts.jsonl'}",
                        f"--ptx_data={d / 'corpus.jsonl'}", "--ptx_coef=1", "--ptx_batch_size=2",
                        f"--out_dir={d / out}", "--max_iters=2", "--batch_size=4", "--ppo_epochs=1",
                        "--max_new_tokens=12", "--sample_interval=0", *common])

    rm("rm_cmp.jsonl", "rm_round1")
    ppo("rm_round1", "ppo_ptx_round1")
    collect.main([f"--policy={d / 'ppo_ptx_round1'}", f"--prompts={d / 'rm_prompts.jsonl'}",
                  f"--out={d / 'round2_cmp.jsonl'}", "--k=3", "--max_new_tokens=12", "--seed=2"])
    round1, round2 = data.read_comparisons(str(d / "rm_cmp.jsonl")), data.read_comparisons(str(d / "round2_cmp.jsonl"))
    assert [c["prompt"] for c in round2] == [c["prompt"] for c in round1]
    data.write_jsonl(str(d / "all_cmp.jsonl"), round1 + round2)
    rm("all_cmp.jsonl", "rm")
    ppo("rm", "ppo_ptx")
    (d / "seconds.txt").write_text("pretrain 1\n")
    evaluate.main([f"--policies=base={d / 'base'},base_prompted={d / 'base'},sft={d / 'sft'},ppo_ptx={d / 'ppo_ptx'}",
                   "--prompted=base_prompted", f"--prompts={d / 'eval_prompts.jsonl'}",
                   f"--heldout={d / 'corpus_heldout.jsonl'}", f"--demos={d / 'sft.jsonl'}",
                   f"--reward={d / 'rm'}", f"--comparisons={d / 'rm_val_cmp.jsonl'}",
                   f"--seconds={d / 'seconds.txt'}", "--samples=1", "--max_new_tokens=12",
                   f"--out_dir={d / 'eval'}", "--threads=1"])
    rep = json.loads((d / "eval" / "report.json").read_text())
    assert list(rep["models"]) == ["base", "base_prompted", "sft", "ppo_ptx"]
    assert rep["models"]["sft"]["winrate"] == 0.5
    assert 0 <= rep["models"]["ppo_ptx"]["winrate"] <= 1
    # the three stages changed the weights: the pretraining loss differs between them
    losses = {n: rep["models"][n]["pretrain_loss"] for n in ("base", "sft", "ppo_ptx")}
    assert len(set(losses.values())) == 3 and all(math.isfinite(v) for v in losses.values())
    assert 0 <= rep["reward_model"]["accuracy"] <= 1 and 0 <= rep["reward_model"]["labeler_agreement"] <= 1
    assert set(rep["seconds"]) == {"pretrain", "evaluate"}
