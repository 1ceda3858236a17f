"""The peer side of the PPO benchmark: TRL 1.12's PPOTrainer on the configuration that
`train_ppo.py --bench=SIZE` runs, timed per iteration (bench/ppo_vs_trl.py runs both).

TRL is not a dependency of nanoinstruct; this file only imports it, and runs in a venv of
its own (`make bench-trl` makes .venv-trl). Both sides: random GPT-2-shaped policy,
reference, reward model and value function of the size; random prompts of fixed length;
responses of --response tokens sampled at temperature 1; one rollout batch, then
--ppo_epochs passes in one minibatch: one iteration. fp32 and no gradient checkpointing on
both sides (TRL's defaults, bf16 and checkpointing, are for GPUs).

    .venv-trl/bin/python bench/trl_ppo.py --size=tiny --iters=30 --threads=1
"""

import argparse
import resource
import statistics
import time

import torch
from datasets import Dataset
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel,
                          PreTrainedTokenizerFast, TrainerCallback)
from trl.experimental.ppo import PPOConfig, PPOTrainer

# the sizes of train_ppo.py --bench (keep in step with its BENCH table)
SIZES = {"tiny": dict(n_layer=2, n_head=2, n_embd=64, vocab=512, batch=8, prompt=16, response=32, block=64),
         "gpt2": dict(n_layer=12, n_head=12, n_embd=768, vocab=50257, batch=16, prompt=24, response=128, block=1024)}


class Lap(TrainerCallback):
    """The wall time at each logged update (logging_steps=1: every iteration)."""

    def __init__(self):
        self.times = [time.perf_counter()]

    def on_log(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--ppo_epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = SIZES[args.size]
    torch.manual_seed(0)
    vocab = {str(i): i for i in range(s["vocab"])}          # ids only: nothing is decoded
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="0")),
                                  pad_token=str(s["vocab"] - 1), eos_token=str(s["vocab"] - 1))
    cfg = GPT2Config(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], vocab_size=s["vocab"],
                     n_positions=s["block"], num_labels=1, pad_token_id=s["vocab"] - 1,
                     bos_token_id=s["vocab"] - 1, eos_token_id=s["vocab"] - 1)
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    reward, value = GPT2ForSequenceClassification(cfg), GPT2ForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, s["vocab"] - 1, (s["batch"] * args.iters, s["prompt"]), generator=g)
    data = Dataset.from_dict({"input_ids": prompts.tolist()})
    conf = PPOConfig(output_dir="/tmp/trl_ppo_bench", report_to="none", use_cpu=True, bf16=False,
                     gradient_checkpointing=False, per_device_train_batch_size=s["batch"],
                     num_mini_batches=1, num_ppo_epochs=args.ppo_epochs, response_length=s["response"],
                     total_episodes=s["batch"] * args.iters, local_rollout_forward_batch_size=s["batch"],
                     num_sample_generations=0, stop_token=None, missing_eos_penalty=None, temperature=1.0,
                     logging_steps=1, save_strategy="no", seed=0, dataloader_num_workers=0)
    lap = Lap()
    trainer = PPOTrainer(args=conf, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=data, value_model=value, callbacks=[lap])
    lap.times = [time.perf_counter()]
    trainer.train()
    per_it = [b - a for a, b in zip(lap.times, lap.times[1:])]
    steady = per_it[1:] or per_it
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"trl {args.size}: {len(per_it)} iterations, {statistics.median(steady):.3f}s per iteration "
          f"(median), peak RSS {peak:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
