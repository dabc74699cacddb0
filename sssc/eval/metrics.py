"""Referring-segmentation metrics, computed exactly as LAVT computes them, plus PointM/PointIt.

Per expression, with the prediction ``P`` and the ground truth ``G`` at the evaluation resolution:
``I = |P ∧ G|``, ``U = |P ∨ G|``, ``IoU = I / U``. Over a split:

* ``mIoU``: mean of the per-expression IoUs;
* ``oIoU``: ``ΣI / ΣU`` (LAVT's "overall IoU");
* ``prec@t`` for ``t`` in 0.5, 0.6, 0.7, 0.8, 0.9: the fraction of expressions with ``IoU >= t``.
  LAVT's ``test.py`` (yz93/LAVT-RIS) counts ``seg_correct += (this_iou >= eval_seg_iou)`` over
  ``eval_seg_iou_list = [.5, .6, .7, .8, .9]``, i.e. ``>=``, not ``>``; we follow it;
* ``PointM`` / ``PointIt``: the fraction of expressions whose *peak*, the argmax of the prediction
  upsampled to the image's original size (a bool mask: nearest), falls inside the GT mask / the GT
  box. Ties go to the first pixel in row-major order (``np.argmax``); an empty bool mask peaks at
  pixel (0, 0). ``point_rule="tris"`` (the default, TRIS's ``validate.py``, which defined these
  metrics): bilinear upsampling with ``align_corners=True``, and the box ``[x, y, w, h]`` truncated
  to integers ``x0, y0, w, h``, a hit when ``x0 <= col <= x0 + w`` and ``y0 <= row <= y0 + h``.
  ``point_rule="sssc"``: ``align_corners=False``, and a hit when the pixel's centre
  ``(col + 0.5, row + 0.5)`` is inside the box.

All are reported in percent, as the papers do. Every expression is counted; none is skipped.

Evaluation resolution (``eval.resolution``): ``480`` (the default, LAVT's: the GT mask is resized to
480x480 with PIL's nearest neighbour, exactly LAVT's ``T.Resize`` of the target) or ``"original"``
(each image's own size). A prediction at another size is brought to the evaluation size: a bool mask
by PIL nearest neighbour; a float map by ``upsample``: ``"lavt"`` (the default) takes the logit
difference ``l1 - l0``, upsampled bilinearly with ``align_corners=True``, ``> 0`` (LAVT upsamples
the logits, then takes the argmax); ``"sssc"`` takes the foreground probability, upsampled with
``align_corners=False``, ``> 0.5``.

Empty union: when both the prediction and the GT are empty, ``U = 0``; the IoU is then **0** (LAVT's
``this_iou = 0.0 if U == 0``) and the pair adds nothing to ``ΣI`` or ``ΣU``. RefCOCO/+/g GT masks
are never empty in practice, so this happens when a small object vanishes in the resize to 480x480,
or for a ref whose GT mask is empty (``data.empty_gt: keep``, the official code's, keeps such refs;
their expressions score 0, and the prediction counts in ``ΣU``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..data.masks import resize_mask

__all__ = [
    "THRESHOLDS",
    "MetricAccumulator",
    "eval_size",
    "evaluate_masks",
    "format_table",
    "intersection_union",
    "peak",
    "resize_mask",
    "to_eval_mask",
]

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_KEYS = ("mIoU", "oIoU", *(f"prec@{t}" for t in THRESHOLDS), "PointM", "PointIt")


def eval_size(resolution: str | int, height: int, width: int) -> tuple[int, int]:
    """The ``(H, W)`` at which an image of ``height x width`` is evaluated."""
    if resolution == "original":
        return height, width
    if isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool):
        if resolution > 0:
            return int(resolution), int(resolution)
    raise ValueError(
        f"eval resolution must be a positive int (480, as LAVT) or 'original', got {resolution!r}"
    )


UPSAMPLES = ("lavt", "sssc")
POINT_RULES = ("tris", "sssc")


def _bilinear(prob: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    p = np.asarray(prob, dtype=np.float32)
    if p.shape == tuple(size):
        return p
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(p))[None, None]
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=align_corners)
    return out[0, 0].numpy()


def to_eval_mask(pred: np.ndarray, size: tuple[int, int], upsample: str = "sssc") -> np.ndarray:
    """A prediction as a bool mask of ``size``: a bool mask, or a float map, which is the
    foreground probability (``upsample="sssc"``) or the logit difference ``l1 - l0``
    (``upsample="lavt"``)."""
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"a prediction must be [H, W], got shape {pred.shape}")
    if pred.dtype == bool:
        return resize_mask(pred, size)
    if upsample == "lavt":
        return _bilinear(pred, size, align_corners=True) > 0
    return _bilinear(pred, size) > 0.5


def peak(pred: np.ndarray, height: int, width: int, point_rule: str = "sssc") -> tuple[int, int]:
    """``(row, col)`` of the argmax of the prediction upsampled to ``height x width``.

    A float map is resized bilinearly (``align_corners=True`` under ``point_rule="tris"``), a bool
    mask by nearest neighbour; ties go to the first pixel in row-major order.
    """
    pred = np.asarray(pred)
    up = (
        resize_mask(pred, (height, width))
        if pred.dtype == bool
        else _bilinear(pred, (height, width), align_corners=point_rule == "tris")
    )
    r, c = divmod(int(np.argmax(up)), width)
    return r, c


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """``(|P ∧ G|, |P ∨ G|)`` of two bool masks of one shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and GT {gt.shape} differ in shape")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def _in_box(r: int, c: int, box, point_rule: str = "sssc") -> bool:
    if point_rule == "tris":  # np.array(bbox, dtype=int): each of x, y, w, h truncated
        x, y, w, h = (int(v) for v in box)
        return x <= c <= x + w and y <= r <= y + h
    x, y, w, h = (float(v) for v in box)
    return x <= c + 0.5 <= x + w and y <= r + 0.5 <= y + h


