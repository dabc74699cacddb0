"""Noun rules on hand-built spaCy docs (no trained pipeline), the rule-based extractor, errors."""

from __future__ import annotations

import pytest

spacy = pytest.importorskip("spacy", reason="spaCy is in the segment extra")
from spacy.tokens import Doc  # noqa: E402

from sssc.segment.nouns import (  # noqa: E402
    NounError,
    RuleNounExtractor,
    SpacyNounExtractor,
    all_nouns,
    extract_nouns,
    head_nouns,
)

_VOCAB = spacy.blank("en").vocab


def _doc(spec: str) -> Doc:
    """``word/POS/dep/head`` tokens separated by spaces (head: token index)."""
    words, pos, deps, heads = [], [], [], []
    for tok in spec.split():
        w, p, d, h = tok.split("/")
        words.append(w)
        pos.append(p)
        deps.append(d)
        heads.append(int(h))
    return Doc(_VOCAB, words=words, pos=pos, deps=deps, heads=heads)


# Parses as a statistical parser would give them.
DOCS = {
    "the man on the left": "the/DET/det/1 man/NOUN/ROOT/1 on/ADP/prep/1 the/DET/det/4 "
    "left/NOUN/pobj/2",
    "man holding a cup": "man/NOUN/nsubj/1 holding/VERB/ROOT/1 a/DET/det/3 cup/NOUN/dobj/1",
    "left guy": "left/VERB/ROOT/0 guy/NOUN/dobj/0",
    "the left guy": "the/DET/det/2 left/ADJ/amod/2 guy/NOUN/ROOT/2",
    "blue and white": "blue/ADJ/ROOT/0 and/CCONJ/cc/0 white/ADJ/conj/0",
    "the blue and white": "the/DET/det/1 blue/ADJ/ROOT/1 and/CCONJ/cc/1 white/ADJ/conj/1",
    "red shirt near dog": "red/ADJ/ROOT/0 shirt/NOUN/npadvmod/0 near/ADP/prep/0 dog/NOUN/pobj/2",
    "the red shirt near dog": "the/DET/det/1 red/ADJ/ROOT/1 shirt/NOUN/npadvmod/1 "
    "near/ADP/prep/1 dog/NOUN/pobj/3",
    # The issue's example: the bare fragment roots on its last noun, the prefixed one on the kid.
    "kid eating pizza": "kid/NOUN/npadvmod/1 eating/VERB/amod/2 pizza/NOUN/ROOT/2",
    "the kid eating pizza": "the/DET/det/1 kid/NOUN/ROOT/1 eating/VERB/acl/1 pizza/NOUN/dobj/2",
    "the teddy bear on the left": "the/DET/det/2 teddy/PROPN/nsubj/2 bear/NOUN/ROOT/2 "
    "on/ADP/prep/2 the/DET/det/5 left/NOUN/pobj/3",
    "the Obama sign": "the/DET/det/2 Obama/PROPN/compound/2 sign/VERB/ROOT/2",
    "the The man": "the/DET/det/2 The/DET/det/2 man/NOUN/ROOT/2",
    "The man": "The/DET/det/1 man/NOUN/ROOT/1",
}


@pytest.mark.parametrize(
    "text, head",
    [
        ("the man on the left", ["man"]),
        ("man holding a cup", ["man"]),  # subject beats the verb root
        ("left guy", []),  # a verb root and no subject
        ("the left guy", ["guy"]),
    ],
    ids=["noun-root", "subject", "verb-root", "prefixed"],
)
def test_head_nouns(text, head):
    assert head_nouns(_doc(DOCS[text])) == head


def test_all_nouns_in_order_without_repeats():
    d = _doc("dog/NOUN/nsubj/1 chases/VERB/ROOT/1 dog/NOUN/dobj/1 cat/PROPN/dobj/1")
    assert all_nouns(d) == ["dog", "cat"]


