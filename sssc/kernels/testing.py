"""Input factories shared by the kernels' tests and benchmarks.

Benchmarks import the same factories as the tests, so a baseline and the fast path always see the
same data. Everything here is deterministic given ``seed`` and uses numpy/torch only.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["blob_masks", "iou_batch", "match_batch", "random_image"]


def blob_masks(
    num: int, height: int, width: int, seed: int = 0, min_frac: float = 0.02, max_frac: float = 0.4
) -> np.ndarray:
    """Masks shaped like SAM's: filled, randomly rotated ellipses with a wobbly boundary.

    Args:
        num: number of masks ``C``.
        height, width: mask size.
        seed: RNG seed.
        min_frac, max_frac: range of the area as a fraction of the image (log-uniform).

    Returns:
        bool array ``[C, H, W]``. Every mask has at least one pixel.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((num, height, width), dtype=bool)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(num):
        area = np.exp(rng.uniform(np.log(min_frac), np.log(max_frac))) * height * width
        aspect = np.exp(rng.uniform(-0.8, 0.8))
        a = np.sqrt(area / np.pi * aspect)
        b = np.sqrt(area / np.pi / aspect)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        th = rng.uniform(0, np.pi)
        # Draw only inside the bounding box of the largest wobble (radius 1.15), plus a margin:
        # the same pixels as over the full grid, at a fraction of the cost.
        sa, sb = max(a, 0.5), max(b, 0.5)
        ey = 1.15 * np.hypot(sa * np.sin(th), sb * np.cos(th)) + 2
        ex = 1.15 * np.hypot(sa * np.cos(th), sb * np.sin(th)) + 2
        y0, y1 = max(int(cy - ey), 0), min(int(cy + ey) + 2, height)
        x0, x1 = max(int(cx - ex), 0), min(int(cx + ex) + 2, width)
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dx * np.cos(th) + dy * np.sin(th)) / sa
        v = (-dx * np.sin(th) + dy * np.cos(th)) / sb
        ang = np.arctan2(v, u)
        k = rng.integers(2, 6)
        wobble = 1.0 + 0.15 * np.sin(k * ang + rng.uniform(0, 2 * np.pi))
        m = u * u + v * v <= wobble * wobble
        if not m.any():
            m = np.zeros((height, width), dtype=bool)
            m[int(np.clip(cy, 0, height - 1)), int(np.clip(cx, 0, width - 1))] = True
            out[i] = m
        else:
            out[i, y0:y1, x0:x1] = m
    return out


def iou_batch(
    images: int = 20,
    objects_per_image: int = 3,
    refs_per_object: int = 3,
    max_cands: int = 111,
    min_cands: int = 10,
    height: int = 480,
    width: int = 480,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    cand_dtype: torch.dtype = torch.bool,
    device: str | torch.device = "cpu",
):
    """A training batch for the matching loss: predictions, candidate pools and image ids.

    Candidates per image are drawn from ``[min_cands, max_cands]``, with the first image holding
    exactly ``max_cands``. Predictions are soft versions of one of their image's candidates plus
    noise, so IoUs are spread over (0, 1) as they are during training.

    Returns:
        ``pred [N, H, W]`` probabilities, ``cand [C, H, W]``, ``pred_group [N]`` and
        ``cand_group [C]`` (int64 image ids), with ``N = images * objects * refs``.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_cands, max_cands + 1, size=images)
    if images:
        counts[0] = max_cands
    cands, cgroup, preds, pgroup = [], [], [], []
    for g in range(images):
        m = blob_masks(int(counts[g]), height, width, seed=seed * 1000 + g)
        cands.append(m)
        cgroup.append(np.full(len(m), g))
        for _ in range(objects_per_image):
            base = m[rng.integers(len(m))].astype(np.float32)
            for _ in range(refs_per_object):
                noise = rng.normal(0.0, 1.0, size=(height, width)).astype(np.float32)
                logits = 6.0 * (base - 0.5) + 1.5 * noise
                preds.append(1.0 / (1.0 + np.exp(-logits)))
                pgroup.append(g)
    empty = np.zeros((0, height, width))
    pred = torch.from_numpy(np.stack(preds) if preds else empty.astype(np.float32))
    cand = torch.from_numpy(np.concatenate(cands) if cands else empty.astype(bool))
    pred_group = torch.as_tensor(np.asarray(pgroup, dtype=np.int64))
    cand_group = torch.as_tensor(
        np.concatenate(cgroup).astype(np.int64) if cgroup else np.zeros(0, np.int64)
    )
    return (
        pred.to(device=device, dtype=dtype),
        cand.to(device=device, dtype=cand_dtype),
        pred_group.to(device),
        cand_group.to(device),
    )


def match_batch(
    images: int = 20,
    objects_per_image: int = 3,
    refs_per_object: int = 3,
    max_cands: int = 111,
    min_cands: int = 10,
    seed: int = 0,
    p_forbidden: float = 0.0,
    ties: bool = False,
):
    """Scores for the greedy matching of one training batch.

    Returns:
        ``scores [R, C]`` float32 (``-inf`` across images, and for a fraction ``p_forbidden`` of the
        same-image pairs), ``ref_object [R]``, ``ref_group [R]`` and ``cand_group [C]`` (int64
        numpy arrays). With ``ties=True`` scores are quantised to a few levels so that ties occur.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_cands, max_cands + 1, size=images)
    if images:
        counts[0] = max_cands
    cand_group = np.repeat(np.arange(images), counts).astype(np.int64)
    R = images * objects_per_image * refs_per_object
    ref_group = np.repeat(np.arange(images), objects_per_image * refs_per_object).astype(np.int64)
    ref_object = np.repeat(np.arange(images * objects_per_image), refs_per_object).astype(np.int64)
    # Object ids need not be contiguous or sorted: shuffle a permutation of sparse ids.
    ids = rng.permutation(images * objects_per_image * 7)[: images * objects_per_image] + 100
    ref_object = ids[ref_object] if R else ref_object
    scores = rng.random((R, len(cand_group))).astype(np.float32)
    if ties:
        scores = np.round(scores * 4) / 4
    scores[ref_group[:, None] != cand_group[None, :]] = -np.inf
    if p_forbidden > 0:
        scores[rng.random(scores.shape) < p_forbidden] = -np.inf
    return scores, ref_object.astype(np.int64), ref_group, cand_group


def random_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A smooth-ish random uint8 image ``[3, H, W]`` (low-frequency colour plus fine noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(3, max(height // 32, 2), max(width // 32, 2))).astype(
        np.float32
    )
    t = torch.nn.functional.interpolate(
        torch.from_numpy(small)[None], size=(height, width), mode="bilinear", align_corners=False
    )[0].numpy()
    img = t + rng.normal(0, 20, size=t.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
