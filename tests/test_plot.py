"""nanoinstruct.plot: a run's metrics.jsonl drawn into curves.png."""

import json

import pytest

from nanoinstruct import plot
from nanoinstruct.cli import UserError


def test_series_joins_val_skips_non_numbers_and_a_torn_line(tmp_path):
    rows = [{"iter": 1, "loss": 3.0, "lr": 1e-3, "elapsed": 1.0}, {"iter": 2, "loss": 2.0, "lr": 5e-4},
            {"iter": 2, "val_loss": 2.5, "note": "x", "ok": True, "bad": float("nan")}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iter": 3, "lo')
    got = plot.series(plot.read_metrics(tmp_path / "metrics.jsonl"))
    assert got == {"loss": {"loss": ([1, 2], [3.0, 2.0]), "val_loss": ([2], [2.5])}, "lr": {"lr": ([1, 2], [1e-3, 5e-4])}}


def test_curves_png_for_a_ppo_run_and_one_line_without_metrics(tmp_path):
    rows = [{"iter": i, "score": 0.1 * i, "gold": 0.05 * i, "kl": 0.2 * i, "entropy": 2.0} for i in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot.curves(str(tmp_path))
    assert png and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    fig = plot.figure(rows, "run")             # what curves.png holds: a panel a metric, then gold vs KL
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.axison]
    assert titles == ["score", "gold", "kl", "entropy", "score and gold vs KL from SFT"]
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[4].get_lines()}
    assert drawn == {"reward model score": ([r["kl"] for r in rows], [r["score"] for r in rows]),
                     "gold score": ([r["kl"] for r in rows], [r["gold"] for r in rows])}
    assert "score and gold vs KL from SFT" not in [ax.get_title() for ax in plot.figure(
        [{k: v for k, v in r.items() if k != "gold"} for r in rows], "run").axes]   # no gold, no panel
    import matplotlib.pyplot as plt
    plt.close("all")
    with pytest.raises(UserError, match="empty: no metrics.jsonl"):
        plot.main([str(tmp_path / "empty")])


def test_hostile_metrics_lines_are_skipped(tmp_path):
    good = {"iter": 2, "score": 0.1, "gold": 0.5, "kl": 0.3}
    lines = [b"\xff\xfe garbage", json.dumps({"iter": [1], "loss": 1.0}).encode(),
             json.dumps({"iter": 1, "gold": 0.5, "kl": 0.1}).encode(),          # no score: no gold-vs-KL point
             json.dumps({"iter": 10 ** 400, "loss": 1.0}).encode(), json.dumps({"iter": 3, "loss": 1e308}).encode(),
             json.dumps(good).encode()]
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rows = plot.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [1, 3, 2]
    assert plot.series(rows) == {"gold": {"gold": ([1, 2], [0.5, 0.5])}, "kl": {"kl": ([1, 2], [0.1, 0.3])},
                                 "score": {"score": ([2], [0.1])}}
    assert plot.curves(str(tmp_path))                                          # drawn, no overflow
    assert not any(map(plot.number, (True, float("nan"), float("inf"), 10 ** 400, 1e308, "1", None)))
    import matplotlib.pyplot as plt
    plt.close("all")
