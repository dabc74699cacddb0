"""Evaluation of the stores and of a run: the S1 oracle, the S+S choice, and the Stage 3 table.

:func:`evaluate_stage` scores a stage's store against the GT (``<run>/<stage>/metrics.json``);
:func:`stage3_table` prints S+S, ZSBootstrap, +epochs and S+S+C of a run from their
``metrics.json`` files. Nothing here imports a stage package: the stores are the interface.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

from ..data import masks as _masks
from ..data.masks import resize_mask
from ..data.refer import Refer
from ..rundir import RunDirError, check_stage_config, read_json
from ..store import Store, StoreError, check_join
from .metrics import THRESHOLDS, eval_size, evaluate_masks

__all__ = ["evaluate_stage", "gap_recovered", "oracle_derived", "stage3_table"]

_WHAT = {
    "segment": "S1 oracle (best eligible candidate per expression)",
    "select": "S+S (the Stage 2 choice)",
}

_ROWS = (
    ("segment", "S1 oracle"),
    ("select", "S+S"),
    ("bootstrap", "ZSBootstrap"),
    ("plus_epochs", "+epochs"),
    ("correct", "S+S+C"),
)


def evaluate_stage(
    stage: str,
    cfg: Any,
    run_dir: str | Path,
    split: str | None = None,
    refer: Refer | None = None,
    pools: str = "whole",
    background: str = "minimum",
    scoring: str = "lavt",
) -> dict:
    """Score a stage's store against the GT: the S1 oracle (``segment``) or S2 (``select``).

    Args:
        stage: ``segment`` or ``select``.
        cfg: the run's config (dataset, ``eval.resolution``, ``data.eval_split``).
        run_dir: the run directory holding ``<stage>/store.json``.
        split: the split to score (default ``data.eval_split``); its images must be in the store.
        refer: the dataset, if already open.
        pools, background: for ``segment``, the view of the pools the oracle picks from
            (:class:`sssc.store.Store`): Stage 1's whole masks by default, which
            ``sssc-train --stage segment`` scores, or the painted ones a correct phase trains on.
            ``select`` reads them as Stage 2 did (``select.candidates``).
        scoring: ``lavt``: as a model is scored, per expression at ``eval.resolution``;
            ``official``: as the official ``test_unsupervised_masks_dataset.py`` scores Stages
            1-2 (the paper's S+S and oracle figures; README deviation row 38): see
            :func:`_score_per_ref`.

    Returns:
        The ``metrics.json`` object: ``stage``, ``what``, ``split``, ``resolution``, ``mIoU``,
        ``oIoU``, ``prec@0.5`` ... ``prec@0.9``, ``PointM``, ``PointIt`` (percent),
        ``num_expressions``, ``num_objects``, ``producer``, ``warnings`` (counts).
    """
    run_dir = Path(run_dir)
    refer = refer or Refer.from_config(cfg.data)
    split = split or cfg.data.eval_split
    # S+S reads the pools as Stage 2 did; the S1 oracle scores the pools it is given
    if stage == "select":
        pools, background = cfg.select.candidates, "minimum"
    # The store asked for first, so that a missing one is the one named.
    s2 = Store(run_dir / "select", kind="S2") if stage == "select" else None
    s1 = Store(run_dir / "segment", kind="S1", pools=pools, background=background)
    if s2 is not None:
        check_join(s1, s2)
    store = s2 or s1
    refs = refer.split_refs(split)
    missing = sorted({r.image_id for r in refs if r.image_id not in store})
    if missing:
        raise StoreError(
            f"{store.dir}: {len(missing)} image(s) of split {split!r} are not in the store "
            f"(e.g. image {missing[0]}); the stage labels data.train_split and data.eval_split"
        )
    warnings: collections.Counter = collections.Counter(
        {f"dataset.{k}": v for k, v in refer.warnings.items()}
    )
    by_sent = {s.sent_id: r for r in refs for s in r.sentences}
    res = cfg.eval.resolution
    cache: dict[int, np.ndarray | None] = {}

    def predict(sent_id: int) -> np.ndarray | None:
        ref = by_sent[sent_id]
        if ref.ann_id not in cache:  # sentences of a ref are consecutive: keep one
            cache.clear()
            cache[ref.ann_id] = _prediction(ref, s1, s2, refer, res, warnings)
        m = cache[ref.ann_id]
        info = refer.images[ref.image_id]
        return m if m is not None else np.zeros((info.height, info.width), dtype=bool)

    out = {"stage": stage, "what": _WHAT[stage]}
    if stage == "segment" and pools != "whole":
        out["what"] += f" over the {pools} pools (background: {background})"
        out["pools"] = {"pools": pools, "background": background}
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if scoring == "official":
        out["what"] += ", scored per ref as the official test_unsupervised_masks_dataset.py"
        m = _score_per_ref(split, refs, s1, s2, refer, warnings)
    else:
        m = evaluate_masks(refer, split, predict, resolution=res, point_rule=cfg.eval.point_rule)
    warnings.update(m.pop("warnings"))
    out |= m
    out["producer"] = store.producer
    out["warnings"] = dict(sorted(warnings.items()))
    return out


SCORINGS = ("lavt", "official")


def _score_per_ref(split: str, refs, s1: Store, s2: Store | None, refer: Refer, warnings) -> dict:
    """Stages 1-2 scored as the official ``test_unsupervised_masks_dataset.py`` does.

    One IoU per ref (a referred object counts once, whatever its number of expressions), at the
    image's own size. A ref whose pool is empty scores 0 in mIoU and adds nothing to oIoU's sums;
    one with a pool but no choice (every candidate under 500 px, row 11) scores an empty mask,
    so its GT adds to the union. ``segment``: the pool's best candidate by IoU (the first of
    equals; ``--mask-choice best``); ``select``: Stage 2's choice (the script's
    ``--mask-choice reverse_blur`` on the Stage 1 masks, as its README runs it). mIoU and oIoU
    are the script's; prec@0.5-0.9 are over the same per-ref IoUs; PointM and PointIt are not
    scored.
    """
    ious, cum_i, cum_u = [], 0, 0
    for ref in refs:
        rec = s1.get(ref.image_id)
        pool = rec.object(ref.ann_id).eligible
        if not pool:
            warnings["object_without_eligible"] += 1
            ious.append(0.0)
            continue
        gt = refer.gt_mask(ref.ann_id)
        pred = _prediction(ref, s1, s2, refer, "original", warnings)  # None: no choice
        pred = np.zeros_like(gt) if pred is None else pred
        i, u = np.count_nonzero(pred & gt), np.count_nonzero(pred | gt)
        # An empty union needs an empty GT (data.empty_gt: keep) and no choice; the script's
        # 0 / 0 is NaN there, which would make its mIoU NaN: scored 0 here, as LAVT does.
        ious.append(i / u if u else 0.0)
        cum_i, cum_u = cum_i + i, cum_u + u
    v = np.asarray(ious, dtype=np.float64)
    return {
        "split": split,
        "resolution": "original",
        "scoring": "official (per ref)",
        "mIoU": 100.0 * float(v.mean()) if len(v) else 0.0,
        "oIoU": 100.0 * cum_i / cum_u if cum_u else 0.0,
        **{f"prec@{t}": 100.0 * float((v >= t).mean()) if len(v) else 0.0 for t in THRESHOLDS},
        "num_expressions": sum(len(r.sentences) for r in refs),
        "num_objects": len(refs),
        "num_scored": len(refs),  # the table's n: refs, not expressions
        "warnings": {},
    }


def _prediction(ref, s1: Store, s2: Store | None, refer: Refer, res, warnings) -> np.ndarray | None:
    """The mask scored for one object: the S2 choice, or the S1 oracle. ``None``: no candidate."""
    rec = s1.get(ref.image_id)
    if not rec.candidates:
        warnings["object_in_image_without_candidates"] += 1
    if s2 is not None:
        chosen = s2.get(ref.image_id).object(ref.ann_id).chosen
        if chosen is None:
            warnings["object_without_choice"] += 1
            return None
        return rec.candidate(chosen).decode()
    eligible = rec.object(ref.ann_id).eligible
    if not eligible:
        warnings["object_without_eligible"] += 1
        return None
    gt = refer.gt_mask(ref.ann_id)
    size = eval_size(res, *gt.shape)
    if size == gt.shape:  # IoU on the RLEs, no decoding
        ious = _masks.iou([rec.candidate(i).rle for i in eligible], [_masks.encode(gt)])[:, 0]
    else:  # the oracle maximizes the IoU that is reported, at the evaluation resolution
        g = resize_mask(gt, size)
        ious = []
        for i in eligible:
            p = resize_mask(rec.candidate(i).decode(), size)
            u = np.count_nonzero(p | g)
            ious.append(np.count_nonzero(p & g) / u if u else 0.0)
    return rec.candidate(eligible[int(np.argmax(ious))]).decode()


def oracle_derived(producer: dict) -> bool:
    """Simulated labels on a real dataset: derived from its GT masks."""
    data = producer.get("data") or producer.get("segment", {}).get("data") or {}
    return producer.get("name") == "simulated" and data.get("dataset", "synthetic") != "synthetic"


def gap_recovered(oracle: float, zero_shot: float, corrected: float) -> float | None:
    """``(corrected - zero_shot) / (oracle - zero_shot)``: the share of the S+S -> S1-oracle gap
    that the correction closes (the paper's, in mIoU on RefCOCO val: (56.03 - 36.95) / (61.53 -
    36.95) = 0.78); ``None`` when there is no gap."""
    gap = oracle - zero_shot
    return None if gap <= 0 else (corrected - zero_shot) / gap


def stage3_table(run_dir: str | Path, cfg: Any = None) -> str:
    """S+S, ZSBootstrap, +epochs and S+S+C of a run (those present) on the eval split vs GT.

    With ``cfg``, a row whose folder was made with other settings than ``cfg``'s is left out and
    named below the table, so an old result is never shown as this run's.
    """
    from ..config import config_to_dict

    rows, stale = [], []
    for d, name in _ROWS:
        path = Path(run_dir) / d / "metrics.json"
        if not path.exists():
            continue
        if cfg is not None:
            try:
                check_stage_config(path.parent, config_to_dict(cfg), d)
            except RunDirError:
                stale.append(name)
                continue
        rows.append((name, read_json(path, "metrics")))
        if name == "S+S+C" and rows[-1][1].get("oracle"):  # the pools it trained on: painted
            rows.insert(-1, ("S1 oracle, painted", rows[-1][1]["oracle"]))
    if not rows:
        return "(no metrics yet)"
    m0 = next((m for name, m in rows if name == "S+S"), rows[0][1])
    prod = m0["producer"]
    sim = ", ".join(f"{k}={v}" for k, v in prod.items() if k != "name" and not isinstance(v, dict))
    labels = []
    for name, m in rows:
        label = name
        if name in ("S+S", "S1 oracle") and m["producer"]["name"] == "simulated":
            sim_label = "(sim.)" if not oracle_derived(m["producer"]) else "(oracle-derived)"
            label = f"{name} {sim_label}"
        if str(m.get("selection", "")).startswith("selected on GT"):
            label += " *"
        labels.append(label)
    w = max(16, *map(len, labels))
    head = f"{'':{w}} {'mIoU':>7} {'oIoU':>7} {'prec@0.5':>9}"
    oracle = " -- ORACLE-DERIVED: simulated from this dataset's GT masks" * oracle_derived(prod)
    lines = [
        f"{m0['split']} split vs GT, labels by producer {prod['name']!r} ({sim}){oracle}",
        head,
        "-" * len(head),
    ]
    for label, (_, m) in zip(labels, rows, strict=True):
        lines.append(f"{label:{w}} {m['mIoU']:7.2f} {m['oIoU']:7.2f} {m['prec@0.5']:9.2f}")
    if any(str(m.get("selection", "")).startswith("selected on GT") for _, m in rows):
        lines.append("* selected on GT: the epoch with the best val oIoU (train.selection=best_gt)")
    got = {name: m["mIoU"] for name, m in rows}
    # S+S+C trained on painted pools records their oracle ("oracle"; None if it could not be
    # scored): its gap is against that one, never Stage 1's whole-mask oracle
    painted = "oracle" in dict(rows).get("S+S+C", {})
    oracle = "S1 oracle, painted" if painted else "S1 oracle"
    if {oracle, "S+S", "S+S+C"} <= set(got):
        f = gap_recovered(got[oracle], got["S+S"], got["S+S+C"])
        which = "painted S1-oracle" if oracle.endswith("painted") else "S1-oracle"
        if f is not None:
            lines.append(f"S+S+C closes {f:.2f} of the S+S -> {which} mIoU gap (the paper: 0.78)")
    if stale:
        lines.append(f"(not shown: {', '.join(stale)}, made with other settings in {run_dir})")
    return "\n".join(lines)
