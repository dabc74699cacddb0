"""Metrics against hand-computed values, pycocotools IoU, and LAVT's conventions."""

import numpy as np
import pytest
from pycocotools import mask as cocomask

from sssc.eval import metrics
from sssc.eval.metrics import MetricAccumulator
from sssc.kernels.testing import blob_masks


def _m(rows):
    return np.array([[c == "#" for c in r] for r in rows])


def test_hand_computed_tiny_masks():
    gt = _m(["##..", "##..", "....", "...."])
    pred_a = _m(["###.", "....", "....", "...."])  # I=2, U=5 -> 0.4
    pred_b = _m(["##..", "##..", "#...", "...."])  # I=4, U=5 -> 0.8
    pred_c = _m(["....", "....", "....", "...#"])  # I=0, U=5 -> 0.0
    acc = MetricAccumulator()
    for p in (pred_a, pred_b, pred_c):
        acc.add(p, gt, resolution="original")
    r = acc.result()
    assert r["mIoU"] == pytest.approx(100 * (0.4 + 0.8 + 0.0) / 3)
    assert r["oIoU"] == pytest.approx(100 * 6 / 15)
    assert r["prec@0.5"] == pytest.approx(100 / 3)
    assert r["prec@0.8"] == pytest.approx(100 / 3)  # 0.8 >= 0.8: LAVT counts ">="
    assert r["prec@0.9"] == 0.0
    # Peaks (first True pixel): a (0,0) in GT, b (0,0) in GT, c (3,3) outside.
    assert r["PointM"] == pytest.approx(200 / 3)
    assert r["num_expressions"] == 3


def test_threshold_equality_counts_like_lavt():
    acc = MetricAccumulator()
    acc.add_iu(1, 2)  # exactly 0.5
    acc.add_iu(7, 10)  # exactly 0.7
    r = acc.result()
    assert r["prec@0.5"] == 100.0 and r["prec@0.7"] == 50.0 and r["prec@0.8"] == 0.0


def test_empty_union_scores_zero_and_adds_nothing():
    acc = MetricAccumulator()
    z = np.zeros((3, 3), bool)
    assert acc.add(z, z, resolution="original") == 0.0
    acc.add_iu(3, 4)
    r = acc.result()
    assert r["mIoU"] == pytest.approx(100 * 0.75 / 2)
    assert r["oIoU"] == pytest.approx(75.0)


def test_iou_matches_pycocotools_at_original_resolution():
    preds = blob_masks(6, 37, 53, seed=3)
    gts = blob_masks(6, 37, 53, seed=4)
    acc = MetricAccumulator()
    ours = [acc.add(p, g, resolution="original") for p, g in zip(preds, gts, strict=True)]
    ref = [
        cocomask.iou(
            [cocomask.encode(np.asfortranarray(p.astype(np.uint8)))],
            [cocomask.encode(np.asfortranarray(g.astype(np.uint8)))],
            [0],
        )[0][0]
        for p, g in zip(preds, gts, strict=True)
    ]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    cum_i = sum(int((p & g).sum()) for p, g in zip(preds, gts, strict=True))
    cum_u = sum(int((p | g).sum()) for p, g in zip(preds, gts, strict=True))
    assert acc.result()["oIoU"] == pytest.approx(100 * cum_i / cum_u)


