"""Shared by the stage scripts' tests."""

import torch


def kill_at_step(monkeypatch, n):
    """Make the n-th optimizer step raise KeyboardInterrupt, as a kill mid-run would.
    -> undo(), which restores the real step."""
    step, calls = torch.optim.AdamW.step, [0]

    def dies(self, *a, **k):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", dies)
    return lambda: monkeypatch.setattr(torch.optim.AdamW, "step", step)


def first_step_grads(script, out, flags, nproc=1, fixed_rollouts=False):
    """Run script (train_sft, train_rm, train_ppo) with flags in one process or under torchrun
    with nproc gloo ranks -> (its first optimizer step's gradients {name: float64}, the
    CompletedProcess). fixed_rollouts: PPO's rollouts depend on the prompt alone. See
    tests/first_step_grads.py."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file
    here = os.path.dirname(os.path.abspath(__file__))
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    r = subprocess.run([sys.executable, *launcher, os.path.join(here, "first_step_grads.py"), str(out), script,
                        *flags], cwd=os.path.dirname(here), capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **({"FIXED_ROLLOUTS": "1"} if fixed_rollouts else {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return load_file(str(out)), r


def relative_error(a, b):
    """max |a - b| over every tensor, relative to the largest |a|: float32 summation-order noise
    is ~1e-7 of that; a gradient normalised or reduced wrongly is off by a large fraction."""
    scale = max(t.abs().max().item() for t in a.values())
    return max((a[k] - b[k]).abs().max().item() for k in a) / scale