def _mask_box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [
        float(cols.min()),
        float(rows.min()),
        float(cols.max() - cols.min() + 1),
        float(rows.max() - rows.min() + 1),
    ]


@dataclass
class MetricAccumulator:
    """Accumulates per-expression results; :meth:`result` gives the metrics in percent."""

    ious: list[float] = field(default_factory=list)
    cum_i: int = 0
    cum_u: int = 0
    point_m: int = 0
    point_it: int = 0
    upsample: str = "sssc"
    point_rule: str = "sssc"

    def __post_init__(self):
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        if self.point_rule not in POINT_RULES:
            raise ValueError(f"point_rule must be one of {POINT_RULES}, got {self.point_rule!r}")

    def add_iu(self, i: int, u: int) -> float:
        iou = i / u if u > 0 else 0.0  # LAVT: an empty union scores 0
        self.ious.append(iou)
        self.cum_i += i
        self.cum_u += u
        return iou

    def add(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        gt_box=None,
        resolution: str | int = 480,
        gt_eval: np.ndarray | None = None,
    ) -> float:
        """Score one expression.

        Args:
            pred: bool mask or float foreground probability ``[h, w]``, any resolution.
            gt: bool GT mask ``[H, W]`` at the image's original resolution.
            gt_box: COCO ``[x, y, w, h]`` of the GT at the original resolution (default: the
                mask's tight box).
            resolution: the evaluation resolution (480 or ``"original"``).
            gt_eval: the GT already at the evaluation size (a cache; computed when omitted).

        Returns:
            This expression's IoU.
        """
        h, w = gt.shape
        size = eval_size(resolution, h, w)
        g = resize_mask(gt, size) if gt_eval is None else gt_eval
        iou = self.add_iu(*intersection_union(to_eval_mask(pred, size, self.upsample), g))
        r, c = peak(pred, h, w, self.point_rule)
        self.point_m += bool(gt[r, c])
        box = gt_box if gt_box is not None else _mask_box(gt)
        self.point_it += _in_box(r, c, box, self.point_rule)
        return iou

    def __len__(self) -> int:
        return len(self.ious)

    def result(self) -> dict:
        n = len(self.ious)
        if n == 0:
            return {k: float("nan") for k in METRIC_KEYS} | {"num_expressions": 0}
        ious = np.asarray(self.ious, dtype=np.float64)
        out = {
            "mIoU": 100.0 * float(ious.mean()),
            "oIoU": 100.0 * self.cum_i / self.cum_u if self.cum_u else 0.0,
        }
        for t in THRESHOLDS:
            out[f"prec@{t}"] = 100.0 * float(np.count_nonzero(ious >= t)) / n
        out["PointM"] = 100.0 * self.point_m / n
        out["PointIt"] = 100.0 * self.point_it / n
        out["num_expressions"] = n
        return out


Prediction = np.ndarray
Predictions = Mapping[int, Prediction] | Callable[[int], Prediction | None]


