"""Oracle: the official Stage 1 (``segment_from_image_and_nouns`` and the driver of
``create_all_masks_dataset.py`` with its README flags ``--most-likely-noun --project
--context-projections``, which treats each run of consecutive refs of one file name as an image)
against sssc's ``ModelsSegmenter`` with the official settings (README, deviation rows 1-9, 36-37
and 39; row 3's NLTK fallback runs on a designed NLTK tagger).

    SSC_REPO=/path/to/segment-select-correct GDINO_REPO=/path/to/GroundingDINO \\
        .venv/bin/python tests/oracle/check_segment.py [IMAGES]

The official code imports GroundingDINO's ``Model`` (``groundingdino.util.inference``); its
README pins GroundingDINO at commit 57535c5 "for reproducibility", and that commit's
``inference.py`` and ``get_phrases_from_posmap`` run here, read from ``GDINO_REPO`` (a clone of
IDEA-Research/GroundingDINO, a working tree or a git directory). The rest of GroundingDINO (the
transforms) is the installed groundingdino-py's. One edit: that ``predict`` moves the model and
the image to ``device="cuda"`` by default (``predict_with_classes`` does not pass its own), so
its default becomes ``"cpu"``.

No weights exist here, so both pipelines share stand-ins for the three models:

* spaCy: a random parser (each token's part of speech and dependency drawn from the text), the
  same Doc for both rules; the expressions of a synthetic dataset, a third of them without their
  leading "the", so both parse paths run;
* NLTK (the official last fallback, for expressions without a spaCy noun): the installed NLTK
  with a designed data folder (``tests/tiny_models.write_tiny_nltk``): each word of the dataset
  tagged by a perceptron from two of NN, NNS, JJ, VBN, IN and RB (a third of the words from the
  last four), by the word and the tag before it; "the", "of" and "." by its tag dictionary;
* CLIP: one random open_clip ViT (text tower only used);
* GroundingDINO: a network whose per-token probabilities and boxes are designed from the
  caption: boxes on a class's tokens, on part of them, on two classes, on the [CLS] token too,
  below the box threshold, and boxes that reach past the image's border (all without ties at
  the thresholds); its tokenizer a BERT WordPiece vocabulary of COCO's class words;
* SAM: one tiny random SAM (``segment.models.sam_type=tiny``), called per box officially and
  batched in sssc (``sam_calls: per_image``); where a map differs, sssc's record is made again
  with ``sam_calls: per_box`` and must then equal the official one.

Each object's official instance map (its candidates painted 1, 2, ... in detection order) is
compared with the one sssc's S1 record gives (its eligible candidates painted in id order).

``--exif exif`` rewrites half of the (square) images with an EXIF orientation tag, 2 to 8, which
the official ``cv2.imread`` applies, and runs sssc with ``image_orientation: exif`` (README row
42); the designed detector then also reads the image's top-left quarter, so that a turned image
gets other boxes. ``--exif stored`` runs sssc's default there: the check fails.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import types
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PINNED = "57535c5a79791cb76e36fdb64975271354f10251"  # the S+S+C README's GroundingDINO commit

COCO = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLIP_ARCH = "sssc-oracle-clip-text"
CLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _read_pinned(repo: Path, path: str) -> str:
    git = ["git", f"--git-dir={repo / '.git'}"] if (repo / ".git").exists() else ["git"]
    if git == ["git"]:
        git.append(f"--git-dir={repo}")
    return subprocess.run(
        [*git, "show", f"{PINNED}:{path}"], check=True, capture_output=True, text=True
    ).stdout


def load_pinned_gdino() -> types.ModuleType:
    """GroundingDINO's ``inference`` module at the pinned commit, as
    ``groundingdino.util.inference``."""
    repo = os.environ.get("GDINO_REPO")
    if not repo:
        sys.exit("set GDINO_REPO to a clone of https://github.com/IDEA-Research/GroundingDINO")
    import groundingdino.util.utils  # noqa: F401  (the installed package, for its imports)

    utils = types.ModuleType("sssc_oracle_gdino_utils")
    src = _read_pinned(Path(repo), "groundingdino/util/utils.py")
    exec(compile(src, f"GroundingDINO@{PINNED[:7]}/util/utils.py", "exec"), utils.__dict__)
    inference = types.ModuleType("groundingdino.util.inference")
    src = _read_pinned(Path(repo), "groundingdino/util/inference.py")
    exec(compile(src, f"GroundingDINO@{PINNED[:7]}/util/inference.py", "exec"), inference.__dict__)
    inference.get_phrases_from_posmap = utils.get_phrases_from_posmap
    inference.predict.__defaults__ = ("cpu",)  # was "cuda": see the module docstring
    sys.modules["groundingdino.util.inference"] = inference
    return inference


class StandinParser:
    """``nlp(text) -> Doc``: a random dependency parse drawn from the text (one ROOT, every
    other token its child)."""

    POS = ("NOUN", "PROPN", "ADJ", "ADP", "DET", "VERB")
    DEPS = ("nsubj", "amod", "pobj", "det", "prep", "dobj")

    def __init__(self):
        import spacy

        self.vocab = spacy.blank("en").vocab

    def __call__(self, text: str):
        from spacy.tokens import Doc

        words = text.split()
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        pos = [self.POS[k] for k in rng.choice(6, len(words), p=[0.4, 0.1, 0.2, 0.1, 0.1, 0.1])]
        root = int(rng.integers(len(words)))
        deps = [self.DEPS[k] for k in rng.choice(6, len(words))]
        deps[root] = "ROOT"
        return Doc(self.vocab, words=words, pos=pos, deps=deps, heads=[root] * len(words))


class DesignedDino(torch.nn.Module):
    """GroundingDINO's interface (``model(images, captions=[caption])``, ``model.tokenizer``)
    with designed outputs; the same caption and image give the same outputs."""

    KINDS = ("exact", "part", "two", "cls", "weak")

    def __init__(self, tokenizer, queries: int = 10, turns: bool = False):
        super().__init__()
        self.tokenizer, self.queries, self.turns = tokenizer, queries, turns
        self.kinds: Counter = Counter()

    def to(self, *args, **kwargs):  # the pinned predict() moves the model
        return self

    def forward(self, images: torch.Tensor, captions: list[str]) -> dict:
        caption = captions[0]
        key = f"{caption}|{tuple(images.shape)}|{float(images.mean()):.3f}"
        if self.turns:  # a turned image gets other boxes (the mean alone is the same)
            h, w = images.shape[-2:]
            key += f"|{float(images[..., : h // 2, : w // 2].mean()):.3f}"
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        enc = self.tokenizer(caption, return_offsets_mapping=True)
        n = len(enc["input_ids"])
        # Each class's tokens: those inside one comma-separated part of the caption.
        spans, pos = [], 0
        for part in caption.rstrip(".").split(", "):
            spans.append((pos, pos + len(part)))
            pos += len(part) + 2
        phrases = [
            [t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > a and s <= a and b <= e]
            for s, e in spans
        ]
        prob = np.zeros((self.queries, 256))
        prob[:, :n] = rng.uniform(0.0, 0.2, (self.queries, n))
        for q in range(self.queries):
            kind = self.KINDS[rng.choice(5, p=[0.5, 0.1, 0.1, 0.15, 0.15])]
            self.kinds[kind] += 1
            p = phrases[int(rng.integers(len(phrases)))]
            if kind in ("exact", "cls"):
                prob[q, p] = rng.uniform(0.4, 0.95, len(p))
                if kind == "cls":
                    prob[q, 0] = rng.uniform(0.3, 0.6)
            elif kind == "part":  # a proper part of a multi-token class, else the class and ","
                if len(p) > 1:
                    prob[q, p[: int(rng.integers(1, len(p)))]] = rng.uniform(0.4, 0.95)
                else:
                    prob[q, [p[0], min(p[0] + 1, n - 2)]] = rng.uniform(0.4, 0.95)
            elif kind == "two":
                p2 = phrases[int(rng.integers(len(phrases)))]
                prob[q, p + p2] = rng.uniform(0.4, 0.95)
            else:  # tokens above the text threshold, none above the box threshold
                prob[q, p] = rng.uniform(0.27, 0.33, len(p))
        logits = torch.full((1, self.queries, 256), -float("inf"))
        logits[0, :, :n] = torch.logit(torch.as_tensor(prob[:, :n], dtype=torch.float32))
        centre = rng.uniform(0.05, 0.95, (self.queries, 2))
        size = rng.uniform(0.1, 0.9, (self.queries, 2))  # many reach past the border
        boxes = torch.as_tensor(np.concatenate([centre, size], 1), dtype=torch.float32)[None]
        return {"pred_logits": logits, "pred_boxes": boxes}


def sssc_maps(rec: dict, refs: list[dict]) -> list[np.ndarray]:
    """Each ref's instance map from sssc's S1 record: its object's eligible candidates painted
    1, 2, ... in id order (the detector's box order)."""
    from sssc.data import masks as _masks

    cand = [_masks.decode(c["rle"]) for c in rec["candidates"]]
    eligible = {o["ann_id"]: o["eligible"] for o in rec["objects"]}
    maps = []
    for r in refs:
        m = np.zeros((rec["height"], rec["width"]))
        for k, i in enumerate(eligible[r["ann_id"]]):
            m[cand[i]] = k + 1
        maps.append(m)
    return maps


def coco_vocab() -> tuple[str, ...]:
    words = sorted({w for c in COCO for w in c.split()} | {"all", "object"})
    return (*SPECIAL, ",", ".", "##s", "##es", *words)


def dataset(root: Path, images: int) -> Path:
    """The synthetic dataset, a third of its expressions without their leading "the", one ref
    in 20 moved to another place in the refs file (so some images' refs are not contiguous)."""
    from sssc.data.synthetic import generate

    generate(root, seed=3, num_images=images, image_size=96, val_images=1, test_images=1)
    path = root / "synthetic" / "refs(synthetic).p"
    refs = pickle.loads(path.read_bytes())
    rng = np.random.default_rng(0)
    for r in refs:
        for s in r["sentences"]:
            if s["sent"].startswith("the ") and rng.random() < 1 / 3:
                s["sent"] = s["raw"] = s["sent"][4:]
                s["tokens"] = s["tokens"][1:]
    for _ in range(len(refs) // 20):  # a few refs moved elsewhere in the file: split images
        refs.insert(int(rng.integers(len(refs))), refs.pop(int(rng.integers(len(refs)))))
    path.write_bytes(pickle.dumps(refs))
    return root


def tag_images(root: Path, seed: int = 5) -> dict[str, int]:
    """Half of the dataset's images rewritten with an EXIF orientation tag (2 to 8; the
    synthetic images are square, so every tag keeps their shape), pixels unchanged: the
    official Stage 1 reads them turned (``cv2.imread``), sssc as ``image_orientation`` says."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tags = {}
    for path in sorted((root / "synthetic" / "images").iterdir()):
        if rng.random() < 0.5:
            tag = int(rng.integers(2, 9))
            with Image.open(path) as im:
                im = im.convert("RGB")
            exif = im.getexif()
            exif[0x0112] = tag
            im.save(path, exif=exif)
            tags[path.name] = tag
    return tags


def nltk_tagger(folder: Path, refer) -> str:
    """The designed NLTK data folder (module docstring) for the dataset's words."""
    from tiny_models import write_tiny_nltk

    words = sorted({w for r in refer.refs.values() for s in r.sentences for w in s.sent.split()})
    tags = ("NN", "NNS", "JJ", "VBN", "IN", "RB")
    rng = np.random.default_rng(7)
    # A third of the words never a noun, so that some expressions have no phrase.
    ambiguous = {
        w: tuple(rng.choice(tags[2 * (rng.random() < 1 / 3) :], 2, replace=False)) for w in words
    }
    fixed = {"the": "DT", "of": "IN", ".": "."}
    return write_tiny_nltk(folder, fixed, {w: t for w, t in ambiguous.items() if w not in fixed})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="?", type=int, default=120)
    ap.add_argument(
        "--before",
        action="store_true",
        help="sssc's Stage 1 as it was before 2026-12-07 (gdino_cls_token: ignored, "
        "sam_box: clamped, image_grouping: image, noun_fallback: none): the check then fails",
    )
    ap.add_argument(
        "--exif",
        choices=("exif", "stored"),
        help="tag half of the images with an EXIF orientation (README row 42) and run sssc with "
        "segment.models.image_orientation set to this (exif: official; stored: the check fails)",
    )
    args = ap.parse_args()

    import open_clip
    import spacy
    from official import load, scratch

    load()
    inference = load_pinned_gdino()
    parser = StandinParser()
    spacy.load = lambda *a, **k: parser  # the official module loads en_core_web_md on import
    from segment_anything import SamPredictor
    from ssc_ris.segment import segment_fns as official
    from tiny_models import write_tiny_gdino

    from sssc.config import SegmentModelsConfig
    from sssc.data.refer import Refer
    from sssc.segment.runner import ModelsSegmenter

    work = scratch("sssc-oracle-segment-")
    root = dataset(work / "data", args.images)
    tagged = tag_images(root) if args.exif else {}
    refer = Refer(root, "synthetic", "synthetic", root / "synthetic" / "images")
    gdino_config, bert = write_tiny_gdino(work / "gdino", coco_vocab())
    nltk_data = nltk_tagger(work / "nltk_data", refer)
    __import__("nltk").data.path.insert(0, nltk_data)  # where the official fallback reads it
    (work / f"{CLIP_ARCH}.json").write_text(__import__("json").dumps(CLIP_CFG))
    open_clip.add_model_config(work / f"{CLIP_ARCH}.json")
    m = SegmentModelsConfig(
        spacy_model="oracle-standin",
        clip_model=CLIP_ARCH,
        clip_weights="random",
        class_order="set",
        gdino_config=gdino_config,
        gdino_weights="random",
        gdino_text_encoder=bert,
        sam_type="tiny",
        sam_weights="random",
        amp="none",
        gdino_cls_token="ignored" if args.before else "counted",
        sam_box="clamped" if args.before else "detector",
        image_grouping="image" if args.before else "file_runs",
        noun_fallback="none" if args.before else "nltk",
        nltk_data=nltk_data,
        image_orientation=args.exif or "stored",
    )
    torch.manual_seed(0)
    seg = ModelsSegmenter(refer, m, COCO, ["train"])
    dino = DesignedDino(seg.detector.model.tokenizer, turns=bool(args.exif))
    seg.detector.model = dino

    # The official driver's setup: the COCO list's CLIP features with the context string.
    clip_model = seg.project.clip.model
    with torch.no_grad():
        feats = torch.vstack(
            [clip_model.encode_text(official.clip.tokenize("a photo of a " + c)) for c in COCO]
        ).to(torch.float32)
    feats /= feats.norm(dim=-1, keepdim=True)
    gdino = inference.Model.__new__(inference.Model)
    gdino.model, gdino.device = dino, "cpu"
    sam = SamPredictor(seg.segmenter.predictor.model)

    refs = [r for r in pickle.loads((root / "synthetic" / "refs(synthetic).p").read_bytes())]
    refs = [r for r in refs if r["split"] == "train"]
    groups: list[list[dict]] = []
    for r in refs:  # the official loop: consecutive refs of one file name are one image
        if groups and groups[-1][0]["file_name"] == r["file_name"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    counts: Counter = Counter()
    bad: list[str] = []
    for g in groups:
        image_id = g[0]["image_id"]
        image_nouns = []
        for r in g:
            obj = []
            for s in r["sentences"]:
                # The driver's default (--noun-extraction spacy): spaCy, then NLTK's chunker.
                nouns = official.get_nouns_and_noun_phrases_spacy(s["sent"])
                counts["expressions"] += 1
                if not nouns:
                    nouns = official.get_nouns_and_noun_phrases_nltk(s["sent"])
                    counts["nltk_fallback"] += 1
                    counts["nltk_fallback_empty"] += not nouns
                ours = seg.nouns(s["sent"])
                counts["nouns_equal"] += nouns == ours
                proj = official.project_to_dataset_classes(
                    clip_model, nouns, np.array(COCO), feats, with_context=True
                )
                counts["classes_equal"] += proj == [COCO[k] for k in seg.project(ours)]
                obj.append(proj)
            image_nouns.append(obj)
        maps = official.segment_from_image_and_nouns(
            gdino,
            sam,
            g[0]["file_name"],
            str(root / "synthetic" / "images"),
            image_nouns,
            most_likely_noun=True,
        )
        ours = sssc_maps(seg(image_id), g)
        same = [np.array_equal(a, b) for a, b in zip(ours, maps, strict=True)]
        counts["objects"] += len(g)
        counts["maps_equal"] += sum(same)
        if not all(same):
            # sssc prompts SAM with all boxes of an image at once (sam_calls: per_image), the
            # official code one box at a time: the mask decoder's batched arithmetic may move a
            # logit across 0. With sam_calls: per_box, sssc must give the official maps exactly.
            seg.segmenter.calls = "per_box"  # segment.models.sam_calls
            per_box = sssc_maps(seg(image_id), g)
            seg.segmenter.calls = "per_image"
            for r, a, b, c in zip(g, ours, maps, per_box, strict=True):
                if not np.array_equal(a, b):
                    px = int((a != b).sum())
                    ok = np.array_equal(c, b)
                    counts["maps_equal_per_box" if ok else "maps_differ"] += 1
                    bad.append(
                        f"image {image_id} ref {r['ref_id']}: {px} px; one box at a time: "
                        + ("equal" if ok else f"{int((c != b).sum())} px")
                    )
        counts["images"] += 1
        if g[0]["file_name"] in tagged:
            counts["tagged_images"] += 1
            counts["tagged_objects"] += len(g)
            counts["tagged_maps_equal"] += sum(same)
    print(dict(counts))
    print("designed boxes:", dict(dino.kinds))
    print("sssc counts:", dict(seg.counts))
    for line in bad:
        print("  differs:", line)
    agree = counts["nouns_equal"] == counts["classes_equal"] == counts["expressions"]
    return 0 if agree and counts["maps_differ"] == 0 and counts["objects"] == len(refs) else 1


if __name__ == "__main__":
    sys.exit(main())
