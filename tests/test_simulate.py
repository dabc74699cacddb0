"""Simulated Stage 1/2 producers: structure against the GT, determinism, and error statistics."""

import types

import numpy as np
import pytest
from scipy import ndimage
from tiny_data import TENTHS

from sssc.data import masks
from sssc.data.refer import Refer
from sssc.data.synthetic import generate
from sssc.segment.simulated import SimulatedSegmenter, jitter_mask
from sssc.select.simulated import SimulatedSelector
from sssc.store import ImageRecord


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=3, num_images=300, image_size=64, **TENTHS)
    return Refer(root, "synthetic", "synthetic", root / "synthetic" / "images")


_S1 = types.SimpleNamespace(labels_producer={"name": "x"})  # an S1 store, as read


def s1cfg(p_drop=0.0, jitter_px=0.0, p_false_positive=0.0, seed=0):
    return types.SimpleNamespace(
        p_drop=p_drop, jitter_px=jitter_px, p_false_positive=p_false_positive, seed=seed
    )


def s2cfg(p_correct=0.6, wrong_choice="largest", seed=0):
    return types.SimpleNamespace(p_correct=p_correct, wrong_choice=wrong_choice, seed=seed)


SPLITS = ("train", "val", "test")


def _all_anns(refer, image_id):
    return sorted(a for a, ann in refer._anns.items() if int(ann["image_id"]) == image_id)


def test_s1_without_errors_is_every_instance_of_the_referred_categories(refer):
    seg = SimulatedSegmenter(refer, s1cfg(), SPLITS)
    for image_id in refer.split_image_ids("val"):
        rec = ImageRecord._from_json(seg(image_id))
        cats = {r.category_id for r in refer.image_refs(image_id)}
        expect = sorted(
            (a for a in _all_anns(refer, image_id) if refer.annotation(a)["category_id"] in cats),
            key=lambda a: (refer.annotation(a)["category_id"], a),  # pool order: by category
        )
        assert len(rec.candidates) == len(expect)
        for c, a in zip(rec.candidates, expect, strict=True):
            np.testing.assert_array_equal(c.decode(), refer.gt_mask(a))
            assert c.label == refer.categories[refer.annotation(a)["category_id"]]
        for o in rec.objects:
            label = refer.categories[refer.annotation(o.ann_id)["category_id"]]
            assert [i for i, c in enumerate(rec.candidates) if c.label == label] == list(o.eligible)
            own = refer.gt_mask(o.ann_id)
            assert any((rec.candidate(i).decode() == own).all() for i in o.eligible)


def test_s1_drop_and_false_positive_rates(refer):
    ids = refer.split_image_ids("train")
    n_inst = 0
    seg0 = SimulatedSegmenter(refer, s1cfg(), SPLITS)
    n_inst = sum(len(seg0(i)["candidates"]) for i in ids)
    seg = SimulatedSegmenter(refer, s1cfg(p_drop=0.3, p_false_positive=0.5), SPLITS)
    for i in ids:
        seg(i)
    sd_drop = np.sqrt(0.3 * 0.7 / n_inst)
    assert abs(seg.counts["dropped"] / n_inst - 0.3) < 4 * sd_drop
    assert abs(seg.counts["false_positive"] / len(ids) - 0.5) < 4 * np.sqrt(0.25 / len(ids))
    seg_all = SimulatedSegmenter(refer, s1cfg(p_drop=1.0), SPLITS)
    assert all(not seg_all(i)["candidates"] for i in ids[:20])
    assert seg_all.counts["no_candidates"] == 20
    assert seg_all.counts["no_eligible"] >= 20


def test_s1_is_deterministic_per_seed(refer):
    cfg = s1cfg(p_drop=0.2, jitter_px=2.0, p_false_positive=0.3)
    ids = refer.split_image_ids("val")
    a = [SimulatedSegmenter(refer, cfg, SPLITS)(i) for i in ids]
    b = [SimulatedSegmenter(refer, cfg, SPLITS)(i) for i in reversed(ids)][::-1]
    assert a == b  # order-independent too
    c = [SimulatedSegmenter(refer, s1cfg(0.2, 2.0, 0.3, seed=1), SPLITS)(i) for i in ids]
    assert a != c


