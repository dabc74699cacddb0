"""Shared fixtures of the benchmark suite: inputs are built once per session."""

from __future__ import annotations

import pytest

from sssc.kernels.testing import iou_batch


@pytest.fixture(scope="session")
def soft_iou_batch():
    """``iou_batch()``: pred [180, 480, 480], cand [1301, 480, 480] bool and their image ids."""
    return iou_batch()
