"""Everything a training phase does around its loop (:func:`sssc.correct.train.train_phase`):
before it, the phase folder, the stores, the model and every epoch's batches; on a non-finite
loss, the stop that keeps the last good checkpoint; after it, the phase's ``metrics.json``."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.refer import Refer, pack_images
from ..eval.stores import evaluate_stage, gap_recovered
from ..rundir import (
    RESUMABLE_AFTER_DIVERGENCE,
    RunDirError,
    atomic_write_text,
    check_stage_config,
    clear_outputs,
    read_json,
    write_stage_config,
)
from ..store import Store, StoreError, check_join
from ..store.pools import binary_target
from .checkpoints import CheckpointError
from .data import pack_samples
from .trainutil import load_checkpoint

__all__ = [
    "PHASES",
    "TrainError",
    "build_model",
    "check_image_size",
    "check_init_weights",
    "init_weight_problems",
    "epoch_plans",
    "finished_metrics",
    "keep_good_checkpoint",
    "load_state",
    "load_weights",
    "objects_with_targets",
    "official_loads",
    "open_stores",
    "painted_oracle",
    "phase_metrics",
    "prepare_phase_dir",
    "schedule_horizon",
    "stop_diverged",
]

# phase -> (targets, initial weights from, epochs setting)
PHASES = {
    "bootstrap": ("s2", None, "bootstrap_epochs"),
    "correct": ("s1", "bootstrap", "correct_epochs"),
    "plus_epochs": ("s2", "bootstrap", "correct_epochs"),
}

_WHAT = {
    "bootstrap": "ZSBootstrap (LAVT trained on the S2 masks)",
    "correct": "S+S+C (LAVT corrected by greedy matching to S1)",
    "plus_epochs": "+epochs (ZSBootstrap trained on S2 for the correction's epochs)",
}


class TrainError(Exception):
    """Training cannot start or had to stop; the message says why and what to do."""


# ------------------------------------------------------------------------------------- before


def prepare_phase_dir(out: Path, cfg_dict: dict, phase: str, resume: bool) -> None:
    """Rank 0's check of ``<run>/<phase>/`` before it trains: without ``resume``, clear sssc's
    outputs there; with it, refuse a folder made with other settings (``train.lr`` and
    ``train.grad_clip`` may change after a NaN stop). Then write this run's ``config.yaml``."""
    stop_path = out / "stopped.json"  # a NaN stop's record: a resume may lower the lr
    try:
        if not resume:
            clear_outputs(out)
            stop_path.unlink(missing_ok=True)
        else:
            allow = RESUMABLE_AFTER_DIVERGENCE if stop_path.exists() else ()
            changed = check_stage_config(out, cfg_dict, phase, allow)
            if changed:
                print(f"{phase}: resuming after the NaN stop with {changed}")
    except RunDirError as e:
        raise TrainError(str(e)) from None
    write_stage_config(out, cfg_dict)


def open_stores(run_dir: Path, cfg: Any, targets: str) -> tuple[Store, Store | None, dict]:
    """The S1 store, read as this phase reads its pools, the S2 store for S2 targets (joined to
    S1 only when both were read the same way), and the producer the metrics name."""
    # S2's ids name candidates as Stage 2 read them; the pools are read as Stage 3 reads them
    background = cfg.train.label_background if targets == "s1" else "minimum"
    s1 = Store(run_dir / "segment", kind="S1", pools=cfg.select.candidates, background=background)
    s2 = Store(run_dir / "select", kind="S2") if targets == "s2" else None
    if s2 is not None:
        check_join(s1, s2)
    return s1, s2, (s2.producer if s2 else s1.labels_producer)


def init_weight_problems(t: Any) -> list[str]:
    """A message for each of ``train.swin_weights``/``bert_weights`` that names a missing file
    (or damaged shipped weights), and for empty ones unless ``train.random_init``."""
    from sssc.pretrained import WeightsError, existing_path

    problems = []
    for k in ("swin_weights", "bert_weights"):
        if getattr(t, k):
            try:
                existing_path(f"train.{k}", getattr(t, k))
            except WeightsError as e:
                problems.append(str(e))
    missing = [k for k in ("swin_weights", "bert_weights") if not getattr(t, k)]
    if missing and not t.random_init:
        problems.append(
            f"train.{' and train.'.join(missing)} empty: {t.model} would start from random "
            "weights. Give the pretrained files (README, 'Reproduce Table 1': Swin-B ImageNet-22k "
            "swin_base_patch4_window12_384_22k.pth, an HF bert-base-uncased folder), or set "
            "train.random_init: true to train from random weights on purpose"
        )
    return problems


