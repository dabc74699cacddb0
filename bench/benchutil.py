"""Helpers shared by the bench files (not collected: pytest collects ``bench_*.py``)."""

from __future__ import annotations


def mean_seconds(benchmark) -> float:
    """The timed mean of ``benchmark`` in seconds.

    Under ``--benchmark-disable`` pytest-benchmark runs the function once, untimed, and keeps no
    stats: this returns NaN then, so a bench's correctness checks still run and every figure
    derived from the mean is NaN (nothing is saved in that mode).
    """
    stats = benchmark.stats
    return float("nan") if stats is None else stats.stats.mean


def min_seconds(benchmark) -> float:
    """The fastest timed round of ``benchmark`` in seconds (NaN under ``--benchmark-disable``)."""
    stats = benchmark.stats
    return float("nan") if stats is None else stats.stats.min
