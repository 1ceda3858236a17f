"""Run a stage script with its first optimizer step's gradients written to OUT.

    python tests/first_step_grads.py OUT train_sft [flags...]
    python -m torch.distributed.run --nproc_per_node=2 tests/first_step_grads.py OUT train_sft [flags...]

The gradients are the ones that step applies: after DDP's all-reduce and clipping, as float64,
keyed by (param group, index), written by rank 0; each parameter's from the first step that
has one (PPO's policy and value function step in turn). The run then goes on as usual.

The DDP-equality tests compare these, not the weights after a few steps: a normalisation or
reduction bug shows in one step's gradient at full size, while Adam amplifies float32
summation-order noise (its first step moves every weight by about lr whatever the gradient's
size, so the sign of a near-zero gradient, which the summation order decides, shows at full
size in the weights).
"""

import importlib
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

out, script, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
step, first = torch.optim.AdamW.step, {}


def capture(self, *args, **kwargs):
    """Keep each parameter's gradient from the first step that has one (PPO steps the policy,
    then the value function: two calls), and write them all, zeros for the rest, when any is new."""
    params = {f"{i}.{j}": p for i, group in enumerate(self.param_groups) for j, p in enumerate(group["params"])}
    new = {k: p.grad.double() for k, p in params.items() if p.grad is not None and k not in first}
    if (new or not first) and (not dist.is_initialized() or dist.get_rank() == 0):
        first.update(new)
        save_file({k: first.get(k, torch.zeros_like(p, dtype=torch.float64)) for k, p in params.items()}, out)
    return step(self, *args, **kwargs)


torch.optim.AdamW.step = capture

if os.environ.get("FIXED_ROLLOUTS"):  # PPO: rollouts that depend on the prompt alone
    from nanoinstruct.batching import right_pad
    from nanoinstruct.model import GPT

    def fixed_rollouts(self, prompt, prompt_mask, max_new_tokens, eos_id, pad_id, *args, **kwargs):
        """Not the rank's sampling generator: the prompt's last n tokens reversed, then EOS,
        with n = 1 + (sum of the prompt's ids) % (max_new_tokens - 1): ragged lengths."""
        rows = []
        for p, m in zip(prompt.tolist(), prompt_mask.tolist()):
            real = [t for t, keep in zip(p, m) if keep]
            rows.append(real[::-1][:1 + sum(real) % (max_new_tokens - 1)] + [eos_id])
        ids, mask = right_pad(rows, pad_id)
        return ids.to(prompt.device), mask.float().to(prompt.device)
    GPT.generate = fixed_rollouts
importlib.import_module(script).main(argv)
