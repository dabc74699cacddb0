"""pairwise_soft_iou on one training batch, beside its baselines.

All providers see ``sssc.kernels.testing.iou_batch()`` (fixture ``soft_iou_batch``): 20 images x 9
predictions, 10..111 SAM-like blob candidates per image (1301 in all), 480 x 480. Providers:

- ``per_pair_loop``: a Python loop over the same-image pairs computing ``(p * m).sum()``,
  ``p.sum()`` and ``m.sum()`` with torch per pair, the way the paper's code did.
- ``dense_gemm``: ``pred.flatten(1) @ cand.flatten(1).float().T`` plus the sums, ignoring the
  image ids (every N x C pair, and a float copy of all candidates).
- ``ours``: the dispatcher with image ids (``auto``: numba on CPU).
- ``ours_torch``: our chunked per-block GEMM (``backend="torch"``).
- ``triton``: ours on CUDA (skipped without a GPU).

A second group times forward + backward: ``ours`` against autograd through ``dense_gemm``.
``extra_info`` records same-image pairs/s, the effective GB/s over the inputs (pred once, cand
once) and the speedups over the baselines of the group.
"""

from __future__ import annotations

import pytest
import torch
from benchutil import mean_seconds

from sssc.kernels import pairwise_soft_iou

FORWARD = ["per_pair_loop", "dense_gemm", "ours", "ours_torch", "triton"]
BACKWARD = ["dense_gemm", "ours", "triton"]
_MEANS: dict[tuple[str, str], float] = {}  # (group, provider) -> mean seconds


def per_pair_loop(pred, cand, pred_group, cand_group, eps=1e-7):
    """The baseline: one torch reduction per same-image pair."""
    out = torch.full((pred.shape[0], cand.shape[0]), float("-inf"), device=pred.device)
    for n in range(pred.shape[0]):
        p = pred[n]
        for c in torch.nonzero(cand_group == pred_group[n]).flatten().tolist():
            m = cand[c]
            inter = (p * m).sum()
            union = p.sum() + m.sum() - inter
            out[n, c] = inter / union.clamp_min(eps)
    return out


def dense_gemm(pred, cand, eps=1e-7):
    """The baseline: one GEMM over every pair, with a float copy of the candidates (in pred's
    dtype: float64 inputs give the float64 reference)."""
    p = pred.flatten(1)
    m = cand.flatten(1).to(p.dtype)
    inter = p @ m.T
    union = p.sum(1)[:, None] + m.sum(1)[None, :] - inter
    return inter / union.clamp_min(eps)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _inputs(batch, provider):
    if provider != "triton":
        return batch
    if not torch.cuda.is_available():
        pytest.skip("triton provider needs a CUDA device")
    return tuple(t.cuda() for t in batch)


def _record(benchmark, group, provider, batch, baselines):
    pred, cand, pg, cg = batch
    mean = mean_seconds(benchmark)
    _MEANS[(group, provider)] = mean
    pairs = int((pg[:, None] == cg[None, :]).sum())
    nbytes = pred.numel() * pred.element_size() + cand.numel() * cand.element_size()
    benchmark.extra_info.update(
        provider=provider,
        same_image_pairs=pairs,
        pairs_per_s=pairs / mean,
        effective_GB_per_s=nbytes / mean / 1e9,
    )
    for base in baselines:  # the baselines run first when the whole group runs
        if (group, base) in _MEANS and base != provider:
            benchmark.extra_info[f"speedup_vs_{base}"] = _MEANS[(group, base)] / mean


@pytest.mark.parametrize("provider", FORWARD)
def test_soft_iou_forward(benchmark, soft_iou_batch, provider):
    pred, cand, pg, cg = batch = _inputs(soft_iou_batch, provider)
    group = f"soft_iou forward N={pred.shape[0]} C={cand.shape[0]} {pred.shape[1]}x{pred.shape[2]}"
    benchmark.group = group
    if provider == "per_pair_loop":
        fn = lambda: per_pair_loop(pred, cand, pg, cg)
    elif provider == "dense_gemm":
        fn = lambda: dense_gemm(pred, cand)
    else:
        backend = {"ours": "auto", "ours_torch": "torch", "triton": "triton"}[provider]

        def fn():
            out = pairwise_soft_iou(pred, cand, pg, cg, backend=backend)
            _sync(pred.device)
            return out

        fn()  # JIT compile (or load numba's cache; Triton's autotune-free compile) before timing
    if provider in ("per_pair_loop", "dense_gemm", "ours_torch"):  # seconds-long: few rounds
        out = benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    else:
        out = benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=1)
    assert out.shape == (pred.shape[0], cand.shape[0])
    _record(benchmark, group, provider, batch, ("per_pair_loop", "dense_gemm"))


@pytest.mark.parametrize("provider", BACKWARD)
def test_soft_iou_forward_backward(benchmark, soft_iou_batch, provider):
    pred, cand, pg, cg = batch = _inputs(soft_iou_batch, provider)
    group = f"soft_iou forward+backward N={pred.shape[0]} C={cand.shape[0]}"
    benchmark.group = group
    same = pg[:, None] == cg[None, :]
    weight = torch.rand(same.shape, device=pred.device) * same  # a loss over same-image pairs
    p = pred.detach().clone().requires_grad_(True)
    if provider == "dense_gemm":
        iou = lambda: dense_gemm(p, cand)
    else:
        backend = "auto" if provider == "ours" else "triton"
        iou = lambda: pairwise_soft_iou(p, cand, pg, cg, backend=backend)

    def fn():
        out = iou()
        (grad,) = torch.autograd.grad((out.masked_fill(~same, 0.0) * weight).sum(), p)
        _sync(p.device)
        return grad

    if provider == "dense_gemm":
        grad = benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    else:
        fn()
        grad = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=0)
    assert grad.shape == pred.shape
    _record(benchmark, group, provider, batch, ("dense_gemm",))
