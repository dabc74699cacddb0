"""Oracle: the official evaluation of a model (``scripts/train/test_model.py``'s ``evaluate`` on
S+S+C's ``ReferDataset`` with ``eval_mode``) against ``sssc.correct.evaluate.evaluate_model``
(README rows 18, 22, 43 and 44, and the metrics), and the official tokens against lavt-base's.

    SSC_REPO=/path/to/segment-select-correct .venv/bin/python tests/oracle/check_eval.py

Both score one model: a fixed function of its input (foreground where a pixel's normalised colour
is near a palette colour drawn from the expression's kept token ids), so that any difference in
what a model is fed (the image's resize and normalisation, the text field, its tokens and their
truncation) changes its masks. The dataset is written here in RefCOCO's format: images of
several sizes, objects of one to three polygons that may overlap (row 22), some given one
polygon twice so that the official GT is empty (row 43), expressions whose ``raw`` text differs
from REFER's ``sent`` (capitals, punctuation), some longer than LAVT's 20 tokens and some with an
empty ``sent`` (row 44), val and train refs in a shuffled refs file. The official loop runs as it
is, at 480 and at 24 (where thin objects vanish in the GT's nearest resize and some unions are
empty), with its model called per expression; per expression, its output against its target
gives the IoU that sssc's must equal, and its printed mIoU, prec@ and oIoU must equal sssc's to
their two decimals.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

PALETTE = [(230, 30, 30), (30, 220, 40), (40, 60, 230), (240, 230, 40), (230, 40, 230)]
WORDS = "man woman dog cat red blue left right white shirt small big the on in of with near".split()


def dataset(root: Path, images: int, seed: int = 3) -> list[dict]:
    """A RefCOCO-format dataset under ``root``; returns the refs in file order."""
    rng = np.random.default_rng(seed)
    ds, img_dir = root / "refcoco", root / "images"
    ds.mkdir(parents=True)
    img_dir.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    refs, sent_id = [], 0
    for k in range(images):
        iid = 1000 + 7 * k
        h, w = (int(v) for v in rng.integers(30, 130, size=2))
        name = f"COCO_train2014_{iid:012d}.jpg"
        coco["images"].append({"id": iid, "file_name": name, "height": h, "width": w})
        img = Image.fromarray(rng.integers(40, 90, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            polys = []
            for _p in range(int(rng.integers(1, 4))):  # several polygons may overlap (row 22)
                x0, y0 = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
                if rng.random() < 0.15:  # a sliver that a small resize loses
                    poly = [x0, y0, x0 + 0.6, y0, x0 + 0.6, min(h, y0 + 10), x0, min(h, y0 + 10)]
                else:
                    sx, sy = rng.uniform(3, w / 2), rng.uniform(3, h / 2)
                    pts = [(x0 + sx * rng.random(), y0 + sy * rng.random()) for _ in range(4)]
                    pts = sorted(pts, key=lambda p: np.arctan2(p[1] - y0, p[0] - x0))
                    poly = [min(c, lim) for p in pts for c, lim in zip(p, (w, h), strict=True)]
                polys.append([round(float(c), 2) for c in poly])
                draw.polygon(polys[-1], fill=PALETTE[int(rng.integers(len(PALETTE)))])
            while len(polys) > 1 and not _sum_is_one(polys, h, w).any():
                polys.pop()
            if not _sum_is_one(polys, h, w).any():
                continue
            if rng.random() < 0.06:  # one polygon twice: the official GT is empty (row 43)
                polys = [polys[0], list(polys[0])]
            ann = 5000 + len(coco["annotations"])
            xs, ys = [c for p in polys for c in p[0::2]], [c for p in polys for c in p[1::2]]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            coco["annotations"].append(
                {"id": ann, "image_id": iid, "category_id": 1, "segmentation": polys,
                 "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            )  # fmt: skip
            sents = []
            for _ in range(int(rng.integers(1, 4))):
                n = int(rng.integers(24, 30)) if rng.random() < 0.15 else int(rng.integers(1, 7))
                tokens = [str(t) for t in rng.choice(WORDS, n)]
                raw = " ".join(tokens).capitalize()
                if rng.random() < 0.6:  # REFER's sent drops the punctuation raw keeps
                    cut = int(rng.integers(1, n + 1))
                    raw = " ".join(tokens[:cut]).capitalize() + ", " + " ".join(tokens[cut:])
                    raw = raw.rstrip(", ") + "."
                if rng.random() < 0.03:  # REFER's sent can be empty where raw had no word
                    tokens, raw = [], str(rng.choice(["?", "...", "!!"]))
                sents.append({"sent_id": sent_id, "sent": " ".join(tokens), "raw": raw,
                              "tokens": tokens})  # fmt: skip
                sent_id += 1
            refs.append({"ref_id": 20000 + len(refs), "ann_id": ann, "image_id": iid,
                         "split": "train" if k % 4 == 3 else "val", "category_id": 1,
                         "file_name": name, "sentences": sents,
                         "sent_ids": [s["sent_id"] for s in sents]})  # fmt: skip
        img.save(img_dir / name, quality=95)
    file_order = [refs[i] for i in rng.permutation(len(refs))]
    (ds / "instances.json").write_text(json.dumps(coco))
    (ds / "refs(unc).p").write_bytes(pickle.dumps(file_order, protocol=2))
    return file_order


def _sum_is_one(polys: list, h: int, w: int) -> np.ndarray:
    from pycocotools import mask

    return mask.decode(mask.frPyObjects(polys, h, w)).sum(axis=2) == 1


class Model(torch.nn.Module):
    """A fixed "model": a pixel is foreground where its normalised colour is within a radius of
    one of the palette's colours, the colour and the radius drawn from the expression's kept
    token ids (background logit 0, foreground logit radius^2 - distance^2). Called per
    expression by the official loop (``l_mask=``) and a batch at a time by sssc (positionally)."""

    MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])

    def forward(self, x, ids, mask=None, l_mask=None):
        mask = l_mask if mask is None else mask
        ids, mask = ids.reshape(len(x), -1).double(), mask.reshape(len(x), -1).double()
        pos = torch.arange(1, ids.shape[1] + 1, dtype=torch.float64)
        s = (ids * mask * pos).sum(1) + 7.0 * mask.sum(1)
        palette = (torch.tensor(PALETTE, dtype=torch.float64) / 255 - self.MEAN) / self.STD
        colour = palette[(s % len(PALETTE)).long()]  # [B, 3]
        radius = 0.5 + 1.5 * (0.5 + 0.5 * torch.sin(1.7 * s))
        dist = ((x.double() - colour[:, :, None, None]) ** 2).sum(1)
        fg = radius[:, None, None] ** 2 - dist
        return torch.stack([torch.zeros_like(fg), fg], 1).float()


class Recorder(Model):
    """The official side: keeps each call's argmax mask."""

    def __init__(self):
        super().__init__()
        self.masks: list[np.ndarray] = []

    def forward(self, x, ids, mask=None, l_mask=None):
        out = super().forward(x, ids, mask, l_mask)
        self.masks.append(out.argmax(1)[0].numpy())
        return out