@pytest.mark.parametrize(
    "text, nouns, parsed",
    [
        ("the man on the left", ["man"], ["the man on the left"]),
        ("left guy", ["guy"], ["left guy", "the left guy"]),  # retry with "the "
        ("red shirt near dog", ["shirt", "dog"], ["red shirt near dog", "the red shirt near dog"]),
        ("blue and white", [], ["blue and white", "the blue and white"]),
    ],
    ids=["head", "the-prefix", "all-nouns-fallback", "no-noun"],
)
def test_extract_nouns_rule(text, nouns, parsed):
    seen = []

    def parse(s):
        seen.append(s)
        return _doc(DOCS[s])

    assert extract_nouns(parse, text, rule="sssc") == nouns
    assert seen == parsed


@pytest.mark.parametrize(
    "text, nouns, parsed",
    [
        # "the " + sentence unless the first token is exactly "the" (case-sensitive)
        ("kid eating pizza", ["kid"], ["kid eating pizza", "the kid eating pizza"]),
        ("the man on the left", ["man"], ["the man on the left"]),
        ("The man", ["man"], ["The man", "the The man"]),
        # every ROOT/nsubj NOUN or PROPN, as written
        ("the teddy bear on the left", ["teddy", "bear"], ["the teddy bear on the left"]),
        # no subject/root noun: every NOUN of the prefixed parse (PROPN not included)
        ("red shirt near dog", ["shirt", "dog"], ["red shirt near dog", "the red shirt near dog"]),
        ("the Obama sign", [], ["the Obama sign"]),
    ],
    ids=["prefix-first", "starts-with-the", "capital-The", "all-subjects", "nouns", "no-propn"],
)
def test_extract_nouns_official_rule(text, nouns, parsed):
    seen = []

    def parse(s):
        seen.append(s)
        return _doc(DOCS[s])

    assert extract_nouns(parse, text) == nouns  # official is the default
    assert extract_nouns(parse, text, rule="official") == nouns
    assert seen == parsed * 2


def test_the_two_rules_disagree_on_the_issue_example():
    def parse(s):
        return _doc(DOCS[s])

    assert extract_nouns(parse, "kid eating pizza", rule="sssc") == ["pizza"]
    assert extract_nouns(parse, "kid eating pizza", rule="official") == ["kid"]
    with pytest.raises(ValueError, match="rule"):
        extract_nouns(parse, "kid eating pizza", rule="paper")


@pytest.mark.parametrize(
    "sentence, nouns",
    [
        ("the red circle", ["circle"]),
        ("the square left of the circle", ["square"]),
        ("all the triangles", ["triangle"]),
        ("the largest traffic light", ["traffic light"]),
        ("something else entirely", ["entirely"]),
    ],
    ids=["attribute", "relation-first-noun", "plural", "multi-word", "fallback-last-word"],
)
def test_rule_extractor(sentence, nouns):
    ex = RuleNounExtractor(["circle", "square", "triangle", "light", "traffic light"])
    assert ex(sentence) == nouns


def test_missing_spacy_model_names_the_install_command():
    with pytest.raises(NounError, match="python -m spacy download sssc_no_such_model"):
        SpacyNounExtractor("sssc_no_such_model")


def test_spacy_model_problem_is_found_without_loading(tmp_path):
    """A name spaCy has no package or folder for is reported with the install command; a saved
    pipeline folder and a blank pipeline are fine (spacy.load takes all three)."""
    from sssc.segment.nouns import spacy_model_problem

    msg = spacy_model_problem("sssc_no_such_spacy_model")
    assert "spacy_model='sssc_no_such_spacy_model'" in msg
    assert "python -m spacy download sssc_no_such_spacy_model" in msg
    with pytest.raises(OSError):  # what spaCy itself says about it
        spacy.load("sssc_no_such_spacy_model")
    folder = tmp_path / "pipe"
    spacy.blank("en").to_disk(folder)
    for ok in (str(folder), "blank:en"):
        assert spacy_model_problem(ok) is None
        spacy.load(ok)
    assert spacy_model_problem(str(tmp_path / "absent")) is not None
