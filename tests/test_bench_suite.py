"""The CPU bench files as a smoke test: ``--benchmark-disable`` runs each bench function once,
untimed, with its correctness checks, and keeps no stats (``bench/benchutil.mean_seconds``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_benches_run_under_benchmark_disable():
    # The fast cases of the files whose figures are derived from the mean (about 15 s here); the
    # soft IoU batch and the embedded default's run are left to `pytest bench --benchmark-only`.
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    files = [
        str(ROOT / "bench" / f)
        for f in (
            "bench_greedy_match.py",
            "bench_reverse_blur.py",
            "bench_train_step.py",
            "bench_pools.py",
        )
    ]
    cases = "20img or reverse_blur or tiny_step or refine or pool_readers"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-q", "--benchmark-disable",
         "-p", "no:cacheprovider", "-k", cases],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " failed" not in res.stdout, res.stdout[-2000:]
