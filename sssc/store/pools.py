"""How Stages 2 and 3 see an S1 pool: Stage 1's whole masks, or the official code's painted ones.

The S1 store keeps every candidate whole (:mod:`sssc.store.store`). The official S+S+C code keeps
each object's pool as one label image, and Stages 2 and 3 read the candidates back from it
(``select.candidates: painted``; the README's deviation table, rows 33 and 34):

1. ``segment_from_image_and_nouns`` draws the object's candidates into a zero map in detection
   order, the k-th as value k: a later candidate covers an earlier one where they overlap.
2. ``save_binary_object_mask`` writes the map with ``plt.imsave(cmap=gray)``, which scales the
   map's minimum to black and its maximum to white.
3. A reader splits the image by colour and drops one colour as background:

   * Stage 2 and the S+S evaluation (``convert("L")``, value 0): the black one, i.e. the map's
     minimum (``background="minimum"``). Where the candidates cover the whole image, the lowest
     label present is lost; a single candidate covering it leaves the object nothing.
   * Stage 3 (``convert("P")``, index 0): Pillow turns an RGBA image into a palette image by
     quantizing, and numbers the colours by how many pixels have them (ties: the darker first).
     So the background is the map's *largest* region (``background="largest"``,
     ``train.label_background``): where a candidate is larger than the rest of the image, it is
     dropped and the true background becomes a candidate. (Measured with Pillow 9.5.0, 10.0.1,
     10.4.0, 11.0.0 and 13.0.0.)

So an object's candidates are the visible parts of its map, and one fully covered vanishes. Stage
3's matching keeps a candidate from two objects only where their masks are equal pixel for pixel:
two objects with the same eligible candidates share theirs, others do not.

:func:`paint_pools` rebuilds an S1 record that way: per object, its eligible candidates in id
order (the detector's box order) painted, the background region dropped; the distinct regions of
all objects become the record's candidates (ordered by the candidate they come from, a background
region last, then by first object), each with its own box and its source's score and label
(``"background"`` and 0 for a background region).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..data import masks as _masks

if TYPE_CHECKING:
    from .store import ImageRecord

__all__ = ["BACKGROUNDS", "POOLS", "binary_target", "paint_pools", "painted_nonempty"]

POOLS = ("whole", "painted")
BACKGROUNDS = ("minimum", "largest")


def paint_pools(rec: ImageRecord, background: str = "minimum") -> ImageRecord:
    """The S1 record ``rec`` with painted pools, read back with ``background`` dropped.

    Returns:
        A new record: candidates ``0..C'-1`` (the distinct regions), each object's ``eligible``
        its regions in label order.
    """
    from .store import ImageRecord

    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    cands = rec.candidates
    decoded: dict[int, np.ndarray] = {}
    maps: dict[tuple[int, ...], list[tuple[dict, int | None]]] = {}  # eligible -> regions
    found: dict[str, tuple[tuple[int, int], dict, int | None]] = {}  # RLE -> rank, RLE, source
    per_object: list[tuple[int, list[str]]] = []
    for k, o in enumerate(rec.objects):
        order = tuple(sorted(o.eligible))
        if order not in maps:  # objects with the same eligible candidates share one map
            for c in order:
                if c not in decoded:
                    decoded[c] = rec.candidate(c).decode()
            maps[order] = _regions([decoded[c] for c in order], order, background)
        for rle, src in maps[order]:
            found.setdefault(rle["counts"], ((len(cands) if src is None else src, k), rle, src))
        per_object.append((o.ann_id, [rle["counts"] for rle, _ in maps[order]]))
    ranked = sorted(found, key=lambda key: found[key][0])
    new_id = {key: i for i, key in enumerate(ranked)}
    raw_cands = []
    for i, key in enumerate(ranked):
        _, rle, src = found[key]
        score, name = (0.0, "background") if src is None else (cands[src].score, cands[src].label)
        raw_cands.append(
            {"id": i, "rle": rle, "box": _masks.bbox(rle), "score": score, "label": name}
        )
    raw_objects = [
        {"ann_id": a, "eligible": [new_id[key] for key in keys]} for a, keys in per_object
    ]
    return ImageRecord(rec.image_id, rec.height, rec.width, raw_cands, raw_objects)


def painted_nonempty(rec: ImageRecord) -> set[int]:
    """The objects (ann ids) whose painted pool keeps a candidate, from the candidates' areas
    alone: what :func:`paint_pools` would say, with either background, without decoding a mask.

    A pool reads back empty exactly when its label map has a single colour: when every eligible
    candidate is empty (the map is all zeros), or when one covers the whole image and every
    candidate painted after it is empty (the map is all that one label). Any other map has two
    colours at least, and either reader drops one.
    """
    full, out = rec.height * rec.width, set()
    areas: dict[int, int] = {}
    for o in rec.objects:
        for c in o.eligible:
            if c not in areas:
                areas[c] = rec.candidate(c).area
        a = [areas[c] for c in sorted(o.eligible)]  # paint order
        covering = [i for i, x in enumerate(a) if x == full]
        if any(a[covering[-1] + 1 :] if covering else a):  # a mask painted over the last cover
            out.add(o.ann_id)
    return out


def _regions(
    masks: list[np.ndarray], ids: tuple[int, ...], background: str
) -> list[tuple[dict, int | None]]:
    """One label map's regions as RLEs, darkest first, with the candidate each comes from
    (``None``: the map's zeros), the background region left out."""
    if not masks:
        return []
    # Fortran order: each region comes out in the order pycocotools encodes, without a copy.
    label = np.zeros(masks[0].shape, dtype=np.uint8 if len(masks) < 256 else np.int32, order="F")
    for v, m in enumerate(masks, 1):
        label[m] = v
    counts = np.bincount(label.ravel(order="K"), minlength=len(masks) + 1)
    values = np.flatnonzero(counts)  # the colours present, darkest first
    drop = 0 if background == "minimum" else int(np.argmax(counts[values]))  # ties: the darker
    return [(_masks.encode(label == v), ids[v - 1] if v else None) for v in np.delete(values, drop)]


def binary_target(mask: np.ndarray, background: str = "minimum") -> np.ndarray:
    """An S2 mask as Stage 3 reads it back from its binary label image: the mask itself, or with
    ``largest`` the smaller of the mask and its complement (ties: the mask), since the larger
    region's colour is numbered 0, the background."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    if background == "largest" and 2 * np.count_nonzero(mask) > mask.size:
        return ~mask
    return mask
