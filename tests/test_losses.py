"""Stage 3 losses against float64 formulas and a brute-force Algorithm 1."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sssc.correct.losses import (
    IGNORE,
    batch_loss,
    match_targets,
    soft_iou_loss_sums,
    weighted_ce,
    weighted_ce_sums,
)

W = (0.9, 1.1)


def _ce_ref(logits, target, w=W):
    """float64: sum over valid pixels of w[y] * -log softmax(logits)[y] / sum w[y]."""
    lg = logits.double()
    logp = lg - torch.logsumexp(lg, 1, keepdim=True)
    num = den = 0.0
    for b, i, j in itertools.product(*(range(s) for s in target.shape)):
        y = int(target[b, i, j])
        if y == IGNORE:
            continue
        num += -w[y] * float(logp[b, y, i, j])
        den += w[y]
    return num / den if den else 0.0


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("ignored", [0.0, 0.3, 1.0], ids=["none-ignored", "some", "all-ignored"])
def test_weighted_ce_matches_float64_formula(ignored):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 2, 5, 7, generator=g) * 3
    target = (torch.rand(3, 5, 7, generator=g) > 0.6).long()
    target[torch.rand(3, 5, 7, generator=g) < ignored] = IGNORE
    got = float(weighted_ce(logits, target, W))
    ref = _ce_ref(logits, target)
    if ignored == 1.0:
        assert got == 0.0
    else:
        assert abs(got - ref) / abs(ref) < 1e-6


def _greedy_brute(scores, obj):
    """Algorithm 1 on dense float64 scores (-inf: forbidden), written from the paper."""
    scores = np.asarray(scores, np.float64)
    objs = sorted(set(obj))
    S = {o: scores[[r for r in range(len(obj)) if obj[r] == o]].max(0) for o in objs}
    out, used, done = {}, set(), set()
    while True:
        best = None
        for o in objs:
            for c in range(scores.shape[1]):
                if o in done or c in used or not np.isfinite(S[o][c]):
                    continue
                if best is None or S[o][c] > best[0]:  # ties: first (smallest o, then c)
                    best = (S[o][c], o, c)
        if best is None:
            break
        _, o, c = best
        out[o] = c
        used.add(c)
        done.add(o)
    return np.array([out.get(o, -1) for o in obj])


def _batch(seed, n_img=3, size=12):
    """Random images: objects with 1-3 expressions each, candidate pools, S1 eligibility."""
    rng = np.random.default_rng(seed)
    obj, grp, cgrp, cands, elig_rows = [], [], [], [], []
    ann = 100
    for img in range(n_img):
        n_c = int(rng.integers(0, 5))
        c0 = len(cgrp)
        for _ in range(n_c):
            cands.append(rng.random((size, size)) < rng.uniform(0.1, 0.6))
            cgrp.append(img)
        for _ in range(int(rng.integers(1, 4))):
            ann += int(rng.integers(1, 5))
            allowed = [c0 + k for k in range(n_c) if rng.random() < 0.7]
            for _ in range(int(rng.integers(1, 4))):
                obj.append(ann)
                grp.append(img)
                elig_rows.append(allowed)
    C = len(cgrp)
    eligible = torch.zeros(len(obj), C, dtype=torch.bool)
    for r, allowed in enumerate(elig_rows):
        eligible[r, allowed] = True
    cand = torch.from_numpy(np.array(cands, dtype=np.uint8).reshape(C, size, size))
    logits = torch.from_numpy(rng.normal(size=(len(obj), 2, size, size)) * 2).float()
    return (
        logits,
        cand,
        torch.tensor(cgrp, dtype=torch.int64),
        eligible,
        torch.tensor(obj, dtype=torch.int64),
        torch.tensor(grp, dtype=torch.int64),
    )


def _expected_match(logits, cand, cgrp, eligible, obj, grp):
    p = torch.softmax(logits.double(), 1)[:, 1].reshape(len(obj), -1)
    m = cand.double().reshape(cand.shape[0], -1)
    inter = p @ m.T
    iou = inter / (p.sum(1)[:, None] + m.sum(1)[None] - inter)
    ok = eligible & (grp[:, None] == cgrp[None, :])
    iou = torch.where(ok, iou, torch.tensor(float("-inf"), dtype=torch.float64))
    return _greedy_brute(iou.numpy(), obj.tolist())


@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"batch{s}")
def test_match_equals_brute_force_algorithm_1(seed):
    logits, cand, cgrp, elig, obj, grp = _batch(seed)
    res = match_targets(logits, cand, cgrp, elig, obj, grp)
    want = _expected_match(logits, cand, cgrp, elig, obj, grp)
    assert res.match.tolist() == want.tolist()
    for r, c in enumerate(want):
        if c >= 0:
            assert torch.equal(res.target[r], cand[c].long())
        else:
            assert (res.target[r] == IGNORE).all()
    # Unmatched: the object had eligible candidates but got none; no candidate: had none at all.
    has = elig.any(1).numpy()
    assert res.unmatched.numpy().tolist() == ((want < 0) & has).tolist()
    assert res.no_candidate.numpy().tolist() == (~has).tolist()


def test_unmatched_policy_random_gives_an_eligible_candidate_per_object():
    # One image, two objects (two expressions each) that may both take only candidate 0 or 1,
    # and a third object that may take candidate 0 only: it loses and is left unmatched.
    size = 8
    cand = torch.zeros(3, size, size, dtype=torch.uint8)
    cand[0, :4], cand[1, 4:], cand[2, :, :2] = 1, 1, 1
    obj = torch.tensor([1, 1, 2, 2, 3])
    grp = torch.zeros(5, dtype=torch.int64)
    cgrp = torch.zeros(3, dtype=torch.int64)
    elig = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    logits = torch.zeros(5, 2, size, size)
    logits[:2, 1, :4] = 5  # object 1 predicts candidate 0's region
    logits[2:4, 1, 4:] = 5  # object 2 predicts candidate 1's region
    logits[4, 1, :4] = 5  # object 3 wants candidate 0 too, but object 1 agrees better
    logits[0, 1, :4, :1] = 9
    ign = match_targets(logits, cand, cgrp, elig, obj, grp, unmatched="ignore")
    assert ign.match.tolist() == [0, 0, 1, 1, -1]
    assert ign.unmatched.tolist() == [False, False, False, False, True]
    assert (ign.target[4] == IGNORE).all()
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        rnd = match_targets(logits, cand, cgrp, elig, obj, grp, unmatched="random", generator=g)
        assert rnd.match[:4].tolist() == [0, 0, 1, 1]
        assert rnd.match[4].item() == 0  # its only eligible candidate, though already taken
        assert torch.equal(rnd.target[4], cand[0].long())
        assert rnd.unmatched.tolist() == [False, False, False, False, True]


def test_match_at_reduced_resolution_uses_pooled_inputs():
    logits, cand, cgrp, elig, obj, grp = _batch(3, size=16)
    res = match_targets(logits, cand, cgrp, elig, obj, grp, match_size=8)
    # Reference: average-pooled probabilities against every second candidate pixel (nearest).
    p = torch.softmax(logits.double(), 1)[:, 1]
    p = p.reshape(len(obj), 8, 2, 8, 2).mean((2, 4)).reshape(len(obj), -1)
    m = cand[:, ::2, ::2].double().reshape(cand.shape[0], -1)
    inter = p @ m.T
    iou = inter / (p.sum(1)[:, None] + m.sum(1)[None] - inter)
    ok = elig & (grp[:, None] == cgrp[None, :])
    iou = torch.where(ok, iou, torch.tensor(float("-inf"), dtype=torch.float64))
    want = _greedy_brute(iou.numpy(), obj.tolist())
    assert res.match.tolist() == want.tolist()
    assert res.target.shape == (len(obj), 16, 16)  # the loss stays at full resolution


def test_matching_loss_gradient_is_ce_against_the_matched_masks():
    logits, cand, cgrp, elig, obj, grp = _batch(4)
    a = logits.clone().requires_grad_(True)
    res = match_targets(a, cand, cgrp, elig, obj, grp)  # as the training step: match, then CE
    num, den = weighted_ce_sums(a, res.target, torch.tensor(W), None, "pixels")
    loss = num / den
    loss.backward()
    b = logits.clone().double().requires_grad_(True)
    # float64 autograd of the CE formula with the targets held fixed: the choice has no gradient.
    logp = torch.log_softmax(b, 1)
    t = res.target
    valid = t != IGNORE
    w = torch.tensor(W, dtype=torch.float64)[t.clamp_max(1)] * valid
    nll = -logp.gather(1, t.clamp_max(1)[:, None])[:, 0]
    ref = (w * nll).sum() / w.sum()
    ref.backward()
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-6
    assert _rel(a.grad, b.grad) < 1e-5


def test_bad_policy_is_an_error():
    logits, cand, cgrp, elig, obj, grp = _batch(0)
    with pytest.raises(ValueError, match="unmatched"):
        match_targets(logits, cand, cgrp, elig, obj, grp, unmatched="nearest")


# ---------------------------------------------------------------- the official matching rules


@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"batch{s}")
def test_official_scan_order_equals_algorithm_1_without_ties(seed):
    """On tie-free scores the official loss's scan is Algorithm 1 (brute force)."""
    logits, cand, cgrp, elig, obj, grp = _batch(seed)
    res = match_targets(logits, cand, cgrp, elig, obj, grp, ties="official")
    assert res.match.tolist() == _expected_match(logits, cand, cgrp, elig, obj, grp).tolist()
    assert res.weight.tolist() == (res.match >= 0).float().tolist()


