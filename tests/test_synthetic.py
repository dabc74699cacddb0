"""The synthetic dataset: deterministic, REFER-format, and every expression true and unique."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pytest
from tiny_data import TENTHS, synth_sets

from sssc.config import load_config
from sssc.data import Refer
from sssc.data.refer import DatasetError
from sssc.data.synthetic import COLORS, SHAPES, generate, mask_polygons

N_IMAGES = 60


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    folder = generate(root, seed=0, num_images=N_IMAGES, **TENTHS)
    return root, folder, Refer(root, "synthetic", "synthetic", folder / "images")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, synth):
    _, folder, _ = synth
    a = _digest(generate(tmp_path / "a", seed=0, num_images=N_IMAGES, **TENTHS))
    assert a == _digest(folder)
    b = _digest(generate(tmp_path / "b", seed=1, num_images=N_IMAGES, **TENTHS))
    assert a.keys() == b.keys()  # same file names ...
    assert a["instances.json"] != b["instances.json"]  # ... other content
    assert a["refs(synthetic).p"] != b["refs(synthetic).p"]
    assert sum(a[k] != b[k] for k in a if k.startswith("images/")) > N_IMAGES // 2


def test_layout_and_round_trip(synth):
    _, folder, refer = synth
    assert (folder / "instances.json").is_file() and (folder / "refs(synthetic).p").is_file()
    assert len(list((folder / "images").glob("*.png"))) == N_IMAGES == len(refer.images)
    assert refer.splits() == ["train", "val", "test"]
    assert set(refer.categories.values()) == set(SHAPES)
    assert not refer.warnings
    split_images = [set(refer.split_image_ids(s)) for s in refer.splits()]
    assert sum(len(s) for s in split_images) == len(set().union(*split_images))  # by image
    for ref in refer.refs.values():
        assert len(ref.sentences) == 3
        assert len({s.sent for s in ref.sentences}) == 3
        ann = refer.annotation(ref.ann_id)
        assert ann["image_id"] == ref.image_id and ann["category_id"] == ref.category_id
    # Several instances of one category per image: that is what makes the task hard.
    per_image = {}
    for a in refer._anns.values():
        per_image.setdefault(a["image_id"], []).append(a["category_id"])
    repeated = sum(max(np.bincount(c)) >= 2 for c in per_image.values())
    assert repeated >= 0.8 * N_IMAGES


def test_masks_are_the_visible_coloured_pixels(synth):
    """Each colour's pixels in the image are exactly the union of that colour's GT masks."""
    _, _, refer = synth
    by_image = {}
    for a in refer._anns.values():
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id, anns in by_image.items():
        img = refer.load_image(image_id)
        union = np.zeros(img.shape[:2], bool)
        for name, rgb in COLORS.items():
            painted = (img == np.asarray(rgb, np.uint8)).all(-1)
            masks = [refer.gt_mask(a["id"]) for a in anns if a["color"] == name]
            expected = np.logical_or.reduce(masks) if masks else np.zeros_like(painted)
            np.testing.assert_array_equal(painted, expected)
        for a in anns:
            m = refer.gt_mask(a["id"])
            assert m.sum() == a["area"] > 0
            assert not (union & m).any()  # visible parts do not overlap
            union |= m
            ys, xs = np.nonzero(m)
            x, y, w, h = a["bbox"]
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)


class _MiniRefer:
    """What REFER's ``refer.py`` and LAVT's loader do with these files, written from the format.

    REFER indexes ``instances.json`` and ``refs(<split_by>).p`` and, in ``getMask``, takes a
    segmentation whose first element is a list as polygons (``frPyObjects`` with the image's
    height and width), decodes it and sums the polygons' masks into uint8; LAVT's dataset then
    keeps the pixels equal to 1 as the target.
    """

    def __init__(self, folder):
        import json
        import pickle

        coco = json.loads((folder / "instances.json").read_text())
        self.imgs = {im["id"]: im for im in coco["images"]}
        self.anns = {a["id"]: a for a in coco["annotations"]}
        with open(folder / "refs(synthetic).p", "rb") as f:
            self.refs = pickle.load(f)
        self.ref_to_ann = {r["ref_id"]: self.anns[r["ann_id"]] for r in self.refs}

    def get_mask(self, ref):
        from pycocotools import mask as coco_mask

        ann = self.ref_to_ann[ref["ref_id"]]
        img = self.imgs[ref["image_id"]]
        segm = ann["segmentation"]
        if type(segm[0]) is list:  # polygons, as REFER tests it (a dict segm raises KeyError: 0)
            rle = coco_mask.frPyObjects(segm, img["height"], img["width"])
        else:
            rle = segm
        m = coco_mask.decode(rle)
        m = np.sum(m, axis=2).astype(np.uint8)
        return {"mask": m, "area": int(sum(coco_mask.area(rle)))}

    def lavt_target(self, ref):
        m = self.get_mask(ref)["mask"]
        target = np.zeros(m.shape, np.uint8)
        target[m == 1] = 1
        return target


def test_refer_style_readers_read_the_polygons(synth):
    """REFER's getMask and LAVT's target, as written from the format, give sssc's GT masks."""
    _, folder, refer = synth
    mini = _MiniRefer(folder)
    assert len(mini.refs) == len(refer.refs) > 0
    for ref in mini.refs:
        ann = mini.ref_to_ann[ref["ref_id"]]
        assert isinstance(ann["segmentation"], list) and ann["segmentation"]
        got = mini.get_mask(ref)
        assert got["mask"].max() == 1  # no pixel covered twice: overlap rules do not matter
        assert got["area"] == ann["area"] == int(got["mask"].sum())
        np.testing.assert_array_equal(
            mini.lavt_target(ref).astype(bool), refer.gt_mask(ref["ann_id"])
        )


