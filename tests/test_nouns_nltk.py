"""The official script's last noun fallback (NLTK's noun-phrase chunker, README row 3) on a
designed NLTK data folder in the real formats (tests/tiny_models.write_tiny_nltk), against an
independent restatement of its chunk grammar and hand-worked cases of its collection loop."""

from __future__ import annotations

import collections
import random
import shutil

import pytest

nltk = pytest.importorskip("nltk", reason="NLTK is in the segment extra")
spacy = pytest.importorskip("spacy", reason="spaCy is in the segment extra")

from tiny_models import NLTK_TAGS, write_tiny_nltk  # noqa: E402

from sssc.config import load_config  # noqa: E402
from sssc.segment.nouns import (  # noqa: E402
    NltkNounPhrases,
    NounError,
    SpacyNounExtractor,
    make_noun_extractor,
    noun_phrases_from_chunks,
)

TAGS = NLTK_TAGS
NOUNS = ("NN", "NNS", "NNP", "NNPS")


@pytest.fixture(scope="module")
def phrases(nltk_data):
    return NltkNounPhrases(nltk_data)


def reference_chunks(tags: list[str]) -> list[tuple[int, int]]:
    """The grammar restated: in every maximal run of noun and adjective tags (JJ exactly), the
    chunk runs from the run's first token to its last noun."""
    out, i = [], 0
    while i < len(tags):
        if tags[i] in NOUNS or tags[i] == "JJ":
            j = i
            while j < len(tags) and (tags[j] in NOUNS or tags[j] == "JJ"):
                j += 1
            last = max((k for k in range(i, j) if tags[k] in NOUNS), default=None)
            if last is not None:
                out.append((i, last + 1))
            i = j
        else:
            i += 1
    return out


def reference_phrases(words: list[str], tags: list[str]) -> tuple[list[str], int]:
    """The chunks, each closed by the token after it (the sentence ends on "."), kept in order
    when new; a chunk whose text (with any carried chunks before it) is already kept is carried
    on, as the official loop does not clear it, and carried chunks left at the end are kept one
    by one. Also returns how many chunks were carried."""
    kept: list[str] = []
    carried: list[str] = []
    n_carried = 0
    for a, b in reference_chunks(tags):
        chunk = " ".join(words[a:b])
        if " ".join([*carried, chunk]) in kept:
            carried.append(chunk)
            n_carried += 1
        else:
            kept.append(" ".join([*carried, chunk]))
            carried = []
    return kept + carried, n_carried


def test_grammar_and_loop_against_a_restatement(phrases):
    """400 random expressions over the designed vocabulary (repeats included): the phrases equal
    the restated grammar and loop; the tags are the designed tagger's."""
    rng = random.Random(0)
    vocab = sorted(set(TAGS) - {"."})
    nouny = ["dog", "dog", "man", "red", "dogs"]
    seen = collections.Counter()
    for _ in range(400):
        n = rng.randint(1, 9)
        words = [rng.choice(nouny) if rng.random() < 0.4 else rng.choice(vocab) for _ in range(n)]
        tags = [TAGS[w] for w in words] + ["."]
        expected, n_carried = reference_phrases(words + ["."], tags)
        assert phrases(" ".join(words)) == expected, words
        seen["carried"] += n_carried > 0
        seen["none"] += not expected
    assert seen["carried"] > 5 and seen["none"] > 5  # both branches ran


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("the big red dog of the man", ["big red dog", "man"]),  # the NBAR<IN>NBAR rule is dead
        ("dog and dog and cat", ["dog", "dog cat"]),  # "cat": an unknown word, the bias's NN
        ("dog and dog and dog and red dog", ["dog", "dog dog", "red dog"]),
        ("red", []),
        ("very tallest dog", ["dog"]),  # JJS is not JJ
        ("john running", ["john"]),
        ("two dogs.", ["dogs"]),  # a final "." is not doubled
        # The second "dog" is kept already: carried past the final ".", then kept by itself.
        ("dog , dog", ["dog", "dog"]),
    ],
)
def test_hand_worked_cases(phrases, sentence, expected):
    assert phrases(sentence) == expected


