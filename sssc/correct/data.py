"""Training data for Stage 3: images, tokenized expressions and pseudo-label targets.

A training *sample* is one expression. A *batch* (``data.batching``) is, by default
(``images``), whole images packed up to ``data.batch_expressions`` expressions
(:func:`sssc.data.refer.pack_images`), so that the matching loss sees every object of an image at
once; or (``samples``, the official code's) exactly ``data.batch_expressions`` expressions: the
shuffled images unfolded into their expressions on each of the official run's GPUs and cut
into equal shares (:func:`pack_samples`), so that an image's objects are split where a cut falls
inside them. :class:`ImageSet` returns one image (or the chosen expressions of
one) with everything they need, :func:`collate` turns a list of those into a batch:

* ``bootstrap`` (``targets="s2"``): each expression's target is its object's S2 choice;
* ``correct`` (``targets="s1"``): the image's S1 candidate pool, each candidate's image index
  (``cand_group``) and which candidates each expression's object may take (``eligible``);
* evaluation and inference (``targets=None``): images and expressions only.

Images are resized to ``size x size`` (bilinear) and normalized with ImageNet's mean and std, as
LAVT does; masks are resized with PIL nearest neighbour (as LAVT resizes its targets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..data.masks import resize_mask
from ..data.refer import Refer
from ..store.pools import binary_target
from .lavt import IMAGENET_MEAN, IMAGENET_STD  # the model owns its input normalisation

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSet",
    "collate",
    "official_val_draw",
    "pack_samples",
    "preprocess_image",
    "rank_keys",
]


def preprocess_image(image: np.ndarray, size: int) -> torch.Tensor:
    """An RGB image as the model's input.

    Args:
        image: uint8 ``[H, W, 3]``.
        size: the side of the square input.

    Returns:
        float32 ``[3, size, size]``, ImageNet-normalized.
    """
    return _normalize(_resize_image(image, size))


def _resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> uint8 ``[3, size, size]`` (bilinear, as LAVT's ``T.Resize``)."""
    from PIL import Image

    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # a writable copy


def _normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32, ImageNet-normalized."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


