"""Stage 3 losses: LAVT's weighted cross-entropy and the S+S+C matching loss.

The matching loss (Segment, Select, Correct, Sec. 3.3 and Algorithm 1) trains on the Stage 1
candidate pools instead of one fixed pseudo-label per expression. At every step:

1. the model's foreground probabilities ``p = softmax(logits)[:, 1]``, detached;
2. ``pairwise_soft_iou(p, candidates)`` grouped by image, under ``no_grad`` (the choice needs no
   gradient), with pairs an object may not take (not in its S1 ``eligible`` set) set to ``-inf``;
3. ``greedy_match`` over the batch: the objects of an image take distinct candidates, and all
   expressions of one object share one;
4. cross-entropy of each expression's logits against its matched candidate mask.

No Python loop over samples and no host synchronisation: every step is a batched tensor op.
(On CUDA, ``pairwise_soft_iou`` itself reads its block layout back once per call; that sync is
the kernel's, documented there.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sssc.kernels import greedy_match, pairwise_soft_iou

__all__ = [
    "IGNORE",
    "MatchResult",
    "batch_loss",
    "match_targets",
    "soft_iou_loss_sums",
    "weighted_ce",
    "weighted_ce_sums",
]

IGNORE = 255  # target value of pixels (here: whole expressions) that add nothing to the loss


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, class_weights) -> torch.Tensor:
    """LAVT's loss: 2-class cross-entropy with class weights, mean over the weighted pixels.

    Args:
        logits: ``[B, 2, H, W]``.
        target: ``[B, H, W]`` int64 of 0 (background), 1 (object) or :data:`IGNORE`.
        class_weights: ``[2]`` weights (LAVT: ``[0.9, 1.1]``).

    Returns:
        Scalar ``sum(w[y] * nll) / sum(w[y])`` over the non-ignored pixels; ``0`` (with a gradient
        path) when every pixel is ignored.
    """
    num, den = weighted_ce_sums(logits, target, class_weights)
    # clamp instead of a branch on the count: no host sync, and an all-ignored batch gives 0.
    return num / den.clamp_min(1e-12)


def weighted_ce_sums(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights,
    sample_weight: torch.Tensor | None = None,
    norm: str = "pixels",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The numerator and denominator of the batch's loss (``loss = num / den``).

    ``norm="pixels"`` (sssc, :func:`weighted_ce`): ``num = sum(w[y] * nll)`` and ``den =
    sum(w[y])`` over every pixel of the batch. ``norm="samples"`` (the official code's): each
    expression's own weighted mean ``sum_p(w[y] nll) / sum_p(w[y])`` (0 without a target),
    summed, over ``den = B``, the number of expressions (those without a target included).
    Data-parallel training adds the denominators of all ranks, so that the loss is the one of the
    global batch whatever the number of ranks.

    Args:
        sample_weight: optional ``[B]`` factor on each expression's numerator only (the official
            matching rule counts some expressions' cross-entropy twice; see
            :func:`match_targets`).
        norm: ``"pixels"`` | ``"samples"`` (``train.loss_norm``).
    """
    if norm not in ("pixels", "samples"):
        raise ValueError(f"loss norm must be 'pixels' or 'samples', got {norm!r}")
    w = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    nll = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=IGNORE)
    wy = w[target.clamp_max(1)].masked_fill(target == IGNORE, 0.0)
    num = wy * nll
    if norm == "samples":
        per = num.flatten(1).sum(1) / wy.flatten(1).sum(1).clamp_min(1e-12)  # 0 when no target
        if sample_weight is not None:
            per = per * sample_weight.to(per.dtype)
        return per.sum(), torch.tensor(float(target.shape[0]), device=logits.device)
    if sample_weight is not None:
        num = num * sample_weight.to(num.dtype)[:, None, None]
    return num.sum(), wy.sum().detach()


