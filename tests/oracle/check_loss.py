"""Oracle: the official ``greedy_match_and_cross_entropy`` against sssc's official matching
(``train.single_candidate: always``, ``train.match_ties: official``) and its samples-normalised
weighted cross-entropy (README, deviation rows 12, 13 and 25).

    SSC_REPO=/path/to/segment-select-correct .venv/bin/python tests/oracle/check_loss.py [N]
    SSC_REPO=... .venv/bin/python tests/oracle/check_loss.py [N] --resize [image_size|stored]

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


def check_resized(seed: int, official_loss, judged_at: str, folder: Path) -> tuple[bool, bool]:
    """``--resize`` (README row 41): the whole path from Stage 1's candidates at their stored
    size. Per image, overlapping boxes and one-row candidates on a 20 x 28 grid; each object's
    label map painted from its candidates in detection order, saved with ``plt.imsave`` (gray),
    read back with ``convert("P")`` and resized to 12 x 12 by torchvision's ``F.resize``
    (nearest), as the official loader does, before the official loss. sssc: the same candidates
    in an S1 record, ``paint_pools(..., "largest")``, ``resized_candidates(..., judged_at)``,
    then the same matching and loss as :func:`check`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm
    from PIL import Image
    from torchvision.transforms import functional as F

    from sssc.correct.data import resized_candidates
    from sssc.correct.losses import match_targets, weighted_ce_sums
    from sssc.data import masks as _masks
    from sssc.store import ImageRecord, s1_record
    from sssc.store.pools import paint_pools

    rng = np.random.default_rng(seed)
    h, w, size = 20, 28, 12
    rows, labels, inputs, cands, groups, elig_rows = [], [], [], [], [], []
    for img in range(int(rng.integers(1, 4))):
        masks = []
        for _ in range(int(rng.integers(2, 6))):
            m = np.zeros((h, w), dtype=bool)
            if rng.random() < 0.3:  # one row: the resize may lose it
                m[int(rng.integers(h)), int(rng.integers(w // 2)) :] = True
            else:
                y, x = int(rng.integers(h - 3)), int(rng.integers(w - 3))
                m[y : int(rng.integers(y + 2, h + 1)), x : int(rng.integers(x + 2, w + 1))] = True
            masks.append(m)
        objects = []
        for o in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, len(masks) + 1))
            objects.append((o, sorted(int(c) for c in rng.choice(len(masks), n, replace=False))))
        raw = s1_record(
            img,
            h,
            w,
            [
                {"rle": _masks.encode(m), "box": [0, 0, 1, 1], "score": 0.5, "label": "x"}
                for m in masks
            ],
            objects,
        )
        pool = paint_pools(ImageRecord._from_json(raw), "largest")
        image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed * 10 + img))
        object_rows = [o for o, _ in objects for _ in range(int(rng.integers(1, 3)))]
        c, e = resized_candidates(pool, object_rows, (size, size), judged_at)
        for o, el in objects:
            label = np.zeros((h, w))
            for v, k in enumerate(el):
                label[masks[k]] = v + 1
            plt.imsave(folder / "label.png", label, cmap=cm.gray)
            back = Image.open(folder / "label.png").convert("P")
            resized = np.array(F.resize(back, [size, size], F.InterpolationMode.NEAREST))
            for _ in range(object_rows.count(o)):
                labels.append(torch.from_numpy(resized.astype(np.int64)))
                rows.append((img, o))
                inputs.append(image)
        base = sum(len(x) for x in cands)
        cands.append(c)
        groups += [img] * len(c)
        for r in range(len(object_rows)):
            elig_rows.append((base, e[r]))
    total = sum(len(x) for x in cands)
    eligible = torch.zeros(len(rows), total, dtype=torch.bool)
    for r, (base, e) in enumerate(elig_rows):
        eligible[r, base : base + len(e)] = torch.from_numpy(e)
    b = len(rows)
    logits = torch.randn(b, 2, size, size, generator=torch.Generator().manual_seed(seed)) * 2
    # The official loop skips an object whose resized label map is all one value (README row
    # 19); sssc's samples batching does the same: neither side sees such rows.
    keep = [r for r in range(b) if not (labels[r] == labels[r].flatten()[0]).all()]
    if not keep:
        return True, True
    idx = torch.tensor(keep)
    want, log = official_loss(
        torch.stack(inputs)[idx],
        logits[idx],
        torch.stack(labels)[idx],
        torch.tensor([rows[r][1] for r in keep]),
    )
    m = match_targets(
        logits[idx],
        torch.from_numpy(np.concatenate(cands).astype(np.uint8)),
        torch.tensor(groups),
        eligible[idx],
        torch.tensor([10 * rows[r][0] + rows[r][1] for r in keep]),
        torch.tensor([rows[r][0] for r in keep]),
        single_candidate="always",
        ties="official",
    )
    num, den = weighted_ce_sums(logits[idx], m.target, [0.9, 1.1], m.weight, "samples")
    got = float(num / den)
    same_loss = abs(got - float(want)) <= 1e-5 * max(1.0, abs(got))
    matched = log["matched masks"]
    same_masks = all(
        torch.equal(matched[k].bool(), m.target[k] == 1)
        for k in range(len(keep))
        if m.match[k] >= 0
    )
    return same_loss, same_masks


def main() -> int:
    import tempfile

    from official import load

    load()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the official loss calls .cuda()
    import ssc_ris.correct.loss as official

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args and args[0].isdigit() else 1000
    if "--resize" in sys.argv:
        judged_at = next((a for a in args if not a.isdigit()), "image_size")
        folder = Path(tempfile.mkdtemp(prefix="sssc-oracle-loss-"))
        loss = official.greedy_match_and_cross_entropy
        bad = [s for s in range(n) if not all(check_resized(s, loss, judged_at, folder))]
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        print(f"--resize {judged_at}: {n - len(bad)} of {n} batches give the same loss and masks")
        if bad:
            print("differ:", bad[:20])
        return int(bool(bad))
    bad = [s for s in range(n) if not all(check(s, official.greedy_match_and_cross_entropy))]
    print(f"{n - len(bad)} of {n} batches give the same loss and matched masks")
    if bad:
        print("differ:", bad[:20])
    return int(bool(bad))


if __name__ == "__main__":
    sys.exit(main())
