"""Simulated Stage 1 (S1): the producer for datasets without a pretrained detector.

No detector or CLIP is available offline, so on the synthetic dataset Stage 1 can be
*simulated* from the GT with documented, configurable errors. Every record they make is written
with ``producer = {"name": "simulated", ...settings}``, and every report shows that producer.

S1 (``SimulatedSegmenter``, settings ``segment.simulate``): for each category referred to in an
image (the real pipeline finds it by projecting the head noun onto the class names), the pool gets
every GT instance of that category in the image, each

* dropped with probability ``p_drop`` (a missed detection),
* otherwise boundary-jittered: shifted by ``round(U(-j, j))`` pixels in x and in y and then dilated
  (or eroded, for a negative draw) by ``|round(U(-j, j))|`` pixels with a 3x3 cross, where
  ``j = jitter_px``; a jitter that would empty the mask keeps it as it was,

plus, with probability ``p_false_positive`` per image, one false positive labelled as one of the
image's referred categories: an instance of another category when the image has one (a confusion),
else a random ellipse. Each object's eligible candidates are the pool's candidates of its category.
Scores are simulated detector confidences (TP in [0.35, 1), FP in [0.35, 0.6)).

It is deterministic given their seed: image ``i`` draws from ``default_rng([seed, i])``, so the
result does not depend on the shard layout, the rank, or the order images are processed in.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..data import masks as _masks
from ..data.refer import DatasetError, Refer
from ..store import s1_record

__all__ = ["SimulatedSegmenter", "image_annotations", "jitter_mask"]


def image_annotations(refer: Refer) -> dict[int, list[int]]:
    """Every annotation id of every image (not only the referred ones), sorted."""
    return {i: refer.image_annotations(i) for i in refer.images}


def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = m[ys, xs]
    return out


def _dilate(m: np.ndarray) -> np.ndarray:
    """One step of binary dilation with a 3x3 cross (4-neighbourhood)."""
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


def jitter_mask(mask: np.ndarray, dy: int, dx: int, grow: int) -> np.ndarray:
    """Shift a mask by ``(dy, dx)`` (zero fill), then dilate ``grow`` times (erode if negative).

    Args:
        mask: bool ``[H, W]``.
        dy, dx: shift in pixels.
        grow: dilation steps with a 3x3 cross; negative erodes (the image border counts as
            background).

    Returns:
        bool ``[H, W]``.
    """
    m = _shift(mask.astype(bool), dy, dx)
    for _ in range(abs(grow)):
        m = _dilate(m) if grow > 0 else ~_dilate(~m | _border(m.shape))
    return m


def _border(shape: tuple[int, int]) -> np.ndarray:
    b = np.zeros(shape, dtype=bool)
    b[0, :] = b[-1, :] = b[:, 0] = b[:, -1] = True
    return b


def _ellipse(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    frac = rng.uniform(0.03, 0.15)
    a = np.sqrt(frac * h * w / np.pi) * np.exp(rng.uniform(-0.4, 0.4))
    b = frac * h * w / np.pi / a
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    m = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1.0
    if not m.any():
        m[int(min(cy, h - 1)), int(min(cx, w - 1))] = True
    return m


class SimulatedSegmenter:
    """Simulated Stage 1: ``segmenter(image_id) -> S1 record`` (see :func:`store.s1_record`).

    Args:
        refer: the dataset.
        cfg: ``segment.simulate`` (``p_drop``, ``jitter_px``, ``p_false_positive``, ``seed``).
        splits: the splits whose refs are this stage's objects.
        data: a JSON-able description of the dataset, stored in the producer so that labels made
            on another dataset version are not reused.

    Attributes:
        producer: what goes into the store and every report.
        counts: ``dropped``, ``false_positive``, ``jitter_kept_original``, ``no_candidates``
            (images), ``no_eligible`` (objects), ``bad_annotation`` (skipped GT instances).
    """

    def __init__(self, refer: Refer, cfg: Any, splits: Iterable[str], data: dict | None = None):
        self.refer, self.cfg, self.splits = refer, cfg, tuple(splits)
        self.producer = {
            "name": "simulated",
            "stage": "segment",
            "p_drop": float(cfg.p_drop),
            "jitter_px": float(cfg.jitter_px),
            "p_false_positive": float(cfg.p_false_positive),
            "seed": int(cfg.seed),
            "data": data or {},
        }
        self.counts: collections.Counter = collections.Counter()
        self._anns = image_annotations(refer)

    def _gt(self, ann_id: int) -> np.ndarray | None:
        try:
            m = self.refer.gt_mask(ann_id)
        except DatasetError:
            self.counts["bad_annotation"] += 1
            return None
        if not m.any():
            self.counts["bad_annotation"] += 1
            return None
        return m

    def _jitter(self, rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
        j = float(self.cfg.jitter_px)
        dy, dx, grow = (int(np.rint(v)) for v in rng.uniform(-j, j, size=3))
        out = jitter_mask(m, dy, dx, grow)
        if not out.any():
            self.counts["jitter_kept_original"] += 1
            return m
        return out

    def __call__(self, image_id: int) -> dict:
        info = self.refer.images[image_id]
        h, w = info.height, info.width
        rng = np.random.default_rng([int(self.cfg.seed), int(image_id)])
        refs = [r for s in self.splits for r in self.refer.image_refs(image_id, s)]
        cats = sorted({r.category_id for r in refs})
        by_cat: dict[int, list[int]] = collections.defaultdict(list)
        for a in self._anns.get(image_id, []):
            by_cat[int(self.refer.annotation(a)["category_id"])].append(a)

        cands: list[dict] = []
        for c in cats:
            label = self.refer.categories.get(c, str(c))
            for a in by_cat.get(c, []):
                drop, score = rng.random() < self.cfg.p_drop, rng.uniform(0.35, 1.0)
                gt = self._gt(a)
                if gt is None:
                    continue
                if drop:
                    self.counts["dropped"] += 1
                    continue
                cands.append(self._candidate(self._jitter(rng, gt), score, label))

        if cats and rng.random() < self.cfg.p_false_positive:
            c = cats[int(rng.integers(len(cats)))]
            others = [a for k, v in sorted(by_cat.items()) if k != c for a in v]
            gt = self._gt(others[int(rng.integers(len(others)))]) if others else None
            m = self._jitter(rng, gt) if gt is not None else _ellipse(rng, h, w)
            label = self.refer.categories.get(c, str(c))
            cands.append(self._candidate(m, rng.uniform(0.35, 0.6), label))
            self.counts["false_positive"] += 1

        if not cands:
            self.counts["no_candidates"] += 1
        objects = []
        for ann_id in sorted({r.ann_id for r in refs}):
            label = self.refer.categories.get(self.refer.annotation(ann_id)["category_id"])
            eligible = [i for i, cd in enumerate(cands) if cd["label"] == label]
            if not eligible:
                self.counts["no_eligible"] += 1
            objects.append((ann_id, eligible))
        return s1_record(image_id, h, w, cands, objects)

    @staticmethod
    def _candidate(m: np.ndarray, score: float, label: str) -> dict:
        rle = _masks.encode(m)
        return {"rle": rle, "box": _masks.bbox(rle), "score": score, "label": label}
