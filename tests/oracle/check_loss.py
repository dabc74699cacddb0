"""Oracle: the official ``greedy_match_and_cross_entropy`` against sssc's official matching
(``train.single_candidate: always``, ``train.match_ties: official``) and its samples-normalised
weighted cross-entropy (README, deviation rows 12, 13 and 25).

    SSC_REPO=/path/to/segment-select-correct .venv/bin/python tests/oracle/check_loss.py [N]

N random batches (default 1000) in the official form: per expression its image, its object's
label map (the object's candidate regions numbered in a random order) and its object index;
random logits. The official loss runs on the CPU (its ``.cuda()`` calls made no-ops). Both the
loss and every matched expression's mask must agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _batch(rng, size=12):
    """Images of up to 4 disjoint regions (3x3 blocks); 1-3 objects each, every object a random
    non-empty subset of its image's regions and 1-2 expressions, rows grouped by image and
    object as the official loop unfolds them."""
    rows, images, regions, groups = [], [], [], []
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, 5))
        label = rng.integers(0, k + 1, (size // 3, size // 3)).repeat(3, 0).repeat(3, 1)
        regs = [label == v + 1 for v in range(k) if (label == v + 1).any()]
        if not regs:
            continue
        base = len(regions)
        regions += regs
        groups += [len(images)] * len(regs)
        for o in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, len(regs) + 1))
            sub = [base + int(s) for s in sorted(rng.choice(len(regs), size=n, replace=False))]
            rows += [(len(images), o, sub)] * int(rng.integers(1, 3))
        images.append(torch.rand(3, size, size, generator=torch.Generator().manual_seed(len(rows))))
    return images, regions, groups, rows


def check(seed: int, official_loss) -> tuple[bool, bool]:
    from sssc.correct.losses import match_targets, weighted_ce_sums

    rng = np.random.default_rng(seed)
    images, regions, groups, rows = _batch(rng)
    b, size = len(rows), regions[0].shape[0]
    inputs = torch.stack([images[i] for i, _, _ in rows])
    logits = torch.randn(b, 2, size, size, generator=torch.Generator().manual_seed(seed)) * 2
    labels, order = [], {}
    for i, o, sub in rows:
        order.setdefault((i, o), [int(v) + 1 for v in rng.permutation(len(sub))])
        m = torch.zeros(size, size, dtype=torch.int64)
        for v, c in zip(order[(i, o)], sub, strict=True):
            m[torch.from_numpy(regions[c])] = v
        labels.append(m)
    mask_idx = torch.tensor([o for _, o, _ in rows])
    want, log = official_loss(inputs, logits, torch.stack(labels), mask_idx)
    eligible = torch.zeros(b, len(regions), dtype=torch.bool)
    for r, (_, _, sub) in enumerate(rows):
        eligible[r, sub] = True
    m = match_targets(
        logits,
        torch.from_numpy(np.stack(regions).astype(np.uint8)),
        torch.tensor(groups),
        eligible,
        torch.tensor([10 * i + o for i, o, _ in rows]),
        torch.tensor([i for i, _, _ in rows]),
        single_candidate="always",
        ties="official",
    )
    num, den = weighted_ce_sums(logits, m.target, [0.9, 1.1], m.weight, "samples")
    got = float(num / den)
    same_loss = abs(got - float(want)) <= 1e-5 * max(1.0, abs(got))
    matched = log["matched masks"]
    same_masks = all(
        torch.equal(matched[r].bool(), m.target[r] == 1) for r in range(b) if m.match[r] >= 0
    )
    return same_loss, same_masks


def main() -> int:
    from official import load

    load()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the official loss calls .cuda()
    import ssc_ris.correct.loss as official

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    bad = [s for s in range(n) if not all(check(s, official.greedy_match_and_cross_entropy))]
    print(f"{n - len(bad)} of {n} batches give the same loss and matched masks")
    if bad:
        print("differ:", bad[:20])
    return int(bool(bad))


if __name__ == "__main__":
    sys.exit(main())
