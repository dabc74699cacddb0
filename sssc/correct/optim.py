"""The optimizer and learning-rate schedule every training phase builds: AdamW over LAVT's
parameter groups, decayed polynomially to zero over the phase's horizon."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["build_optimizer", "poly_schedule", "set_base_lr"]


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


def poly_schedule(opt, total: int, power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr = base * (1 - step / total) ** power``, held at 0 past ``total`` (the official code's
    base goes negative there, and its power makes a complex number)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total) ** power)


def set_base_lr(opt, sched, lr: float) -> None:
    """Make ``lr`` the schedule's base (after a resume with a new train.lr), at its step."""
    factor = sched.lr_lambdas[0](sched.last_epoch)
    for g in opt.param_groups:
        base = lr * g.get("lr_scale", 1.0)  # Swin's groups keep train.backbone_lr_scale
        g["initial_lr"], g["lr"] = base, base * factor
    sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
    sched._last_lr = [g["lr"] for g in opt.param_groups]