def evaluate_masks(
    refer,
    split: str,
    predictions: Predictions,
    resolution: str | int = 480,
    progress: bool = False,
    upsample: str = "sssc",
    point_rule: str = "sssc",
    subsets: Mapping[str, Collection[int]] | None = None,
) -> dict:
    """Score predictions for every expression of a split against the GT.

    Args:
        refer: a :class:`sssc.data.refer.Refer`.
        split: e.g. ``"val"``.
        predictions: per ``sent_id`` a bool mask or a float foreground probability ``[h, w]`` at
            any resolution; a mapping, or a callable returning ``None`` for a missing one. A
            missing prediction counts as an empty mask (IoU 0) and is counted in
            ``warnings["missing_prediction"]``: every expression is scored.
        resolution: 480 (LAVT) or ``"original"``.
        progress: show a tqdm bar.
        upsample: what a float prediction is and how it is resized (``eval.upsample``):
            ``"sssc"``, a probability; ``"lavt"``, the logit difference ``l1 - l0``.
        point_rule: ``"sssc"`` or ``"tris"`` (``eval.point_rule``, see the module docstring).
        subsets: named sets of ``sent_id``s also scored on their own, from the same predictions
            (``mIoU``, ``oIoU``, ``prec@``, ``num_expressions`` under ``"subsets"``).

    Returns:
        ``{"split", "resolution", "mIoU", "oIoU", "prec@0.5" ... "prec@0.9", "PointM", "PointIt"
        (percent), "num_expressions", "num_objects", "warnings": {kind: count}}``, and
        ``"subsets": {name: metrics}`` when asked.
    """
    subsets = {k: set(v) for k, v in (subsets or {}).items()}
    parts = {k: MetricAccumulator() for k in subsets}
    get = predictions if callable(predictions) else predictions.get
    acc = MetricAccumulator(upsample=upsample, point_rule=point_rule)
    warnings: collections.Counter = collections.Counter()
    refs = refer.split_refs(split)
    if progress:
        from tqdm import tqdm

        refs = tqdm(refs, desc=f"eval {split}", unit="obj", leave=False)
    for ref in refs:
        gt = refer.gt_mask(ref.ann_id)
        h, w = gt.shape
        size = eval_size(resolution, h, w)
        g = resize_mask(gt, size)
        box = refer.annotation(ref.ann_id).get("bbox")
        for s in ref.sentences:
            pred = get(s.sent_id)
            if pred is None:
                warnings["missing_prediction"] += 1
                pred = np.zeros((h, w), dtype=bool)
            elif not isinstance(pred, np.ndarray) or pred.dtype != bool:
                pred = np.asarray(pred)
                if pred.dtype.kind not in "biuf":
                    raise ValueError(f"prediction of sent_id {s.sent_id}: dtype {pred.dtype}")
                if pred.dtype.kind == "f" and not np.isfinite(pred).all():
                    raise ValueError(
                        f"prediction of sent_id {s.sent_id} (ref {ref.ref_id}) holds "
                        f"{int((~np.isfinite(pred)).sum())} non-finite value(s) (NaN/inf); a "
                        "score would be meaningless (its argmax and threshold are undefined)"
                    )
            i, u = acc.cum_i, acc.cum_u
            acc.add(pred, gt, box, resolution, gt_eval=g)
            for k, ids in subsets.items():
                if s.sent_id in ids:
                    parts[k].add_iu(acc.cum_i - i, acc.cum_u - u)
    out = {"split": split, "resolution": resolution, "upsample": upsample, "point_rule": point_rule}
    out |= acc.result()
    if subsets:
        keep = ("mIoU", "oIoU", *(f"prec@{t}" for t in THRESHOLDS), "num_expressions")
        out["subsets"] = {
            k: {m: v for m, v in a.result().items() if m in keep} for k, a in parts.items()
        }
    out["num_objects"] = len(refer.split_refs(split))
    out["warnings"] = dict(warnings)
    return out


def format_table(rows: Mapping[str, Mapping]) -> str:
    """A fixed-width table of metric rows (``name -> metrics dict``), for the terminal; ``n`` is
    what was scored: ``num_scored`` where a row has it (refs, under official per-ref scoring),
    else ``num_expressions``."""
    cols = ["mIoU", "oIoU", *(f"prec@{t}" for t in THRESHOLDS), "PointM", "PointIt"]
    width = max([len(n) for n in rows] + [10])
    head = f"{'':{width}}  " + " ".join(f"{c:>8}" for c in cols) + "       n"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        vals = " ".join(f"{float(m.get(c, float('nan'))):8.2f}" for c in cols)
        n = m.get("num_scored", m.get("num_expressions", 0))
        lines.append(f"{name:{width}}  {vals} {int(n):7d}")
    return "\n".join(lines)