def check_init_weights(t: Any) -> None:
    """Empty ``train.swin_weights``/``bert_weights`` are an error unless ``train.random_init``;
    a given one must exist (shipped ``sssc:NAME`` weights must match their checksums).

    Raises:
        TrainError: naming every such problem.
    """
    from sssc.pretrained import problems_message

    problems = init_weight_problems(t)
    if problems:
        raise TrainError(problems_message(problems, "training can start"))


def check_image_size(t: Any) -> None:
    """``train.image_size`` on the model's patch grid (:func:`sssc.correct.lavt.
    check_input_size`), checked before anything is written or run."""
    from .lavt import check_input_size, load_model_config

    try:
        check_input_size(t.image_size, load_model_config(t.model), "train.image_size")
    except ValueError as e:
        raise TrainError(str(e)) from None


def build_model(t: Any, run_dir: Path, init: str | None):
    """LAVT as ``train.model`` configures it: from its pretrained parts (``init`` None), or from
    the finished model of phase ``init`` (its ``best.pt`` under ``train.selection: best_gt``)."""
    from .lavt import create_model, set_drop_path

    if not init:
        check_init_weights(t)
    model = create_model(
        t.model, swin_weights=t.swin_weights or None, bert_weights=t.bert_weights or None
    )
    set_drop_path(model, t.drop_path)
    if init:
        init_ckpt = run_dir / init / "checkpoint.pt"
        state = load_state(init_ckpt)
        if state is None or not state["done"]:
            raise TrainError(
                f"{init_ckpt}: no finished {init} model; run `sssc-train --stage {init}` first"
            )
        if t.selection == "best_gt":  # the official code continues from the best epoch on GT
            state = load_state(run_dir / init / "best.pt") or state
        load_weights(model, state, init_ckpt, t.model, f"the {init} phase")
    return model


def epoch_plans(
    refer: Refer, cfg: Any, s1: Store, s2: Store | None, epochs: int
) -> list[list[list[int]]]:
    """Every epoch's global batches (lists of dataset keys), known up front: they fix the
    schedule's length and where a resume picks up."""
    data, t = cfg.data, cfg.train
    if data.batching == "samples":
        resized = t.image_size if data.samples_target_check == "resized" else None
        with_target = objects_with_targets(
            refer, data.train_split, s1, s2, resized, t.label_background
        )
        return [
            pack_samples(
                refer,
                data.train_split,
                data.batch_expressions,
                cfg.seed,
                e,
                t.sentences_per_object,
                data.samples_gpus,
                data.samples_images_per_load,
                with_target.__contains__,
                data.samples_order,
                draw=data.samples_draw,
                workers=data.samples_workers,
                skip_first=data.samples_skip_first,
            )
            for e in range(epochs)
        ]
    return [
        pack_images(
            refer,
            data.train_split,
            data.batch_expressions,
            shuffle=True,
            seed=cfg.seed * 100003 + e,
            per_object=t.sentences_per_object,
        )
        for e in range(epochs)
    ]


def schedule_horizon(refer: Refer, cfg: Any, plans: list, epochs: int) -> int:
    """The poly schedule's length: the steps the plans take, or under ``train.lr_horizon:
    loads`` the official one, the epochs times a GPU's image loads (:func:`official_loads`)."""
    if cfg.train.lr_horizon == "loads":
        return max(1, epochs * official_loads(refer, cfg.data))
    return max(1, sum(len(p) for p in plans))


def official_loads(refer: Refer, data: Any) -> int:
    """A GPU's image loads per epoch in the official code (``len(data_loader)``): its share of the
    train images (``DistributedSampler``: ``ceil(images / data.samples_gpus)``) in loads of
    ``data.samples_images_per_load``, the last, smaller one dropped. Its poly schedule decays over
    ``epochs`` times this many steps, while it takes a step per 15 unfolded expressions. The
    images are REFER's, as its training set counts them: those of every ref of the split, a ref
    sssc skips (no expression, or an empty mask) included."""
    n = len(refer.refer_image_ids(data.train_split))
    return math.ceil(n / data.samples_gpus) // data.samples_images_per_load


