"""The REFER reader on a tiny RefCOCO-format dataset that the tests write themselves."""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import struct

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from tiny_data import TENTHS

from sssc.data import DatasetError, Refer, load_refs_pickle, pack_images
from sssc.data.synthetic import generate

# Image id: (height, width). Odd sizes on purpose (column-major RLE, non-square images).
SIZES = {1: (40, 60), 2: (33, 47), 3: (30, 45), 4: (64, 48)}


def _rect(x0, y0, x1, y1):
    """A COCO polygon for the pixel block rows y0..y1-1, cols x0..x1-1 (COCO's pixel corners)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _block(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[max(y0, 0) : y1, max(x0, 0) : x1] = True
    return m


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE, written without pycocotools: column-major runs, 0s first."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _blob(h, w):
    """A non-rectangular mask with a hole, for the RLE annotations."""
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = (yy - h / 2) ** 2 + (xx - w / 2) ** 2
    return (r2 < (min(h, w) / 2.5) ** 2) & (r2 > 9)


TRIANGLE = [5.0, 50.0, 40.0, 8.5, 44.0, 60.0]  # image 4, 64x48


def _sent(sid, text):
    return {"sent_id": sid, "sent": text, "raw": text.capitalize(), "tokens": text.split()}


def write_fixture(root, refs_edit=None, anns_edit=None, skip_images=(), pickle_bytes=None):
    """Write ``<root>/refcoco/{instances.json, refs(unc).p}`` and ``<root>/images/*.png``.

    Returns the expected GT masks by annotation id.
    """
    ds = root / "refcoco"
    img_dir = root / "images"
    ds.mkdir(parents=True)
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for iid, (h, w) in SIZES.items():
        name = f"COCO_train2014_{iid:012d}.png"
        images.append({"id": iid, "file_name": name, "height": h, "width": w})
        if iid not in skip_images:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_dir / name)
    h2, w2 = SIZES[2]
    blob = _blob(h2, w2)
    rle = mask_utils.encode(np.asfortranarray(blob.astype(np.uint8)))
    expected = {
        101: _block(40, 60, 10, 5, 30, 20),
        102: _block(40, 60, 2, 25, 12, 35) | _block(40, 60, 40, 30, 55, 38),
        103: blob,
        104: ~blob,
        105: _block(30, 45, 0, 0, 45, 30),
        106: None,  # the triangle: checked against OpenCV
    }
    anns = [
        {"id": 101, "image_id": 1, "category_id": 1, "segmentation": [_rect(10, 5, 30, 20)]},
        {
            "id": 102,
            "image_id": 1,
            "category_id": 18,
            "segmentation": [_rect(2, 25, 12, 35), _rect(40, 30, 55, 38)],
        },
        {
            "id": 103,
            "image_id": 2,
            "category_id": 18,
            "segmentation": {"size": [h2, w2], "counts": rle["counts"].decode("ascii")},
        },
        {"id": 104, "image_id": 2, "category_id": 1, "segmentation": _uncompressed_rle(~blob)},
        {"id": 105, "image_id": 3, "category_id": 1, "segmentation": [_rect(0, 0, 45, 30)]},
        {"id": 106, "image_id": 4, "category_id": 18, "segmentation": [TRIANGLE]},
    ]
    if anns_edit:
        anns_edit(anns)
    for a in anns:
        a.setdefault("iscrowd", 0)
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    (ds / "instances.json").write_text(json.dumps(coco))
    refs = [
        {
            "ref_id": 0,
            "ann_id": 101,
            "image_id": 1,
            "split": "train",
            "category_id": 1,
            "sentences": [_sent(0, "man on the left"), _sent(1, "left guy")],
        },
        {
            "ref_id": 1,
            "ann_id": 102,
            "image_id": 1,
            "split": "train",
            "category_id": 18,
            "sentences": [_sent(2, "dog"), _sent(3, "brown dog"), _sent(4, "dog in front")],
        },
        {
            "ref_id": 2,
            "ann_id": 103,
            "image_id": 2,
            "split": "val",
            "category_id": 18,
            "sentences": [_sent(5, "round dog")],
        },
        {
            "ref_id": 3,
            "ann_id": 104,
            "image_id": 2,
            "split": "val",
            "category_id": 1,
            "sentences": [_sent(6, "everything else"), _sent(7, "the rest")],
        },
        {
            "ref_id": 4,
            "ann_id": 105,
            "image_id": 3,
            "split": "testA",
            "category_id": 1,
            "sentences": [_sent(8, "whole picture")],
        },
        {
            "ref_id": 5,
            "ann_id": 106,
            "image_id": 4,
            "split": "testB",
            "category_id": 18,
            "sentences": [_sent(9, "triangle dog")],
        },
    ]
    if refs_edit:
        refs_edit(refs)
    data = pickle_bytes if pickle_bytes is not None else pickle.dumps(refs, protocol=2)
    (ds / "refs(unc).p").write_bytes(data)
    return expected


def _open(root):
    return Refer(root, "refcoco", "unc", root / "images")


@pytest.fixture()
def fixture_refer(tmp_path):
    expected = write_fixture(tmp_path)
    return _open(tmp_path), expected


# -- reading ---------------------------------------------------------------------------------------


def test_splits_refs_images(fixture_refer):
    refer, _ = fixture_refer
    assert refer.splits() == ["train", "val", "testA", "testB"]
    assert [r.ref_id for r in refer.split_refs("train")] == [0, 1]
    assert refer.split_image_ids("val") == [2]
    assert [r.ann_id for r in refer.image_refs(1)] == [101, 102]
    assert refer.image_refs(1, split="val") == []
    assert refer.categories == {1: "person", 18: "dog"}
    ref = refer.refs[0]
    assert (ref.ann_id, ref.image_id, ref.split, ref.category_id) == (101, 1, "train", 1)
    s = ref.sentences[1]
    assert (s.sent_id, s.sent, s.raw, s.tokens) == (1, "left guy", "Left guy", ("left", "guy"))
    assert not refer.warnings
    with pytest.raises(DatasetError, match="no refs in split 'test'"):
        refer.split_refs("test")


def test_load_image(fixture_refer, tmp_path):
    refer, _ = fixture_refer
    img = refer.load_image(2)
    ref = np.asarray(Image.open(tmp_path / "images" / "COCO_train2014_000000000002.png"))
    assert img.dtype == np.uint8 and img.shape == (33, 47, 3)
    np.testing.assert_array_equal(img, ref)


@pytest.mark.parametrize(
    "ann_id",
    [101, 102, 103, 104, 105],
    ids=["rectangle", "two-polygons", "rle", "uncompressed-rle", "full-image"],
)
def test_gt_mask_matches_hand_made(fixture_refer, ann_id):
    refer, expected = fixture_refer
    m = refer.gt_mask(ann_id)
    info = refer.images[refer.annotation(ann_id)["image_id"]]
    assert m.dtype == bool and m.shape == (info.height, info.width)
    np.testing.assert_array_equal(m, expected[ann_id])


def _inside_triangle(tri, h, w):
    """Pixels whose centre (x + 0.5, y + 0.5) lies inside the triangle: half-plane tests."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    p = np.asarray(tri, dtype=np.float64).reshape(3, 2)
    sides = [
        (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0])
        for a, b in ((p[0], p[1]), (p[1], p[2]), (p[2], p[0]))
    ]
    return np.logical_and.reduce([v >= 0 for v in sides]) | np.logical_and.reduce(
        [v <= 0 for v in sides]
    )


def test_gt_mask_triangle_matches_pixel_centre_rasterisation(fixture_refer):
    """A slanted polygon: pycocotools may differ from the exact centre test only on the edge."""
    refer, _ = fixture_refer
    m = refer.gt_mask(106)
    ref = _inside_triangle(TRIANGLE, 64, 48)
    assert (m ^ ref).sum() <= 0.01 * ref.sum()
    k = np.ones((3, 3), np.uint8)
    r8 = ref.astype(np.uint8)
    band = cv2.dilate(r8, k).astype(bool) & ~cv2.erode(r8, k).astype(bool)
    assert not ((m ^ ref) & ~band).any()  # every disagreement is a boundary pixel


# -- bad input -------------------------------------------------------------------------------------


def test_missing_image_is_an_error_naming_the_file(tmp_path):
    write_fixture(tmp_path, skip_images=(3,))
    with pytest.raises(DatasetError) as e:
        _open(tmp_path)
    assert "COCO_train2014_000000000003.png" in str(e.value) and "1 of 4" in str(e.value)


def test_unreferenced_missing_image_is_fine(tmp_path):
    write_fixture(tmp_path, skip_images=(4,), refs_edit=lambda refs: refs.pop(5))
    assert _open(tmp_path).splits() == ["train", "val", "testA"]


def test_ref_without_sentences_is_skipped_and_counted(tmp_path):
    def edit(refs):
        refs[2]["sentences"] = []
        del refs[4]["sentences"]

    write_fixture(tmp_path, refs_edit=edit)
    refer = _open(tmp_path)
    assert sorted(refer.refs) == [0, 1, 3, 5]
    assert refer.warnings["ref_without_sentences"] == 2
    assert refer.warning_examples["ref_without_sentences"] == ["ref 2", "ref 4"]
    assert refer.splits() == ["train", "val", "testB"]


@pytest.mark.parametrize(
    "segm, why",
    [
        ([], "no polygon"),
        ([[1, 2, 3, 4]], "no polygon"),  # two points enclose nothing
        ([_rect(50, 40, 70, 60)], "no pixel inside"),  # entirely outside the 45x30 image
        ({"size": [30, 45], "counts": [1350]}, "no pixel inside"),  # an all-zero RLE
    ],
    ids=["no-polygons", "two-points", "outside-image", "empty-rle"],
)
def test_empty_mask_is_counted_and_kept_or_skipped(tmp_path, segm, why):
    """The official REFER keeps every ref, and its evaluation scores one whose GT is empty
    (README row 43): ``empty_gt: keep`` (the default) keeps it with an all-background GT;
    ``skip`` leaves it out."""

    def edit(anns):
        anns[4]["segmentation"] = segm

    write_fixture(tmp_path, anns_edit=edit)
    refer = _open(tmp_path)
    assert refer.empty_gt == "keep" and sorted(refer.refs) == [0, 1, 2, 3, 4, 5]
    gt = refer.gt_mask(105)
    assert gt.shape == (30, 45) and not gt.any()
    assert not refer.skipped("empty_mask") and refer.skipped("empty_sentence")
    skip = Refer(tmp_path, "refcoco", "unc", tmp_path / "images", empty_gt="skip")
    assert 4 not in skip.refs and sorted(skip.refs) == [0, 1, 2, 3, 5]
    assert skip.skipped("empty_mask") and not skip.skipped("polygon_clipped")
    for r in (refer, skip):
        assert r.warnings["empty_mask"] == 1
        assert "annotation 105" in r.warning_examples["empty_mask"][0]
        assert why in r.warning_examples["empty_mask"][0]
    with pytest.raises(ValueError, match="empty_gt"):
        Refer(tmp_path, "refcoco", "unc", tmp_path / "images", empty_gt="drop")


def test_polygons_covering_each_other_give_an_empty_gt(tmp_path):
    """REFER's ``getMask`` sums an annotation's polygons and LAVT keeps the pixels equal to 1: a
    polygon given twice covers every pixel twice, so the official GT is empty (pycocotools
    restated here: the sum of the decoded polygons, ``== 1``)."""
    poly = _rect(10, 5, 30, 20)

    def edit(anns):
        anns[0]["segmentation"] = [poly, list(poly)]

    write_fixture(tmp_path, anns_edit=edit)
    refer = _open(tmp_path)
    want = mask_utils.decode(mask_utils.frPyObjects([poly, poly], 40, 60)).sum(axis=2) == 1
    assert not want.any() and not refer.gt_mask(101).any() and 0 in refer.refs
    assert "cover each other" in refer.warning_examples["empty_mask"][0]
    union = Refer(tmp_path, "refcoco", "unc", tmp_path / "images", polygon_overlap="union")
    assert union.gt_mask(101).sum() == mask_utils.area(mask_utils.frPyObjects([poly], 40, 60))[0]
    assert not union.warnings["empty_mask"]


def test_an_empty_gt_scores_zero_with_the_prediction_in_the_union(tmp_path):
    """LAVT's ``evaluate``: ``I = |P & G|``, ``U = |P | G|``, IoU 0 when ``U == 0``; ``cum_I``
    and ``cum_U`` summed over every expression, the empty GT's included."""
    from sssc.eval.metrics import evaluate_masks

    def edit(anns):
        anns[4]["segmentation"] = []

    write_fixture(tmp_path, anns_edit=edit)
    refer = _open(tmp_path)
    split = refer.refs[4].split
    refs = refer.split_refs(split)
    assert any(r.ref_id == 4 for r in refs)
    rng = np.random.default_rng(3)
    preds, ious, cum_i, cum_u = {}, [], 0, 0
    for r in refs:
        gt = _as_eval(refer.gt_mask(r.ann_id))
        for s in r.sentences:
            p = rng.random((480, 480)) < 0.3
            preds[s.sent_id] = p
            i, u = int((p & gt).sum()), int((p | gt).sum())
            ious.append(i / u if u else 0.0)
            cum_i, cum_u = cum_i + i, cum_u + u
    m = evaluate_masks(refer, split, preds, resolution=480)
    assert m["num_expressions"] == len(ious)
    assert m["mIoU"] == pytest.approx(100 * np.mean(ious), abs=1e-12)
    assert m["oIoU"] == pytest.approx(100 * cum_i / cum_u, abs=1e-12)
    kept = [s.sent_id for s in refer.refs[4].sentences]
    assert all(not (preds[k] & _as_eval(refer.gt_mask(105))).any() for k in kept)


def _as_eval(gt):
    """The GT at 480x480 as LAVT's ``T.Resize`` gives it (PIL nearest on a uint8 image)."""
    img = Image.fromarray(gt.astype(np.uint8) * 255).resize((480, 480), Image.NEAREST)
    return np.asarray(img) > 0


def test_partly_outside_polygon_is_clipped_and_counted(tmp_path):
    def edit(anns):
        anns[4]["segmentation"] = [_rect(-5, 20, 10, 40)]  # image 3 is 30x45

    write_fixture(tmp_path, anns_edit=edit)
    refer = _open(tmp_path)
    assert refer.warnings == {"polygon_clipped": 1}
    np.testing.assert_array_equal(refer.gt_mask(105), _block(30, 45, 0, 20, 10, 30))


@pytest.mark.parametrize(
    "segm, match",
    [
        ([[1, 2, 3, 4, 5]], "odd number"),
        ([[1, 2, "a", 4, 5, 6]], "not a list of numbers"),
        ([[1, 2, float("nan"), 4, 5, 6]], "non-finite"),
        ({"size": [10, 10], "counts": "PPP"}, "RLE size"),
        ("car", "neither polygons nor RLE"),
    ],
    ids=["odd-coords", "non-numeric", "nan", "rle-wrong-size", "string"],
)
def test_malformed_segmentation_is_an_error_naming_the_annotation(tmp_path, segm, match):
    def edit(anns):
        anns[4]["segmentation"] = segm

    write_fixture(tmp_path, anns_edit=edit)
    with pytest.raises(DatasetError, match=match) as e:
        _open(tmp_path)
    assert "annotation 105" in str(e.value) and "instances.json" in str(e.value)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("ann_id", 999, "ref 3 points at annotation 999"),
        ("image_id", 77, "ref 3 points at image 77"),
        ("image_id", 1, "ref 3 says image 1 but its annotation 104 belongs to image 2"),
    ],
    ids=["unknown-ann", "unknown-image", "ann-of-another-image"],
)
def test_ref_pointing_at_unknown_ids_is_an_error_naming_the_ref(tmp_path, field, value, match):
    def edit(refs):
        refs[3][field] = value

    write_fixture(tmp_path, refs_edit=edit)
    with pytest.raises(DatasetError, match=match) as e:
        _open(tmp_path)
    assert "refs(unc).p" in str(e.value)


def test_malformed_ref_and_sentence(tmp_path):
    write_fixture(tmp_path, refs_edit=lambda refs: refs[1].pop("split"))
    with pytest.raises(DatasetError, match=r"ref 1 is malformed"):
        _open(tmp_path)


def test_malformed_sentence(tmp_path):
    write_fixture(tmp_path, refs_edit=lambda refs: refs[1]["sentences"][1].pop("sent"))
    with pytest.raises(DatasetError, match=r"ref 1, sentences\[1\] is malformed"):
        _open(tmp_path)


def test_missing_files_are_named(tmp_path):
    write_fixture(tmp_path)
    with pytest.raises(DatasetError, match=r"refs\(umd\)\.p: refs file not found.*refs\(unc\)\.p"):
        Refer(tmp_path, "refcoco", "umd", tmp_path / "images")
    with pytest.raises(DatasetError, match="refcocog: dataset folder not found"):
        Refer(tmp_path, "refcocog", "umd", tmp_path / "images")
    with pytest.raises(DatasetError, match="coco/train2014: image folder not found"):
        Refer(tmp_path, "refcoco", "unc", tmp_path / "coco" / "train2014")
    (tmp_path / "refcoco" / "instances.json").write_text("{not json")
    with pytest.raises(DatasetError, match="instances.json: not a readable COCO JSON"):
        _open(tmp_path)


# -- the restricted unpickler ----------------------------------------------------------------------


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_restricted_unpickler_refuses_malicious_pickle(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 0, "sentences": [_Exploit(target)]}], protocol=2)
    # The payload really does call os.system when loaded by a plain unpickler.
    assert any(op.name in ("GLOBAL", "STACK_GLOBAL") for op, _, _ in pickletools.genops(payload))
    assert b"system" in payload
    write_fixture(tmp_path, pickle_bytes=payload)
    path = tmp_path / "refcoco" / "refs(unc).p"
    with pytest.raises(DatasetError) as e:
        load_refs_pickle(path)
    assert str(path) in str(e.value) and "system" in str(e.value)
    with pytest.raises(DatasetError, match="refuses"):
        _open(tmp_path)
    assert not target.exists()


@pytest.mark.parametrize(
    "obj",
    [{1, 2}, [{"ref_id": 0, "x": __import__("collections").OrderedDict()}]],
    ids=["set", "ordered-dict"],
)
def test_restricted_unpickler_refuses_any_class(tmp_path, obj):
    p = tmp_path / "refs.p"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DatasetError, match="refuses"):
        load_refs_pickle(p)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "not a readable refs pickle"),
        (b"\x80\x02]q\x00(K\x01", "not a readable"),
        (pickle.dumps({"a": 1}), "expected a list of ref dicts"),
    ],
    ids=["empty", "truncated", "not-a-list"],
)
def test_bad_pickles_name_the_file(tmp_path, data, match):
    p = tmp_path / "refs(unc).p"
    p.write_bytes(data)
    with pytest.raises(DatasetError, match=match) as e:
        load_refs_pickle(p)
    assert str(p) in str(e.value)


def _py2_pickle(obj) -> bytes:
    """Protocol 2 as Python 2 wrote it: ``str`` as BINSTRING bytes (latin-1), not unicode."""
    out = bytearray(b"\x80\x02")

    def emit(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, str):
            b = o.encode("latin1")
            out.extend(
                b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b
            )
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        else:
            raise TypeError(o)

    emit(obj)
    out.extend(b".")
    return bytes(out)


def test_python2_pickle_with_latin1_bytes(tmp_path):
    refs = [
        {
            "ref_id": 0,
            "ann_id": 101,
            "image_id": 1,
            "split": "train",
            "category_id": 1,
            "sentences": [
                {
                    "sent_id": 0,
                    "sent": "caf\xe9 chair",
                    "raw": "Caf\xe9 chair",
                    "tokens": ["caf\xe9", "chair"],
                }
            ],
        }
    ]
    write_fixture(tmp_path, pickle_bytes=_py2_pickle(refs))
    assert load_refs_pickle(tmp_path / "refcoco" / "refs(unc).p") == refs
    refer = _open(tmp_path)
    assert refer.refs[0].sentences[0].tokens == ("caf\xe9", "chair")


# -- pack_images -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_refer(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    folder = generate(root, seed=3, num_images=80, **TENTHS)
    return Refer(root, "synthetic", "synthetic", folder / "images")


def _n_expr(refer, split, image_id):
    return sum(len(r.sentences) for r in refer.image_refs(image_id, split))


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("budget", [1, 5, 9, 60, 10_000])
def test_pack_images(synth_refer, budget, shuffle):
    refer, split = synth_refer, "train"
    batches = pack_images(refer, split, budget=budget, shuffle=shuffle, seed=7)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == refer.split_image_ids(split)  # every image exactly once
    for b in batches:
        assert b, "no empty batches"
        total = sum(_n_expr(refer, split, i) for i in b)
        assert total <= budget or len(b) == 1  # only a lone image may exceed the budget
    # Greedy packing: the next image did not fit in the previous batch.
    for a, b in zip(batches[:-1], batches[1:], strict=True):
        assert sum(_n_expr(refer, split, i) for i in a + b[:1]) > budget
    if not shuffle:
        assert flat == sorted(flat)
    assert batches == pack_images(refer, split, budget=budget, shuffle=shuffle, seed=7)


def test_pack_images_seed_changes_order(synth_refer):
    a = pack_images(synth_refer, "train", budget=60, shuffle=True, seed=0)
    b = pack_images(synth_refer, "train", budget=60, shuffle=True, seed=1)
    assert [i for x in a for i in x] != [i for x in b for i in x]


def test_pack_images_whole_images_on_fixture(fixture_refer):
    refer, _ = fixture_refer
    # Image 1 has 5 expressions: with a budget of 3 it is a batch of its own.
    assert pack_images(refer, "train", budget=3) == [[1]]
    assert pack_images(refer, "val", budget=3) == [[2]]
    with pytest.raises(ValueError, match="budget"):
        pack_images(refer, "val", budget=0)


def test_overlapping_polygons_follow_refer_or_union(tmp_path):
    """REFER's getMask sums an annotation's polygons and LAVT keeps the pixels equal to 1: the
    overlap of two polygons is background. ``union`` keeps it."""

    def edit(anns):
        anns[0]["segmentation"] = [_rect(10, 5, 30, 20), _rect(20, 10, 40, 25)]

    write_fixture(tmp_path, anns_edit=edit)
    a, b = _block(40, 60, 10, 5, 30, 20), _block(40, 60, 20, 10, 40, 25)
    refer = Refer(tmp_path, "refcoco", "unc", tmp_path / "images")
    assert refer.polygon_overlap == "refer"
    np.testing.assert_array_equal(refer.gt_mask(101), a ^ b)
    union = Refer(tmp_path, "refcoco", "unc", tmp_path / "images", polygon_overlap="union")
    np.testing.assert_array_equal(union.gt_mask(101), a | b)
    # Disjoint polygons (annotation 102) are the same either way.
    np.testing.assert_array_equal(refer.gt_mask(102), union.gt_mask(102))


def test_training_text_is_the_sent_field_unless_set(fixture_refer):
    """S+S+C's ``UnsupervisedReferDataset`` (training) and ``ReferDataset`` (evaluation) tokenize
    ``el['sent']``; LAVT-RIS's own dataset reads ``el['raw']`` (README row 18)."""
    from sssc.config import DataConfig
    from sssc.correct.data import ImageSet

    refer, _ = fixture_refer
    image_id = refer.split_image_ids("train")[0]
    refs = refer.image_refs(image_id, "train")
    default = ImageSet(refer, "train", 16)[image_id]["sents"]
    raw = ImageSet(refer, "train", 16, text_field="raw")[image_id]["sents"]
    assert DataConfig().text_field == "sent"
    assert default == [s.sent for r in refs for s in r.sentences]
    assert raw == [s.raw for r in refs for s in r.sentences] and raw != default
