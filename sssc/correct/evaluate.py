"""Scoring a LAVT model against the GT masks: during training (every ``train.eval_every`` epochs,
logged), and for ``sssc eval --checkpoint``. The GT is read for the record only; no training
choice looks at it unless ``train.selection: best_gt``."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.refer import Refer, pack_images
from ..eval.metrics import evaluate_masks
from .data import ImageSet, collate, official_val_draw
from .trainutil import append_log, read_log

__all__ = ["eval_and_log", "evaluate_model", "global_counts", "logged_eval", "selection_oiou"]


@torch.no_grad()
def evaluate_model(
    model, refer: Refer, cfg: Any, tokenize, device, split: str | None = None
) -> dict:
    """Score a model on a split (default ``data.eval_split``) against the GT masks.

    Predictions are the model's maps at ``train.image_size`` (the logit difference under
    ``eval.upsample: lavt``, else the foreground probability), computed a packed batch at a time
    when :func:`evaluate_masks` first asks for one of its expressions. With
    ``train.num_workers``, worker processes load the packs ahead, in the order it will ask.
    """
    split = split or cfg.data.eval_split
    was_training = model.training
    model.eval()
    dataset = ImageSet(refer, split, cfg.train.image_size, text_field=cfg.data.text_field)
    packs = pack_images(refer, split, cfg.data.batch_expressions)
    where = {i: k for k, p in enumerate(packs) for i in p}
    sent_image = {s.sent_id: r.image_id for r in refer.split_refs(split) for s in r.sentences}
    cache: dict = {"pack": None, "probs": {}}
    amp = device.type == "cuda" and cfg.train.amp
    ahead = _Prefetch(dataset, packs, refer, split, where, tokenize, cfg.train.num_workers)

    def predict(sent_id: int):
        k = where[sent_image[sent_id]]
        if cache["pack"] != k:
            b = ahead.take(k)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(
                    b["images"].to(device),
                    b["input_ids"].to(device),
                    b["attention_mask"].to(device),
                )
            if cfg.eval.upsample == "lavt":  # LAVT upsamples the logits and takes the argmax
                probs = (logits[:, 1].float() - logits[:, 0].float()).cpu().numpy()
            else:
                probs = logits.float().softmax(1)[:, 1].cpu().numpy()
            cache["pack"], cache["probs"] = k, dict(zip(b["sent_ids"].tolist(), probs, strict=True))
        return cache["probs"][sent_id]

    subsets = None
    t = cfg.train
    if t.selection == "best_gt" and t.selection_val == "official_draw":
        drawn = official_val_draw(refer, split, cfg.data.samples_workers)
        subsets = {"official_draw": [s for s in drawn.values() if s is not None]}
    m = evaluate_masks(
        refer,
        split,
        predict,
        resolution=cfg.eval.resolution,
        upsample=cfg.eval.upsample,
        point_rule=cfg.eval.point_rule,
        subsets=subsets,
    )
    model.train(was_training)
    return m


class _Prefetch:
    """The packs in the order :func:`evaluate_masks` asks for them (it walks the split's refs in
    order, and one pack is kept at a time), loaded ahead by ``workers`` processes; with none, or
    for a pack asked out of that order, loaded on the spot."""

    def __init__(self, dataset, packs, refer, split, where, tokenize, workers: int):
        self.dataset, self.packs, self.tokenize = dataset, packs, tokenize
        self.order: list[int] = []
        for r in refer.split_refs(split):
            if not self.order or self.order[-1] != where[r.image_id]:
                self.order.append(where[r.image_id])
        self.pos, self.it = 0, None
        if workers > 0 and self.order:
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=[packs[k] for k in self.order],
                num_workers=workers,
                collate_fn=partial(collate, tokenize=tokenize),
            )
            self.it = iter(loader)

    def take(self, k: int) -> dict:
        if self.it is not None and k in self.order[self.pos :]:
            while self.order[self.pos] != k:  # skip what was not asked for
                next(self.it)
                self.pos += 1
            self.pos += 1
            return next(self.it)
        return collate([self.dataset[i] for i in self.packs[k]], self.tokenize)


def eval_and_log(
    model, refer, cfg, tokenize, device, phase, epoch, gstep, log_path, tb, rank, world, counts
) -> dict:
    """Rank 0 scores the model (:func:`evaluate_model`) and logs it with the matching counts
    summed over the ranks; every rank takes part in the sum. Returns ``{}`` on the other ranks."""
    counts = global_counts(counts, world)
    m = evaluate_model(model, refer, cfg, tokenize, device) if rank == 0 else {}
    if rank == 0:
        append_log(
            log_path,
            {
                "phase": phase,
                "epoch": epoch,
                "global_step": gstep,
                "eval": m,
                "counts": counts.tolist(),
            },
        )
        print(
            f"{phase} epoch {epoch}: {m['split']} mIoU {m['mIoU']:.2f} oIoU {m['oIoU']:.2f} "
            f"prec@0.5 {m['prec@0.5']:.2f}"
        )
        if tb is not None:
            for k in ("mIoU", "oIoU", "prec@0.5"):
                tb.add_scalar(f"{phase}/val_{k}", m[k], gstep)
    if world > 1:
        dist.barrier()
    return m


def selection_oiou(m: dict) -> float:
    """The val oIoU ``train.selection: best_gt`` compares: over the official draw's expressions
    when they were scored (``train.selection_val: official_draw``), else over all of them."""
    sub = m.get("subsets", {}).get("official_draw")
    return float(sub["oIoU"] if sub is not None else m["oIoU"])


def logged_eval(log_path: Path, epoch: int, gstep: int) -> dict | None:
    """The evaluation the log holds for ``epoch`` at ``gstep`` (a run killed after it)."""
    try:
        recs = read_log(log_path)
    except ValueError:
        return None
    hits = [
        r["eval"] for r in recs if "eval" in r and (r["epoch"], r["global_step"]) == (epoch, gstep)
    ]
    return hits[-1] if hits else None


def global_counts(counts: torch.Tensor, world: int) -> torch.Tensor:
    """The counts summed over the ranks (a copy: the per-rank running counts stay local)."""
    if world == 1:
        return counts
    out = counts.clone()
    dist.all_reduce(out)
    return out
