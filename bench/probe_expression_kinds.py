"""Probe: which kinds of synthetic expression does a trained checkpoint get right?

The synthetic dataset's expressions come in three kinds (``sssc.data.synthetic``): attributes
("the red circle"), relations ("the circle left of the blue square") and superlatives ("the
leftmost triangle"). For a checkpoint on a split (default val), this prints, per kind, per
superlative word and by how many objects of the image share the referred object's shape:

- ``IoU``: the mean IoU of the predicted mask (argmax of the upsampled logits, at the image's
  own resolution) with the GT mask;
- ``right``: how often the predicted mask overlaps the referred object more than any other object
  of the image (the chance level among same-shape objects is about 40%);
- ``area``: the median of predicted area / GT area (class weights that favour the foreground
  make masks larger);
- with ``--run``: ``S2``, the mean IoU of the run's Stage 2 choice (the labels the bootstrap phase
  learns from), and ``ratio``, the model's IoU over it: where ZSBootstrap falls short of S+S.

Run::

    python bench/probe_expression_kinds.py runs/default/bootstrap/checkpoint.pt --root data \
        --run runs/default
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sssc.config import load_config
from sssc.correct.data import preprocess_image
from sssc.data.refer import Refer
from sssc.eval.metrics import intersection_union
from sssc.inference import load_predictor
from sssc.store import Store
from sssc.store.store import chosen_masks

_RELATIONS = ("left", "right", "above", "below")
_SUPERLATIVES = ("largest", "smallest", "leftmost", "rightmost", "topmost", "bottommost")


def kind(sentence: str) -> str:
    """``attribute`` | ``relation`` | ``superlative``, from the synthetic grammar's word order."""
    words = sentence.split()
    if len(words) > 3 and words[2] in _RELATIONS:
        return "relation"
    if len(words) > 1 and words[1] in _SUPERLATIVES:
        return "superlative"
    return "attribute"


def groups(sentence: str, same_shape: int) -> list[str]:
    """The rows an expression counts in: its kind, its superlative word, the referred shape's count.

    ``same_shape`` is how many objects of the image share the referred object's category (4 and
    more are one row).
    """
    k = kind(sentence)
    rows = [k, f"{min(same_shape, 4)}{'+' if same_shape >= 4 else ''} of its shape"]
    if k == "superlative":
        rows.append(f"  {sentence.split()[1]}")
    return rows


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    inter, union = intersection_union(pred, gt)
    return inter / max(union, 1)


def probe(
    checkpoint: str, root: str, split: str = "val", run: str | None = None
) -> dict[str, dict[str, float]]:
    """Per row of :func:`groups`: ``n``, mean ``IoU``, ``right`` (fraction), median ``area``
    ratio, and with ``run`` (a run directory holding ``segment/`` and ``select/``) ``S2``: the
    mean IoU of the Stage 2 choice, the labels the bootstrap phase learned from, and ``ratio``."""
    p = load_predictor(checkpoint)
    refer = Refer.from_config(load_config(None, [f"data.root={root}"]).data, generate=False)
    stores = None
    if run is not None:
        stores = (Store(Path(run) / "segment", kind="S1"), Store(Path(run) / "select", kind="S2"))
    iou, right, area, s2 = (collections.defaultdict(list) for _ in range(4))
    chosen_of: dict[int, dict] = {}  # image id -> its objects' S2 masks, decoded once
    for ref in refer.split_refs(split):
        img = refer.load_image(ref.image_id)
        anns = refer.image_annotations(ref.image_id)
        gts = {a: refer.gt_mask(a) for a in anns}
        cat = refer.annotation(ref.ann_id)["category_id"]
        same = sum(refer.annotation(a)["category_id"] == cat for a in anns)
        gt = gts[ref.ann_id]
        label = None
        if stores is not None:
            if ref.image_id not in chosen_of:
                chosen_of[ref.image_id] = chosen_masks(*stores, ref.image_id)
            chosen = chosen_of[ref.image_id].get(ref.ann_id)
            label = 0.0 if chosen is None else _iou(chosen, gt)
        texts = [s.raw for s in ref.sentences]
        ids, mask = p.tokenize(texts)
        x = preprocess_image(img, p.image_size)[None].expand(len(texts), -1, -1, -1)
        with torch.no_grad():
            logits = p.model(x, ids, mask)
        logits = F.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=True)
        for text, pred in zip(texts, (logits[:, 1] > logits[:, 0]).numpy(), strict=True):
            overlap = {a: (pred & g).sum() for a, g in gts.items()}
            best = max(overlap, key=overlap.get)
            score, ratio = _iou(pred, gt), pred.sum() / gt.sum()
            hit = best == ref.ann_id and overlap[best] > 0
            for k in groups(text, same):  # one expression counts in several rows
                iou[k].append(score)
                right[k].append(hit)
                area[k].append(ratio)
                if label is not None:
                    s2[k].append(label)
    out = {}
    for k in sorted(iou, key=_row_order):
        row = {
            "n": len(iou[k]),
            "IoU": 100 * float(np.mean(iou[k])),
            "right": 100 * float(np.mean(right[k])),
            "area": float(np.median(area[k])),
        }
        if s2[k]:
            row["S2"] = 100 * float(np.mean(s2[k]))
            row["ratio"] = row["IoU"] / max(row["S2"], 1e-9)
        out[k] = row
    return out


def _row_order(k: str) -> tuple:
    """Kinds first (each superlative word under its kind), then the same-shape counts."""
    if k.endswith("of its shape"):
        return (1, k)
    if k.startswith("  "):
        return (0, "superlative", k)
    return (0, k, "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--root", default="data", help="data.root of the synthetic dataset")
    ap.add_argument("--split", default="val")
    ap.add_argument(
        "--run", help="the run directory (runs/default): also S2's IoU and the model's ratio to it"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    for k, v in probe(args.checkpoint, args.root, args.split, args.run).items():
        line = (
            f"{k:16s} n={v['n']:4d}  IoU {v['IoU']:5.1f}  right {v['right']:5.1f}%  "
            f"area x{v['area']:.2f}"
        )
        if "S2" in v:
            line += f"  S2 {v['S2']:5.1f}  ratio {v['ratio']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
