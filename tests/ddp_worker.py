"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=2`: one DDP step of a
tiny GPT on gloo. Each rank takes half the batch; rank 0 checks the averaged gradients
against a single-process full-batch backward, logs once, and writes the error to argv[1]."""

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from nanoinstruct import distributed
from nanoinstruct.model import GPT, GPTConfig

d = distributed.setup("cpu")
assert d.ddp and d.world_size == 2 and d.device == "cpu"
torch.manual_seed(0)                                    # same init and data on every rank
model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16))
x = torch.randint(0, 64, (4, 16))


def loss_fn(m, xb):
    logits = m(xb[:, :-1])
    return F.cross_entropy(logits.reshape(-1, 64), xb[:, 1:].reshape(-1))


ddp = DDP(model)
half = x[2 * d.rank: 2 * d.rank + 2]                    # this rank's shard
loss_fn(ddp, half).backward()
loss = distributed.all_mean(d, loss_fn(model, half).item())
distributed.print0(d, f"rank {d.rank} logs: loss {loss:.6f}")
if d.is_main:
    ref = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16))
    ref.load_state_dict(model.state_dict())
    loss_fn(ref, x).backward()
    err = max((a.grad - b.grad).abs().max().item()
              for a, b in zip(model.parameters(), ref.parameters()))
    full = loss_fn(ref, x).item()
    with open(sys.argv[1], "w") as f:
        json.dump({"grad_err": err, "loss": loss, "full_loss": full}, f)
distributed.finish(d)
