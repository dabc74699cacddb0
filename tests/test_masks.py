"""RLE helpers against pycocotools called directly and against numpy on the decoded masks."""

import json

import numpy as np
import pytest
from pycocotools import mask as cocomask

from sssc.data import masks
from sssc.kernels.testing import blob_masks


@pytest.mark.parametrize(
    "shape", [(1, 1), (7, 5), (96, 96), (33, 80)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_encode_decode_roundtrip_and_area(shape):
    rng = np.random.default_rng(0)
    for p in (0.0, 0.3, 1.0):
        m = rng.random(shape) < p
        rle = masks.encode(m)
        assert isinstance(rle["counts"], str)
        json.dumps(rle)  # must go into JSON unchanged
        assert rle["size"] == list(shape)
        np.testing.assert_array_equal(masks.decode(rle), m)
        assert masks.area(rle) == int(m.sum())


def test_bbox_is_tight_box():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert masks.bbox(masks.encode(m)) == [3.0, 2.0, 6.0, 3.0]


def test_iou_matches_numpy_and_pycocotools():
    a = blob_masks(4, 40, 50, seed=1)
    b = blob_masks(3, 40, 50, seed=2)
    out = masks.iou([masks.encode(m) for m in a], [masks.encode(m) for m in b])
    ref = np.array([[(x & y).sum() / (x | y).sum() for y in b] for x in a], dtype=np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    assert masks.iou([], [masks.encode(b[0])]).shape == (0, 1)


def test_polygons_to_mask_matches_pycocotools_and_ignores_degenerate():
    poly = [[2.0, 2.0, 20.0, 3.0, 11.0, 17.0]]
    m = masks.polygons_to_mask(poly + [[1.0, 1.0, 2.0, 2.0]], 24, 30)
    ref = cocomask.decode(cocomask.merge(cocomask.frPyObjects(poly, 24, 30))).astype(bool)
    np.testing.assert_array_equal(m, ref)
    assert m.sum() > 50
    assert not masks.polygons_to_mask([[1.0, 1.0, 2.0, 2.0]], 5, 5).any()


def test_segmentation_to_mask_all_forms():
    m = np.zeros((9, 8), bool)
    m[1:4, 2:7] = True
    compressed = masks.encode(m)
    uncompressed = {"size": [9, 8], "counts": _runs(m)}
    np.testing.assert_array_equal(masks.segmentation_to_mask(compressed, 9, 8), m)
    np.testing.assert_array_equal(masks.segmentation_to_mask(uncompressed, 9, 8), m)


def _runs(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE: alternating run lengths (zeros first) in column-major order."""
    flat = m.flatten(order="F").astype(np.uint8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    return runs
