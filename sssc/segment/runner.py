"""Stage 1 with the paper's models: nouns -> class projection -> GroundingDINO -> SAM -> S1 record.

:class:`ModelsSegmenter` is called once per image (``segmenter(image_id) -> S1 record``), like the
simulated producer, so the stage runner writes, shards and resumes both the same way. Images go
through the detector one at a time (GroundingDINO's outputs depend on the batch).

The record is lossless: every box of every class asked for becomes a candidate (overlaps and any
number of instances kept) with its detector box, score and class label; each object's eligible
candidates are those labelled with one of its projected classes. Nothing is swallowed: images
without any detection, expressions without a noun and objects without an eligible candidate are
counted in :attr:`ModelsSegmenter.counts` and reported in the stage summary.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import masks as _masks
from ..data.images import ORIENTATIONS, exif_orientation, turns_shape
from ..data.refer import Refer
from ..pretrained import WeightsError, clip_source, problems_message, weight_problems
from ..store import s1_record
from .detector import GroundingDinoDetector
from .nouns import make_noun_extractor
from .projection import ClassProjector
from .segmenter import SamSegmenter, build_sam

__all__ = [
    "IMAGE_GROUPINGS",
    "ModelsSegmenter",
    "check_segment_weights",
    "segment_weight_problems",
    "segment_producer",
    "turned_images",
]

IMAGE_GROUPINGS = ("image", "file_runs")


def segment_weight_problems(m: Any) -> list[str]:
    """A message for every weight path of ``segment.models`` that is empty or missing."""
    return weight_problems(
        "segment.models",
        {
            "clip_weights": m.clip_weights,
            "gdino_config": m.gdino_config,
            "gdino_weights": m.gdino_weights,
            "gdino_text_encoder": m.gdino_text_encoder,
            "sam_weights": m.sam_weights,
        },
        optional=("gdino_config", "gdino_text_encoder"),
        sources={"clip_weights": clip_source(m.clip_model)},
    )


def check_segment_weights(m: Any) -> None:
    """Every weight path of ``segment.models``, checked before anything is built or read.

    Raises:
        WeightsError: naming every empty or missing one.
    """
    problems = segment_weight_problems(m)
    if problems:
        raise WeightsError(problems_message(problems, "segment.models can load its models"))


def turned_images(refer: Refer, ids: Iterable[int], progress: bool = False) -> list[tuple]:
    """``(image_id, tag)`` of each image in ``ids`` whose EXIF orientation tag turns it to
    another shape (tags 5 to 8 on a non-square image), read from the headers only.

    ``segment.models.image_orientation: exif`` refuses these before Stage 1 starts: the official
    Stage 1 (``cv2.imread``) segments them turned and stores masks of the turned shape, which its
    Stage 2 cannot composite with the stored image, and which sssc's store, at the size
    ``instances.json`` gives, cannot hold.

    Raises:
        DatasetError: an image that cannot be opened.
    """
    from tqdm import tqdm

    from ..data.images import ImageReadError
    from ..data.refer import DatasetError

    ids = list(ids)
    out = []
    for image_id in tqdm(ids, desc="EXIF tags", unit="img", disable=not progress or len(ids) < 500):
        info = refer.images[image_id]
        try:
            tag = exif_orientation(refer.image_path(image_id))
        except ImageReadError as e:
            raise DatasetError(str(e)) from None
        if turns_shape(tag, info.height, info.width):
            out.append((image_id, tag))
    return out


def _file_id(path: str) -> str:
    """A path as recorded in the producer: the file name (runs move between machines)."""
    return Path(path).name if path else ""


def segment_producer(m: Any, class_names: list[str], data: dict) -> dict:
    """The producer recorded in the S1 store and every report."""
    return {
        "name": "models",
        "stage": "segment",
        # The NLTK fallback (added on 2026-12-07) is named only where it runs, as gdino_rules.
        "nouns": m.nouns
        if m.nouns == "rules"
        else f"spacy:{m.spacy_model}:{m.noun_rule}"
        + (":nltk" if m.noun_fallback == "nltk" else ""),
        "clip": f"{m.clip_model}:{_file_id(m.clip_weights)}",
        "detector": f"groundingdino:{_file_id(m.gdino_config) or 'SwinT_OGC'}:"
        f"{_file_id(m.gdino_weights)}",
        "text_encoder": _file_id(m.gdino_text_encoder) or "bert-base-uncased",
        "sam": f"{m.sam_type}:{_file_id(m.sam_weights)}",
        "projection_prompt": m.projection_prompt,
        "query": m.query,
        "class_order": m.class_order,
        # The rules added on 2026-12-07 are named only where they differ from what sssc did
        # before, so that a store made then keeps its producer under the old settings.
        "gdino_rules": [m.gdino_caption, m.gdino_labels, m.gdino_retry]
        + (["cls_token:counted"] if m.gdino_cls_token == "counted" else [])
        + (["sam_box:detector"] if m.sam_box == "detector" else [])
        + (["sam_calls:per_box"] if m.sam_calls == "per_box" else [])
        + (["grouping:file_runs"] if m.image_grouping == "file_runs" else [])
        + (["orientation:exif"] if m.image_orientation == "exif" else []),
        "box_threshold": float(m.box_threshold),
        "text_threshold": float(m.text_threshold),
        "detector_size": [int(m.gdino_size), int(m.gdino_max_size)],
        "class_names": list(class_names),
        "data": data,
    }


class ModelsSegmenter:
    """Stage 1 with the paper's models: ``segmenter(image_id) -> S1 record``.

    Args:
        refer: the dataset.
        m: ``segment.models`` settings.
        class_names: projection targets (``data.class_names``).
        splits: the splits whose refs are this stage's objects.
        data: JSON-able dataset description for the producer.
        device: where the models run.

    Raises:
        WeightsError: a weight path is missing (checked before any model is built).
        NounError: the spaCy model, NLTK or its data (``noun_fallback: nltk``) is missing.
    """

    def __init__(
        self,
        refer: Refer,
        m: Any,
        class_names: list[str],
        splits: Iterable[str],
        data: dict | None = None,
        device: str = "cpu",
    ):
        from ..pretrained import load_clip

        check_segment_weights(m)
        self.refer, self.splits = refer, tuple(splits)
        self.class_names = list(class_names)
        self.producer = segment_producer(m, self.class_names, data or {})
        self.counts: collections.Counter = collections.Counter()
        self.nouns = make_noun_extractor(
            m.nouns,
            m.spacy_model,
            self.class_names,
            m.noun_rule,
            m.noun_fallback,
            m.nltk_data,
            self.counts,
        )
        clip = load_clip(m.clip_model, m.clip_weights, device, "segment.models")
        self.project = ClassProjector(clip, self.class_names, m.projection_prompt)
        self.query, self.class_order = m.query, m.class_order
        if m.image_grouping not in IMAGE_GROUPINGS:
            raise ValueError(
                f"segment.models.image_grouping must be one of {IMAGE_GROUPINGS}, "
                f"got {m.image_grouping!r}"
            )
        self.grouping = m.image_grouping
        if m.image_orientation not in ORIENTATIONS:
            raise ValueError(
                f"segment.models.image_orientation must be one of {ORIENTATIONS}, "
                f"got {m.image_orientation!r}"
            )
        self.orientation = m.image_orientation
        self.detector = GroundingDinoDetector(
            m.gdino_config,
            m.gdino_weights,
            m.gdino_text_encoder,
            m.box_threshold,
            m.text_threshold,
            m.gdino_size,
            m.gdino_max_size,
            device,
            m.amp,
            m.gdino_caption,
            m.gdino_labels,
            m.gdino_retry,
            m.gdino_cls_token,
            m.sam_box,
        )
        self.segmenter = SamSegmenter(
            build_sam(m.sam_type, m.sam_weights), device, m.amp, m.sam_calls
        )

    def object_classes(self, sentences: Iterable[str]) -> list[str]:
        """The projected class of every noun of an object's expressions, in order, repeats kept
        (the official query counts them)."""
        out: list[str] = []
        for s in sentences:
            nouns = self.nouns(s)
            if not nouns:
                self.counts["expression_without_noun"] += 1
                continue
            out += [self.class_names[k] for k in self.project(nouns)]
        return out

    def query_classes(self, obj_classes: dict[int, list[str]]) -> list[str]:
        """The detector's classes for an image.

        ``segment.models.query``: ``most_likely`` (the official ``--most-likely-noun``): each
        object's most frequent class (the first seen among equals), or ``"object"`` when its
        expressions have no noun; ``union``: every class of every object.
        ``segment.models.class_order``: ``sorted`` or ``set`` (the official ``list(set(...))``,
        whose order follows Python's string hashing and so changes between runs unless
        ``PYTHONHASHSEED`` is fixed).
        """
        if self.query == "most_likely":
            names = [
                collections.Counter(c).most_common(1)[0][0] if c else "object"
                for c in obj_classes.values()
            ]
        else:
            names = [c for cs in obj_classes.values() for c in cs]
        return list(set(names)) if self.class_order == "set" else sorted(set(names))

    def groups(self, image_id: int) -> list[list]:
        """The refs of an image that one detector call serves (``segment.models.image_grouping``):
        ``image``: all of them, every labelled split at once; ``file_runs`` (the official
        driver, one split at a time): each run of refs consecutive in the split's refs file
        (:meth:`sssc.data.refer.Refer.file_runs`), usually one."""
        if self.grouping == "file_runs":
            return [run for s in self.splits for run in self.refer.file_runs(image_id, s)]
        return [[r for s in self.splits for r in self.refer.image_refs(image_id, s)]]

    def __call__(self, image_id: int) -> dict:
        info = self.refer.images[image_id]
        groups = [g for g in self.groups(image_id) if g]
        if len(groups) > 1:
            self.counts["image_in_several_runs"] += 1
        image = None
        boxes, scores, labels = [], [], []  # every group's boxes; SAM runs once for all
        eligible: dict[int, list[int]] = {}
        for refs in groups:
            by_obj: dict[int, list[str]] = collections.defaultdict(list)
            for r in refs:
                by_obj[r.ann_id] += [s.sent for s in r.sentences]
            obj_classes = {a: self.object_classes(sents) for a, sents in sorted(by_obj.items())}
            names = self.query_classes(obj_classes)
            first = len(labels)
            if names:
                if image is None:
                    image = self.refer.load_image(image_id, self.orientation)
                    tag = exif_orientation(self.refer.image_path(image_id))
                    # read as stored, or turned (image_orientation: exif) where it keeps the size
                    self.counts["exif_orientation_tag"] += int(tag != 1)
                det = self.detector(image, names)
                self.counts["detector_retry"] += int(det.retried)
                if len(det) == 0:
                    self.counts["image_without_detection"] += 1
                boxes += list(det.boxes)
                scores += [float(v) for v in det.scores]
                # "": the detector's phrase named no class (eligible for no object)
                labels += [names[int(k)] if k >= 0 else "" for k in det.labels]
            for ann_id, ks in obj_classes.items():
                wanted = set(ks)  # a box of any of the object's classes, as the official code
                # an object in two runs (two refs, apart in the file) takes both runs' boxes
                eligible.setdefault(ann_id, []).extend(
                    i for i in range(first, len(labels)) if labels[i] in wanted
                )
        cands: list[dict] = []
        if boxes:
            masks, _ = self.segmenter(image, np.stack(boxes))
            for box, score, label, m in zip(boxes, scores, labels, masks, strict=True):
                if not m.any():
                    self.counts["empty_mask"] += 1  # kept: the store is lossless
                # The record keeps the box's part in the image (SAM may have had more of it).
                x0, x1 = (min(max(float(v), 0.0), info.width) for v in box[0::2])
                y0, y1 = (min(max(float(v), 0.0), info.height) for v in box[1::2])
                cands.append(
                    {
                        "rle": _masks.encode(m),
                        "box": [x0, y0, x1 - x0, y1 - y0],
                        "score": score,
                        "label": label,
                    }
                )
        self.counts["images"] += 1
        self.counts["candidates"] += len(cands)
        objects = []
        for ann_id, el in sorted(eligible.items()):
            if not el:
                self.counts["object_without_eligible"] += 1
            objects.append((ann_id, el))
        return s1_record(image_id, info.height, info.width, cands, objects)
