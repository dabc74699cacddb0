"""Stage 1, step 3: boxes of the referred classes with GroundingDINO (groundingdino-py).

One detector call per image with the image's query classes as the caption. Images are never
batched together: GroundingDINO pads a batch to its largest image and its outputs change with the
padding, so batching would make a label depend on which other images shared its batch. The paper's
thresholds: box 0.35 (on a query's best token probability), text 0.25 (a token counts for a phrase
above it). Three rules are settings (``segment.models.gdino_*``), official by default:

* ``caption``: ``comma``, the official ``Model.predict_with_classes``'s ``", ".join(classes)``
  (GroundingDINO then lower-cases it and ends it with "."), or ``period`` (``"circle. square."``,
  GroundingDINO's training format);
* ``labels``: ``exact``, the official rule: a box's phrase is the text of its tokens above the text
  threshold (``get_phrases_from_posmap``, "." removed), and its class is the class of exactly that
  name, else none (the box then belongs to no object); or ``best_phrase``: the class whose tokens
  hold the box's highest probability above the text threshold;
* ``retry``: ``official``: when any box got no class, ask again for every class as ``"all
  {name}s"`` and keep that second answer only (no retry when nothing was detected); or ``sssc``:
  ask again as ``"all [CLS]s"`` (a proper plural) only for the classes without a box, and add the
  boxes found;
* ``cls_token`` (with ``labels="exact"``): ``counted``, the official: GroundingDINO at the commit
  the S+S+C README pins (57535c5, April 2023) decodes every token above the text threshold into a
  box's phrase, the ``[CLS]`` token included, so such a box names no class (and triggers the
  official retry); or ``ignored``: GroundingDINO from June 2023 on (9a96ef0, and groundingdino-py
  0.4.0) drops position 0 first;
* ``sam_box``: ``detector``, the official: the box as the detector gives it, converted from
  ``cx, cy, w, h`` and never clamped, so it may reach past the image's border (SAM encodes its
  corners where they are); or ``clamped`` to the image.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_convert

from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..pretrained import check_weights, is_random, random_init

__all__ = ["Detections", "GroundingDinoDetector", "caption_spans"]


@dataclass
class Detections:
    """Boxes of one image.

    Attributes:
        boxes: float ``[N, 4]`` ``x0, y0, x1, y1`` in input pixels (past the border unless
            ``sam_box="clamped"``).
        scores: float ``[N]``, the query's best token probability.
        labels: int ``[N]``, index into the classes asked for; ``-1``: the box's phrase named no
            class (``labels="exact"``).
        retried: whether the "all [CLS]s" retry ran.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    retried: bool = False

    def __len__(self) -> int:
        return len(self.boxes)


CAPTIONS = ("comma", "period")
LABELS = ("exact", "best_phrase")
RETRIES = ("official", "sssc")
CLS_TOKENS = ("counted", "ignored")
SAM_BOXES = ("detector", "clamped")


def caption_spans(
    phrases: Sequence[str], style: str = "period"
) -> tuple[str, list[tuple[int, int]]]:
    """The caption and each phrase's character span in it.

    ``style="period"``: ``"p0. p1."`` (GroundingDINO's training format). ``style="comma"``: the
    official ``", ".join(phrases)``, lower-cased and ended with "." as GroundingDINO's ``predict``
    does (``"p0, p1."``).
    """
    if style not in CAPTIONS:
        raise ValueError(f"caption style must be one of {CAPTIONS}, got {style!r}")
    sep = ". " if style == "period" else ", "
    parts, spans, pos = [], [], 0
    for p in phrases:
        p = p.lower().strip()
        spans.append((pos, pos + len(p)))
        parts.append(p)
        pos += len(p) + len(sep)
    return sep.join(parts) + ".", spans


def _plural(name: str) -> str:
    return name + ("es" if name.endswith(("s", "sh", "ch", "x", "z")) else "s")