class ImageSet(torch.utils.data.Dataset):
    """One image of a split with its expressions and (optionally) pseudo-label targets.

    Indexed by image id (the batch sampler yields packed lists of image ids), or by
    ``(image_id, sent_ids)`` for those expressions of the image only (``data.batching:
    samples``; no further per-object draw).

    Args:
        refer: the dataset.
        split: whose expressions (e.g. ``"train"``).
        size: the square training resolution.
        targets: ``"s2"`` (the S2 choice per object), ``"s1"`` (the S1 pool) or ``None``.
        s1: the Stage 1 store (needed for both kinds of targets).
        s2: the Stage 2 store (for ``"s2"``).
        cache: keep each image's item after its first use (small datasets only).
        per_object: keep this many of each object's expressions per epoch, drawn from
            ``(seed, epoch, ann_id)`` (LAVT samples one sentence per object); 0 keeps all.
        seed: the draws' seed (see :meth:`set_epoch`).
        text_field: which REFER text the model reads: ``"sent"`` (REFER's cleaned, lower-cased
            text, which S+S+C's datasets read in training and evaluation) or ``"raw"`` (as typed,
            which LAVT-RIS's datasets read).
        label_background: ``"largest"``: an S2 target over half the image is inverted, as the
            official loader reads its binary PNGs (``train.label_background``); the S1 pools
            are read that way by the store (:func:`sssc.store.pools.paint_pools`).
        candidates_at: where S1 candidates are told apart: at ``size`` or as stored
            (:func:`resized_candidates`, ``train.candidates_at``).
    """

    def __init__(
        self,
        refer: Refer,
        split: str,
        size: int,
        targets: str | None = None,
        s1: Any = None,
        s2: Any = None,
        cache: bool = False,
        per_object: int = 0,
        seed: int = 0,
        text_field: str = "sent",
        label_background: str = "minimum",
        candidates_at: str = "image_size",
    ):
        if targets not in (None, "s1", "s2"):
            raise ValueError(f"targets must be None, 's1' or 's2', got {targets!r}")
        if targets is not None and s1 is None or targets == "s2" and s2 is None:
            raise ValueError(f"targets={targets!r} needs the S1 store (and S2 for 's2')")
        if text_field not in ("raw", "sent"):
            raise ValueError(f"text_field must be 'raw' or 'sent', got {text_field!r}")
        self.refer, self.split, self.size, self.text_field = refer, split, size, text_field
        self.targets, self.s1, self.s2 = targets, s1, s2
        self.cache: dict[int, dict] | None = {} if cache else None
        self.per_object, self.seed, self.epoch = per_object, seed, 0
        self.label_background, self.candidates_at = label_background, candidates_at

    def set_epoch(self, epoch: int) -> None:
        """Which expressions an epoch uses (with ``per_object``); the same on every rank."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.refer.split_image_ids(self.split))

    def __getitem__(self, key) -> dict:
        if isinstance(key, tuple):
            image_id, sent_ids = key
            item = self._item(int(image_id))
            keep = [i for i, s in enumerate(item["sent_ids"]) if s in set(sent_ids)]
            return _take_rows(item, keep)
        item = self._item(int(key))
        return self._subsample(item) if self.per_object > 0 else item

    def _item(self, image_id: int) -> dict:
        if self.cache is not None and image_id in self.cache:
            item = self.cache[image_id]
        else:
            item = self._load(int(image_id))
            if self.cache is not None:
                self.cache[image_id] = item
        return item

    def _subsample(self, item: dict) -> dict:
        """Keep ``per_object`` random expressions of each object (rows of every per-row field)."""
        ann = np.asarray(item["ann_ids"])
        keep = []
        for a in np.unique(ann):  # one draw per object: independent of batching and rank
            rows = np.flatnonzero(ann == a)
            keep += rows[_drawn(self.seed, self.epoch, int(a), len(rows), self.per_object)].tolist()
        return _take_rows(item, sorted(keep))

    def _load(self, image_id: int) -> dict:
        refs = self.refer.image_refs(image_id, self.split)
        item: dict = {
            "image_id": image_id,
            "image": _resize_image(self.refer.load_image(image_id), self.size),
            "sents": [getattr(s, self.text_field) for r in refs for s in r.sentences],
            "sent_ids": [s.sent_id for r in refs for s in r.sentences],
            "ann_ids": [r.ann_id for r in refs for _ in r.sentences],
        }
        if self.targets is None:
            return item
        size = (self.size, self.size)
        pool = self.s1.get(image_id)
        if self.targets == "s2":
            choice = self.s2.get(image_id)
            masks = {}
            for o in choice.objects:  # decode each chosen candidate once (objects may collide)
                if o.chosen is not None and o.chosen not in masks:
                    m = binary_target(pool.candidate(o.chosen).decode(), self.label_background)
                    masks[o.chosen] = resize_mask(m, size)
            target = np.full((len(item["ann_ids"]), *size), 255, dtype=np.uint8)  # 255: ignore
            for k, ann_id in enumerate(item["ann_ids"]):
                chosen = choice.object(ann_id).chosen
                if chosen is not None:
                    target[k] = masks[chosen]
            item["target"] = torch.from_numpy(target)
        else:
            c, elig = resized_candidates(pool, item["ann_ids"], size, self.candidates_at)
            item["candidates"] = torch.from_numpy(c.astype(np.uint8))
            item["eligible"] = torch.from_numpy(elig)
        return item


CANDIDATES_AT = ("image_size", "stored")


def resized_candidates(
    pool: Any, ann_ids: list[int], size: tuple[int, int], judged_at: str = "image_size"
) -> tuple[np.ndarray, np.ndarray]:
    """An image's S1 candidates at the training size, and which each row's object may take.

    Each candidate is resized with PIL nearest neighbour. The official loop resizes an object's
    label image the same way, splits it by value, and excludes a mask another object has taken by
    comparing the masks at that size. So with ``judged_at="image_size"``
    (``train.candidates_at``, official):

    * a candidate of which no pixel survives the resize is not a candidate at all;
    * candidates equal after the resize are one: the first (lowest id) takes the others'
      eligibility, so that a greedy that takes it excludes them all, as the official comparison
      does. Within one object's pool (disjoint regions) no two are equal, so each object keeps as
      many candidates as the official split gives.

    ``"stored"``: candidates are told apart at the stored resolution; one the resize loses stays
    eligible as an empty mask (what sssc did until 2026-12-07).

    Args:
        pool: the image's S1 record (as the store reads it: whole or painted).
        ann_ids: the object of each row.
        size: ``(height, width)``.
        judged_at: ``"image_size"`` | ``"stored"``.

    Returns:
        ``(candidates bool [C, H, W], eligible bool [len(ann_ids), C])``.
    """
    if judged_at not in CANDIDATES_AT:
        raise ValueError(f"judged_at must be one of {CANDIDATES_AT}, got {judged_at!r}")
    cands = [resize_mask(c.decode(), size) for c in pool.candidates]
    c = np.stack(cands) if cands else np.zeros((0, *size), dtype=bool)
    elig = np.zeros((len(ann_ids), len(cands)), dtype=bool)
    for k, ann_id in enumerate(ann_ids):
        elig[k, list(pool.object(ann_id).eligible)] = True
    if judged_at == "image_size":
        elig &= c.any(axis=(1, 2))[None, :]
        first: dict[bytes, int] = {}
        for i in np.flatnonzero(elig.any(axis=0)):
            j = first.setdefault(np.packbits(c[i]).tobytes(), int(i))
            if j != i:
                elig[:, j] |= elig[:, i]
                elig[:, i] = False
    return c, elig


def _drawn(seed: int, epoch: int, ann_id: int, n: int, per_object: int) -> np.ndarray:
    """Which of an object's ``n`` expressions an epoch uses: a bool ``[n]`` drawn from
    ``(seed, epoch, ann_id)`` (the same in both batching modes and on every rank)."""
    return np.random.default_rng([seed, epoch, ann_id]).permutation(n) < per_object


def _take_rows(item: dict, keep: list[int]) -> dict:
    out = dict(item)
    for k in ("sents", "sent_ids", "ann_ids"):
        out[k] = [item[k][i] for i in keep]
    idx = torch.tensor(keep, dtype=torch.int64)
    for k in ("target", "eligible"):
        if k in item:
            out[k] = item[k].index_select(0, idx)
    return out


def pack_samples(
    refer: Refer,
    split: str,
    budget: int,
    seed: int,
    epoch: int,
    per_object: int = 1,
    gpus: int = 4,
    images_per_load: int = 7,
    has_target: Callable[[int], bool] | None = None,
    order: str = "sssc",
    *,
    draw: str = "sssc",
    workers: int = 8,
    skip_first: bool = True,
) -> list[list[tuple[int, int]]]:
    """The official S+S+C batches (``data.batching: samples``): ``budget`` expressions each.

    The official training shuffles the split's images and deals them to its ``gpus`` GPUs
    (``DistributedSampler``: the permutation padded with its first images to a multiple of
    ``gpus``, GPU ``g`` taking every ``gpus``-th from the ``g``-th). Each GPU loads its images
    ``images_per_load`` at a time (the last, smaller load of an epoch is dropped), skips its
    first load of the epoch (``skip_first``: its loop is ``log_every(..., skip_first=True)``),
    unfolds each image into its objects' expressions in ref order (``per_object`` of each; 0:
    all; an object without a target is skipped), appends them to its buffer, and trains on the
    first ``budget / gpus`` whenever the buffer holds more than that; what is left at the end of
    the epoch is dropped. So an image's expressions stay together in one step unless a cut falls
    inside them.

    Step ``i`` is the ``i``-th cut of every GPU, GPU 0's first, for as many steps as the GPU with
    the fewest cuts has (data parallelism needs the same number on every GPU; the official code
    leaves this case undefined). :func:`rank_keys` gives each rank whole GPU cuts.

    Args:
        has_target: whether an object (ann id) has a target in this phase (the official code
            skips an object whose pseudo-label mask is empty); None: every object has one.
        order: the images' order (``data.samples_order``): ``sssc``, the ascending image ids
            permuted by a draw from ``(seed, epoch)``, each image's refs by ref id; or
            ``official``, the official loader's: REFER's image list
            (:meth:`~sssc.data.refer.Refer.refer_image_ids`) permuted as torch's
            ``DistributedSampler`` does after ``set_epoch(epoch)`` with its default seed 0
            (``torch.randperm`` from a generator seeded ``epoch``; ``seed`` unused), each image's
            refs in the refs file's order.
        draw: which expression of an object an epoch uses, with ``per_object`` 1
            (``data.samples_draw``): ``sssc``, drawn from ``(seed, epoch, object)`` as
            :class:`ImageSet` draws it; or ``official``, :func:`official_draws`.
        workers: with ``draw="official"``, the official loader's workers (its ``--workers``).
        skip_first: skip every GPU's first load of an epoch, as the official loop does.

    Returns:
        Per batch, its ``(image_id, sent_id)`` samples.
    """
    if budget % gpus:
        raise ValueError(f"pack_samples: budget {budget} is not a multiple of gpus {gpus}")
    if draw not in ("sssc", "official"):
        raise ValueError(f"pack_samples: draw must be 'sssc' or 'official', got {draw!r}")
    if draw == "official" and per_object not in (0, 1):
        raise ValueError(
            "pack_samples: draw='official' draws one expression per object (the official "
            f"--one-sentence) or takes all (0), not {per_object}"
        )
    per_gpu = budget // gpus
    if order == "official":
        ids, ref_order = refer.refer_image_ids(split), "file"
        gen = torch.Generator().manual_seed(epoch)  # DistributedSampler: seed 0 + epoch
        perm = torch.randperm(len(ids), generator=gen).tolist()
    elif order == "sssc":
        ids, ref_order = refer.split_image_ids(split), "ref_id"
        perm = np.random.default_rng([seed, epoch, 1]).permutation(len(ids)).tolist()
    else:
        raise ValueError(f"pack_samples: order must be 'sssc' or 'official', got {order!r}")
    pad = -len(perm) % gpus
    perm += (perm * (pad // max(1, len(perm)) + 1))[:pad]  # DistributedSampler's padding
    official = draw == "official" and per_object == 1  # with 0 every expression is taken
    cuts = []
    for g in range(gpus):
        mine = perm[g::gpus]
        loads = [
            [ids[i] for i in mine[k : k + images_per_load]]
            for k in range(0, len(mine) - images_per_load + 1, images_per_load)
        ]
        chosen = official_draws(refer, split, loads, workers) if official else None
        seq = []
        for k, load in enumerate(loads):
            if skip_first and k == 0:
                continue
            for pos, image_id in enumerate(load):
                for r in refer.image_refs(image_id, split, ref_order):
                    if has_target is not None and not has_target(r.ann_id):
                        continue
                    if chosen is not None:
                        sid = chosen[k][pos].get(r.ref_id)
                        keep = [s for s in r.sentences if s.sent_id == sid]
                    elif per_object:
                        use = _drawn(seed, epoch, r.ann_id, len(r.sentences), per_object)
                        keep = [s for s, u in zip(r.sentences, use, strict=True) if u]
                    else:
                        keep = list(r.sentences)
                    seq += [(image_id, s.sent_id) for s in keep]
        # The buffer is cut while it holds more than per_gpu: the last 1..per_gpu are left.
        cuts.append([seq[k : k + per_gpu] for k in range(0, len(seq) - per_gpu, per_gpu)])
    steps = min(len(c) for c in cuts)
    return [[x for c in cuts for x in c[i]] for i in range(steps)]


def official_draws(
    refer: Refer, split: str, loads: list[list[int]], workers: int
) -> list[list[dict[int, int | None]]]:
    """The expressions the official loader draws for one GPU's ``loads`` (its epoch's image
    loads, in order): per load, per image, ``ref_id -> sent_id`` (None where the draw falls on
    an expression sssc drops, an empty one; the object then has none there).

    The official training set draws ``np.random.choice(len(expressions))`` per ref of an image
    (REFER's ``imgToRefs``: file order, refs sssc skips included), in its loader's ``workers``
    worker processes. The loop calls ``torch.manual_seed(100)`` before iterating, so the
    loader's base seed is the same every epoch and on every GPU, and torch (1.9 and later) seeds
    each worker's NumPy from it and the worker's id (``_generate_state``, called here from the
    installed torch). Load ``k`` goes to worker ``k % workers``, which fetches its images in
    order; so each worker's draws follow from its seed and its own loads alone. Under a torch
    before 1.9 the workers inherit an unseeded NumPy state and the official draw is random.
    """
    states = _official_worker_states(workers, loader=0)
    out = []
    for k, load in enumerate(loads):
        rs, per_image = states[k % workers], []
        for image_id in load:
            chosen = {}
            for ref_id, sent_ids in refer.file_image_refs(image_id, split):
                if sent_ids:  # the official set cannot hold a ref without one
                    chosen[ref_id] = sent_ids[int(rs.choice(len(sent_ids)))]
            per_image.append(chosen)
        out.append(per_image)
    return out


def official_val_draw(refer: Refer, split: str, workers: int) -> dict[int, int | None]:
    """The expression each ref of ``split`` is scored on in the official training loop's
    per-epoch validation (``train.selection: best_gt`` with ``train.selection_val:
    official_draw``): ``ref_id -> sent_id`` (None where the draw falls on an expression sssc
    drops).

    The official validation set is LAVT's ``ReferDataset`` outside eval mode: one item per ref
    (REFER's ``getRefIds(split=...)``, file order), each drawing ``np.random.choice`` among its
    expressions, read by a ``DataLoader`` with a sequential sampler, batches of 1 and the run's
    ``--workers``, so item ``i`` goes to worker ``i % workers``. Its iterator is made after the
    epoch's training loader's, and nothing between them draws from torch's default CPU generator
    (the model, its dropout and stochastic depth run on the GPU), so after the loop's
    ``torch.manual_seed(100)`` its base seed is that generator's second draw: the same every epoch.
    """
    states = _official_worker_states(workers, loader=1)
    out: dict[int, int | None] = {}
    for i, (ref_id, sent_ids) in enumerate(refer.file_refs(split)):
        if sent_ids:  # the official set cannot hold a ref without one
            out[ref_id] = sent_ids[int(states[i % workers].choice(len(sent_ids)))]
    return out


def _official_worker_states(workers: int, loader: int) -> list[np.random.RandomState]:
    """Each worker's NumPy state in the official loop's ``loader``-th ``DataLoader`` iterator of
    an epoch (0: training, 1: validation): after ``torch.manual_seed(100)``, an iterator's base
    seed is the default generator's next int64 draw, and torch (1.9 and later) seeds each
    worker's NumPy from it and the worker's id (``_generate_state``, from the installed torch)."""
    if workers < 1:
        raise ValueError(f"the official draws need the loader's workers (>= 1), got {workers}")
    try:
        from torch.utils.data._utils.worker import _generate_state
    except ImportError as e:  # a private function of torch's DataLoader
        raise RuntimeError(
            f"the official draws need torch's DataLoader worker seeding ({e}); this torch "
            f"{torch.__version__} does not have it"
        ) from None
    g = torch.Generator().manual_seed(100)
    for _ in range(loader + 1):
        base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=g).item())
    return [np.random.RandomState(_generate_state(base_seed, w)) for w in range(workers)]


def rank_keys(batch: list, rank: int, world: int) -> list:
    """A rank's share of one step: whole images ``batch[rank::world]`` (``images`` batching),
    or (``samples``) the ``rank``-th of ``world`` equal, consecutive slices of its samples,
    grouped by image as ``(image_id, sent_ids)`` keys: with as many ranks as the official run's
    GPUs, each rank trains on one GPU's cut, as there."""
    if not batch or not isinstance(batch[0], tuple):
        return batch[rank::world]
    n = len(batch)
    mine = batch[rank * n // world : (rank + 1) * n // world]
    by_image: dict[int, list[int]] = {}
    for image_id, sent_id in mine:
        by_image.setdefault(image_id, []).append(sent_id)
    return [(i, tuple(s)) for i, s in by_image.items()]


def collate(items: list[dict], tokenize: Callable[[list[str]], tuple]) -> dict:
    """Batch whole images: one row per expression; candidates concatenated over the images.

    Args:
        items: :class:`ImageSet` items.
        tokenize: ``list[str] -> (input_ids [B, L], attention_mask [B, L])``.

    Returns:
        ``images`` float ``[B, 3, S, S]``, ``input_ids`` and ``attention_mask`` ``[B, L]``,
        ``ref_object`` int64 ``[B]`` (ann ids), ``ref_group`` int64 ``[B]`` (image index in the
        batch), ``sent_ids`` int64 ``[B]``, ``image_ids`` int64 ``[I]``; with S2 targets
        ``target`` int64 ``[B, S, S]`` (255: ignore); with S1 targets ``candidates`` uint8
        ``[C, S, S]``, ``cand_group`` int64 ``[C]`` and ``eligible`` bool ``[B, C]``.
    """
    counts = torch.tensor([len(it["sents"]) for it in items], dtype=torch.int64)
    ref_group = torch.repeat_interleave(torch.arange(len(items)), counts)
    images = _normalize(torch.stack([it["image"] for it in items]))
    sents = [s for it in items for s in it["sents"]]
    input_ids, attention_mask = tokenize(sents)
    batch = {
        "images": images.index_select(0, ref_group),
        "input_ids": torch.as_tensor(input_ids),
        "attention_mask": torch.as_tensor(attention_mask),
        "ref_object": torch.tensor([a for it in items for a in it["ann_ids"]], dtype=torch.int64),
        "ref_group": ref_group,
        "sent_ids": torch.tensor([s for it in items for s in it["sent_ids"]], dtype=torch.int64),
        "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.int64),
    }
    if "target" in items[0]:
        batch["target"] = torch.cat([it["target"] for it in items]).to(torch.int64)
    if "candidates" in items[0]:
        ncand = torch.tensor([it["candidates"].shape[0] for it in items], dtype=torch.int64)
        batch["candidates"] = torch.cat([it["candidates"] for it in items])
        batch["cand_group"] = torch.repeat_interleave(torch.arange(len(items)), ncand)
        batch["eligible"] = torch.block_diag(
            *[it["eligible"].to(torch.uint8) for it in items]
        ).bool()
    return batch