def objects_with_targets(
    refer: Refer,
    split: str,
    s1: Store,
    s2: Store | None,
    resized: int | None = None,
    background: str = "minimum",
) -> set[int]:
    """The objects (ann ids) with a target in this phase: an S2 choice (``s2`` given) or else an
    eligible S1 candidate. The official code skips the others (their mask files are empty).

    ``resized`` (``data.samples_target_check: resized``): also judge each target as the official
    loop does, after its nearest resize to ``resized`` x ``resized``: a target that is then all
    one value (``(mask == 0).all() or (mask == 1).all()``: the object vanished, or covers
    everything) has none. The target is the S2 mask as Stage 3 reads it (``background``,
    ``train.label_background``), or the object's label image: its eligible candidates painted
    1, 2, ... in id order, as the official Stage 1 saves it.
    """
    out = set()
    for image_id in refer.split_image_ids(split):
        if resized:
            rec = s1.get(image_id)
            # decoded once per image: its objects share candidates
            mask = functools.cache(lambda i, rec=rec: rec.candidate(i).decode())
        if s2 is not None:
            have = [o for o in s2.get(image_id).objects if o.chosen is not None]
            if resized:
                have = [
                    o
                    for o in have
                    if _two_values(binary_target(mask(o.chosen), background), resized)
                ]
            out.update(o.ann_id for o in have)
        elif resized:
            for o in rec.objects:
                if not o.eligible:
                    continue
                label = np.zeros((rec.height, rec.width), dtype=np.int32)
                for k, i in enumerate(o.eligible):
                    label[mask(i)] = k + 1
                if _two_values(label, resized):
                    out.add(o.ann_id)
        else:  # under painted pools, without painting every image
            out.update(s1.objects_with_candidates(image_id))
    return out


def _two_values(label: np.ndarray, size: int) -> bool:
    """Whether a label map (bool or int) still holds two values after PIL's nearest resize to
    ``size`` x ``size`` (what LAVT's transform and sssc's loader apply to targets)."""
    from PIL import Image

    if label.shape != (size, size):
        im = Image.fromarray(label.astype(np.int32), mode="I")
        label = np.asarray(im.resize((size, size), Image.NEAREST))
    return bool((label != label.flat[0]).any())


def load_state(path: Path) -> dict | None:
    """A checkpoint sssc wrote (``None`` without one); a damaged one is a TrainError."""
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        raise TrainError(str(e)) from None


def load_weights(model, state: dict, path: Path, name: str, what: str) -> None:
    """``model.load_state_dict(state["model"])``, or a TrainError that says why it cannot: the
    checkpoint was written by another version of the model config (e.g. lavt-tiny's decoder width,
    96 before 2026-12-05 and 48 since)."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        # torch's message: a header line, then one line per mismatching or missing weight
        first = next((x.strip() for x in str(e).splitlines()[1:] if x.strip()), str(e))
        raise TrainError(
            f"{path}: the model of {what} does not fit train.model={name} as it is configured "
            f"now ({first}); the model config changed since this run was written. Rerun with "
            "--no-resume to train it again (it overwrites sssc's outputs there), or use another "
            "--run"
        ) from None


def finished_metrics(path: Path) -> dict | None:
    """A finished stage's or phase's ``metrics.json``; ``None`` when missing or damaged (a phase
    is then evaluated again)."""
    try:
        return read_json(path, "metrics")
    except RunDirError:
        return None


# ------------------------------------------------------------------------------ the NaN stop


def stop_diverged(
    model, batch, out: Path, value: float, epoch: int, step: int, lr: float, rank: int, amp, device
) -> TrainError:
    """The error that stops a phase whose loss is ``value`` (NaN or inf) at 0-based ``epoch``,
    ``step``. Rank 0 keeps the last good checkpoint (:func:`keep_good_checkpoint`) and records the
    stop in ``stopped.json``, which lets a resume change ``train.lr`` and ``train.grad_clip``."""
    ckpt_path, kept = out / "checkpoint.pt", None
    if rank == 0:
        # the bare model in eval mode: rank 0 alone checks, no collective may run
        kept = keep_good_checkpoint(model, batch, ckpt_path, amp, device)
        record = {
            "reason": "non-finite loss",
            "loss": str(value),
            "epoch": epoch + 1,
            "step": step,
            "kept": kept,
        }
        atomic_write_text(out / "stopped.json", json.dumps(record) + "\n")
    where = f"{out.name}: loss is {value} at epoch {epoch + 1}, step {step}; stopped. "
    if kept is None and rank == 0:
        return TrainError(
            where + "No checkpoint from before the divergence exists; rerun with "
            "--no-resume and a lower train.lr (or train.grad_clip)"
        )
    return TrainError(
        where + f"The last good checkpoint, {kept}, is kept in {ckpt_path}; resume "
        "from it with a lower train.lr (or a train.grad_clip), e.g. --set "
        f"train.lr={lr / 10:g}"
    )


@torch.no_grad()
def _finite_on(model, batch, amp: bool, device) -> bool:
    """Whether ``model``'s weights are finite and give finite logits on ``batch``."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return False
    was = model.training
    model.eval()  # running statistics: no batch-norm all-reduce, as rank 0 checks alone
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    model.train(was)
    return bool(torch.isfinite(logits).all())


