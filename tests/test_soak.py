"""Smoke test of experiments/soak.py: a short soak run reports memory slopes, evaluations and handles."""
from __future__ import annotations

import math

from experiments import soak


def test_soak_smoke(tmp_path):
    result = soak.run(soak.soak_config(steps=12, checkpoint_every=4, log_every=4), tmp_path, eval_every=12,
                      sample_every=4)
    assert [s[0] for s in result["samples"]] == [1, 4, 8, 12]
    assert all(math.isfinite(result[k]) for k in ("rss_slope_percent_per_1k_steps", "device_slope_percent_per_1k_steps"))
    assert result["rss_mb_start"] > 0 and result["device_mb_start"] > 0
    [(step, checkpoint_step, loss)] = result["evals"]  # before step 12 trains: the checkpoint of step 4 or 8
    assert step == 12 and checkpoint_step in (4, 8) and math.isfinite(loss)
    assert result["open_fds_end"] - result["open_fds_start"] < 20  # no handle piles up per checkpoint or eval
    soak.plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 0
