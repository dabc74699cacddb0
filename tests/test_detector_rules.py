"""Stage 1's GroundingDINO rules on designed detector outputs: caption, labels, retry, query.

The detector is the tiny random GroundingDINO; its forward pass is replaced by one that returns
chosen token probabilities, so that each rule is checked on a case read from the official code
(``Model.predict_with_classes``, ``get_phrases_from_posmap``, ``phrases2classes`` and the
retry of ``segment_from_image_and_nouns``).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

pytest.importorskip("groundingdino", reason="GroundingDINO is in the segment extra")

from tiny_models import write_tiny_gdino  # noqa: E402

from sssc.segment.detector import GroundingDinoDetector, caption_spans  # noqa: E402


@pytest.fixture(scope="module")
def gdino_files(tmp_path_factory):
    return write_tiny_gdino(tmp_path_factory.mktemp("gdino"))


def _detector(files, **rules):
    config, bert = files
    return GroundingDinoDetector(config, "random", bert, size=64, max_size=64, **rules)


def _scripted(det, answers):
    """Replace the forward pass: for the n-th call, boxes whose probability is ``p`` on the
    token of each given word of the caption (``(word, p)`` or ``(word, p, k)`` for its k-th
    occurrence), 0 elsewhere."""
    captions = []

    def forward(x, caption):
        captions.append(caption)
        words = answers[len(captions) - 1]
        enc = det.model.tokenizer(caption, return_offsets_mapping=True)
        prob = torch.zeros(len(words), 256)
        for q, spec in enumerate(words):
            for word, p, *k in spec:
                hits = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if caption[a:b] == word]
                prob[q, hits[k[0] if k else 0]] = p
        boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * len(words)).reshape(-1, 4)
        return prob, boxes

    det._forward = forward
    return captions


def test_caption_styles():
    assert caption_spans(["circle", "Square"], "comma") == ("circle, square.", [(0, 6), (8, 14)])
    assert caption_spans(["circle", "square"], "period") == ("circle. square.", [(0, 6), (8, 14)])
    with pytest.raises(ValueError, match="caption style"):
        caption_spans(["a"], "semicolon")


def test_exact_labels_need_the_whole_phrase(gdino_files):
    det = _detector(gdino_files, retry="sssc")
    image = np.zeros((64, 64, 3), np.uint8)
    _scripted(
        det,
        [
            [
                [("circle", 0.9)],  # exactly "circle"
                [("square", 0.6), (",", 0.5)],  # "square ," names no class
                [("square", 0.2)],  # over the box threshold? no: dropped
                [("square", 0.5), ("circle", 0.3)],  # "circle square": no class
            ],
            [],  # the retry for "square", which got no box of its own
        ],
    )
    d = det(image, ["circle", "square"])
    assert d.labels.tolist() == [0, -1, -1]
    assert d.retried


def test_best_phrase_labels_take_the_strongest_class(gdino_files):
    det = _detector(gdino_files, labels="best_phrase", retry="sssc", caption="period")
    _scripted(det, [[[("square", 0.6), (".", 0.5)], [("square", 0.5), ("circle", 0.4)]], []])
    d = det(np.zeros((64, 64, 3), np.uint8), ["circle", "square"])
    assert d.labels.tolist()[:2] == [1, 1]


def test_official_retry_replaces_everything_when_a_box_has_no_class(gdino_files):
    det = _detector(gdino_files)  # the official rules: comma caption, exact labels, retry
    captions = _scripted(
        det,
        [
            [[("circle", 0.9)], [("square", 0.5), (",", 0.4)]],  # the second box names no class
            [[("all", 0.8, 1), ("squares", 0.8)]],  # the retry's only box: "all squares"
        ],
    )
    d = det(np.zeros((64, 64, 3), np.uint8), ["circle", "square"])
    assert captions == ["circle, square.", "all circles, all squares."]
    assert d.retried and d.labels.tolist() == [1]  # the first answer's circle is gone


def test_official_retry_does_not_run_when_nothing_is_found(gdino_files):
    det = _detector(gdino_files)
    captions = _scripted(det, [[]])
    d = det(np.zeros((64, 64, 3), np.uint8), ["circle", "square"])
    assert len(d) == 0 and not d.retried and len(captions) == 1


def test_sssc_retry_asks_only_for_missing_classes_and_adds(gdino_files):
    det = _detector(gdino_files, retry="sssc", caption="period")
    captions = _scripted(det, [[[("circle", 0.9)]], [[("all", 0.8), ("squares", 0.8)]]])
    d = det(np.zeros((64, 64, 3), np.uint8), ["circle", "square"])
    assert captions == ["circle. square.", "all squares."]
    assert d.retried and d.labels.tolist() == [0, 1]


class _Runner:
    """The runner's query methods without models: ``query_classes`` reads only these."""

    def __init__(self, query, order):
        self.query, self.class_order = query, order


def test_official_query_is_each_objects_most_frequent_class():
    from sssc.segment.runner import ModelsSegmenter

    objs = {
        1: ["dog", "person", "dog"],  # the most frequent
        2: ["cat", "person"],  # a tie: the first seen
        3: [],  # no noun: "object"
    }
    likely = ModelsSegmenter.query_classes(_Runner("most_likely", "sorted"), objs)
    assert likely == ["cat", "dog", "object"]
    union = ModelsSegmenter.query_classes(_Runner("union", "sorted"), objs)
    assert union == ["cat", "dog", "person"]
    # The official list(set(...)): the same classes, in Python's hash order.
    as_set = ModelsSegmenter.query_classes(_Runner("most_likely", "set"), objs)
    assert collections.Counter(as_set) == {"cat": 1, "dog": 1, "object": 1}


class _RecordingClip:
    """encode_text records its prompts; a class and a noun embed alike when they share words."""

    def __init__(self):
        self.seen = []

    def encode_text(self, texts):
        self.seen += list(texts)
        vocab = ["circle", "square", "ball", "box"]
        e = torch.tensor([[float(w in t) for w in vocab] for t in texts]) + 1e-3
        e[:, 0] += torch.tensor([float("ball" in t) for t in texts])  # a ball looks round
        e[:, 1] += torch.tensor([float("box" in t) for t in texts])
        return e / e.norm(dim=1, keepdim=True)


def test_projection_prompts_both_sides_with_the_official_context():
    from sssc.segment.projection import ClassProjector

    clip = _RecordingClip()
    proj = ClassProjector(clip, ["circle", "square"])
    assert proj(["ball", "box", "ball"]) == [0, 1, 0]
    assert clip.seen == [
        "a photo of a circle",
        "a photo of a square",
        "a photo of a ball",
        "a photo of a box",
    ]
    clip = _RecordingClip()
    ClassProjector(clip, ["circle"], "a picture of {}")(["ball"])
    assert clip.seen == ["a picture of circle", "a picture of ball"]
    with pytest.raises(ValueError, match="projection_prompt"):
        ClassProjector(clip, ["circle"], "no slot")
