"""Stage 2 with CLIP: ``selector(image_id) -> S2 record``, fed by the streaming scorer.

The store writer asks for records one image at a time, in shard order. The first request of a
shard starts a stream over the rest of that shard (DataLoader workers, packed CLIP batches), and
the following requests take its results in order; so work is done in bulk, results still land
shard by shard, and a shard that is already written is never recomputed.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..data.refer import Refer
from ..pretrained import clip_source, load_clip, weight_problems
from ..store import Store, StoreError, s2_record
from .scorer import ImageItem, S1Images, StreamingScorer, select_objects

__all__ = ["ModelsSelector", "select_producer", "select_weight_problems"]


def select_producer(m: Any, s1_producer: dict) -> dict:
    """The producer recorded in the S2 store and every report."""
    return {
        "name": "models",
        "stage": "select",
        "clip": f"{m.clip_model}:{Path(m.clip_weights).name if m.clip_weights else ''}",
        "prompt": m.prompt,
        "composite": m.composite,
        "sigma": float(m.sigma),
        "min_area": int(m.min_area),
        "small_masks": m.small_masks,
        "channel_order": m.channel_order,
        "score": m.score,
        "segment": s1_producer,
    }


def select_weight_problems(m: Any) -> list[str]:
    """A message if ``select.models.clip_weights`` is empty or missing (naming the configured
    model's official weights)."""
    return weight_problems(
        "select.models",
        {"clip_weights": m.clip_weights},
        sources={"clip_weights": clip_source(m.clip_model)},
    )


class ModelsSelector:
    """Stage 2 with CLIP.

    Args:
        refer: the dataset (image files and expressions).
        m: ``select.models`` settings.
        s1: the S1 store.
        splits: the splits whose expressions describe the objects.
        shard_size: the S2 store's shard size (a stream covers the rest of one shard).
        device: where CLIP runs.

    Attributes:
        producer, counts: as the simulated selector's.
    """

    def __init__(
        self,
        refer: Refer,
        m: Any,
        s1: Store,
        splits: Iterable[str],
        shard_size: int,
        device: str = "cpu",
    ):
        self.refer, self.m, self.s1 = refer, m, s1
        self.producer = select_producer(m, s1.labels_producer)
        self.scorer = StreamingScorer(
            load_clip(m.clip_model, m.clip_weights, device, "select.models"),
            m.sigma,
            m.prompt,
            m.batch_size,
            m.amp,
            m.channel_order,
            m.composite,
        )
        self.sentences: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
        for s in dict.fromkeys(splits):
            for r in refer.split_refs(s):
                self.sentences[r.ann_id] += [(x.sent_id, x.sent) for x in r.sentences]
        self.ids = s1.image_ids()
        self._pos = {i: p for p, i in enumerate(self.ids)}
        self.shard_size = int(shard_size)
        self.counts: collections.Counter = collections.Counter()
        self._stream: Iterator[tuple[ImageItem, torch.Tensor]] | None = None
        self._expect: int | None = None

    def _start(self, image_id: int) -> None:
        p = self._pos[image_id]
        end = (p // self.shard_size + 1) * self.shard_size
        chunk = self.ids[p:end]
        paths = {i: str(self.refer.image_path(i)) for i in chunk}
        ds = S1Images(self.s1.dir, chunk, paths, self.s1.pools)
        # Text embeddings of the whole chunk in a few large batches (cached per sent_id).
        anns = {o.ann_id for i in chunk for o in self.s1.get(i, stored=True).objects}
        self.scorer.text_embeddings(s for a in sorted(anns) for s in self.sentences.get(a, []))
        self._stream = self.scorer.embed(self.scorer.loader(ds, self.m.num_workers))

    def __call__(self, image_id: int) -> dict:
        if self._stream is None or image_id != self._expect:
            self._start(image_id)
        try:
            item, emb = next(self._stream)
        except StopIteration:
            raise StoreError(f"select: the stream ended before image {image_id}") from None
        if item.image_id != image_id:  # the writer and the stream disagree on the order: a bug
            raise StoreError(f"select: got image {item.image_id} while writing {image_id}")
        p = self._pos[image_id] + 1
        # The stream covers one shard: the next shard starts a new one (it may be done already).
        self._expect = self.ids[p] if p < len(self.ids) and p % self.shard_size else None
        cache = self.scorer._text
        text = {
            a: torch.stack([cache[i] for i, _ in self.sentences[a]])
            for a, _ in item.objects
            if self.sentences.get(a)
        }
        objs = select_objects(
            item.objects,
            item.cand_ids,
            item.areas,
            emb,
            text,
            self.m.min_area,
            self.m.score,
            self.counts,
            self.m.small_masks,
        )
        self.counts["images"] += 1
        return s2_record(image_id, objs)