def official_run(root: Path, size: int) -> tuple[dict, dict]:
    """The official ``evaluate`` at ``size``: its printed metrics, and per (ref_id, sent_id)
    the IoU of its model's output against its target."""
    from official import script_function
    from ssc_ris.refer_dataset.utils import get_dataset, get_transform
    from ssc_ris.utils.lavt_lib import lavt_utils

    ds, _ = get_dataset(
        "refcoco", str(root), "val", get_transform(size), "unc", return_attributes=False,
        eval_model=True,
    )  # fmt: skip
    ds.refer.IMAGE_DIR = str(root / "images")  # get_dataset passes no image root
    namespace = {"np": np, "torch": torch, "os": os, "utils": lavt_utils, "Tuple": tuple}
    namespace["BertModel"] = object
    evaluate = script_function("scripts/train/test_model.py", "evaluate", namespace)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, sampler=torch.utils.data.SequentialSampler(ds), num_workers=0
    )
    model = Recorder()
    out, cwd = io.StringIO(), os.getcwd()
    os.chdir(root)  # it writes results/<model>_<split>.txt
    try:
        with contextlib.redirect_stdout(out):
            evaluate(model, loader, None, torch.device("cpu"), "oracle.pth", "val")
    finally:
        os.chdir(cwd)
    text = out.getvalue()
    printed = {"mIoU": float(re.search(r"Mean IoU is ([\d.]+)", text).group(1))}
    printed["oIoU"] = float(re.search(r"overall IoU = ([\d.]+)", text).group(1))
    for t, v in re.findall(r"precision@([\d.]+) = ([\d.]+)", text):
        printed[f"prec@{t}"] = float(v)
    ious, k = {}, 0
    for index, ref_id in enumerate(ds.ref_ids):
        target = ds[index][1].numpy()
        for sent_id in ds.refer.Refs[ref_id]["sent_ids"]:
            pred = model.masks[k]
            k += 1
            i = np.logical_and(pred, target).sum()
            u = np.logical_or(pred, target).sum()
            ious[ref_id, sent_id] = (i / u if u else 0.0, int(i), int(u), not target.any())
    assert k == len(model.masks), "one official call per expression"
    return printed, ious


