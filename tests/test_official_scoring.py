"""``sssc eval --scoring official``: Stages 1-2 scored as the official
``test_unsupervised_masks_dataset.py`` does (README deviation row 38), against that script's loop
restated on the dataset files themselves (REFER's refs and COCO polygons through pycocotools)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from tiny_data import TENTHS, synth_args

import sssc.eval.stores as stores
from sssc.cli import main, train_main
from sssc.data.synthetic import generate
from sssc.store import Store


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """Stages 1-2 (simulated, a third of the instances dropped) on 200 synthetic images whose
    refs keep 1, 2 or 3 expressions."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    sets = ["--set", f"data.root={root}", "--set", f"data.image_dir={root}/synthetic/images"]
    sets += [*synth_args(200), "--set", "segment.simulate.p_drop=0.35"]
    generate(root, num_images=200, **TENTHS)  # what synth_args(200) asks for
    path = root / "synthetic" / "refs(synthetic).p"
    refs = pickle.loads(path.read_bytes())
    for k, r in enumerate(refs):
        keep = 1 + k % 3
        r["sentences"], r["sent_ids"] = r["sentences"][:keep], r["sent_ids"][:keep]
    path.write_bytes(pickle.dumps(refs))
    assert train_main(["--stage", "select", "--run", str(tmp_path / "run"), *sets]) == 0
    return tmp_path / "run", root / "synthetic", refs


def _official(folder, refs, s1, s2, stage):
    """The script's loop: per val ref, its GT (REFER's getMask: the polygons summed, LAVT keeps
    the pixels equal to 1) at the image's size; an empty pool scores 0 and adds nothing to the
    sums; else the choice (S2's, an empty mask when it has none; or the pool's best by IoU,
    the first of equals) scored with ``&`` and ``|``."""
    coco = json.loads((folder / "instances.json").read_text())
    anns = {a["id"]: a for a in coco["annotations"]}
    images = {i["id"]: i for i in coco["images"]}
    iou, cum_i, cum_u = [], 0.0, 0.0
    for r in refs:
        if r["split"] != "val":
            continue
        img = images[r["image_id"]]
        polygons = anns[r["ann_id"]]["segmentation"]
        rles = mask_utils.frPyObjects(polygons, img["height"], img["width"])
        gt = (np.sum(mask_utils.decode(rles), axis=2) == 1).astype(np.uint8)
        rec = s1.get(r["image_id"])
        eligible = rec.object(r["ann_id"]).eligible
        pool = [rec.candidate(i).decode().astype(np.int32) for i in eligible]
        if not pool:
            iou.append(0.0)
            continue
        if stage == "select":
            chosen = s2.get(r["image_id"]).object(r["ann_id"]).chosen
            mask = np.zeros_like(gt) if chosen is None else rec.candidate(chosen).decode()
        else:
            best, mask = -np.inf, None
            for m in pool:
                v = (gt & m).sum() / (gt | m).sum()
                if v > best:
                    best, mask = v, m
        inter = float((gt & mask).sum())
        union = float((gt | mask).sum())
        iou.append(inter / union)
        cum_i, cum_u = cum_i + inter, cum_u + union
    return 100 * np.mean(iou), 100 * cum_i / cum_u, np.asarray(iou)


def _no_choice_for(monkeypatch, ann_ids):
    """S2 as if every candidate of these objects were under 500 px: a pool, no choice."""

    class Store_(Store):
        def get(self, image_id, **kw):
            rec = super().get(image_id, **kw)
            if self.kind == "S2":
                rec.__dict__["objects"] = [
                    dataclasses.replace(o, chosen=None) if o.ann_id in ann_ids else o
                    for o in rec.objects
                ]
            return rec

    monkeypatch.setattr(stores, "Store", Store_)
    return Store_


@pytest.mark.parametrize("stage", ["select", "segment"])
def test_official_scoring_is_the_scripts_per_ref_loop(run, monkeypatch, stage, capsys):
    run_dir, folder, refs = run
    s1 = Store(run_dir / "segment", kind="S1")
    s2 = Store(run_dir / "select", kind="S2")
    val = [r for r in refs if r["split"] == "val"]
    with_pool = [r["ann_id"] for r in val if s1.get(r["image_id"]).object(r["ann_id"]).eligible]
    empty = len(val) - len(with_pool)
    assert empty > 0 and len(with_pool) > 10  # both rules are exercised
    dropped = set(with_pool[::7])
    s2 = _no_choice_for(monkeypatch, dropped)(run_dir / "select", kind="S2")

    assert main(["eval", "--run", str(run_dir), "--stage", stage, "--scoring", "official"]) == 0
    got = json.loads((run_dir / stage / "eval_val_official.json").read_text())
    miou, oiou, iou = _official(folder, refs, s1, s2, stage)
    assert got["mIoU"] == pytest.approx(miou, abs=1e-9)
    assert got["oIoU"] == pytest.approx(oiou, abs=1e-9)
    assert got["prec@0.5"] == pytest.approx(100 * np.mean(iou >= 0.5), abs=1e-9)
    assert got["num_objects"] == len(val) and got["resolution"] == "original"
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if "per ref" in x and "producer" not in x)
    assert row.split()[-1] == str(len(val))  # n: the refs scored, not their expressions

    # The default scores every expression, and the empty pools' GT in oIoU's union: different
    # figures on this dataset.
    assert main(["eval", "--run", str(run_dir), "--stage", stage]) == 0
    lavt = json.loads((run_dir / stage / "eval_val.json").read_text())
    assert lavt["num_expressions"] > len(val)
    assert abs(lavt["mIoU"] - got["mIoU"]) > 0.1 and abs(lavt["oIoU"] - got["oIoU"]) > 0.1