def _two_objects(a_better: bool):
    """One image; object 1 may take candidate 0 only, object 2 candidates 0 or 1."""
    size = 8
    cand = torch.zeros(2, size, size, dtype=torch.uint8)
    cand[0, :4], cand[1, 4:] = 1, 1
    obj, grp, cgrp = (
        torch.tensor([1, 2]),
        torch.zeros(2, dtype=torch.int64),
        torch.zeros(2, dtype=torch.int64),
    )
    elig = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    logits = torch.zeros(2, 2, size, size)
    logits[:, 1, :4] = 5  # both predict candidate 0's region ...
    logits[0 if a_better else 1, 1, 4:] = -5  # ... and one of them more sharply
    logits[0 if a_better else 1, 1, :4] = 9
    return logits, cand, cgrp, elig, obj, grp


def test_single_candidate_always_keeps_it_and_counts_twice_unless_taken_first():
    # Object 2 agrees better with candidate 0 and takes it. Officially, object 1 (one eligible
    # candidate) keeps candidate 0 anyway (weight 1), and object 2's pop excludes candidate 0 for
    # it as for any other object, so the greedy never pops object 1 (still weight 1).
    logits, cand, cgrp, elig, obj, grp = _two_objects(a_better=False)
    sssc = match_targets(logits, cand, cgrp, elig, obj, grp)
    assert sssc.match.tolist() == [-1, 0] and sssc.weight.tolist() == [0.0, 1.0]
    off = match_targets(
        logits, cand, cgrp, elig, obj, grp, single_candidate="always", ties="official"
    )
    assert off.match.tolist() == [0, 0] and off.weight.tolist() == [1.0, 1.0]
    assert torch.equal(off.target[0], cand[0].long()) and not off.unmatched.any()
    # Object 1 agrees better: the greedy pops it too (weight 2), and its pop excludes candidate
    # 0 for object 2, which takes 1.
    logits, cand, cgrp, elig, obj, grp = _two_objects(a_better=True)
    off = match_targets(
        logits, cand, cgrp, elig, obj, grp, single_candidate="always", ties="official"
    )
    assert off.match.tolist() == [0, 1] and off.weight.tolist() == [2.0, 1.0]
    # An image whose objects all have one candidate: no greedy round, counted once.
    off = match_targets(
        logits[:1], cand, cgrp, elig[:1], obj[:1], grp[:1], single_candidate="always"
    )
    assert off.match.tolist() == [0] and off.weight.tolist() == [1.0]