def sssc_run(root: Path, vocab_words: list[str], size: int, sets: list[str]) -> tuple[dict, dict]:
    """``evaluate_model`` at ``size`` (with the ``--set`` overrides ``sets``); per (ref_id,
    sent_id) its IoU, through ``evaluate_masks``' subsets (one per expression)."""
    import sssc.correct.evaluate as ev
    from sssc.config import load_config
    from sssc.correct.tokenizer import LAVTTokenizer, _wordpiece_from_words
    from sssc.data.refer import Refer

    cfg = load_config(
        "refcoco",
        [
            f"data.root={root}",
            f"data.image_dir={root / 'images'}", f"train.image_size={size}",
            f"eval.resolution={size}", "eval.upsample=lavt", "train.num_workers=0",
            "data.empty_sentences=keep",  # recipe: official's (row 44): scored as they are
            *sets,
        ],
    )  # fmt: skip
    refer = Refer.from_config(cfg.data)
    tokenize = LAVTTokenizer(_wordpiece_from_words(vocab_words), 20)
    keys = {s.sent_id: (r.ref_id, s.sent_id) for r in refer.split_refs("val") for s in r.sentences}
    plain = ev.evaluate_masks

    def per_expression(*args, **kwargs):
        return plain(*args, **{**kwargs, "subsets": {k: [k] for k in keys}})

    ev.evaluate_masks = per_expression
    try:
        m = ev.evaluate_model(Model(), refer, cfg, tokenize, torch.device("cpu"), "val")
    finally:
        ev.evaluate_masks = plain
    ious = {keys[k]: v["mIoU"] / 100.0 for k, v in m["subsets"].items()}
    return m, ious