def keep_good_checkpoint(model, batch, ckpt_path: Path, amp: bool, device) -> str | None:
    """After a non-finite loss: keep as ``checkpoint.pt`` the newest checkpoint whose weights are
    finite on the batch that diverged (the latest, else the one before it); a diverged one is
    moved to ``checkpoint.diverged.pt``. Returns what was kept, or ``None``."""
    prev = ckpt_path.with_name("checkpoint.prev.pt")
    bad = ckpt_path.with_name("checkpoint.diverged.pt")
    for path in (ckpt_path, prev):
        if not path.exists():
            continue
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        if _finite_on(model, batch, amp, device):
            if path == prev:  # the latest was moved to checkpoint.diverged.pt below
                os.replace(prev, ckpt_path)
            return f"epoch {state['epoch'] + 1}, step {state['step']}"
        if path == ckpt_path:
            os.replace(ckpt_path, bad)
    return None


# -------------------------------------------------------------------------------------- after


def phase_metrics(
    phase: str,
    cfg: Any,
    run_dir: Path,
    refer: Refer,
    last: dict,
    best: dict | None,
    epochs: int,
    producer: dict,
    counts: list[int],
) -> dict:
    """The ``metrics.json`` object of a finished phase: the kept model's scores (the last epoch's,
    or under ``train.selection: best_gt`` the best on GT, said so), what it was trained on, and for
    S1 targets how many expressions the matching left unmatched or without a candidate.

    ``correct`` also gets ``gap_recovered``, the share of the S+S -> S1-oracle mIoU gap it closes.
    With ``select.candidates: painted`` its oracle is scored on the pools it trained on (the painted
    view, ``train.label_background`` dropped), recorded as ``oracle``; Stage 1's own oracle
    (``segment/metrics.json``) picks from the whole masks, which this phase never saw."""
    t = cfg.train
    n, unmatched, nocand = counts
    if t.selection == "best_gt" and best is not None:
        kept = {k: v for k, v in best.items() if k != "epoch"}
        selection = f"selected on GT: epoch {best['epoch']} of {epochs}, best val oIoU"
        if "official_draw" in best.get("subsets", {}):
            selection += " over one expression per ref (the official loop's draw)"
    else:
        kept, selection = last, "last epoch (no GT)"
    metrics = {
        "stage": phase,
        "what": _WHAT[phase],
        **kept,
        "producer": producer,
        "model": t.model,
        "epochs": epochs,
        "selection": selection,
        "unmatched": {
            "policy": t.unmatched,
            "expressions_seen": n,
            "unmatched": unmatched,
            "no_eligible_candidate": nocand,
        }
        if PHASES[phase][0] == "s1"
        else None,
    }
    if phase == "correct":
        if cfg.select.candidates == "whole":
            oracle = finished_metrics(run_dir / "segment" / "metrics.json")
        else:
            oracle = metrics["oracle"] = painted_oracle(cfg, run_dir, refer)
        zero_shot = finished_metrics(run_dir / "select" / "metrics.json")
        metrics["gap_recovered"] = (
            gap_recovered(oracle["mIoU"], zero_shot["mIoU"], kept["mIoU"])
            if oracle and zero_shot
            else None
        )
    return metrics


def painted_oracle(cfg: Any, run_dir: Path, refer: Refer) -> dict | None:
    """The S1 oracle over the pools the correct phase trained on, on ``data.eval_split``: its
    mIoU, oIoU, prec@0.5 and the view (``None`` if the S1 store cannot be scored)."""
    try:
        m = evaluate_stage(
            "segment",
            cfg,
            run_dir,
            refer=refer,
            pools=cfg.select.candidates,
            background=cfg.train.label_background,
        )
    except StoreError as e:
        print(f"no S1 oracle over the {cfg.select.candidates} pools: {e}")
        return None
    return {k: m[k] for k in ("what", "split", "mIoU", "oIoU", "prec@0.5", "pools")}
