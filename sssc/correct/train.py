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
``train.checkpoint_every`` steps, at the end, and after the step in progress when a signal asks
for a stop inside :func:`sssc.correct.trainutil.graceful_stop`, which ``sssc-train`` opens),
``log.jsonl`` (a line per step and per evaluation), TensorBoard scalars under ``tb/`` when
tensorboard is installed, ``curves.png`` when matplotlib is, and ``metrics.json`` (the last
epoch's model on ``data.eval_split``).

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
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..config import config_to_dict, resolve_device
from ..data.refer import Refer
from ..rundir import atomic_write_text, read_json
from .data import ImageSet, collate, rank_keys
from .evaluate import eval_and_log, evaluate_model, global_counts, logged_eval, selection_oiou
from .losses import batch_loss, match_targets, soft_iou_loss_sums, weighted_ce_sums
from .optim import build_optimizer, poly_schedule, set_base_lr
from .phase import (
    PHASES,
    TrainError,
    build_model,
    check_image_size,
    check_init_weights,
    epoch_plans,
    finished_metrics,
    load_state,
    load_weights,
    open_stores,
    phase_metrics,
    prepare_phase_dir,
    schedule_horizon,
    stop_diverged,
)
from .trainutil import (
    Interrupted,
    append_log,
    cleanup_dist,
    get_rng,
    plot_curves,
    progress_bar,
    save_checkpoint,
    set_rng,
    setup_dist,
    stop_signal,
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
    rank, world, own_pg = setup_dist()
    try:  # the process group this call made is destroyed however it ends
        return _train_phase(phase, cfg, Path(run_dir), refer, on_step, rank, world)
    finally:
        cleanup_dist(own_pg)


def _train_phase(phase, cfg, run_dir: Path, refer, on_step, rank: int, world: int) -> dict:
    from .lavt import build_tokenizer

    t = cfg.train
    targets, init, epochs_key = PHASES[phase]
    epochs, out = getattr(t, epochs_key), run_dir / phase
    check_image_size(t)
    if cfg.data.batching == "samples" and cfg.data.samples_gpus % world:
        raise TrainError(
            f"data.batching=samples cuts each step into data.samples_gpus={cfg.data.samples_gpus} "
            f"GPU shares, which {world} ranks cannot take whole (an image would be split between "
            "ranks); run with a number of ranks that divides it"
        )
    dev = resolve_device(cfg.device)
    device = torch.device(
        dev if world == 1 or dev != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    )
    if device.type == "cuda" and device.index is not None:  # the device of this rank's
        torch.cuda.set_device(device)  # collectives (all_gather_object's too)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    cfg_dict = config_to_dict(cfg)
    if rank == 0:
        prepare_phase_dir(out, cfg_dict, phase, t.resume)
    if world > 1:
        dist.barrier()
    refer = refer or Refer.from_config(cfg.data)
    s1, s2, producer = open_stores(run_dir, cfg, targets)

    threads = t.bootstrap_threads if phase == "bootstrap" and t.bootstrap_threads else t.threads
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed), np.random.seed(cfg.seed), random.seed(cfg.seed)
    model = build_model(t, run_dir, init)
    words = sorted({w for r in refer.refs.values() for s in r.sentences for w in s.tokens})
    tokenize = build_tokenizer(model.config, vocab_words=words, bert_path=t.bert_weights or None)
    model.to(device)
    if world > 1:
        model = sync_batchnorm(model, device)
    net = torch.compile(model) if t.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)

    plans = epoch_plans(refer, cfg, s1, s2, epochs)
    opt = build_optimizer(model, t)
    sched = poly_schedule(opt, schedule_horizon(refer, cfg, plans, epochs), t.poly_power)
    gen = torch.Generator().manual_seed(cfg.seed)  # the matching's random draws
    epoch, step, gstep, counts_resumed = 0, 0, 0, None
    state = load_state(ckpt_path) if t.resume else None
    if state is not None and state.get("phase") == phase:
        done = finished_metrics(out / "metrics.json") if state["done"] else None
        if done is not None:
            return done
        load_weights(model, state, ckpt_path, t.model, f"this {phase} phase")
        opt.load_state_dict(state["optimizer"]), sched.load_state_dict(state["scheduler"])
        # After a NaN stop, a resume may lower train.lr: the new one from here on, whether or not
        # config.yaml already has it (a rerun killed before its first checkpoint).
        if state.get("config", {}).get("train", {}).get("lr", t.lr) != t.lr:
            set_base_lr(opt, sched, t.lr)
        epoch, step, gstep = state["epoch"], state["step"], state["global_step"]
        rng = state["rng"]
        if isinstance(rng, list):  # each rank's own streams; with another world size, rank 0's
            rng = rng[rank] if len(rng) == world else rng[0]
        set_rng(rng, gen)
        counts_resumed = state.get("counts")
        if rank == 0:
            try:
                truncate_log(log_path, gstep)
            except ValueError as e:
                raise TrainError(str(e)) from None
        print(f"{phase}: resuming from {ckpt_path} at epoch {epoch + 1}, step {step}")
    elif rank == 0 and log_path.exists():
        log_path.unlink()
    if rank == 0:
        (out / "stopped.json").unlink(missing_ok=True)

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
        t.candidates_at,
    )
    weights = torch.tensor(t.class_weights, device=device)
    iou_weight = t.iou_loss_weight if phase in t.iou_loss_phases else 0.0
    tb = tensorboard(out) if rank == 0 else None
    amp = device.type == "cuda" and t.amp
    # expressions seen, unmatched, without candidates, per rank; the checkpoint keeps their sum,
    # which rank 0 resumes with
    counts = torch.zeros(3, dtype=torch.int64, device=device)
    if counts_resumed is not None and rank == 0:
        counts += counts_resumed.to(device)
    last: dict | None = None  # rank 0's latest evaluation ({} on the other ranks)
    # A stop asked for by a signal (trainutil.graceful_stop): the ranks agree on it in the loss's
    # all-reduce, so that they all stop after the same step.
    stop_votes, vote = torch.zeros((), device=device), torch.zeros(1, device=device)

    def reduce(sums: torch.Tensor) -> None:
        vote.fill_(0.0 if stop_signal() is None else 1.0)  # on the device: no copy from the host
        both = torch.cat([sums, vote.to(sums.dtype)])
        dist.all_reduce(both)
        sums.copy_(both[:-1]), stop_votes.copy_(both[-1])

    def stop_asked() -> bool:  # at an epoch's end (in a step: read with the loss value)
        return bool(stop_votes) if world > 1 else stop_signal() is not None

    def interrupted() -> Interrupted:
        signum = stop_signal() or signal.SIGTERM  # another rank's signal: torchrun's SIGTERM
        where = f"step {step} of epoch {epoch + 1}" if step else f"the end of epoch {epoch}"
        return Interrupted(
            f"{phase}: stopped by {signal.Signals(signum).name} at {where}/{epochs}, its state "
            f"saved in {ckpt_path}; the same command resumes it from there",
            signum,
        )

    best = state.get("best") if state is not None and state.get("phase") == phase else None

    def evaluate() -> dict:  # reads epoch/gstep at call time
        return eval_and_log(
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

    def save(done=False, total=None):
        # Every rank calls it mid-training (the done save runs on rank 0 alone, with ``total``):
        # the counts are summed, and each rank's RNG streams gathered, as dropout and drop path
        # draw from them in proportion to the rank's own share of the batch.
        total = global_counts(counts, world) if total is None else total
        rng = get_rng(gen)
        if world > 1 and not done:
            every: list = [None] * world
            dist.all_gather_object(every, rng)
            rng = every
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
                    "rng": rng,
                    "counts": total.cpu(),  # all ranks' so far: rank 0 resumes with them
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
        if t.epoch_seed >= 0 and step == 0:
            # The official loop's per-epoch torch.manual_seed(100): every rank's dropout and drop
            # path draw the same masks each epoch. Mid-epoch, a resume has the RNG state that
            # this seed led to from the checkpoint instead.
            torch.manual_seed(t.epoch_seed)
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
            pin_memory=device.type == "cuda",  # the copies below overlap the GPU's work
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
                else:  # Algorithm 1: each object takes one S1 candidate, shared by its expressions
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
                loss, value = batch_loss(ce, iou, iou_weight, world, reduce if world > 1 else None)
                value = float(value)  # host sync: NaN check and log
                voted = world > 1 and bool(stop_votes)  # arrived with the value: no wait
                if not math.isfinite(value):
                    raise stop_diverged(
                        model, batch, out, value, epoch, step, t.lr, rank, amp, device
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
                asked = voted if world > 1 else stop_signal() is not None
                stop = asked and step < len(plans[epoch])  # else: at the epoch's end
                if stop or (
                    t.checkpoint_every
                    and step % t.checkpoint_every == 0
                    and step < len(plans[epoch])
                ):
                    save()
                if stop:
                    raise interrupted()
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
                and (best is None or selection_oiou(last) > selection_oiou(best))
            ):
                best = {"epoch": epoch, **last}
                save_checkpoint(
                    out / "best.pt", {"phase": phase, "model": model.state_dict(), "metrics": best}
                )
        save()
        if epoch < epochs and stop_asked():  # the last epoch goes on to the phase's end
            raise interrupted()
    if last is None and world == 1:  # resumed after the last epoch's checkpoint
        last = logged_eval(log_path, epoch, gstep)  # its evaluation, when the log has it
    if last is None:  # every rank takes part
        last = evaluate()
    total = global_counts(counts, world)
    if rank == 0:
        seen = [int(c) for c in total]
        metrics = phase_metrics(phase, cfg, run_dir, refer, last, best, epochs, producer, seen)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        plot_curves(log_path, out / "curves.png")
        save(done=True, total=total)
    if world > 1:
        dist.barrier()
    return read_json(out / "metrics.json", "metrics")
