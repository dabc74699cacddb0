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


def _scripted(det, answers, boxes=None):
    """Replace the forward pass: for the n-th call, boxes whose probability is ``p`` on the
    token of each given word of the caption (``(word, p)`` or ``(word, p, k)`` for its k-th
    occurrence; ``"[CLS]"``: position 0), 0 elsewhere; each box ``cx, cy, w, h`` from ``boxes``
    (default: a centred one)."""
    captions = []

    def forward(x, caption):
        captions.append(caption)
        words = answers[len(captions) - 1]
        enc = det.model.tokenizer(caption, return_offsets_mapping=True)
        prob = torch.zeros(len(words), 256)
        for q, spec in enumerate(words):
            for word, p, *k in spec:
                hits = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if caption[a:b] == word]
                prob[q, 0 if word == "[CLS]" else hits[k[0] if k else 0]] = p
        box = boxes or [[0.5, 0.5, 0.2, 0.2]] * len(words)
        return prob, torch.tensor(box[: len(words)]).reshape(-1, 4)

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


@pytest.mark.parametrize("cls_token", ["counted", "ignored"])
def test_cls_token_above_the_text_threshold(gdino_files, cls_token):
    """GroundingDINO at the commit S+S+C pins (57535c5) decodes every position above the text
    threshold, [CLS] included: the phrase "[CLS] circle" names no class, and the official retry
    runs; from 9a96ef0 on (groundingdino-py 0.4.0), position 0 is dropped first."""
    det = _detector(gdino_files, cls_token=cls_token)
    captions = _scripted(det, [[[("circle", 0.9), ("[CLS]", 0.3)]], []])
    d = det(np.zeros((64, 64, 3), np.uint8), ["circle", "square"])
    if cls_token == "counted":
        assert d.retried and len(d) == 0 and captions[1] == "all circles, all squares."
        tok = det.model.tokenizer("circle, square.")
        assert det.model.tokenizer.decode(tok["input_ids"][:2]) == "[CLS] circle"
    else:
        assert not d.retried and d.labels.tolist() == [0] and len(captions) == 1


@pytest.mark.parametrize("sam_box", ["detector", "clamped"])
def test_boxes_past_the_border(gdino_files, sam_box):
    """The official ``post_process_result`` converts ``cx, cy, w, h`` to corners and never
    clamps: SAM gets a box that reaches past the image; ``clamped`` cuts it at the border."""
    det = _detector(gdino_files, sam_box=sam_box)
    _scripted(
        det, [[[("circle", 0.9)], [("square", 0.8)]]], [[0.1, 0.5, 0.4, 0.2], [0.9, 0.95, 0.4, 0.3]]
    )
    d = det(np.zeros((48, 64, 3), np.uint8), ["circle", "square"])
    raw = [[-6.4, 19.2, 19.2, 28.8], [44.8, 38.4, 70.4, 52.8]]  # x * 64, y * 48
    want = raw if sam_box == "detector" else [[0, 19.2, 19.2, 28.8], [44.8, 38.4, 64, 48]]
    np.testing.assert_allclose(d.boxes, want, atol=1e-4)
    assert d.labels.tolist() == [0, 1]


def test_box_corners_are_the_official_float32_arithmetic(gdino_files):
    """``Model.post_process_result`` multiplies ``cx, cy, w, h`` by the image size, then takes
    ``cx - 0.5 w`` and ``cx + 0.5 w`` (torchvision's ``box_convert``), in float32: the boxes SAM
    gets are those bits (scaling the corners instead differs in the last bit)."""
    det = _detector(gdino_files)
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0.05, 0.9, (40, 4)).astype(np.float32)
    _scripted(det, [[[("circle", 0.9)]] * 40], boxes.tolist())
    d = det(np.zeros((427, 640, 3), np.uint8), ["circle"])
    b = boxes * np.float32([640, 427, 640, 427])
    half = np.float32(0.5) * b[:, 2:]
    np.testing.assert_array_equal(d.boxes, np.concatenate([b[:, :2] - half, b[:, :2] + half], 1))


def test_sam_masks_equal_the_official_per_box_call():
    """For a single box, sssc's mask is the one of ``SamPredictor.predict(box=...,
    multimask_output=True)`` and the argmax of its scores (the official
    ``segment_from_detections``), pixel for pixel: the box is scaled to SAM's input in float64
    as ``predict`` does, past the border too. Many boxes: the same with ``sam_calls=per_box``."""
    pytest.importorskip("segment_anything")
    from segment_anything import SamPredictor

    from sssc.segment.segmenter import SamSegmenter, build_sam

    torch.manual_seed(0)
    sam = build_sam("tiny", "random")
    ours, official = SamSegmenter(sam, amp="none"), SamPredictor(sam)
    prompts = []
    predict_torch = ours.predictor.predict_torch

    def spy(*args, boxes=None, **kwargs):
        prompts.append(boxes.clone())
        return predict_torch(*args, boxes=boxes, **kwargs)

    ours.predictor.predict_torch = spy
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (427, 640, 3), dtype=np.uint8)  # a COCO size
    official.set_image(image)
    for _ in range(30):
        x0, y0 = rng.uniform(-40, 600), rng.uniform(-40, 400)
        box = np.array([x0, y0, x0 + rng.uniform(5, 300), y0 + rng.uniform(5, 200)], np.float32)
        masks, scores, _ = official.predict(box=box, multimask_output=True)
        got, _ = ours(image, box[None])
        np.testing.assert_array_equal(got[0], masks[np.argmax(scores)])
        # the same float32 prompt to the bit (float32 arithmetic differs in 1 of 4 coordinates)
        want = torch.as_tensor(official.transform.apply_boxes(box[None], (427, 640)))
        assert torch.equal(prompts[-1], want.float())
    # Many boxes at once: sam_calls=per_box gives the official masks; per_image (one batched
    # call) nearly: on this 2-core CPU, 2 pixels of these 60 masks differ.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    official.set_image(image)
    boxes, wanted = [], []
    for _ in range(60):
        x0, y0 = rng.uniform(-10, 90, 2)
        box = np.array([x0, y0, x0 + rng.uniform(3, 60), y0 + rng.uniform(3, 60)], np.float32)
        masks, scores, _ = official.predict(box=box, multimask_output=True)
        boxes.append(box)
        wanted.append(masks[np.argmax(scores)])
    ours.calls = "per_box"
    got, _ = ours(image, np.stack(boxes))
    np.testing.assert_array_equal(got, np.stack(wanted))
    ours.calls = "per_image"
    got, _ = ours(image, np.stack(boxes))
    assert (got != np.stack(wanted)).mean() < 1e-4
    with pytest.raises(ValueError, match="sam_calls"):
        SamSegmenter(sam, calls="per_batch")


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
