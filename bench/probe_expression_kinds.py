"""Probe: which kinds of synthetic expression does a trained checkpoint get right?

The synthetic dataset's expressions come in three kinds (``sssc.data.synthetic``): attributes
("the red circle"), relations ("the circle left of the blue square") and superlatives ("the
leftmost triangle"). For a checkpoint on a split (default val), this prints, per kind:

- ``IoU``: the mean IoU of the predicted mask (argmax of the upsampled logits, at the image's
  own resolution) with the GT mask;
- ``right``: how often the predicted mask overlaps the referred object more than any other object
  of the image (the chance level among same-shape objects is about 40%);
- ``area``: the median of predicted area / GT area (class weights that favour the foreground
  make masks larger).

Run::

    python bench/probe_expression_kinds.py runs/default/correct/checkpoint.pt --root data
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch
import torch.nn.functional as F

from sssc.config import load_config
from sssc.correct.data import preprocess_image
from sssc.data.refer import Refer
from sssc.inference import load_predictor

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


def probe(checkpoint: str, root: str, split: str = "val") -> dict[str, dict[str, float]]:
    """Per kind: ``n``, mean ``IoU``, ``right`` (fraction) and median ``area`` ratio."""
    p = load_predictor(checkpoint)
    refer = Refer.from_config(load_config(None, [f"data.root={root}"]).data, generate=False)
    iou, right, area = (collections.defaultdict(list) for _ in range(3))
    for ref in refer.split_refs(split):
        img = refer.load_image(ref.image_id)
        gts = {a: refer.gt_mask(a) for a in refer.image_annotations(ref.image_id)}
        texts = [s.raw for s in ref.sentences]
        ids, mask = p.tokenize(texts)
        x = preprocess_image(img, p.image_size)[None].expand(len(texts), -1, -1, -1)
        with torch.no_grad():
            logits = p.model(x, ids, mask)
        logits = F.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=True)
        gt = gts[ref.ann_id]
        for text, pred in zip(texts, (logits[:, 1] > logits[:, 0]).numpy(), strict=True):
            k = kind(text)
            iou[k].append((pred & gt).sum() / max((pred | gt).sum(), 1))
            overlap = {a: (pred & g).sum() for a, g in gts.items()}
            best = max(overlap, key=overlap.get)
            right[k].append(best == ref.ann_id and overlap[best] > 0)
            area[k].append(pred.sum() / gt.sum())
    return {
        k: {
            "n": len(iou[k]),
            "IoU": 100 * float(np.mean(iou[k])),
            "right": 100 * float(np.mean(right[k])),
            "area": float(np.median(area[k])),
        }
        for k in sorted(iou)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--root", default="data", help="data.root of the synthetic dataset")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for k, v in probe(args.checkpoint, args.root, args.split).items():
        print(
            f"{k:12s} n={v['n']:4d}  IoU {v['IoU']:5.1f}  right {v['right']:5.1f}%  "
            f"area x{v['area']:.2f}"
        )


if __name__ == "__main__":
    main()
