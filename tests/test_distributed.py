"""The shared DDP setup, for real: two gloo processes under torchrun."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(__file__)


def test_two_process_gloo_ddp(tmp_path):
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", os.path.join(HERE, "ddp_worker.py"), str(out)],
                       capture_output=True, text=True, timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["grad_err"] < 1e-6                        # DDP's averaged gradient = full batch
    assert abs(res["loss"] - res["full_loss"]) < 1e-6    # all_mean of the halves = full loss
    assert r.stdout.count("logs: loss") == 1 and "rank 0 logs" in r.stdout   # rank 0 alone