def check_tokens(root: Path, n: int, seed: int = 11) -> int:
    """The official ``ReferDataset``'s tokens (its vendored ``BertTokenizer``: ``encode`` with the
    special tokens, the first 20 kept) against sssc's ``tokenizer: bert`` path
    (``BertTokenizerFast`` from the same folder, :class:`LAVTTokenizer`) on ``n`` random strings:
    capitals, accents,
    punctuation, digits, CJK characters, an emoji, tabs and runs of spaces, words split into
    word pieces, words no piece covers and one over 100 characters. Returns how many differ."""
    from ssc_ris.refer_dataset.bert.tokenization_bert import BertTokenizer

    from sssc.correct.tokenizer import LAVTTokenizer, _bert_from_folder

    folder = root / "bert-vocab"
    folder.mkdir()
    words = ["man", "woman", "left", "right", "red", "shirt", "cafe", "the", "on", "dog", "big"]
    pieces = ["##s", "##er", "##est", "##ing", "##e", "##x", "un", "##der", "a", "##b", "##c"]
    puncts = list(",.!?'-()\"/:;&")
    chars = ["\u4e2d", "\u6587", "0", "1", "2", "7"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *pieces, *puncts, *chars]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    official = BertTokenizer(str(folder / "vocab.txt"))
    mine = LAVTTokenizer(_bert_from_folder(folder), 20)
    rng = np.random.default_rng(seed)
    extra = [
        "Caf\u00e9", "CAF\u00c9S", "na\u00efve", "\u4e2d\u6587", "\U0001f600", "shirt's",
        "well-dressed", "x" * 120, "unbelievable", "abc", "Left,", "7th", "\t", "  ", "mañana",
    ]  # fmt: skip
    differ = 0
    for _ in range(n):
        parts = [
            str(rng.choice(words + extra)) if rng.random() < 0.8 else str(rng.choice(puncts))
            for _ in range(int(rng.integers(0, 30)))
        ]
        text = "".join(p + str(rng.choice([" ", " ", "", "  ", "\t"])) for p in parts)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.title()
        want = official.encode(text=text, add_special_tokens=True)[:20]
        ids, mask = mine(text)
        got = ids[0, : int(mask.sum())].tolist()
        if got != want:
            differ += 1
            if differ <= 3:
                print(f"  tokens differ for {text!r}: official {want}, sssc {got}")
    print(f"tokens: {n - differ} of {n} random strings give the official ids")
    return differ


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="?", type=int, default=60)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an sssc config override, e.g. data.text_field=raw, data.polygon_overlap=union or "
        "data.empty_sentences=skip (the check then fails)",
    )
    ap.add_argument("--strings", type=int, default=3000, help="random strings for the tokens")
    args = ap.parse_args()

    from official import load, scratch

    load()
    root = scratch("sssc-oracle-eval-")
    file_refs = dataset(root, args.images)
    texts = [t for r in file_refs for s in r["sentences"] for t in (s["sent"], s["raw"])]
    from sssc.correct.tokenizer import _wordpiece_from_words

    vocab = root / "vocab"
    vocab.mkdir()
    hf = _wordpiece_from_words(texts)
    words = sorted(hf.get_vocab(), key=hf.get_vocab().__getitem__)
    (vocab / "vocab.txt").write_text("\n".join(words) + "\n")
    # The official dataset tokenizes with bert-base-uncased's name; give it this vocabulary.
    from ssc_ris.refer_dataset.bert import tokenization_bert

    loader = tokenization_bert.BertTokenizer.from_pretrained.__func__
    tokenization_bert.BertTokenizer.from_pretrained = classmethod(
        lambda cls, *a, **k: loader(cls, str(vocab))
    )
    val = [r for r in file_refs if r["split"] == "val"]
    n_sent = sum(len(r["sentences"]) for r in val)
    long = sum(len(s["tokens"]) > 18 for r in val for s in r["sentences"])
    blank = sum(not s["sent"] for r in val for s in r["sentences"])
    multi = sum(len(a["segmentation"]) > 1 for a in json.loads(
        (root / "refcoco" / "instances.json").read_text())["annotations"])  # fmt: skip
    print(
        f"{args.images} images, {len(val)} val refs, {n_sent} val expressions ({long} over 20 "
        f"tokens with [CLS] and [SEP], {blank} empty), {multi} objects of several polygons; "
        "sssc with data.empty_sentences=keep and the "
        f"refcoco config{''.join(' --set ' + x for x in args.set)}"
    )
    failed = int(check_tokens(root, args.strings) > 0)
    for size in (480, 24):
        printed, want = official_run(root, size)
        m, got = sssc_run(root, texts, size, args.set)
        equal = sum(k in got and abs(got[k] - want[k][0]) <= 1e-12 for k in want)
        empty = sum(v[2] == 0 for v in want.values())
        empty_gt = sum(v[3] for v in want.values())
        mine = {k: round(m[k], 2) for k in printed}
        same = mine == printed
        failed += equal != len(want) or len(got) != len(want) or not same
        print(
            f"size {size}: IoU equal for {equal} of {len(want)} expressions ({empty} with an "
            f"empty union, {empty_gt} with an empty GT at that size), sssc scored {len(got)}; "
            f"official {printed}; sssc {mine}: {'equal' if same else 'DIFFER'}"
        )
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