def soft_iou_loss_sums(
    logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The numerator and denominator of the batch's soft IoU loss (``train.iou_loss_weight``).

    Not in LAVT or S+S+C, whose loss is the cross-entropy alone: an sssc option (deviation 30 in
    the README). Per expression, over its non-ignored pixels, with ``p = softmax(logits)[:, 1]``
    and ``t = (target == 1)``::

        loss = 1 - (sum(p * t) + 1) / (sum(p) + sum(t) - sum(p * t) + 1)

    (the 1 keeps an empty target with an empty prediction at 0 loss). ``num = sum(w * loss)`` and
    ``den = sum(w)`` over the expressions that have a target (a pixel that is not
    :data:`IGNORE`); ``w`` is ``sample_weight`` or 1. Data-parallel training adds the sums of all
    ranks, as for :func:`weighted_ce_sums`.

    A mask-level loss, unlike the per-pixel cross-entropy: every expression counts the same
    whatever its object's size, and where one expression's labels disagree between two objects
    (S2 right 60% of the time), predicting the more frequent object scores better than their
    union, which the foreground class weight of the cross-entropy favours (README "Stage 3 on
    the embedded default").
    """
    valid = target != IGNORE
    p = logits.float().softmax(1)[:, 1] * valid
    t = (target == 1).to(p.dtype)
    inter = (p * t).flatten(1).sum(1)
    union = p.flatten(1).sum(1) + t.flatten(1).sum(1) - inter
    loss = 1.0 - (inter + 1.0) / (union + 1.0)
    w = valid.flatten(1).any(1).to(loss.dtype)
    if sample_weight is not None:
        w = w * sample_weight.to(loss.dtype)
    return (w * loss).sum(), w.sum().detach()


def batch_loss(
    ce: tuple[torch.Tensor, torch.Tensor],
    iou: tuple[torch.Tensor, torch.Tensor] | None = None,
    iou_weight: float = 0.0,
    world: int = 1,
    reduce=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's training loss and the global batch's loss value.

    Args:
        ce: ``(num, den)`` of :func:`weighted_ce_sums` over this rank's expressions.
        iou: ``(num, den)`` of :func:`soft_iou_loss_sums`, or ``None`` (no IoU term).
        iou_weight: the IoU term's weight (``train.iou_loss_weight``).
        world: the number of ranks.
        reduce: sums a 1-D tensor over the ranks in place (``dist.all_reduce``); ``None`` for one
            process.

    Returns:
        ``(loss, value)``: ``loss`` is this rank's share of the global batch's
        ``ce_num / ce_den + iou_weight * iou_num / iou_den`` (the sums over all ranks), times
        ``world`` because data-parallel training averages the ranks' gradients; its gradient,
        so averaged, is the global batch's. ``value`` is the global batch's loss (detached).
    """
    use_iou = iou is not None and iou_weight != 0
    zero = ce[0].new_zeros(())
    inum, iden = iou if use_iou else (zero, zero)
    sums = torch.stack([ce[0].detach(), ce[1], inum.detach(), iden]).detach()
    if reduce is not None:
        reduce(sums)  # the global batch's sums
    loss = ce[0] / sums[1].clamp_min(1e-12) * world
    value = sums[0] / sums[1].clamp_min(1e-12)
    if use_iou:
        loss = loss + iou_weight * inum / sums[3].clamp_min(1e-12) * world
        value = value + iou_weight * sums[2] / sums[3].clamp_min(1e-12)
    return loss, value


@dataclass
class MatchResult:
    """What the matching step chose (tensors on the batch's device; reading them syncs).

    Attributes:
        match: ``[B]`` int64 candidate index per expression, ``-1`` for none.
        target: ``[B, H, W]`` int64 target masks (:data:`IGNORE` where ``match`` is ``-1``).
        unmatched: ``[B]`` bool, expressions whose object had eligible candidates but was left
            without one by the matching (fewer free candidates than objects).
        no_candidate: ``[B]`` bool, expressions whose object had no eligible candidate at all.
        weight: ``[B]`` float32 times each expression's cross-entropy counts (1; 2 where the
            official rule counts it twice, 0 where ``match`` is ``-1``).
    """

    match: torch.Tensor
    target: torch.Tensor
    unmatched: torch.Tensor
    no_candidate: torch.Tensor
    weight: torch.Tensor


@torch.no_grad()
def match_targets(
    logits: torch.Tensor,
    candidates: torch.Tensor,
    cand_group: torch.Tensor,
    eligible: torch.Tensor,
    ref_object: torch.Tensor,
    ref_group: torch.Tensor,
    unmatched: str = "ignore",
    match_size: int = 0,
    generator: torch.Generator | None = None,
    single_candidate: str = "compete",
    ties: str = "sssc",
) -> MatchResult:
    """Algorithm 1 of S+S+C on a batch: each object's candidate by constrained greedy matching.

    Args:
        logits: ``[B, 2, H, W]`` the model's output (read, never differentiated).
        candidates: ``[C, H, W]`` uint8/bool S1 candidate masks of the batch's images.
        cand_group: ``[C]`` int64 image index of each candidate.
        eligible: ``[B, C]`` bool, the candidates each expression's object may take (S1).
        ref_object: ``[B]`` int64 object id (``ann_id``) of each expression.
        ref_group: ``[B]`` int64 image index of each expression.
        unmatched: an object the matching left without a candidate: ``"ignore"`` (no loss; in
            effect the official code's, which draws a random candidate for it but adds no
            cross-entropy) or ``"random"`` (sssc's option: cross-entropy against a random
            eligible candidate, already taken by another object).
        match_size: compute the soft IoU at ``match_size x match_size`` (area-averaged
            probabilities, nearest-neighbour masks) when smaller than ``H``; 0 keeps ``H x W``.
            It only picks the match: the loss is always at full resolution.
        generator: the random draws of ``unmatched="random"``.
        single_candidate: an object with exactly one eligible candidate. ``"compete"`` (sssc):
            it takes part in the greedy like any other and may lose its candidate. ``"always"``
            (the official loss, ``greedy_match_and_cross_entropy``): it keeps its candidate
            whatever the greedy does (cross-entropy once). In an image with any multi-candidate
            object it also competes in the greedy: popped, its cross-entropy counts twice
            (``weight`` 2) and its pop excludes the candidate for the other objects; but when
            another object pops that candidate first, the candidate is excluded for it too (the
            official check that would spare it never fires) and it keeps ``weight`` 1.
        ties: ``"sssc"``: equal object scores go to the smallest object id, then the smallest
            candidate index (:func:`sssc.kernels.greedy_match`). ``"official"``: the official
            loss's scan order: per image, the expressions of its first unmatched expression's
            object, then the others in batch order, taking the first maximum (``torch.argmax``).
            Anything but ``single_candidate="compete", ties="sssc"`` runs the official matcher,
            a Python loop on the host (slow; for ``recipe: official``).

    Returns:
        A :class:`MatchResult`.
    """
    if unmatched not in ("ignore", "random"):
        raise ValueError(f"unmatched must be 'ignore' or 'random', got {unmatched!r}")
    if single_candidate not in ("compete", "always"):
        raise ValueError(
            f"single_candidate must be 'compete' or 'always', got {single_candidate!r}"
        )
    if ties not in ("sssc", "official"):
        raise ValueError(f"ties must be 'sssc' or 'official', got {ties!r}")
    B, _, H, W = logits.shape
    C = candidates.shape[0]
    prob = logits.detach().float().softmax(1)[:, 1]
    cand = candidates
    if 0 < match_size < H:
        prob = F.adaptive_avg_pool2d(prob[:, None], match_size)[:, 0]
        cand = F.interpolate(cand[:, None].float(), size=(match_size, match_size), mode="nearest")
        cand = cand[:, 0].to(torch.uint8)
    if prob.is_cuda:  # half the bytes through the kernel; it accumulates in float32 anyway
        prob = prob.to(torch.bfloat16)
    iou = pairwise_soft_iou(prob, cand, ref_group, cand_group)
    iou = iou.masked_fill(~eligible, float("-inf"))
    if single_candidate == "compete" and ties == "sssc":
        match = greedy_match(iou, ref_object, ref_group, cand_group)
        weight = (match >= 0).float()
    else:
        match, weight = _official_match(iou, eligible, ref_object, ref_group, single_candidate)
    has_any = eligible.any(1)
    left = (match < 0) & has_any
    if unmatched == "random" and C > 0:
        u = torch.rand(B, C, generator=generator, device="cpu").to(logits.device)
        pick = u.masked_fill(~eligible, -1.0).argmax(1)
        # One draw per object: the object's first expression's draw, spread to all of them.
        first = _first_of_object(ref_object)
        match = torch.where(left, pick[first], match)
        weight = torch.where(left, 1.0, weight)
    idx = match.clamp_min(0)
    if C > 0:
        target = candidates.index_select(0, idx).to(torch.int64)
    else:
        target = torch.zeros(B, H, W, dtype=torch.int64, device=logits.device)
    target = target.masked_fill((match < 0)[:, None, None], IGNORE)
    return MatchResult(match, target, left, ~has_any, weight)


def _official_match(
    iou: torch.Tensor,
    eligible: torch.Tensor,
    ref_object: torch.Tensor,
    ref_group: torch.Tensor,
    single_candidate: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official loss's matching, on the host: ``(match [B], weight [B])``.

    Read from ``greedy_match_and_cross_entropy`` (S+S+C, ``ssc_ris/correct/loss.py``) and
    checked against it, run on random batches: rows are expressions; a popped object's rows all
    become ``-inf`` and its candidate becomes ``-inf`` for every other object's rows; the argmax
    takes the first maximum in the scan order (the image's first unassigned row's object first,
    then the rest in batch order).
    """
    # Host sync: the official rule is a Python loop over the batch.
    pref = iou.detach().double().cpu().numpy().copy()
    elig = eligible.cpu().numpy()
    obj = ref_object.cpu().numpy()
    grp = ref_group.cpu().numpy()
    b = pref.shape[0]
    match = np.full(b, -1, np.int64)
    weight = np.zeros(b, np.float32)
    single = elig.sum(1) == 1
    assigned = np.zeros(b, bool)
    if single_candidate == "always":
        for r in np.flatnonzero(single):
            match[r], weight[r], assigned[r] = int(np.flatnonzero(elig[r])[0]), 1.0, True
    for r0 in range(b):
        if assigned[r0] or not elig[r0].any():
            continue
        rows = np.flatnonzero(grp == grp[r0])
        order = np.concatenate([rows[obj[rows] == obj[r0]], rows[obj[rows] != obj[r0]]])
        while True:
            best = pref[order].max(1)
            k = int(np.argmax(best))
            if best[k] == -np.inf:  # every remaining pair is excluded
                break
            r = order[k]
            c = int(np.argmax(pref[r]))
            same = order[obj[order] == obj[r]]
            for q in same:
                match[q] = c
                weight[q] += 1.0
                assigned[q] = True
                pref[q, :] = -np.inf
            # Blacklist the candidate for every other object's rows. The official loop means to
            # skip the rows assigned already (`if diff_mask_index in assigned_masks`), but it asks
            # a dict keyed by ints about a 0-d tensor, which hashes by identity: never found. So
            # a single-candidate row under "always" (assigned from the start) loses its
            # candidate to another object's pop too, and is then not popped itself.
            others = order[obj[order] != obj[r]]
            pref[others, c] = -np.inf
    dev = iou.device
    return torch.from_numpy(match).to(dev), torch.from_numpy(weight).to(dev)


def _first_of_object(ref_object: torch.Tensor) -> torch.Tensor:
    """``[B]`` the index of the first expression with the same object id, for every expression."""
    same = ref_object[:, None] == ref_object[None, :]
    # The first True of each row: argmax of a bool row returns the first maximum.
    return same.to(torch.uint8).argmax(1)
