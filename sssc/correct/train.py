"""Stage 3 training: one loop for ZSBootstrap, the correction phase and the ``+epochs`` baseline.

Phases (each writes ``<run>/<phase>/``):

* ``bootstrap``: LAVT from its initial weights, cross-entropy on the S2 masks (ZSBootstrap);
* ``correct``: from the final ``bootstrap`` model, the matching loss on the S1 pools (S+S+C);
* ``plus_epochs``: from the final ``bootstrap`` model, cross-entropy on S2 for as many epochs as
  ``correct`` (the paper's "+epochs" baseline, Table 4): the same compute without correction.

Each phase has its own AdamW (LAVT's parameter groups: no decay on norms and relative position
tables, BERT's embeddings and last layers frozen) and poly schedule over its own steps. The model
kept is the last epoch's (``train.selection: last``): model selection never looks at GT masks,
as the setting is weakly supervised. ``train.selection: best_gt`` keeps the official code's
choice instead, the epoch with the best val oIoU against GT (``best.pt``; the next phase starts
from it), and every report of it says "selected on GT".

Output: ``checkpoint.pt`` (atomic: a temporary file, then ``os.replace``; every epoch, every
``train.checkpoint_every`` steps, and at the end), ``log.jsonl`` (a line per step and per
evaluation), TensorBoard scalars under ``tb/`` when tensorboard is installed, ``curves.png`` when
matplotlib is, and ``metrics.json`` (the last epoch's model on ``data.eval_split``).

Data parallel: run under ``torchrun``; every rank packs the same global batches and takes every
``world``-th image of each (``images``), or its consecutive share of the samples (``samples``:
whole official GPU cuts, one each with as many ranks as ``data.samples_gpus``). The loss is
normalised by the global batch's weight (one all-reduce), and batch norm is synchronised, so the
losses equal a one-process run of the same global batch.

Host syncs per step: the loss is read once for the NaN/inf check and the log (``float(...)``);
everything else stays on the device until a log line.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..config import config_to_dict, resolve_device
from ..data.refer import Refer, pack_images
from ..eval.metrics import evaluate_masks
from ..eval.stores import gap_recovered
from ..rundir import (
    RESUMABLE_AFTER_DIVERGENCE,
    RunDirError,
    atomic_write_text,
    check_stage_config,
    clear_outputs,
    read_json,
    write_stage_config,
)
from ..store import Store, check_join
from .checkpoints import CheckpointError
from .data import ImageSet, collate, pack_samples, rank_keys
from .losses import batch_loss, match_targets, soft_iou_loss_sums, weighted_ce_sums
from .trainutil import (
    append_log,
    cleanup_dist,
    get_rng,
    load_checkpoint,
    plot_curves,
    progress_bar,
    read_log,
    save_checkpoint,
    set_rng,
    setup_dist,
    sync_batchnorm,
    tensorboard,
    truncate_log,
)

__all__ = [
    "PHASES",
    "TrainError",
    "build_optimizer",
    "check_init_weights",
    "evaluate_model",
    "train_phase",
]

# phase -> (targets, initial weights from, epochs setting)
PHASES = {
    "bootstrap": ("s2", None, "bootstrap_epochs"),
    "correct": ("s1", "bootstrap", "correct_epochs"),
    "plus_epochs": ("s2", "bootstrap", "correct_epochs"),
}


class TrainError(Exception):
    """Training cannot start or had to stop; the message says why and what to do."""


def train_phase(
    phase: str, cfg: Any, run_dir: str | Path, refer: Refer | None = None, on_step=None
) -> dict:
    """Train one phase (resuming from its checkpoint when ``train.resume``) and evaluate it.

    Args:
        phase: ``bootstrap`` | ``correct`` | ``plus_epochs``.
        cfg: a :class:`sssc.config.RunConfig`.
        run_dir: holds ``segment/`` and ``select/`` (the stores) and gets ``<phase>/``.
        refer: the dataset, if already open.
        on_step: optional ``f(global_step)`` called after each optimizer step (tests use it to
            stop a run mid-epoch).

    Returns:
        The ``metrics.json`` object.
    """
    from .lavt import build_tokenizer, create_model, set_drop_path

    t, run_dir = cfg.train, Path(run_dir)
    targets, init, epochs_key = PHASES[phase]
    epochs, out = getattr(t, epochs_key), run_dir / phase
    rank, world, own_pg = setup_dist()
    if cfg.data.batching == "samples" and cfg.data.samples_gpus % world:
        cleanup_dist(own_pg)
        raise TrainError(
            f"data.batching=samples cuts each step into data.samples_gpus={cfg.data.samples_gpus} "
            f"GPU shares, which {world} ranks cannot take whole (an image would be split between "
            "ranks); run with a number of ranks that divides it"
        )
    dev = resolve_device(cfg.device)
    device = torch.device(
        dev if world == 1 or dev != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    )
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    stop_path = out / "stopped.json"  # a NaN stop's record: a resume may lower the lr
    cfg_dict = config_to_dict(cfg)
    changed: list = []
    if rank == 0:
        try:
            if not t.resume:
                clear_outputs(out)
                stop_path.unlink(missing_ok=True)
            else:
                allow = RESUMABLE_AFTER_DIVERGENCE if stop_path.exists() else ()
                changed = check_stage_config(out, cfg_dict, phase, allow)
        except RunDirError as e:
            cleanup_dist(own_pg)
            raise TrainError(str(e)) from None
        write_stage_config(out, cfg_dict)
    if world > 1:
        dist.barrier()
    refer = refer or Refer.from_config(cfg.data)
    # S2's ids name candidates as Stage 2 read them; the pools are read as Stage 3 reads them
    background = t.label_background if targets == "s1" else "minimum"
    s1 = Store(run_dir / "segment", kind="S1", pools=cfg.select.candidates, background=background)
    s2 = Store(run_dir / "select", kind="S2") if targets == "s2" else None
    if s2 is not None:
        check_join(s1, s2)
    producer = s2.producer if s2 else s1.labels_producer

    threads = t.bootstrap_threads if phase == "bootstrap" and t.bootstrap_threads else t.threads
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed), np.random.seed(cfg.seed), random.seed(cfg.seed)
    if not init:
        try:
            check_init_weights(t)
        except TrainError:
            cleanup_dist(own_pg)
            raise
    model = create_model(
        t.model, swin_weights=t.swin_weights or None, bert_weights=t.bert_weights or None
    )
    set_drop_path(model, t.drop_path)
    if init:
        init_ckpt = run_dir / init / "checkpoint.pt"
        state = _load(init_ckpt)
        if state is None or not state["done"]:
            raise TrainError(
                f"{init_ckpt}: no finished {init} model; run `sssc-train --stage {init}` first"
            )
        if t.selection == "best_gt":  # the official code continues from the best epoch on GT
            state = _load(run_dir / init / "best.pt") or state
        _load_model(model, state, init_ckpt, t.model, f"the {init} phase")
    words = sorted({w for r in refer.refs.values() for s in r.sentences for w in s.tokens})
    tokenize = build_tokenizer(model.config, vocab_words=words, bert_path=t.bert_weights or None)
    model.to(device)
    if world > 1:
        model = sync_batchnorm(model, device)
    net = torch.compile(model) if t.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)

    # Every epoch's packing is known up front: the schedule's length and the sampler position.
    if cfg.data.batching == "samples":
        with_target = _objects_with_targets(refer, cfg.data.train_split, s1, s2)
        plans = [
            pack_samples(
                refer,
                cfg.data.train_split,
                cfg.data.batch_expressions,
                cfg.seed,
                e,
                t.sentences_per_object,
                cfg.data.samples_gpus,
                cfg.data.samples_images_per_load,
                with_target.__contains__,
            )
            for e in range(epochs)
        ]
    else:
        plans = [
            pack_images(
                refer,
                cfg.data.train_split,
                cfg.data.batch_expressions,
                shuffle=True,
                seed=cfg.seed * 100003 + e,
                per_object=t.sentences_per_object,
            )
            for e in range(epochs)
        ]
    total = max(1, sum(len(p) for p in plans))
    if t.lr_horizon == "loads":  # the official horizon: the image loads, not the steps
        total = max(1, epochs * _official_loads(refer, cfg.data))
    opt = build_optimizer(model, t)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: max(0.0, 1.0 - s / total) ** t.poly_power
    )
    gen = torch.Generator().manual_seed(cfg.seed)  # the matching's random draws
    epoch, step, gstep, counts_resumed = 0, 0, 0, None
    state = _load(ckpt_path) if t.resume else None
    if state is not None and state.get("phase") == phase:
        done = _metrics_if_readable(out / "metrics.json") if state["done"] else None
        if done is not None:
            cleanup_dist(own_pg)
            return done
        _load_model(model, state, ckpt_path, t.model, f"this {phase} phase")
        opt.load_state_dict(state["optimizer"]), sched.load_state_dict(state["scheduler"])
        if changed:  # after a NaN stop: the new lr (and clipping) from here on
            _set_base_lr(opt, sched, t.lr)
            print(f"{phase}: resuming after the NaN stop with {changed}")
        epoch, step, gstep = state["epoch"], state["step"], state["global_step"]
        set_rng(state["rng"], gen)
        counts_resumed = state.get("counts")
        if rank == 0:
            try:
                truncate_log(log_path, gstep)
            except ValueError as e:
                cleanup_dist(own_pg)
                raise TrainError(str(e)) from None
        print(f"{phase}: resuming from {ckpt_path} at epoch {epoch + 1}, step {step}")
    elif rank == 0 and log_path.exists():
        log_path.unlink()
    if rank == 0:
        stop_path.unlink(missing_ok=True)

    dataset = ImageSet(
        refer,
        cfg.data.train_split,
        t.image_size,
        targets,
        s1,
        s2,
        t.cache_data,
        t.sentences_per_object,
        cfg.seed,
        cfg.data.text_field,
        t.label_background,
    )
    weights = torch.tensor(t.class_weights, device=device)
    iou_weight = t.iou_loss_weight if phase in t.iou_loss_phases else 0.0
    tb = tensorboard(out) if rank == 0 else None
    amp = device.type == "cuda" and t.amp
    # expressions seen, unmatched, without candidates; kept by rank 0's checkpoint on resume
    counts = torch.zeros(3, dtype=torch.int64, device=device)
    if counts_resumed is not None and rank == 0:
        counts += counts_resumed.to(device)
    last: dict | None = None  # rank 0's latest evaluation ({} on the other ranks)
    best_path = out / "best.pt"
    best = state.get("best") if state is not None and state.get("phase") == phase else None

    def evaluate() -> dict:  # reads epoch/gstep at call time
        return _eval_and_log(
            model,
            refer,
            cfg,
            tokenize,
            device,
            phase,
            epoch,
            gstep,
            log_path,
            tb,
            rank,
            world,
            counts,
        )

    def save(done=False):
        if rank == 0:
            save_checkpoint(
                ckpt_path,
                {
                    "config": cfg_dict,
                    "phase": phase,
                    "done": done,
                    "epoch": epoch,
                    "step": step,
                    "global_step": gstep,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": get_rng(gen),
                    "counts": counts.cpu(),
                    "best": best,
                    # what `sssc predict` needs to rebuild the model and its tokenizer
                    "model_name": t.model,
                    "image_size": t.image_size,
                    "vocab": list(getattr(tokenize, "vocab", [])),
                    "bert_path": t.bert_weights,
                },
                keep_previous=True,
            )

    while epoch < epochs:
        dataset.set_epoch(epoch)
        mine = [rank_keys(b, rank, world) for b in plans[epoch][step:]]
        if any(not b for b in mine):
            raise TrainError(
                f"a batch has fewer images than the {world} ranks; raise data.batch_expressions"
            )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=mine,
            num_workers=t.num_workers,
            collate_fn=partial(collate, tokenize=tokenize),
            # Its own seed, not a draw from the global RNG (which dropout uses): a resume
            # mid-epoch makes a new iterator, and must leave that RNG where the checkpoint has it.
            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch),
        )
        net.train()
        if not t.bert_dropout:  # LAVT's BERT stays in eval mode: no dropout in the text encoder
            model.bert.eval()
        bar = progress_bar(len(plans[epoch]), step, f"{phase} {epoch + 1}/{epochs}", rank)
        try:  # the bar is closed on an error too, so that its message starts a line
            for batch in loader:
                t0 = time.perf_counter()
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net(batch["images"], batch["input_ids"], batch["attention_mask"])
                if targets == "s2":
                    target, sample_weight = batch["target"], None
                else:
                    m = match_targets(
                        logits,
                        batch["candidates"],
                        batch["cand_group"],
                        batch["eligible"],
                        batch["ref_object"],
                        batch["ref_group"],
                        t.unmatched,
                        t.match_size,
                        gen,
                        t.single_candidate,
                        t.match_ties,
                    )
                    target, sample_weight = m.target, m.weight
                    counts[1:] += torch.stack([m.unmatched.sum(), m.no_candidate.sum()])
                counts[0] += target.shape[0]
                ce = weighted_ce_sums(logits, target, weights, sample_weight, t.loss_norm)
                iou = soft_iou_loss_sums(logits, target, sample_weight) if iou_weight else None
                loss, value = batch_loss(
                    ce, iou, iou_weight, world, dist.all_reduce if world > 1 else None
                )
                value = float(value)  # host sync: NaN check and log
                if not math.isfinite(value):
                    kept = None
                    if rank == 0:
                        # the bare model in eval mode: rank 0 alone checks, no collective may run
                        kept = _keep_good_checkpoint(model, batch, ckpt_path, amp, device)
                        atomic_write_text(
                            stop_path,
                            json.dumps(
                                {
                                    "reason": "non-finite loss",
                                    "loss": str(value),
                                    "epoch": epoch + 1,
                                    "step": step,
                                    "kept": kept,
                                }
                            )
                            + "\n",
                        )
                    cleanup_dist(own_pg)
                    where = f"{phase}: loss is {value} at epoch {epoch + 1}, step {step}; stopped. "
                    if kept is None and rank == 0:
                        raise TrainError(
                            where + "No checkpoint from before the divergence exists; rerun with "
                            "--no-resume and a lower train.lr (or train.grad_clip)"
                        )
                    raise TrainError(
                        where + f"The last good checkpoint, {kept}, is kept in {ckpt_path}; resume "
                        "from it with a lower train.lr (or a train.grad_clip), e.g. --set "
                        f"train.lr={t.lr / 10:g}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                sched.step()
                step, gstep = step + 1, gstep + 1
                rate = len(target) * world / (time.perf_counter() - t0)
                rec = {
                    "phase": phase,
                    "epoch": epoch + 1,
                    "step": step,
                    "global_step": gstep,
                    "loss": value,
                    # train.lr's value now (Swin's groups run at train.backbone_lr_scale of it)
                    "lr": next(g["lr"] for g in opt.param_groups if g.get("lr_scale", 1.0) == 1.0),
                    "samples_per_s": rate,
                }
                if rank == 0:
                    append_log(log_path, rec)
                    if tb is not None:
                        tb.add_scalar(f"{phase}/loss", value, gstep)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", samples_s=f"{rate:.0f}")
                if (
                    t.checkpoint_every
                    and step % t.checkpoint_every == 0
                    and step < len(plans[epoch])
                ):
                    save()
                if on_step is not None:
                    on_step(gstep)
        finally:
            if bar is not None:
                bar.close()
        epoch, step = epoch + 1, 0
        # best_gt: the official code scores every epoch on val to keep the best one.
        if epoch % t.eval_every == 0 or epoch == epochs or t.selection == "best_gt":
            last = evaluate()
            if (
                t.selection == "best_gt"
                and rank == 0
                and (best is None or last["oIoU"] > best["oIoU"])
            ):
                best = {"epoch": epoch, **last}
                save_checkpoint(
                    best_path, {"phase": phase, "model": model.state_dict(), "metrics": best}
                )
        save()
    if last is None and world == 1:  # resumed after the last epoch's checkpoint
        last = _logged_eval(log_path, epoch, gstep)  # its evaluation, when the log has it
    if last is None:  # every rank takes part
        last = evaluate()
    total_counts = _global(counts, world)
    if rank == 0:
        n, unmatched, nocand = (int(c) for c in total_counts)
        if t.selection == "best_gt" and best is not None:
            kept = {k: v for k, v in best.items() if k != "epoch"}
            selection = f"selected on GT: epoch {best['epoch']} of {epochs}, best val oIoU"
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
            if targets == "s1"
            else None,
        }
        if phase == "correct":
            metrics["gap_recovered"] = _gap_recovered(run_dir, kept["mIoU"])
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        plot_curves(log_path, out / "curves.png")
        save(done=True)
    if world > 1:
        dist.barrier()
    cleanup_dist(own_pg)
    return read_json(out / "metrics.json", "metrics")


def _official_loads(refer: Refer, data: Any) -> int:
    """A GPU's image loads per epoch in the official code (``len(data_loader)``): its share of the
    train images (``DistributedSampler``: ``ceil(images / data.samples_gpus)``) in loads of
    ``data.samples_images_per_load``, the last, smaller one dropped. Its poly schedule decays over
    ``epochs`` times this many steps, while it takes a step per 15 unfolded expressions."""
    n = len(refer.split_image_ids(data.train_split))
    return math.ceil(n / data.samples_gpus) // data.samples_images_per_load


def _objects_with_targets(refer: Refer, split: str, s1: Store, s2: Store | None) -> set[int]:
    """The objects (ann ids) with a target in this phase: an S2 choice (``s2`` given) or else an
    eligible S1 candidate. The official code skips the others (their mask files are empty)."""
    out = set()
    for image_id in refer.split_image_ids(split):
        if s2 is not None:
            out.update(o.ann_id for o in s2.get(image_id).objects if o.chosen is not None)
        else:
            out.update(o.ann_id for o in s1.get(image_id).objects if o.eligible)
    return out


def _gap_recovered(run_dir: Path, miou: float) -> float | None:
    """The share of the S+S -> S1-oracle mIoU gap that this model closes (None without both)."""
    try:
        oracle = read_json(run_dir / "segment" / "metrics.json", "metrics")["mIoU"]
        zero_shot = read_json(run_dir / "select" / "metrics.json", "metrics")["mIoU"]
    except (RunDirError, OSError, KeyError, TypeError):
        return None
    return gap_recovered(oracle, zero_shot, miou)


def check_init_weights(t: Any) -> None:
    """Empty ``train.swin_weights``/``bert_weights`` are an error unless ``train.random_init``;
    a given one must exist (shipped ``sssc:NAME`` weights must match their checksums)."""
    from sssc.pretrained import WeightsError, existing_path

    for k in ("swin_weights", "bert_weights"):
        if getattr(t, k):
            try:
                existing_path(f"train.{k}", getattr(t, k))
            except WeightsError as e:
                raise TrainError(str(e)) from None
    missing = [k for k in ("swin_weights", "bert_weights") if not getattr(t, k)]
    if missing and not t.random_init:
        raise TrainError(
            f"train.{' and train.'.join(missing)} empty: {t.model} would start from random "
            "weights. Give the pretrained files (README, 'Reproduce Table 1': Swin-B ImageNet-22k "
            "swin_base_patch4_window12_384_22k.pth, an HF bert-base-uncased folder), or set "
            "train.random_init: true to train from random weights on purpose"
        )


def _logged_eval(log_path: Path, epoch: int, gstep: int) -> dict | None:
    """The evaluation the log holds for ``epoch`` at ``gstep`` (a run killed after it)."""
    try:
        recs = read_log(log_path)
    except ValueError:
        return None
    hits = [
        r["eval"] for r in recs if "eval" in r and (r["epoch"], r["global_step"]) == (epoch, gstep)
    ]
    return hits[-1] if hits else None


def _load(path: Path) -> dict | None:
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        raise TrainError(str(e)) from None


def _load_model(model, state: dict, path: Path, name: str, what: str) -> None:
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


def _metrics_if_readable(path: Path) -> dict | None:
    """A finished phase's metrics; ``None`` when missing or damaged (it is evaluated again)."""
    try:
        return read_json(path, "metrics")
    except RunDirError:
        return None


