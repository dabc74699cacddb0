"""``segment.models.image_grouping: file_runs``: Stage 1 groups refs as the official driver of
``create_all_masks_dataset.py`` does: it walks a split's refs in file order (REFER's
``getRefIds(split=...)``, refs sssc skips included) and processes each run of consecutive refs
of one file name as one image."""

from __future__ import annotations

import numpy as np
import pytest
from test_sampler_order import _write

from sssc.data.refer import Refer
from sssc.segment.detector import Detections
from sssc.segment.runner import ModelsSegmenter

SKIPPED = {5000 + 3 * k for k in (2, 9, 17)}  # refs without an expression: still in the file


def _official_runs(file_order, split):
    """The driver's loop: a new image whenever the file name changes."""
    runs = []
    for r in file_order:
        if r["split"] != split:
            continue
        if runs and runs[-1][0] == r["image_id"]:
            runs[-1][1].append(r["ref_id"])
        else:
            runs.append((r["image_id"], [r["ref_id"]]))
    return runs


@pytest.fixture()
def data(tmp_path):
    file_order = _write(tmp_path, skip_sentences=SKIPPED)
    return file_order, Refer(tmp_path, "refcoco", "unc", tmp_path / "images")


def test_file_runs_are_the_official_drivers_images(data):
    file_order, refer = data
    several = 0
    for split in ("train", "val"):
        runs = _official_runs(file_order, split)
        for image_id in refer.split_image_ids(split):
            want = [[i for i in ids if i in refer.refs] for iid, ids in runs if iid == image_id]
            got = [[r.ref_id for r in run] for run in refer.file_runs(image_id, split)]
            assert got == [w for w in want if w]
            several += len(got) > 1
    assert several > 3  # the fixture's shuffled file splits images


class _Detector:
    """One box per class asked for, labelled with it; records the calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, names):
        self.calls.append(list(names))
        n = len(names)
        boxes = np.tile(np.float32([1, 1, 5, 5]), (n, 1))
        return Detections(boxes, np.full(n, 0.9, np.float32), np.arange(n))


def _segmenter(image, boxes):
    masks = np.zeros((len(boxes), *image.shape[:2]), dtype=bool)
    masks[:, 2, 3] = True
    return masks, np.ones(len(boxes), np.float32)


def _seg(refer, grouping):
    seg = ModelsSegmenter.__new__(ModelsSegmenter)
    seg.refer, seg.splits, seg.grouping = refer, ("train",), grouping
    seg.class_names = ["a", "b", "c", "d", "e"]
    seg.nouns = lambda s: [s]  # "s17"
    seg.project = lambda nouns: [int(n[1:]) % 5 for n in nouns]
    seg.query, seg.class_order = "most_likely", "sorted"
    seg.orientation = "stored"  # segment.models.image_orientation
    seg.detector, seg.segmenter = _Detector(), _segmenter
    seg.counts = __import__("collections").Counter()
    return seg


@pytest.mark.parametrize("grouping", ["image", "file_runs"])
def test_the_detector_is_asked_once_per_run(data, grouping):
    file_order, refer = data
    seg = _seg(refer, grouping)
    runs = _official_runs(file_order, "train")
    for image_id in refer.split_image_ids("train"):
        calls = len(seg.detector.calls)
        rec = seg(image_id)
        groups = [
            [refer.refs[i] for i in ids if i in refer.refs] for iid, ids in runs if iid == image_id
        ]
        groups = [g for g in groups if g]
        if grouping == "image":
            groups = [[r for g in groups for r in g]]
        # each group's query: its objects' most frequent class, the first seen among equals
        want = []
        for g in groups:
            names = set()
            for r in sorted(g, key=lambda r: r.ann_id):
                cls = [seg.class_names[int(s.sent[1:]) % 5] for s in r.sentences]
                names.add(max(cls, key=lambda c, cls=cls: (cls.count(c), -cls.index(c))))
            want.append(sorted(names))
        assert seg.detector.calls[calls:] == want
        # every object takes its own group's boxes of its classes, never another group's
        first = 0
        for g, names in zip(groups, want, strict=True):
            ids = range(first, first + len(names))
            for r in g:
                classes = {seg.class_names[int(s.sent[1:]) % 5] for s in r.sentences}
                want_el = [i for i in ids if rec["candidates"][i]["label"] in classes]
                assert (
                    next(o for o in rec["objects"] if o["ann_id"] == r.ann_id)["eligible"]
                    == want_el
                )
            first += len(names)
        assert len(rec["candidates"]) == first
    assert seg.counts["image_in_several_runs"] == (grouping == "file_runs") * sum(
        len(refer.file_runs(i, "train")) > 1 for i in refer.split_image_ids("train")
    )


def test_an_unknown_grouping_is_refused():
    from sssc.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="image_grouping"):
        load_config(None, ["segment.models.image_grouping=runs"])
    assert load_config(None, ["recipe=official"]).segment.models.image_grouping == "file_runs"