@pytest.mark.parametrize("seed", range(6))
def test_mask_polygons_rasterise_to_the_mask(seed):
    """Random masks with holes, several pieces and pixels on the border, through pycocotools."""
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    mask = rng.random((h, w)) < [0.0, 0.05, 0.5, 0.95, 1.0, 0.3][seed]
    if seed == 5:
        mask[:] = False
        mask[h // 4 :, : w // 2 + 1] = True
        mask[h // 2 : h // 2 + 1, w // 4 : w // 4 + 1] = False  # a one-pixel hole
    polys = mask_polygons(mask)
    if not mask.any():
        assert polys == []
        return
    assert all(len(p) == 8 for p in polys)
    count = coco_mask.decode(coco_mask.frPyObjects(polys, h, w)).sum(axis=2)
    np.testing.assert_array_equal(count, mask.astype(count.dtype))
    # Rectangles merge down identical rows: a solid block is one polygon.
    if mask.all():
        assert polys == [[0, 0, w, 0, w, h, 0, h]]


# -- an independent checker of the expressions -----------------------------------------------------

_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_ATTR = re.compile(rf"^the ({_COLOR}) ({_SHAPE})$")
_SUPER = re.compile(rf"^the (largest|smallest|leftmost|rightmost|topmost|bottommost) ({_SHAPE})$")
_REL = re.compile(
    rf"^the ({_SHAPE}) (left of|right of|above|below) the (?:({_COLOR}) )?({_SHAPE})$"
)


def _centre(a):
    x, y, w, h = a["bbox"]
    return x + w / 2, y + h / 2


def _resolve(expr: str, anns: list[dict]) -> list[int]:
    """Ids of the annotations the expression describes, by the rules in the module docstring."""
    if m := _ATTR.match(expr):
        color, shape = m.groups()
        return [a["id"] for a in anns if a["shape"] == shape and a["color"] == color]
    if m := _SUPER.match(expr):
        word, shape = m.groups()
        group = [a for a in anns if a["shape"] == shape]
        key = {
            "largest": lambda a: a["area"],
            "smallest": lambda a: -a["area"],
            "leftmost": lambda a: -_centre(a)[0],
            "rightmost": lambda a: _centre(a)[0],
            "topmost": lambda a: -_centre(a)[1],
            "bottommost": lambda a: _centre(a)[1],
        }[word]
        best = max(key(a) for a in group)
        return [a["id"] for a in group if key(a) == best]  # a tie would give two ids
    if m := _REL.match(expr):
        shape, rel, lcolor, lshape = m.groups()
        landmarks = [
            a for a in anns if a["shape"] == lshape and (lcolor is None or a["color"] == lcolor)
        ]
        if len(landmarks) != 1:
            return []  # an ambiguous landmark makes the expression invalid
        lx, ly = _centre(landmarks[0])
        test = {
            "left of": lambda c: c[0] < lx,
            "right of": lambda c: c[0] > lx,
            "above": lambda c: c[1] < ly,
            "below": lambda c: c[1] > ly,
        }[rel]
        return [a["id"] for a in anns if a["shape"] == shape and test(_centre(a))]
    raise AssertionError(f"expression not of any template: {expr!r}")


def test_every_expression_is_true_and_unique(synth):
    _, _, refer = synth
    by_image = {}
    for a in refer._anns.values():
        by_image.setdefault(a["image_id"], []).append(a)
    kinds = {"attr": 0, "super": 0, "rel": 0}
    for ref in refer.refs.values():
        for s in ref.sentences:
            assert _resolve(s.sent, by_image[ref.image_id]) == [ref.ann_id], s.sent
            kinds[
                "attr" if _ATTR.match(s.sent) else "super" if _SUPER.match(s.sent) else "rel"
            ] += 1
    assert min(kinds.values()) > 0.1 * sum(kinds.values())  # all three kinds are used


def test_checker_rejects_false_and_ambiguous_expressions():
    """The checker itself can say no: hand-made scenes with known answers."""

    def ann(i, shape, color, x, y, size):
        return {
            "id": i,
            "shape": shape,
            "color": color,
            "bbox": [x, y, size, size],
            "area": size * size,
        }

    scene = [
        ann(1, "circle", "red", 0, 0, 10),
        ann(2, "circle", "red", 50, 0, 20),
        ann(3, "square", "blue", 30, 40, 10),
        ann(4, "square", "blue", 70, 40, 10),
        ann(5, "triangle", "green", 40, 0, 10),
    ]
    assert _resolve("the red circle", scene) == [1, 2]  # ambiguous
    assert _resolve("the green circle", scene) == []  # false
    assert _resolve("the largest circle", scene) == [2]
    assert _resolve("the smallest square", scene) == [3, 4]  # a tie
    assert _resolve("the circle left of the triangle", scene) == [1]
    assert _resolve("the circle left of the square", scene) == []  # two squares
    assert _resolve("the square right of the green triangle", scene) == [4]
    with pytest.raises(AssertionError, match="not of any template"):
        _resolve("the big circle", scene)


# -- generation from a config ----------------------------------------------------------------------


def test_from_config_generates_once_and_never_replaces(tmp_path, capsys):
    overrides = [f"data.root={tmp_path}"]  # data.image_dir "": <root>/synthetic/images
    cfg = load_config(None, [*overrides, *synth_sets(12)])
    refer = Refer.from_config(cfg.data)
    assert len(refer.images) == 12 and "generating" in capsys.readouterr().err
    stamp = (tmp_path / "synthetic" / "instances.json").stat().st_mtime_ns
    assert len(Refer.from_config(cfg.data).images) == 12
    assert capsys.readouterr().err == ""  # reused, not regenerated
    # Other settings: refused, naming both values; the folder (maybe another run's) stays.
    cfg15 = load_config(None, [*overrides, *synth_sets(15)])
    with pytest.raises(DatasetError, match="num_images: 12 there, 15 now"):
        Refer.from_config(cfg15.data)
    assert (tmp_path / "synthetic" / "instances.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]  # no temporary left
    # The explicit command replaces sssc's own folder, atomically.
    generate(tmp_path, num_images=15, **TENTHS)
    assert len(Refer.from_config(cfg15.data).images) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


@pytest.mark.parametrize("marker", [None, '{"generator": "someone else"}', "not json"])
def test_a_folder_sssc_did_not_generate_is_refused_and_kept(tmp_path, marker):
    mine = tmp_path / "synthetic"
    mine.mkdir()
    (mine / "important.txt").write_text("keep me")
    if marker is not None:
        (mine / "generator.json").write_text(marker)
    cfg = load_config(None, [f"data.root={tmp_path}", *synth_sets(4)])
    with pytest.raises(DatasetError, match="not generated by sssc"):
        Refer.from_config(cfg.data)
    with pytest.raises(ValueError, match="not generated by sssc"):
        generate(tmp_path, num_images=4, **TENTHS)
    assert (mine / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_a_killed_generators_temporary_is_swept_and_a_live_ones_kept(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".synthetic.tmp-{dead.pid}-abc"
    live = tmp_path / f".synthetic.tmp-{os.getpid()}-xyz"  # a generator still at work
    other = tmp_path / ".synthetic.tmp-notapid-x"
    for d in (stale, live, other):
        d.mkdir()
    generate(tmp_path, num_images=4, **TENTHS)
    assert not stale.exists() and live.exists() and other.exists()


def test_a_run_that_generated_meanwhile_wins(tmp_path, monkeypatch):
    """Two runs generate at once: the second finds the first's folder and keeps it."""
    from sssc.data import synthetic

    real = synthetic._write

    calls = []

    def racing(folder, *a):
        real(folder, *a)
        calls.append(folder)
        if len(calls) == 1:
            generate(tmp_path, num_images=4, **TENTHS)  # "the other run" finishes first

    monkeypatch.setattr(synthetic, "_write", racing)
    synthetic.generate(tmp_path, num_images=4, replace=False, **TENTHS)
    assert len(calls) == 2 and not calls[0].exists()  # ours discarded
    assert (tmp_path / "synthetic" / "generator.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_generate_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        generate(tmp_path, num_images=0, **TENTHS)
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, image_size=8)


def test_split_sizes_are_set_and_the_images_stay_the_same(tmp_path, synth):
    """val_images/test_images relabel splits; with num_images fixed the images are the same."""
    _, folder, refer = synth
    other = generate(tmp_path, seed=0, num_images=N_IMAGES, val_images=12, test_images=5)
    r2 = Refer(tmp_path, "synthetic", "synthetic", other / "images")
    # Counted from the refs: an image without a referred object is in no count.
    images = {s: {r.image_id for r in r2.split_refs(s)} for s in r2.splits()}
    assert 6 < len(images["val"]) <= 12 and 2 < len(images["test"]) <= 5
    assert len(set().union(*images.values())) == sum(len(v) for v in images.values())
    # Same pixels, objects and expressions; only the split labels moved.
    a, b = _digest(folder), _digest(other)
    assert {k for k in a if a[k] != b[k]} == {
        "instances.json",  # its "info" holds the settings
        "refs(synthetic).p",
        "generator.json",
    }
    before = {r.ref_id: (r.ann_id, r.split) for r in refer.refs.values()}
    after = {r.ref_id: (r.ann_id, r.split) for r in r2.refs.values()}
    assert before.keys() == after.keys()
    assert all(before[k][0] == after[k][0] for k in before)
    assert any(before[k][1] != after[k][1] for k in before)
    stored = (other / "generator.json").read_text()
    assert '"val_images": 12' in stored and '"test_images": 5' in stored
    assert "val_images" not in (folder / "generator.json").read_text()  # the tenths: as before


def test_split_sizes_count_images_exactly():
    from sssc.data.synthetic import _image_splits, split_sizes

    assert split_sizes(1100, 200, 100) == (200, 100)
    assert split_sizes(1000) == (100, 100) and split_sizes(5) == (1, 1)
    names = _image_splits(1100, np.random.default_rng(0), 200, 100)
    assert (names.count("val"), names.count("test"), names.count("train")) == (200, 100, 800)
    with pytest.raises(ValueError, match="no train image"):
        split_sizes(10, 6, 4)
    with pytest.raises(ValueError, match=">= 0"):
        split_sizes(10, -1, 0)


@pytest.mark.parametrize(
    "sets, match",
    [
        (["data.synth.val_images=-1"], "'data.synth.val_images' must be >= 0"),
        (["data.synth.num_images=10", "data.synth.val_images=9"], "no train image"),
    ],
)
def test_bad_split_sizes_are_config_errors(sets, match):
    from sssc.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(None, sets)


def test_other_split_sizes_are_other_settings(tmp_path):
    overrides = [f"data.root={tmp_path}", *synth_sets(12)]
    Refer.from_config(load_config(None, overrides).data)
    cfg = load_config(None, [*overrides, "data.synth.val_images=3"])
    with pytest.raises(DatasetError, match="val_images: 1 there, 3 now"):
        Refer.from_config(cfg.data)


def test_the_embedded_default_is_what_its_config_says(tmp_path, capsys):
    """The default config's dataset: generate()'s defaults are the config's, `sssc data synth`
    with no options makes it, and the counts in the config's comment are its counts."""
    import inspect

    from sssc.cli import main
    from sssc.config import SynthConfig, embedded_config_path

    synth = load_config(None, [f"data.root={tmp_path}"]).data.synth
    assert synth == SynthConfig()
    params = inspect.signature(generate).parameters
    assert {k: params[k].default for k in vars(synth)} == vars(synth)
    assert main(["data", "synth", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    folder = tmp_path / "cli" / "synthetic"
    refer = Refer(tmp_path / "cli", "synthetic", "synthetic", folder / "images")
    text = embedded_config_path().read_text()
    m = re.search(
        r"num_images: (\d+) +# ([\d,]+) objects, ([\d,]+) expressions "
        r"\(train ([\d,]+), val ([\d,]+), test ([\d,]+)\)",
        text,
    )
    assert m, "the num_images comment of configs/synthetic.yaml"
    said = [int(g.replace(",", "")) for g in m.groups()]
    n_sent = {s: 0 for s in ("train", "val", "test")}
    for r in refer.refs.values():
        n_sent[r.split] += len(r.sentences)
    assert said == [
        len(refer.images),
        len(refer.refs),
        sum(n_sent.values()),
        *n_sent.values(),
    ]