def _set_base_lr(opt, sched, lr: float) -> None:
    """Make ``lr`` the schedule's base (after a resume with a new train.lr), at its step."""
    factor = sched.lr_lambdas[0](sched.last_epoch)
    for g in opt.param_groups:
        base = lr * g.get("lr_scale", 1.0)  # Swin's groups keep train.backbone_lr_scale
        g["initial_lr"], g["lr"] = base, base * factor
    sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
    sched._last_lr = [g["lr"] for g in opt.param_groups]


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


def _keep_good_checkpoint(model, batch, ckpt_path: Path, amp: bool, device) -> str | None:
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


def build_optimizer(model, t: Any) -> torch.optim.AdamW:
    """AdamW over LAVT's parameter groups (:func:`sssc.correct.lavt.param_groups`), as every
    phase trains: no weight decay on norms and relative position tables, and only BERT's first
    ``train.bert_train_layers`` encoder layers (``-1``: all of BERT) in the optimizer. PyTorch's
    fused implementation where the parameters' device has one (CPU and CUDA).

    With ``train.backbone_lr_scale`` below 1, Swin's parameters get their own groups (same
    weight decay) at that fraction of ``train.lr``; each group keeps its fraction as
    ``lr_scale``, which the poly schedule and a resume with a new ``train.lr`` respect."""
    from .lavt import param_groups

    bert_layers = None if t.bert_train_layers < 0 else t.bert_train_layers
    groups = param_groups(model, t.weight_decay, bert_layers)
    if t.backbone_lr_scale != 1:
        swin = {id(p) for p in model.swin.parameters()}
        split = []
        for g in groups:
            for in_swin, scale in ((True, t.backbone_lr_scale), (False, 1.0)):
                params = [p for p in g["params"] if (id(p) in swin) == in_swin]
                if params:
                    split.append({**g, "params": params, "lr_scale": scale})
        groups = split
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["lr"] = t.lr * g["lr_scale"]
    # The fused kernel: the same update, one pass over all tensors (5% of a lavt-tiny CPU step).
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=t.lr, fused=fused)