@pytest.mark.parametrize(
    "dy,dx,grow", [(0, 0, 1), (1, -2, 0), (-1, 1, -1), (2, 0, 2)], ids=lambda v: str(v)
)
def test_jitter_matches_scipy(dy, dx, grow):
    m = np.zeros((20, 24), bool)
    m[5:14, 6:17] = True
    m[8, 3:6] = True
    ref = ndimage.shift(m.astype(np.uint8), (dy, dx), order=0, mode="constant", cval=0) > 0
    cross = ndimage.generate_binary_structure(2, 1)
    if grow > 0:
        ref = ndimage.binary_dilation(ref, cross, iterations=grow)
    elif grow < 0:
        ref = ndimage.binary_erosion(ref, cross, iterations=-grow, border_value=0)
    np.testing.assert_array_equal(jitter_mask(m, dy, dx, grow), ref)


def _s1_records(refer, cfg):
    seg = SimulatedSegmenter(refer, cfg, SPLITS)
    return [ImageRecord._from_json(seg(i)) for i in sorted(refer.images) if refer.image_refs(i)]


def _best(refer, rec, obj):
    gt = masks.encode(refer.gt_mask(obj.ann_id))
    ious = masks.iou([rec.candidate(i).rle for i in obj.eligible], [gt])[:, 0]
    return obj.eligible[int(np.argmax(ious))]


@pytest.mark.parametrize("mode", ["largest", "central", "mixed"])
def test_s2_correct_rate_and_systematic_mistakes(refer, mode):
    recs = _s1_records(refer, s1cfg(p_drop=0.1, jitter_px=1.0, p_false_positive=0.3))
    sel = SimulatedSelector(refer, s2cfg(0.6, mode), _S1)
    n = correct = 0
    for rec in recs:
        out = sel.select(rec)
        for obj, o in zip(rec.objects, out["objects"], strict=True):
            if not obj.eligible:
                assert o["chosen"] is None
                continue
            assert o["candidates"] == list(obj.eligible)
            assert o["chosen"] == o["candidates"][int(np.argmax(o["scores"]))]
            best = _best(refer, rec, obj)
            if len(obj.eligible) < 2:
                assert o["chosen"] == best
                continue
            n += 1
            if o["chosen"] == best:
                correct += 1
                continue
            others = [i for i in obj.eligible if i != best]
            largest = max(others, key=lambda i: (rec.candidate(i).area, -i))
            h, w = rec.height, rec.width

            def d(i, rec=rec, h=h, w=w):
                x, y, bw, bh = rec.candidate(i).box
                return ((x + bw / 2 - w / 2) ** 2 + (y + bh / 2 - h / 2) ** 2, i)

            central = min(others, key=d)
            allowed = {"largest": {largest}, "central": {central}, "mixed": {largest, central}}
            assert o["chosen"] in allowed[mode]
    assert n > 150
    assert abs(correct / n - 0.6) < 4 * np.sqrt(0.24 / n)
    assert sel.counts["correct"] + sel.counts["wrong"] == n


def test_s2_wrong_choices_collide_within_an_image(refer):
    recs = _s1_records(refer, s1cfg())
    sel = SimulatedSelector(refer, s2cfg(p_correct=0.0), _S1)
    collisions = 0
    for rec in recs:
        chosen = [o["chosen"] for o in sel.select(rec)["objects"] if o["chosen"] is not None]
        collisions += len(chosen) - len(set(chosen))
        for obj, o in zip(rec.objects, sel.select(rec)["objects"], strict=True):
            if len(obj.eligible) >= 2:
                assert o["chosen"] != _best(refer, rec, obj)
    assert collisions > 0
    perfect = SimulatedSelector(refer, s2cfg(p_correct=1.0), _S1)
    for rec in recs[:50]:
        for obj, o in zip(rec.objects, perfect.select(rec)["objects"], strict=True):
            if obj.eligible:
                assert o["chosen"] == _best(refer, rec, obj)
