"""The GPU suite: every Triton path beside its torch or reference baseline on the same card, the
streaming scorer with ViT-L/14@336, the lavt-base training step and Stage 1's models, each beside
the paper's way where the issue asks for it. Every case skips without CUDA.

``bench/gpu/run.sh`` runs this file on a lent GPU and ``bench/gpu/report.py`` turns its JSON into
the tables of ``bench/RESULTS.md`` (ratios, fractions of the card's memory bandwidth, and the
RefCOCO projection). ``SSSC_BENCH_DRY=1`` runs the same code on the CPU at toy sizes (Triton
under ``TRITON_INTERPRET=1``): a check of the plumbing, never a figure.

Groups, each timed with its baselines in the same run (``extra_info`` holds what the report reads):

- ``ceiling``: a device-to-device copy (bytes read + written) and a bf16 matrix product: the
  card's two ceilings as measured here.
- ``soft_iou forward`` / ``forward+backward`` on ``iou_batch()`` (180 predictions x 1,301
  candidates at 480 x 480): ``dense_gemm`` (one GEMM over all pairs), ``torch`` (our per-image
  block GEMM, ``backend="torch"``), ``triton``. ``min_bytes`` counts pred and cand read once (and,
  with the backward, cand again and the gradient written once).
- ``greedy_match`` on the 20- and 64-image batches of ``bench_greedy_match``: ``numba_host`` (the
  CPU kernel with the copies to and from the host that a CUDA caller would pay), ``triton``.
- ``reverse_blur``, 640 x 480, 30 masks: ``torch`` (``backend="torch"`` on the GPU), ``triton``
  (both the fast approximation), ``exact`` (composite at full resolution, then resize).
- ``scorer``, random-init ``ViT-L-14-336`` (``SSSC_BENCH_CLIP``), 16 images x 20 candidates:
  ``bare_encoder`` (prebuilt prompts, bf16, batches of 256), ``streaming`` (``StreamingScorer``
  from host images and masks), ``paper_per_mask`` (OpenCV blur per mask on the host, batch-1
  CLIP in fp16 as the official code's ``clip.load`` gives on CUDA; 2 images).
- ``lavt-base step``, 480 x 480, bf16 autocast, batch 15 (a GPU's share of the paper's 60 on 4)
  and 60: ``step`` and ``matching`` (its share); ``step_fp32`` at 15 (the official precision).
- ``stage1``: SAM ViT-H on one 640 x 480 image with ``SSSC_BENCH_BOXES`` boxes: ``ours``
  (:class:`SamSegmenter`: one embedding, all boxes in one bf16 call) and ``paper_per_box`` (fp32,
  one ``predict`` per box); GroundingDINO SwinT (random weights, a random BERT-base folder), one
  forward at 800 x 1066: ``ours`` (bf16) and ``paper`` (fp32).
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch
from bench_reverse_blur import opencv_per_mask
from bench_soft_iou import dense_gemm
from bench_train_step import _batch as lavt_batch
from bench_train_step import step_fns
from benchutil import mean_seconds

from sssc.kernels import (
    CLIP_STD,
    greedy_match,
    greedy_match_reference,
    pairwise_soft_iou,
    reverse_blur,
)
from sssc.kernels.testing import blob_masks, iou_batch, match_batch, random_image

DRY = os.environ.get("SSSC_BENCH_DRY") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if DRY else None)
pytestmark = pytest.mark.skipif(
    DEVICE is None,
    reason="the GPU suite needs CUDA (SSSC_BENCH_DRY=1 runs its plumbing on the CPU at toy sizes)",
)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _card() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"


def _record(benchmark, provider: str, **info) -> float:
    """Store what the report reads; returns the mean seconds."""
    mean = mean_seconds(benchmark)
    benchmark.extra_info.update(provider=provider, card=_card(), dry=DRY, **info)
    if "min_bytes" in info:
        benchmark.extra_info["effective_GB_per_s"] = info["min_bytes"] / mean / 1e9
    return mean


def _pedantic(benchmark, group: str, fn, rounds: int = 10):
    """Time ``fn`` as a row of ``group`` (set before timing: pytest-benchmark reads it then).

    A dry run times one call with no warm-up: it checks the plumbing, never a figure, and the
    Triton interpreter makes every call slow."""
    benchmark.group = group
    if DRY:
        return benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    fn()  # compile, allocator, autotune-free warm-up
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


# ---------------------------------------------------------------- ceilings


def test_ceiling_copy(benchmark):
    n = (1 << 20) if DRY else (1 << 28)  # 4 MiB / 1 GiB of float32
    x = torch.rand(n, device=DEVICE)
    y = torch.empty_like(x)

    def fn():
        y.copy_(x)
        _sync()

    _pedantic(benchmark, "ceiling", fn, rounds=20)
    _record(benchmark, "copy", min_bytes=2 * x.numel() * 4)


def test_ceiling_bf16_gemm(benchmark):
    n = 256 if DRY else 8192
    dt = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    a = torch.randn(n, n, device=DEVICE, dtype=dt)  # random data: zeros run faster
    b = torch.randn(n, n, device=DEVICE, dtype=dt)

    def fn():
        a @ b
        _sync()

    _pedantic(benchmark, "ceiling", fn, rounds=10)
    mean = _record(benchmark, "bf16_gemm", n=n)
    benchmark.extra_info["TFLOP_per_s"] = 2 * n**3 / mean / 1e12


# ---------------------------------------------------------------- pairwise_soft_iou


@pytest.fixture(scope="module")
def soft_batch():
    """The batch on the device, and the float64 IoU of its first 8 predictions (on the host)."""
    kw = dict(images=2, max_cands=6, min_cands=3, height=32, width=40) if DRY else {}
    pred, cand, pg, cg = batch = tuple(t.to(DEVICE) for t in iou_batch(**kw))
    return batch, dense_gemm(pred[:8].cpu().double(), cand.cpu())


def _check_soft(out, ref64, pg, cg):
    """Same-image entries of the first 8 predictions against the float64 formula."""
    same = (pg[:8, None] == cg[None, :]).cpu()
    err = (out[:8].double().cpu() - ref64)[same].abs().max()
    assert float(err) < 2e-3, f"soft IoU differs from float64 by {float(err)}"


@pytest.mark.parametrize("provider", ["dense_gemm", "torch", "triton"])
def test_soft_iou_forward(benchmark, soft_batch, provider):
    (pred, cand, pg, cg), ref64 = soft_batch
    if provider == "dense_gemm":
        fn = lambda: (dense_gemm(pred, cand), _sync())[0]
    else:
        fn = lambda: (pairwise_soft_iou(pred, cand, pg, cg, backend=provider), _sync())[0]
    out = fn()
    _check_soft(out, ref64, pg, cg)
    group = f"soft_iou forward N={pred.shape[0]} C={cand.shape[0]} {pred.shape[1]}x{pred.shape[2]}"
    _pedantic(benchmark, group, fn, rounds=10)
    nbytes = pred.numel() * pred.element_size() + cand.numel() * cand.element_size()
    _record(benchmark, provider, min_bytes=nbytes)


@pytest.mark.parametrize("provider", ["dense_gemm", "torch", "triton"])
def test_soft_iou_forward_backward(benchmark, soft_batch, provider):
    (pred, cand, pg, cg), _ = soft_batch
    same = pg[:, None] == cg[None, :]
    weight = torch.rand(same.shape, device=DEVICE) * same
    p = pred.detach().clone().requires_grad_(True)

    def fn():
        out = (
            dense_gemm(p, cand)
            if provider == "dense_gemm"
            else pairwise_soft_iou(p, cand, pg, cg, backend=provider)
        )
        (grad,) = torch.autograd.grad((out.masked_fill(~same, 0.0) * weight).sum(), p)
        _sync()
        return grad

    grad = fn()
    if provider != "dense_gemm":  # against autograd through the dense formula
        pd = pred.detach().clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(
            (dense_gemm(pd, cand).masked_fill(~same, 0.0) * weight).sum(), pd
        )
        rel = float((grad - ref).norm() / ref.norm().clamp_min(1e-30))
        assert rel < 1e-3, f"gradient differs from autograd by {rel} (relative)"
    _pedantic(benchmark, f"soft_iou forward+backward N={pred.shape[0]} C={cand.shape[0]}", fn, 5)
    c = cand.numel() * cand.element_size()
    nbytes = 2 * pred.numel() * pred.element_size() + 2 * c  # pred in, grad out, cand twice
    _record(benchmark, provider, min_bytes=nbytes)


# ---------------------------------------------------------------- greedy_match

MATCH = {"20img": dict(images=20), "64img": dict(images=64, objects_per_image=8)}


@pytest.fixture(scope="module", params=list(MATCH))
def match(request):
    kw = dict(images=3, max_cands=8, min_cands=3) if DRY else MATCH[request.param]
    arrays = match_batch(**kw)
    return request.param, arrays, greedy_match_reference(*arrays)


@pytest.mark.parametrize("provider", ["numba_host", "triton"])
def test_greedy_match(benchmark, match, provider):
    name, (scores, obj, rg, cg), expected = match
    t = [torch.from_numpy(x).to(DEVICE) for x in (scores, obj, rg, cg)]
    if provider == "numba_host":

        def fn():
            host = [x.cpu().numpy() for x in t]
            res = torch.from_numpy(greedy_match(*host, backend="numba")).to(DEVICE)
            _sync()
            return res

    else:

        def fn():
            res = greedy_match(*t, backend="triton")
            _sync()
            return res

    np.testing.assert_array_equal(fn().cpu().numpy(), expected)
    R, C = scores.shape
    _pedantic(benchmark, f"greedy_match {name} R={R} C={C}", fn, rounds=50)
    _record(benchmark, provider, min_bytes=scores.nbytes, pairs=R * C)


# ---------------------------------------------------------------- reverse_blur


@pytest.mark.parametrize("provider", ["torch", "triton", "exact"])
def test_reverse_blur(benchmark, provider):
    h, w, c, size = (48, 64, 3, 32) if DRY else (480, 640, 30, 336)
    img = torch.from_numpy(random_image(h, w)).to(DEVICE)
    masks = torch.from_numpy(blob_masks(c, h, w)).to(DEVICE)
    fn = lambda: (reverse_blur(img, masks, 50.0, size, backend=provider), _sync())[0]
    out = fn()
    ref = reverse_blur(img.cpu(), masks[:2].cpu(), 50.0, size, backend="reference")
    std = torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)  # mean error in [0, 1] pixel units
    assert float(((out[:2].cpu() - ref) * std).abs().mean()) <= 0.01
    _pedantic(benchmark, f"reverse_blur {w}x{h} C={c} sigma=50 size={size}", fn, rounds=20)
    nbytes = img.numel() + masks.numel() + out.numel() * 4  # uint8 image, bool masks, f32 out
    _record(benchmark, provider, min_bytes=nbytes, masks=c)


# ---------------------------------------------------------------- Stage 2 scorer


@pytest.fixture(scope="module")
def scorer_setup():
    pytest.importorskip("open_clip", reason="open_clip is in the select extra")
    from sssc.pretrained import load_clip
    from sssc.select.scorer import StreamingScorer, item_from_arrays

    name = os.environ.get("SSSC_BENCH_CLIP", "ViT-B-32" if DRY else "ViT-L-14-336")
    images, cands = (2, 3) if DRY else (16, 20)
    torch.manual_seed(0)
    clip = load_clip(name, "random", DEVICE, "select.models")
    items = []
    for i in range(images):
        hwc = np.ascontiguousarray(random_image(480, 640, seed=i).transpose(1, 2, 0))
        masks = blob_masks(cands, 480, 640, seed=i)
        items.append(item_from_arrays(i, hwc, masks, [(i, list(range(cands)))]))
    return name, clip, StreamingScorer(clip, sigma=50.0, batch_size=256), items


@pytest.mark.parametrize(
    "provider", ["bare_encoder", "streaming", "streaming_fast", "paper_per_mask"]
)
def test_scorer(benchmark, scorer_setup, provider):
    from sssc.select.scorer import StreamingScorer

    name, clip, scorer, items = scorer_setup
    if provider == "streaming_fast":  # the fast prompts (select.models.composite: fast)
        scorer = StreamingScorer(clip, sigma=50.0, batch_size=256, composite="fast")
    n = sum(len(it.cand_ids) for it in items)
    if provider == "bare_encoder":
        prompts = torch.cat(
            [scorer.prompts(it.image.to(DEVICE), it.masks.to(DEVICE)) for it in items]
        )

        def fn():
            for k in range(0, len(prompts), scorer.batch_size):
                scorer._encode(prompts[k : k + scorer.batch_size])
            _sync()

    elif provider in ("streaming", "streaming_fast"):

        def fn():
            out = [e for _, e in scorer.embed(iter(items))]
            _sync()
            return out

    else:  # the official per-mask loop: OpenCV blur on the host, batch-1 CLIP in fp16
        items = items[:2]
        n = sum(len(it.cand_ids) for it in items)
        amp = torch.autocast("cuda", dtype=torch.float16, enabled=DEVICE == "cuda")

        def fn():
            for it in items:
                hwc = it.image.permute(1, 2, 0).numpy()
                for j in range(len(it.cand_ids)):
                    p = opencv_per_mask(hwc, it.masks[j : j + 1].numpy(), 50.0, clip.image_size)
                    with torch.no_grad(), amp:
                        clip.encode_image(p.to(DEVICE))
            _sync()

    rounds = 1 if provider == "paper_per_mask" else 3
    _pedantic(benchmark, f"scorer {name}", fn, rounds=rounds)
    mean = _record(benchmark, provider, prompts=n, images=len(items))
    benchmark.extra_info["prompts_per_s"] = n / mean


# ---------------------------------------------------------------- lavt-base training step


@pytest.fixture(scope="module")
def lavt_model():
    from sssc.correct.lavt import create_model

    name = "lavt-tiny" if DRY else "lavt-base"
    torch.manual_seed(0)
    return name, create_model(name).to(DEVICE)


@pytest.mark.parametrize(
    "batch, part, amp",
    [
        (15, "step", True),
        (15, "matching", True),
        (60, "step", True),
        (60, "matching", True),
        (15, "step_fp32", False),
    ],
    ids=["15-step", "15-matching", "60-step", "60-matching", "15-step_fp32"],
)
def test_lavt_base_step(benchmark, lavt_model, batch, part, amp):
    name, model = lavt_model
    size = 64 if DRY else 480
    nominal, batch = batch, (3 if DRY else batch)
    group = f"lavt step {name} {size}x{size}"
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=1e-2)
    tensors = lavt_batch(size, DEVICE, batch // 3)
    forward, step, matching = step_fns(model, opt, tensors, DEVICE, amp and DEVICE == "cuda")

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    oom = False
    try:
        if part == "matching":
            with torch.no_grad():
                logits = forward().detach()
            fn = lambda: matching(logits)
        else:
            fn = step
        _pedantic(benchmark, group, fn, rounds=10 if part == "matching" else 3)
    except torch.cuda.OutOfMemoryError:
        oom = True
    if oom:  # free this case's memory before the next one
        opt = tensors = fn = forward = step = matching = logits = None
        gc.collect()
        torch.cuda.empty_cache()
        pytest.skip(f"{name} at batch {batch}, {size}x{size}: out of memory on {_card()}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
    mean = _record(benchmark, f"{part}@{nominal}", batch=batch, peak_GiB=peak)
    benchmark.extra_info["samples_per_s"] = batch / mean


# ---------------------------------------------------------------- Stage 1 models


@pytest.fixture(scope="module")
def stage1_image():
    k = int(os.environ.get("SSSC_BENCH_BOXES", 6))
    h, w = (120, 160) if DRY else (480, 640)
    image = np.ascontiguousarray(random_image(h, w).transpose(1, 2, 0))
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0, w / 2, k)
    y0 = rng.uniform(0, h / 2, k)
    boxes = np.stack([x0, y0, x0 + rng.uniform(20, w / 2, k), y0 + rng.uniform(20, h / 2, k)], 1)
    return image, boxes.astype(np.float32)


@pytest.fixture(scope="module")
def sam_model():
    pytest.importorskip("segment_anything", reason="segment-anything is in the segment extra")
    from sssc.segment.segmenter import build_sam

    sam_type = "tiny" if DRY else "vit_h"
    return sam_type, build_sam(sam_type, "random")


@pytest.mark.parametrize("provider", ["ours", "paper_per_box"])
def test_stage1_sam(benchmark, stage1_image, sam_model, provider):
    from segment_anything import SamPredictor

    from sssc.segment.segmenter import SamSegmenter

    image, boxes = stage1_image
    sam_type, sam = sam_model
    if provider == "ours":
        seg = SamSegmenter(sam, DEVICE, amp="bf16")
        fn = lambda: (seg(image, boxes), _sync())
    else:
        pred = SamPredictor(sam.to(DEVICE))

        def fn():  # the official segment_from_detections: one embedding, one predict per box
            pred.set_image(image)
            for b in boxes:
                masks, scores, _ = pred.predict(box=b, multimask_output=True)
                masks[np.argmax(scores)]
            _sync()

    _pedantic(benchmark, f"stage1 SAM {sam_type} {image.shape[1]}x{image.shape[0]}", fn, 3)
    _record(benchmark, provider, boxes=len(boxes))


@pytest.fixture(scope="module")
def gdino(tmp_path_factory):
    pytest.importorskip("groundingdino", reason="groundingdino-py is in the segment extra")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from sssc.segment.detector import GroundingDinoDetector

    folder = tmp_path_factory.mktemp("bert")
    words = "[PAD] [UNK] [CLS] [SEP] [MASK] . , all the a man woman person car dog".split()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(BertConfig(vocab_size=len(words), **(small if DRY else {}))).save_pretrained(folder)
    return GroundingDinoDetector(
        weights="random",
        text_encoder=str(folder),
        device=DEVICE,
        **(dict(size=320, max_size=427) if DRY else {}),
    )


@pytest.mark.parametrize("provider", ["ours", "paper"])
def test_stage1_gdino(benchmark, gdino, stage1_image, provider):
    det = gdino
    det.amp = "bf16" if provider == "ours" else "none"
    image, _ = stage1_image
    x = det._preprocess(image)
    fn = lambda: (det._forward(x, "all men , all women , all cars ."), _sync())
    _pedantic(benchmark, f"stage1 GroundingDINO SwinT {x.shape[2]}x{x.shape[1]}", fn, 5)
    _record(benchmark, provider)