_WHAT = {
    "bootstrap": "ZSBootstrap (LAVT trained on the S2 masks)",
    "correct": "S+S+C (LAVT corrected by greedy matching to S1)",
    "plus_epochs": "+epochs (ZSBootstrap trained on S2 for the correction's epochs)",
}


def _eval_and_log(
    model, refer, cfg, tokenize, device, phase, epoch, gstep, log_path, tb, rank, world, counts
) -> dict:
    counts = _global(counts, world)
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


def _global(counts: torch.Tensor, world: int) -> torch.Tensor:
    """The counts summed over the ranks (a copy: the per-rank running counts stay local)."""
    if world == 1:
        return counts
    out = counts.clone()
    dist.all_reduce(out)
    return out


@torch.no_grad()
def evaluate_model(
    model, refer: Refer, cfg: Any, tokenize, device, split: str | None = None
) -> dict:
    """Score a model on a split (default ``data.eval_split``) against the GT masks.

    Predictions are the model's maps at ``train.image_size`` (the logit difference under
    ``eval.upsample: lavt``, else the foreground probability), computed a packed batch at a time
    when :func:`evaluate_masks` first asks for one of its expressions.
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

    def predict(sent_id: int):
        k = where[sent_image[sent_id]]
        if cache["pack"] != k:
            b = collate([dataset[i] for i in packs[k]], tokenize)
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

    m = evaluate_masks(
        refer,
        split,
        predict,
        resolution=cfg.eval.resolution,
        upsample=cfg.eval.upsample,
        point_rule=cfg.eval.point_rule,
    )
    model.train(was_training)
    return m