@pytest.mark.parametrize("src", [(96, 96), (7, 11), (300, 200)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_gt_resize_is_pil_style_nearest(src):
    m = blob_masks(1, *src, seed=5)[0]
    out = metrics.resize_mask(m, (480, 480))
    # Independent formula: output pixel i samples input floor((i + 0.5) * in / out).
    ri = np.minimum(((np.arange(480) + 0.5) * src[0] / 480).astype(int), src[0] - 1)
    ci = np.minimum(((np.arange(480) + 0.5) * src[1] / 480).astype(int), src[1] - 1)
    np.testing.assert_array_equal(out, m[np.ix_(ri, ci)])


def test_probability_prediction_bilinear_then_threshold():
    gt = np.zeros((4, 4), bool)
    gt[:, :2] = True
    prob = np.array([[0.9, 0.1], [0.9, 0.1]], dtype=np.float32)  # upsampled x2: left half > 0.5
    acc = MetricAccumulator()
    assert acc.add(prob, gt, resolution="original") == 1.0
    # Hand-computed bilinear (align_corners=False) row: 0.9, 0.7, 0.3, 0.1 -> argmax at col 0.
    assert metrics.peak(prob, 4, 4) == (0, 0)
    p = np.zeros((2, 2), np.float32)
    p[1, 1] = 0.8
    assert metrics.peak(p, 4, 4) == (3, 3)


def test_point_it_uses_pixel_centres_in_box():
    gt = np.zeros((10, 10), bool)
    gt[2:4, 2:4] = True
    pred = np.zeros((10, 10), bool)
    pred[5, 5] = True  # peak (5, 5): centre (5.5, 5.5)
    acc = MetricAccumulator()
    acc.add(pred, gt, gt_box=[2, 2, 3.5, 3.5], resolution="original")  # box to 5.5: inside
    acc.add(pred, gt, gt_box=[2, 2, 3.4, 3.4], resolution="original")  # box to 5.4: outside
    acc.add(pred, gt, resolution="original")  # default: the mask's tight box [2, 2, 2, 2]
    r = acc.result()
    assert r["PointIt"] == pytest.approx(100 / 3) and r["PointM"] == 0.0


def test_eval_resolution_480_vs_original():
    gt = blob_masks(1, 96, 80, seed=7)[0]
    pred = blob_masks(1, 96, 80, seed=8)[0]
    a, b = MetricAccumulator(), MetricAccumulator()
    a.add(pred, gt, resolution=480)
    b.add(pred, gt, resolution="original")
    big_p = metrics.resize_mask(pred, (480, 480))
    big_g = metrics.resize_mask(gt, (480, 480))
    assert a.ious[0] == pytest.approx((big_p & big_g).sum() / (big_p | big_g).sum())
    assert b.ious[0] == pytest.approx((pred & gt).sum() / (pred | gt).sum())
    with pytest.raises(ValueError, match="original"):
        metrics.eval_size("full", 3, 3)


def _bilinear_align_corners(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """float64 bilinear with align_corners=True: output i samples input i * (n - 1) / (m - 1)."""
    ys = np.arange(h) * (a.shape[0] - 1) / (h - 1)
    xs = np.arange(w) * (a.shape[1] - 1) / (w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, a.shape[0] - 1), np.minimum(x0 + 1, a.shape[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


def test_lavt_upsampling_thresholds_interpolated_logits():
    from sssc.eval.metrics import to_eval_mask

    d = np.array([[6.0, -1.0, -1.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, 2.5]], np.float32)
    want = _bilinear_align_corners(d.astype(np.float64), 7, 7) > 0
    np.testing.assert_array_equal(to_eval_mask(d, (7, 7), "lavt"), want)
    # The same model output as probabilities, upsampled as sssc does, gives another mask.
    prob = (1 / (1 + np.exp(-d))).astype(np.float32)
    assert (to_eval_mask(prob, (7, 7), "sssc") != want).any()


@pytest.mark.parametrize(
    "pixel, tris, sssc",
    [((3, 5), True, True), ((3, 6), False, True), ((1, 2), True, False), ((4, 4), False, False)],
)
def test_point_it_rules(pixel, tris, sssc):
    """TRIS truncates the box to ints and compares inclusive pixel indices; sssc tests the
    pixel centre against the float box. Box x=2.7, y=1.2, w=3.9, h=2.5."""
    gt = np.zeros((8, 9), bool)
    gt[2, 3] = True
    pred = np.zeros((8, 9), bool)
    pred[pixel] = True
    box = [2.7, 1.2, 3.9, 2.5]
    for rule, want in (("tris", tris), ("sssc", sssc)):
        acc = MetricAccumulator(point_rule=rule)
        acc.add(pred, gt, box, resolution="original")
        assert acc.point_it == int(want), rule


def test_subsets_are_scored_from_the_same_predictions():
    """``evaluate_masks(subsets=...)``: each named set of expressions scored on its own, as if
    it were the split, from the predictions the whole split was scored with."""
    from types import SimpleNamespace

    gts = blob_masks(8, 29, 41, seed=5)
    preds = blob_masks(24, 29, 41, seed=6)
    refs = [
        SimpleNamespace(
            ann_id=a, ref_id=a, sentences=[SimpleNamespace(sent_id=3 * a + k) for k in range(3)]
        )
        for a in range(8)
    ]
    refer = SimpleNamespace(
        split_refs=lambda split: refs,
        gt_mask=lambda a: gts[a],
        annotation=lambda a: {},
    )
    subset = [1, 3, 4, 8, 13, 14, 20, 23]
    m = metrics.evaluate_masks(
        refer, "val", dict(enumerate(preds)), "original", subsets={"s": subset}
    )
    i = [int((preds[s] & gts[s // 3]).sum()) for s in subset]
    u = [int((preds[s] | gts[s // 3]).sum()) for s in subset]
    sub = m["subsets"]["s"]
    assert sub["num_expressions"] == len(subset) and m["num_expressions"] == 24
    assert sub["mIoU"] == pytest.approx(100 * np.mean(np.divide(i, u)), abs=1e-9)
    assert sub["oIoU"] == pytest.approx(100 * sum(i) / sum(u), abs=1e-9)
    assert sub["prec@0.5"] == pytest.approx(100 * np.mean(np.divide(i, u) >= 0.5), abs=1e-9)
    assert sub["oIoU"] != pytest.approx(m["oIoU"])
    assert "subsets" not in metrics.evaluate_masks(refer, "val", dict(enumerate(preds)), "original")
