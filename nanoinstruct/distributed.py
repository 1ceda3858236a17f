"""Distributed setup shared by the three stage scripts.

One process: `python train_x.py ...`. Several: `torchrun --nproc_per_node=N train_x.py ...`,
which sets RANK, LOCAL_RANK and WORLD_SIZE; we then join the process group (NCCL on CUDA,
gloo on CPU) and the script wraps its model in DistributedDataParallel. Rank 0 alone logs
and saves; `print0` is the logging call.

Seen on small CPU machines: a gloo rank can abort at interpreter exit ("terminate called
without an active exception", SIGABRT) when the process group is torn down under load.
`finish()` destroys the group explicitly and leaves with os._exit, which avoids it.
"""

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from nanoinstruct.cli import UserError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def ddp(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def setup(device="auto"):
    """Join torchrun's process group if there is one. device: auto | cpu | cuda | cuda:N
    (checked against the machine by the flags' validation; under torchrun each rank takes
    cuda:LOCAL_RANK)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        d = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
                 int(os.environ["WORLD_SIZE"]))
        if use_cuda:
            d.device = f"cuda:{d.local_rank}"
            torch.cuda.set_device(d.device)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return d
    return Dist(device=(device if device.startswith("cuda") else "cuda") if use_cuda else "cpu")


def on_main(d, fn):
    """Run fn() on rank 0 alone; a UserError it raises is raised on every rank, so that all
    of them stop with the same line instead of waiting for rank 0 at the next collective."""
    err = None
    if d.is_main:
        try:
            fn()
        except UserError as e:
            err = str(e)
    if d.ddp:
        box = [err]
        dist.broadcast_object_list(box, src=0)
        err = box[0]
    if err is not None:
        raise UserError(err)


def print0(d, *args, file=None, **kwargs):
    """print on rank 0 alone, around any progress bar on the terminal (tqdm.write)."""
    if d.is_main:
        tqdm.write(" ".join(map(str, args)), file=file or sys.stdout, **kwargs)
        (file or sys.stdout).flush()


def all_mean(d, x):
    """Mean of a float (or tensor) over ranks; identity in one process."""
    if not d.ddp:
        return x
    t = torch.as_tensor(x, dtype=torch.float64, device=d.device).clone()
    dist.all_reduce(t)
    t /= d.world_size
    return t.item() if t.ndim == 0 else t


def all_sum(d, t):
    """A tensor summed over ranks (a new tensor); itself in one process."""
    if not d.ddp:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def average_gradients(d, params):
    """Average .grad over ranks, in one flat all-reduce. For a step whose loss goes through
    a model more than once before backward (PPO-ptx: the RL minibatch and a pretraining
    batch), where DDP's hooks would expect one forward per backward. Identity in one process."""
    grads = [p.grad for p in params if p.grad is not None]
    if not d.ddp or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world_size
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(chunk.view_as(g))


def finish(d, code=0):
    """Leave cleanly: under DDP, tear the group down and exit without interpreter shutdown."""
    if not d.ddp:
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