def test_why_the_official_exclusion_reaches_assigned_rows():
    """The official loop skips a row in its exclusion step when ``diff_mask_index in
    assigned_masks``: a 0-d tensor looked up in a dict keyed by ints. A tensor hashes by
    identity, so the lookup never finds it, whatever the dict holds."""
    assigned_masks = {0: 0, 1: 0, 2: 1}
    idx = torch.where(torch.tensor([True, True, True]))[0]
    assert [int(i) in assigned_masks for i in idx] == [True, True, True]
    assert [i in assigned_masks for i in idx] == [False, False, False]


def test_official_ties_follow_the_batch_order():
    # Two objects with the same prediction and candidates 0 and 1: equal scores. sssc gives the
    # better candidate to the smaller object id; the official scan to the first row's object.
    size = 8
    cand = torch.zeros(2, size, size, dtype=torch.uint8)
    cand[0, :4], cand[1, :2] = 1, 1
    obj, grp, cgrp = (
        torch.tensor([7, 3]),
        torch.zeros(2, dtype=torch.int64),
        torch.zeros(2, dtype=torch.int64),
    )
    elig = torch.ones(2, 2, dtype=torch.bool)
    logits = torch.zeros(2, 2, size, size)
    logits[:, 1, :4] = 5
    assert match_targets(logits, cand, cgrp, elig, obj, grp).match.tolist() == [1, 0]
    assert match_targets(logits, cand, cgrp, elig, obj, grp, ties="official").match.tolist() == [
        0,
        1,
    ]