class GroundingDinoDetector:
    """``detector(image, classes) -> Detections`` with GroundingDINO.

    Args:
        config: a GroundingDINO config file; ``""`` uses the SwinT (OGC) config of the package.
        weights: the checkpoint (``groundingdino_swint_ogc.pth``) or ``random`` (tests).
        text_encoder: a local BERT folder to use as the text encoder; ``""`` keeps the config's
            (``bert-base-uncased`` from the Hugging Face cache).
        box_threshold, text_threshold: the paper's 0.35 and 0.25.
        size, max_size: the input resize (short side, cap on the long side; paper 800, 1333).
        device: where to run.
        amp: ``bf16`` | ``fp16`` | ``none``, autocast on CUDA only.
        caption, labels, retry, cls_token, sam_box: the rules of the module docstring (official
            by default).

    Raises:
        WeightsError: a weights/config/text-encoder path is missing (before anything is built).
    """

    def __init__(
        self,
        config: str = "",
        weights: str = "",
        text_encoder: str = "",
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        size: int = 800,
        max_size: int = 1333,
        device: str | torch.device = "cpu",
        amp: str = "bf16",
        caption: str = "comma",
        labels: str = "exact",
        retry: str = "official",
        cls_token: str = "counted",
        sam_box: str = "detector",
    ):
        for name, value, choices in (
            ("gdino_caption", caption, CAPTIONS),
            ("gdino_labels", labels, LABELS),
            ("gdino_retry", retry, RETRIES),
            ("gdino_cls_token", cls_token, CLS_TOKENS),
            ("sam_box", sam_box, SAM_BOXES),
        ):
            if value not in choices:
                raise ValueError(f"segment.models.{name} must be one of {choices}, got {value!r}")
        self.caption, self.labels, self.retry = caption, labels, retry
        self.cls_token, self.sam_box = cls_token, sam_box
        check_weights(
            "segment.models",
            {"gdino_config": config, "gdino_weights": weights, "gdino_text_encoder": text_encoder},
            optional=("gdino_config", "gdino_text_encoder"),
        )
        try:
            import groundingdino
            from groundingdino.models import build_model
            from groundingdino.util.misc import clean_state_dict
            from groundingdino.util.slconfig import SLConfig
        except ImportError as e:
            raise ImportError(
                f"groundingdino-py is not installed ({e}); pip install 'sssc[segment]'"
            ) from None
        if not config:
            config = os.path.join(
                os.path.dirname(groundingdino.__file__), "config", "GroundingDINO_SwinT_OGC.py"
            )
        args = SLConfig.fromfile(config)
        args.device = str(device)
        if text_encoder:
            args.text_encoder_type = text_encoder
        # It prints its settings while building.
        with contextlib.redirect_stdout(io.StringIO()), random_init():
            model = build_model(args)
        if not is_random(weights):
            ckpt = torch.load(weights, map_location="cpu", weights_only=False)
            model.load_state_dict(clean_state_dict(ckpt.get("model", ckpt)), strict=False)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.size, self.max_size = int(size), int(max_size)
        self.amp = amp
        self.calls = 0

    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        import groundingdino.datasets.transforms as T
        from PIL import Image

        # The official transform (PIL bilinear resize, ImageNet normalization), so that boxes match
        # the paper's code; a single size makes RandomResize deterministic.
        tf = T.Compose(
            [
                T.RandomResize([self.size], max_size=self.max_size),
                T.ToTensor(),
                T.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
            ]
        )
        x, _ = tf(Image.fromarray(image), None)
        return x

    @torch.no_grad()
    def _forward(self, x: torch.Tensor, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """GroundingDINO on one image: per-token probabilities ``[Q, 256]`` and boxes ``[Q, 4]``
        (``cx, cy, w, h`` in [0, 1])."""
        ctx = contextlib.nullcontext()
        if self.device.type == "cuda" and self.amp in ("bf16", "fp16"):
            dt = torch.bfloat16 if self.amp == "bf16" else torch.float16
            ctx = torch.autocast("cuda", dtype=dt)
        with ctx:
            out = self.model(x[None].to(self.device), captions=[caption])
        prob = out["pred_logits"][0].float().sigmoid().cpu()  # [Q, 256] per-token probability
        return prob, out["pred_boxes"][0].float().cpu()

    def _call(self, x: torch.Tensor, phrases: list[str], hw: tuple[int, int]):
        """Boxes, scores and class labels (``-1``: none) of one call with ``phrases``."""
        caption, spans = caption_spans(phrases, self.caption)
        self.calls += 1
        prob, boxes = self._forward(x, caption)
        tok = self.model.tokenizer(caption, return_offsets_mapping=True)
        offsets = tok["offset_mapping"]
        # Which text positions belong to which phrase (special tokens have (0, 0) offsets).
        owner = torch.full((prob.shape[1],), -1, dtype=torch.long)
        for t, (a, b) in enumerate(offsets[: prob.shape[1]]):
            if b <= a:
                continue
            for p, (s, e) in enumerate(spans):
                if s <= a and b <= e:
                    owner[t] = p
        keep = prob.max(dim=1).values > self.box_threshold
        prob, boxes = prob[keep], boxes[keep]
        if self.labels == "exact":
            label = torch.tensor(
                [
                    _exact_label(
                        row,
                        tok["input_ids"],
                        self.model.tokenizer,
                        self.text_threshold,
                        phrases,
                        first=0 if self.cls_token == "counted" else 1,
                    )
                    for row in prob
                ],
                dtype=torch.long,
            )
            ok = torch.ones(len(prob), dtype=torch.bool)  # unlabelled boxes stay (label -1)
        else:
            per_phrase = torch.full((len(prob), len(phrases)), -1.0)
            for p in range(len(phrases)):
                cols = owner == p
                if cols.any():
                    per_phrase[:, p] = prob[:, cols].max(dim=1).values
            best, label = per_phrase.max(dim=1) if len(phrases) else (prob[:, 0], prob[:, 0].long())
            ok = best > self.text_threshold  # no token of any phrase above it: no box
        h, w = hw
        # Scaled, then turned into corners, in float32 as the official post_process_result
        # does: the same boxes to the bit (another order of operations moves SAM's masks).
        xyxy = box_convert(boxes[ok] * torch.tensor([w, h, w, h]), "cxcywh", "xyxy")
        if self.sam_box == "clamped":
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        scores = prob[ok].max(dim=1).values
        return xyxy.numpy(), scores.numpy(), label[ok].numpy()

    def __call__(self, image: np.ndarray, classes: Sequence[str]) -> Detections:
        """Detect ``classes`` in one image.

        Args:
            image: uint8 RGB ``[H, W, 3]``.
            classes: class names (the union of the image's projected classes).

        Returns:
            :class:`Detections`; classes without a box after the first call are asked again as
            ``"all [CLS]s"`` (the paper's retry).
        """
        classes = list(classes)
        empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int))
        if not classes:
            return empty
        x = self._preprocess(image)
        hw = image.shape[:2]
        b, s, lab = self._call(x, classes, hw)
        retried = False
        if self.retry == "official":
            if (lab < 0).any():  # a box without a class: ask again for all, keep only that answer
                retried = True
                b, s, lab = self._call(x, [f"all {c}s" for c in classes], hw)
        else:
            missing = [k for k in range(len(classes)) if not (lab == k).any()]
            if missing:
                retried = True
                b2, s2, l2 = self._call(x, [f"all {_plural(classes[k])}" for k in missing], hw)
                b = np.concatenate([b, b2])
                s = np.concatenate([s, s2])
                l2 = np.where(l2 >= 0, np.asarray(missing, dtype=int)[np.maximum(l2, 0)], -1)
                lab = np.concatenate([lab, l2])
        return Detections(b.astype(np.float32), s.astype(np.float32), lab.astype(int), retried)


def _exact_label(
    prob: torch.Tensor,
    input_ids: Sequence[int],
    tokenizer,
    threshold: float,
    phrases: list[str],
    first: int = 0,
) -> int:
    """The official label of one box: its above-threshold tokens from position ``first`` on
    decoded (``"."`` removed) must be exactly one of the phrases (lower-cased, as in the
    caption); ``-1`` otherwise. ``first=0``: ``[CLS]`` counts, as in the pinned GroundingDINO's
    ``get_phrases_from_posmap`` (decoded, it makes the phrase ``"[CLS] ..."``); ``first=1``:
    it never counts, as in later versions."""
    pos = [t for t in range(first, min(len(input_ids), prob.shape[0])) if prob[t] > threshold]
    text = tokenizer.decode([input_ids[t] for t in pos]).replace(".", "")
    names = [p.lower().strip() for p in phrases]
    return names.index(text) if text in names else -1
