"""Oracle: the official training set and loader against ``pack_samples(order="official",
draw="official")`` (README, deviation row 19).

    SSC_REPO=/path/to/segment-select-correct .venv/bin/python tests/oracle/check_samples.py

Builds the RefCOCO-format fixture of ``tests/test_sampler_order.py`` with a pseudo-mask PNG per
ref, loads it with the official ``UnsupervisedReferDataset`` (``--one-sentence``), deals it with
torch's ``DistributedSampler`` and ``DataLoader`` (real worker processes, ``drop_last``, after
``torch.manual_seed(100)``), skips each GPU's first load, unfolds and cuts as the official loop
does, and compares the steps with sssc's plan.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from official import load, scratch

    load()
    from ssc_ris.refer_dataset.unsupervised_dataset import UnsupervisedReferDataset
    from ssc_ris.refer_dataset.utils import get_transform
    from test_sampler_order import _write

    from sssc.correct.data import pack_samples
    from sssc.data.refer import Refer

    root = scratch("sssc-oracle-data-")
    file_refs = _write(root)
    masks = root / "masks" / "refcoco"
    masks.mkdir(parents=True)
    words = set()
    for r in file_refs:
        m = np.zeros((16, 16))
        m[2:9, 3:7] = 1
        plt.imsave(masks / f"pseudo_gt_mask_{r['ref_id']}.png", m, cmap="gray")
        words |= {s["sent"] for s in r["sentences"]}
    vocab = root / "vocab"
    vocab.mkdir()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (vocab / "vocab.txt").write_text("\n".join([*special, *sorted(words)]) + "\n")
    ds = UnsupervisedReferDataset(
        "refcoco",
        splitBy="unc",
        refer_data_root=str(root),
        pseudo_masks_data_root=str(root / "masks"),
        image_transforms=get_transform(16),
        split="train",
        bert_tokenizer=str(vocab),
        COCO_image_root=str(root / "images"),
        one_sentence=True,
    )
    refer = Refer(root, "refcoco", "unc", root / "images")
    assert [im["id"] for im in ds.imgs] == refer.refer_image_ids("train"), "image order"
    differ = total = 0
    for workers in (1, 3, 8):
        for gpus, per_load, per_gpu in ((2, 2, 2), (3, 1, 3), (4, 2, 3)):
            for epoch in (0, 1, 2):
                want = _official_steps(ds, gpus, per_load, per_gpu, epoch, workers)
                got = pack_samples(
                    refer, "train", gpus * per_gpu, 0, epoch, 1, gpus, per_load, None,
                    "official", draw="official", workers=workers,
                )  # fmt: skip
                total += 1
                differ += got != want
                print(
                    f"workers {workers}, gpus {gpus}, loads of {per_load}, {per_gpu} a GPU, "
                    f"epoch {epoch}: {len(want)} steps, {'equal' if got == want else 'DIFFER'}"
                )
    print(f"{total - differ} of {total} set-ups equal")
    return int(differ > 0)


def _official_steps(ds, gpus, per_load, per_gpu, epoch, workers):
    from test_sampler_order import official_loader

    cuts = []
    for g in range(gpus):
        loader = official_loader(ds, gpus, g, per_load, epoch, workers, ds.collate_fn)
        buffer, steps = [], []
        for k, (_, targets, sentences, _, attrs) in enumerate(loader):
            if k == 0:  # log_every(..., skip_first=True)
                continue
            for b in range(len(targets)):
                for m, target in enumerate(targets[b]):
                    if (target == 0).all() or (target == 1).all():
                        continue
                    a = attrs[b][m]
                    rows = ds.input_ids[a["ref_id"]]
                    (j,) = [i for i in range(len(rows)) if torch.equal(rows[i], sentences[b][m][0])]
                    buffer.append((a["ref"]["image_id"], a["sentence_ids"][j]))
            while len(buffer) > per_gpu:
                steps.append(buffer[:per_gpu])
                buffer = buffer[per_gpu:]
        cuts.append(steps)
    n = min(len(c) for c in cuts)
    return [[x for c in cuts for x in c[i]] for i in range(n)]


if __name__ == "__main__":
    sys.exit(main())
