"""One Stage 3 training step of LAVT and the share of the matching step in it.

Inputs: ``sssc.kernels.testing.iou_batch`` gives a training batch's candidate pools and image ids
(20 images, one object with 3 expressions each: 60 expressions, the paper's batch; 3..10 candidates
per image), with random images and token ids. Rows (group ``train_step-<model>``):

- ``step``: forward, the matching loss, backward, AdamW step (what one training step costs);
- ``matching``: ``match_targets`` alone on the step's logits (softmax, grouped
  ``pairwise_soft_iou`` under no_grad, ``greedy_match``, target gather): the S+S+C overhead.

``extra_info`` records samples/s and, on the ``matching`` row, ``matching_share`` = matching /
step (the issue's bar: < 2%). Models: ``lavt-tiny`` at 96x96 on CPU (float32, one thread when
``SSSC_BENCH_THREADS`` says so). ``lavt-base`` at 480x480 with bf16 on CUDA is in
``bench_cuda.py`` (it builds its batches with :func:`_batch`).
"""

from __future__ import annotations

import os

import pytest
import torch
from benchutil import mean_seconds

from sssc.correct.lavt import create_model
from sssc.correct.losses import match_targets, weighted_ce
from sssc.kernels.testing import iou_batch

_MEANS: dict[str, float] = {}

CASES = [
    pytest.param("lavt-tiny", 96, "cpu", id="lavt-tiny-96-cpu"),
]