def test_sample_weight_scales_the_numerator_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 4, 4, generator=g)
    target = torch.randint(0, 2, (3, 4, 4), generator=g)
    target[2] = IGNORE
    w = torch.tensor([2.0, 1.0, 0.0])
    num, den = weighted_ce_sums(logits, target, W, sample_weight=w)
    lp = torch.log_softmax(logits.double(), 1)
    cw = torch.tensor(W, dtype=torch.float64)
    want_num = want_den = 0.0
    for b in range(2):
        nll = -lp[b].gather(0, target[b][None])[0]
        want_num += float(w[b]) * float((cw[target[b]] * nll).sum())
        want_den += float(cw[target[b]].sum())
    assert abs(float(num) - want_num) < 1e-4 and abs(float(den) - want_den) < 1e-4


def test_samples_norm_is_the_official_mean_of_per_expression_losses():
    """The official loss: per expression F.cross_entropy(weight=[0.9, 1.1]) (a weighted mean over
    its pixels), summed (twice for a double-counted one), divided by the batch size."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 2, 5, 5, generator=g)
    target = torch.randint(0, 2, (4, 5, 5), generator=g)
    target[3] = IGNORE  # no target: adds nothing, still counted in the batch size
    sw = torch.tensor([2.0, 1.0, 1.0, 0.0])
    num, den = weighted_ce_sums(logits, target, W, sample_weight=sw, norm="samples")
    cw = torch.tensor(W, dtype=torch.float64)
    want = sum(
        float(sw[b])
        * float(F.cross_entropy(logits[b : b + 1].double(), target[b : b + 1], weight=cw))
        for b in range(3)
    )
    assert abs(float(num) - want) < 1e-5 and float(den) == 4.0
    with pytest.raises(ValueError, match="norm"):
        weighted_ce_sums(logits, target, W, norm="mean")


def _iou_loss_ref(logits, target, sample_weight=None):
    """float64, pixel by pixel: sum_b w_b (1 - (I + 1) / (U + 1)) over the expressions with a
    target (I = sum p t, U = sum p + sum t - I), and sum_b w_b; ignored pixels count nowhere."""
    p = torch.softmax(logits.double(), 1)[:, 1]
    num = den = 0.0
    for b in range(target.shape[0]):
        inter = sp = st = 0.0
        valid = False
        for i, j in itertools.product(*(range(s) for s in target.shape[1:])):
            y = int(target[b, i, j])
            if y == IGNORE:
                continue
            valid = True
            pv = float(p[b, i, j])
            inter += pv * (y == 1)
            sp += pv
            st += y == 1
        if not valid:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[b])
        num += w * (1.0 - (inter + 1.0) / (sp + st - inter + 1.0))
        den += w
    return num, den


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample-weights"])
def test_soft_iou_loss_sums_match_float64_formula(weighted):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 2, 6, 7, generator=g) * 3
    target = (torch.rand(5, 6, 7, generator=g) > 0.7).long()
    target[torch.rand(5, 6, 7, generator=g) < 0.3] = IGNORE
    target[1] = IGNORE  # no target: not counted
    target[3] = 0  # an empty target: the loss is the predicted area's share
    sw = torch.tensor([2.0, 1.0, 0.5, 1.0, 1.0]) if weighted else None
    num, den = soft_iou_loss_sums(logits, target, sw)
    want_num, want_den = _iou_loss_ref(logits, target, sw)
    assert abs(float(num) - want_num) < 1e-5 and abs(float(den) - want_den) < 1e-6
    assert want_den == (4.5 if weighted else 4.0) and want_num > 0


def test_soft_iou_loss_gradient_reaches_only_the_logits_of_non_ignored_pixels():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (2, 4, 4), generator=g)
    target[0, :2] = IGNORE
    num, _ = soft_iou_loss_sums(logits, target)
    num.backward()
    assert torch.all(logits.grad[0, :, :2] == 0)
    assert torch.all(logits.grad[:, :, 2:].abs().sum((0, 1)) > 0)
    # A perfect, confident prediction has (almost) no loss; against the complement, 1 - 1/65.
    tgt = torch.zeros(1, 8, 8, dtype=torch.int64)
    tgt[0, 2:5, 2:5] = 1
    sure = torch.stack([1 - tgt, tgt], 1).double() * 40 - 20
    assert float(soft_iou_loss_sums(sure, tgt)[0]) < 1e-6
    assert abs(float(soft_iou_loss_sums(sure, 1 - tgt)[0]) - (1 - 1 / (9 + 55 + 1))) < 1e-9


def test_soft_iou_loss_prefers_the_more_frequent_label_to_the_union():
    """Labels that disagree (object A 60% of the time, a larger B 40%): the expected soft IoU
    loss of predicting A alone is below that of predicting both, while the foreground-weighted
    cross-entropy ([0.5, 1.5], the embedded default's) prefers both."""
    a = torch.zeros(1, 10, 10, dtype=torch.int64)
    b = torch.zeros_like(a)
    a[0, 1:4, 1:4] = 1  # 9 px
    b[0, 5:9, 5:9] = 1  # 16 px

    def expected(pred, fn):
        logits = torch.stack([1 - pred, pred], 1).double() * 40 - 20
        return 0.6 * fn(logits, a) + 0.4 * fn(logits, b)

    def iou(lg, t):
        return float(soft_iou_loss_sums(lg, t)[0])

    def ce(lg, t):
        num, den = weighted_ce_sums(lg, t, (0.5, 1.5))
        return float(num / den)

    both = a | b
    assert expected(a, iou) < expected(both, iou)
    assert expected(both, ce) < expected(a, ce)


@pytest.mark.parametrize("iou_weight", [0.0, 3.0], ids=["ce", "ce+soft-iou"])
@pytest.mark.parametrize("norm", ["pixels", "samples"])
def test_batch_loss_split_over_two_ranks_has_the_whole_batch_gradient(iou_weight, norm):
    """Two ranks with unequal shares of a batch (reduce: the sum over both), their gradients
    averaged as DDP does, give the gradient and the value of the whole batch's loss in one
    process: ce_num / ce_den + w * iou_num / iou_den over all its expressions."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64)
    target = (torch.rand(5, 6, 6, generator=g) > 0.7).long()
    target[4] = IGNORE

    def parts(lg, tg):
        iou = soft_iou_loss_sums(lg, tg) if iou_weight else None
        return weighted_ce_sums(lg, tg, W, norm=norm), iou

    whole = logits.clone().requires_grad_(True)
    loss, value = batch_loss(*parts(whole, target), iou_weight)
    loss.backward()
    ce_ref = _ce_ref(logits, target) if norm == "pixels" else None
    if ce_ref is not None and not iou_weight:
        assert abs(float(value) - ce_ref) < 1e-6  # the sums are float32
    if iou_weight:
        inum, iden = _iou_loss_ref(logits, target)
        ce_only, _ = batch_loss(parts(logits, target)[0])
        assert abs(float(value) - float(ce_only) - iou_weight * inum / iden) < 1e-6

    shards = [slice(0, 1), slice(1, 5)]  # 1 and 4 expressions (one without a target)
    leaves = [logits[s].clone().requires_grad_(True) for s in shards]

    def rank_sums(lg, tg):  # [ce_num, ce_den, iou_num, iou_den] of one rank
        (cn, cd), iou = parts(lg, tg)
        iou = iou or (torch.zeros(()), torch.zeros(()))
        return torch.stack([cn, cd, *iou]).detach().double()

    total = sum(rank_sums(lf, target[s]) for lf, s in zip(leaves, shards, strict=True))
    grads, values = [], []
    for lf, s in zip(leaves, shards, strict=True):
        reduce = lambda x: x.copy_(total)  # noqa: E731 (what all_reduce leaves on each rank)
        rank_loss, rank_value = batch_loss(*parts(lf, target[s]), iou_weight, 2, reduce)
        rank_loss.backward()
        grads.append(lf.grad)
        values.append(float(rank_value))
    ddp_grad = torch.cat(grads) / 2  # DDP averages the ranks' gradients
    assert values[0] == values[1] and abs(values[0] - float(value)) < 1e-6
    assert _rel(ddp_grad, whole.grad) < 1e-5