def test_leftover_chunks_are_kept_one_by_one():
    """Chunks still pending at the end (only when the parse does not end on a token) are kept
    item by item, unjoined."""
    np = [nltk.Tree("NP", [(w, "NN")]) for w in "aab"]
    tree = nltk.Tree("S", [np[0], ("x", "IN"), np[1], np[2]])
    assert noun_phrases_from_chunks(tree) == ["a", "a", "b"]


def test_the_tagger_reads_its_context(phrases):
    """ "left" is tagged by the perceptron from its left neighbour: a noun alone, a participle
    after "the" (so neither is a phrase), as the designed weights say."""
    assert phrases("left") == ["left"]
    assert phrases("the left") == []
    assert nltk.pos_tag(["the", "left"])[1][1] == "VBN"


def test_punkt_splits_sentences_before_the_words(phrases):
    """word_tokenize splits sentences first: a period after a known abbreviation stays on its
    word (one token "mr."), after any other word it is split off."""
    assert nltk.word_tokenize("mr. dog left.") == ["mr.", "dog", "left", "."]
    assert nltk.word_tokenize("sir. dog left.")[:2] == ["sir", "."]
    assert phrases("mr. dog") == ["mr. dog"]


def test_spacy_rule_first_then_nltk(tmp_path, phrases):
    """The fallback runs only where spaCy's rule finds nothing, and is counted."""
    blank = tmp_path / "blank"
    spacy.blank("en").to_disk(blank)  # no tagger: every token's pos_ is empty, no nouns
    counts = collections.Counter()
    ex = SpacyNounExtractor(str(blank), "official", phrases, counts)
    assert ex("the red dog") == ["red dog"]
    assert ex("the left") == []
    assert counts == {"nltk_fallback": 2, "nltk_fallback_empty": 1}
    without = SpacyNounExtractor(str(blank), "official", None)
    assert without("the red dog") == []
    ex.nlp = lambda text: [type("T", (), {"text": "man", "pos_": "NOUN", "dep_": "ROOT"})()]
    assert ex("the man") == ["man"] and counts["nltk_fallback"] == 2


def test_missing_data_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [])
    command = r"nltk\.downloader -d <folder> punkt_tab averaged_perceptron_tagger_eng"
    with pytest.raises(NounError, match=r"'punkt_tab'.*" + command):
        NltkNounPhrases(str(tmp_path))
    write_tiny_nltk(tmp_path / "half", {"dog": "NN"})
    shutil.rmtree(tmp_path / "half" / "taggers")
    monkeypatch.setattr(nltk.data, "path", [])
    with pytest.raises(NounError, match="'averaged_perceptron_tagger_eng'"):
        NltkNounPhrases(str(tmp_path / "half"))
    with pytest.raises(NounError, match="nltk_data='/no/such/folder': no such folder"):
        NltkNounPhrases("/no/such/folder")


def test_the_extractor_checks_the_fallback_before_spacy(tmp_path, monkeypatch):
    """``segment.models.noun_fallback=nltk`` (the default) fails on missing data before spaCy
    loads; ``none`` needs no NLTK; an unknown value is refused."""
    monkeypatch.setattr(nltk.data, "path", [])
    m = load_config(None, [f"segment.models.nltk_data={tmp_path}"]).segment.models
    assert m.noun_fallback == "nltk"
    missing = "sssc_no_such_model"
    with pytest.raises(NounError, match="punkt_tab"):
        make_noun_extractor("spacy", missing, [], m.noun_rule, m.noun_fallback, m.nltk_data)
    with pytest.raises(NounError, match=f"spacy download {missing}"):
        make_noun_extractor("spacy", missing, [], "official", "none")
    with pytest.raises(NounError, match="noun_fallback must be one of"):
        make_noun_extractor("spacy", missing, [], "official", "always")
    rules = make_noun_extractor("rules", "", ["dog"], "official", "nltk", str(tmp_path))
    assert rules("a dog") == ["dog"]  # the model-free extractor needs no NLTK
