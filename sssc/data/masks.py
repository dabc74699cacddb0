"""Binary masks as COCO run-length encodings (RLE), over pycocotools.

An RLE here is the dict pycocotools uses, ``{"size": [H, W], "counts": str}``, with ``counts`` as
a ``str`` (pycocotools hands out ``bytes``) so that it can go into JSON unchanged. Every helper
accepts ``counts`` as ``str`` or ``bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as _cocomask

__all__ = [
    "area",
    "bbox",
    "decode",
    "encode",
    "iou",
    "polygons_to_mask",
    "resize_mask",
    "segmentation_to_mask",
]


def _to_coco(rle: dict) -> dict:
    """An RLE whose ``counts`` is ``bytes``, as pycocotools' C functions want it."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def encode(mask: np.ndarray) -> dict:
    """Encode one binary mask.

    Args:
        mask: ``[H, W]``, bool or 0/1 of any integer dtype.

    Returns:
        ``{"size": [H, W], "counts": str}``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode: expected a [H, W] mask, got shape {m.shape}")
    rle = _cocomask.encode(np.asfortranarray(m.astype(np.uint8, copy=False)))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    """Decode one RLE to a bool mask ``[H, W]``."""
    return _cocomask.decode(_to_coco(rle)).astype(bool)


def area(rle: dict) -> int:
    """Number of foreground pixels of one RLE (no decoding)."""
    return int(_cocomask.area(_to_coco(rle)))


def bbox(rle: dict) -> list[float]:
    """Tight COCO box ``[x, y, w, h]`` of one RLE (zeros for an empty mask)."""
    return [float(v) for v in _cocomask.toBbox(_to_coco(rle))]


def iou(rles_a: Sequence[dict], rles_b: Sequence[dict]) -> np.ndarray:
    """IoU of every pair of two RLE lists, computed on the RLEs (no decoding).

    Args:
        rles_a: ``A`` RLEs of one size ``[H, W]``.
        rles_b: ``B`` RLEs of the same size.

    Returns:
        float64 ``[A, B]``. A pair whose union is empty has IoU 0 (pycocotools' convention).
    """
    a, b = [_to_coco(r) for r in rles_a], [_to_coco(r) for r in rles_b]
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    out = _cocomask.iou(a, b, [0] * len(b))
    return np.asarray(out, dtype=np.float64).reshape(len(a), len(b))


def polygons_to_mask(segm: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterize COCO polygons (a list of ``[x0, y0, x1, y1, ...]``) to a bool mask ``[H, W]``.

    Polygons with fewer than three points are ignored (pycocotools would reject them); a caller that
    must not accept an empty result checks ``mask.any()``.
    """
    polys = [list(map(float, p)) for p in segm if len(p) >= 6]
    if not polys:
        return np.zeros((height, width), dtype=bool)
    rles = _cocomask.frPyObjects(polys, height, width)
    return _cocomask.decode(_cocomask.merge(rles)).astype(bool)


def segmentation_to_mask(segm, height: int, width: int) -> np.ndarray:
    """Any COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to a bool ``[H, W]``."""
    if isinstance(segm, list):
        return polygons_to_mask(segm, height, width)
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return _cocomask.decode(_cocomask.frPyObjects(segm, height, width)).astype(bool)
    return decode(segm)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask with PIL (what LAVT applies to the GT target).

    Args:
        mask: bool ``[H, W]``.
        size: ``(H', W')``.

    Returns:
        bool ``[H', W']``.
    """
    m = np.asarray(mask, dtype=bool)
    if m.shape == tuple(size):
        return m
    from PIL import Image

    im = Image.fromarray(m.astype(np.uint8) * 255, mode="L")
    return np.asarray(im.resize((int(size[1]), int(size[0])), Image.NEAREST)) > 127
