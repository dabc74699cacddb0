"""Simulated Stage 2 (S2): the producer for datasets without a pretrained CLIP.

No detector or CLIP is available offline, so on the synthetic dataset Stage 2 can be
*simulated* from the GT with documented, configurable errors. Every record they make is written
with ``producer = {"name": "simulated", ...settings}``, and every report shows that producer.

S2 (``SimulatedSelector``, settings ``select.simulate``): per object, with probability
``p_correct`` the eligible candidate that overlaps its GT best; otherwise, *systematically* like
CLIP, the largest (``wrong_choice: largest``) or most central (``central``: box centre nearest the
image centre) *other* eligible candidate, or per image one of the two (``mixed``). Objects sharing
an image therefore collide on one mask when wrong. An object with one eligible candidate gets it;
one with none gets ``None`` (counted). Scores are simulated similarities whose argmax is the choice.

It is deterministic given their seed: image ``i`` draws from ``default_rng([seed, i])``, so the
result does not depend on the shard layout, the rank, or the order images are processed in.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from ..data import masks as _masks
from ..data.refer import Refer
from ..store import ImageRecord, Store, s2_record

__all__ = ["SimulatedSelector"]


class SimulatedSelector:
    """Simulated Stage 2, a :class:`sssc.store.Producer`: ``selector(image_id) -> S2 record``
    (see :func:`sssc.store.s2_record`) from the image's S1 record; ``select(record)`` for a record
    in hand.

    Args:
        refer: the dataset (GT masks decide which candidate is right).
        cfg: ``select.simulate`` (``p_correct``, ``wrong_choice``, ``seed``).
        s1: the S1 :class:`~sssc.store.Store` read (its producer is kept inside this producer).

    Attributes:
        producer: what goes into the store and every report.
        counts: ``correct``, ``wrong``, ``only_one_eligible``, ``no_eligible`` (objects).
    """

    def __init__(self, refer: Refer, cfg: Any, s1: Store):
        if cfg.wrong_choice not in ("largest", "central", "mixed"):
            raise ValueError(f"wrong_choice must be largest, central or mixed: {cfg.wrong_choice}")
        self.refer, self.cfg = refer, cfg
        self.producer = {
            "name": "simulated",
            "stage": "select",
            "p_correct": float(cfg.p_correct),
            "wrong_choice": str(cfg.wrong_choice),
            "seed": int(cfg.seed),
            "segment": s1.labels_producer,
        }
        self.s1 = s1
        self.counts: collections.Counter = collections.Counter()

    def __call__(self, image_id: int) -> dict:
        return self.select(self.s1.get(image_id))

    def select(self, rec: ImageRecord) -> dict:
        rng = np.random.default_rng([int(self.cfg.seed), int(rec.image_id)])
        mode = self.cfg.wrong_choice
        if mode == "mixed":  # one bias per image, so that the image's mistakes still collide
            mode = ("largest", "central")[int(rng.integers(2))]
        cands = rec.candidates
        h, w = rec.height, rec.width
        out = []
        for obj in rec.objects:
            u = rng.random()
            el = list(obj.eligible)
            scores = rng.uniform(0.10, 0.30, size=len(el))
            if not el:
                self.counts["no_eligible"] += 1
                out.append((obj.ann_id, None, [], []))
                continue
            gt = _masks.encode(self.refer.gt_mask(obj.ann_id))
            ious = _masks.iou([cands[i].rle for i in el], [gt])[:, 0]
            best = el[int(np.argmax(ious))]
            if len(el) == 1:
                chosen = best
                self.counts["only_one_eligible"] += 1
            elif u < self.cfg.p_correct:
                chosen = best
                self.counts["correct"] += 1
            else:
                chosen = self._wrong([i for i in el if i != best], cands, mode, h, w)
                self.counts["wrong"] += 1
            scores[el.index(chosen)] = 0.30 + 0.05 * u  # the argmax is the choice
            out.append((obj.ann_id, chosen, el, scores.tolist()))
        return s2_record(rec.image_id, out)

    @staticmethod
    def _wrong(others: list[int], cands, mode: str, h: int, w: int) -> int:
        if mode == "largest":  # ties: the smaller id, as max() keeps the first
            return max(others, key=lambda i: (cands[i].area, -i))
        cy, cx = h / 2.0, w / 2.0

        def dist(i: int) -> tuple[float, int]:
            x, y, bw, bh = cands[i].box
            return ((x + bw / 2 - cx) ** 2 + (y + bh / 2 - cy) ** 2, i)

        return min(others, key=dist)
