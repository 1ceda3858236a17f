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