def _batch(size, device, n_images):
    _, cand, pred_group, cand_group = iou_batch(
        images=n_images,
        objects_per_image=1,
        refs_per_object=3,
        max_cands=10,
        min_cands=3,
        height=size,
        width=size,
        cand_dtype=torch.uint8,
        device=device,
    )
    B = pred_group.numel()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, 3, size, size, generator=g).to(device)
    ids = torch.randint(5, 200, (B, 20), generator=g).to(device)
    mask = torch.ones(B, 20, dtype=torch.int64, device=device)
    eligible = pred_group[:, None] == cand_group[None, :]
    ref_object = pred_group.clone()  # one object per image: its 3 expressions share the id
    return images, ids, mask, cand, cand_group, eligible, ref_object, pred_group


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def step_fns(model, opt, batch, device, amp):
    """``forward()`` -> logits; ``step()``: forward, the matching loss, backward, the optimizer
    step; ``matching(logits)``: ``match_targets`` alone. ``batch`` is :func:`_batch`'s; ``amp``:
    bf16 autocast. Each waits for the device before returning."""
    images, ids, mask, cand, cgrp, elig, obj, grp = batch

    def forward():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            return model(images, ids, mask)

    def step():
        logits = forward()
        res = match_targets(logits, cand, cgrp, elig, obj, grp)
        loss = weighted_ce(logits, res.target, (0.9, 1.1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)

    def matching(logits):
        match_targets(logits, cand, cgrp, elig, obj, grp)
        _sync(device)

    return forward, step, matching


@pytest.mark.parametrize("part", ["step", "matching"])
@pytest.mark.parametrize("name, size, device", CASES)
def test_train_step(benchmark, name, size, device, part):
    if os.environ.get("SSSC_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["SSSC_BENCH_THREADS"]))
    n_images = 20
    torch.manual_seed(0)
    model = create_model(name).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=1e-2)
    batch = _batch(size, device, n_images)
    forward, step, matching = step_fns(model, opt, batch, device, amp=False)
    grp = batch[-1]

    benchmark.group = f"train_step-{name}"  # before timing: pytest-benchmark reads it then
    if part == "step":
        step()  # warm-up: kernels compiled, allocator primed
        benchmark.pedantic(step, rounds=3, iterations=1)
    else:
        with torch.no_grad():
            logits = forward().detach()
        matching(logits)
        benchmark.pedantic(matching, (logits,), rounds=10, iterations=1)
    mean = mean_seconds(benchmark)
    _MEANS[f"{name}-{part}"] = mean
    benchmark.extra_info["samples_per_s"] = grp.numel() / mean
    benchmark.extra_info["batch"] = grp.numel()
    if part == "matching" and f"{name}-step" in _MEANS:
        benchmark.extra_info["matching_share"] = mean / _MEANS[f"{name}-step"]


# lavt-tiny at the embedded default's 64x64 input and ~20 expressions a step, four configs:
# - window6-baseline: windows of 6, no coordinates (the 16x16 grid is padded to 18x18, the 8x8 one
#   to 12x12), LAVT's decoder width (half of stage 4: 96), AdamW's for-loop update;
# - window4-coords: windows of 4, which tile every stage's grid, and coordinate features;
# - decoder48-fused: also a decoder 48 wide and the fused AdamW that training builds
#   (sssc.correct.optim.build_optimizer);
# - refine8: the current one, also the refine head 8 wide (model config ``refine_hidden``), whose
#   cost is the ``refine_cost`` of its row (time / decoder48-fused's).
TINY_VARIANTS = {
    "window6-baseline": (6, "none", 96, False, 0),
    "window4-coords": (4, "coords", 96, False, 0),
    "decoder48-fused": (4, "coords", 48, True, 0),
    "refine8": (4, "coords", 48, True, 8),
}


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_tiny_step_at_64(benchmark, variant):
    import dataclasses

    from sssc.correct.lavt import LAVT, load_model_config

    if os.environ.get("SSSC_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["SSSC_BENCH_THREADS"]))
    window, position, hidden, fused, refine = TINY_VARIANTS[variant]
    cfg = load_model_config("lavt-tiny")
    cfg = dataclasses.replace(
        cfg,
        swin=dataclasses.replace(cfg.swin, window_size=window),
        position=position,
        decoder_hidden=hidden,
        refine_hidden=refine,
    )
    torch.manual_seed(0)
    model = LAVT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=fused)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(20, 3, 64, 64, generator=g)
    ids = torch.randint(5, 200, (20, 8), generator=g)
    mask = torch.ones(20, 8, dtype=torch.int64)
    target = (torch.rand(20, 64, 64, generator=g) < 0.05).long()

    def step():
        loss = weighted_ce(model(images, ids, mask), target, (0.5, 1.5))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    benchmark.group = "train_step-lavt-tiny-64"
    benchmark.pedantic(step, rounds=10, iterations=1)
    mean = mean_seconds(benchmark)
    _MEANS[f"tiny64-{variant}"] = mean
    benchmark.extra_info["samples_per_s"] = 20 / mean
    if variant != "window6-baseline" and "tiny64-window6-baseline" in _MEANS:
        benchmark.extra_info["speedup"] = _MEANS["tiny64-window6-baseline"] / mean
    if variant == "decoder48-fused" and "tiny64-window4-coords" in _MEANS:
        benchmark.extra_info["speedup_vs_window4"] = _MEANS["tiny64-window4-coords"] / mean
    if variant == "refine8" and "tiny64-decoder48-fused" in _MEANS:
        benchmark.extra_info["refine_cost"] = mean / _MEANS["tiny64-decoder48-fused"]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_refine_head_layout(benchmark, layout):
    """lavt-tiny's refine head (``refine_hidden: 8``) at 64x64, 20 expressions: forward + backward
    of its three convolutions in the default layout and in the channels-last one it runs in."""
    from sssc.correct.lavt import RefineHead

    if os.environ.get("SSSC_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["SSSC_BENCH_THREADS"]))
    torch.manual_seed(0)
    head = RefineHead(8)
    torch.nn.init.normal_(head.net[-1].weight, std=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, 64, 64, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        head.zero_grad(set_to_none=True)
        head.net(x).sum().backward()

    step()
    benchmark.group = "refine-head-64"
    benchmark.pedantic(step, rounds=20, iterations=1)
    mean = mean_seconds(benchmark)
    _MEANS[f"refine-{layout}"] = mean
    if layout == "channels_last" and "refine-nchw" in _MEANS:
        benchmark.extra_info["speedup"] = _MEANS["refine-nchw"] / mean
