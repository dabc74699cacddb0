"""Stage 1, step 1: the noun an expression refers to.

The paper parses each expression with spaCy and keeps the *subject or root noun* ("the man on the
left" -> "man"). Two rules are available (:func:`extract_nouns`, ``segment.models.noun_rule``):
``official``, the published code's (always parse ``"the " + sentence`` unless it starts with
"the", keep every ROOT/nsubj noun), and ``sssc``'s (the bare sentence first, one head noun).

Two extractors share that interface, ``extractor(sentence) -> list[str]``:

* :class:`SpacyNounExtractor` runs a trained spaCy pipeline (default ``en_core_web_md``); where
  its rule finds no noun, the official script's last resort, NLTK's noun-phrase chunker
  (:class:`NltkNounPhrases`, ``segment.models.noun_fallback``), gives the phrases;
* :class:`RuleNounExtractor` needs no model: the first word that is one of the known class names
  (or a plural of one). It is meant for the synthetic dataset, whose expressions always name their
  object's shape first ("the circle left of the square").

The parse rules themselves (:func:`head_nouns`, :func:`all_nouns`) work on any ``spacy.tokens.Doc``
with ``pos``/``dep``/``head`` set, so they are tested on hand-built docs.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "NLTK_RESOURCES",
    "NOUN_FALLBACKS",
    "NOUN_RULES",
    "NltkNounPhrases",
    "NounError",
    "RuleNounExtractor",
    "SpacyNounExtractor",
    "all_nouns",
    "extract_nouns",
    "head_nouns",
    "make_noun_extractor",
    "noun_phrases_from_chunks",
    "spacy_model_problem",
]

_NOUN_POS = ("NOUN", "PROPN")
_SUBJECT_DEPS = ("nsubj", "nsubjpass")


class NounError(RuntimeError):
    """The noun extractor cannot run (e.g. the spaCy model is not installed)."""


def _is_noun(tok: Any) -> bool:
    return tok.pos_ in _NOUN_POS


def head_nouns(doc: Any) -> list[str]:
    """The subject noun of a parsed expression, else its root noun, else ``[]``.

    Args:
        doc: a ``spacy.tokens.Doc`` with part-of-speech tags and a dependency parse.

    Returns:
        ``[noun]`` (lower-cased text) or ``[]`` when the parse has neither a noun subject nor a
        noun root.
    """
    for tok in doc:
        if tok.dep_ in _SUBJECT_DEPS and _is_noun(tok):
            return [tok.text.lower()]
    for tok in doc:
        if tok.dep_ == "ROOT" and _is_noun(tok):
            return [tok.text.lower()]
    return []


def all_nouns(doc: Any) -> list[str]:
    """Every noun of a parsed expression, in order, without repeats (lower-cased)."""
    return list(dict.fromkeys(t.text.lower() for t in doc if _is_noun(t)))


NOUN_RULES = ("official", "sssc")


def extract_nouns(parse, sentence: str, rule: str = "official") -> list[str]:
    """The nouns that Stage 1 queries for an expression.

    ``rule="official"`` (the S+S+C code, ``get_nouns_and_noun_phrases_spacy``): parse the
    sentence; unless its first token is exactly ``"the"``, parse ``"the " + sentence`` instead.
    Keep *every* NOUN or PROPN token whose dependency is ROOT or nsubj, as written (so "teddy
    bear" gives both words); if there is none, every NOUN (not PROPN). The official script's last
    fallback, NLTK's noun-phrase chunker, is not part of this rule: :class:`SpacyNounExtractor`
    applies it (``segment.models.noun_fallback``) when this returns ``[]``.

    ``rule="sssc"``: the head noun (the subject, else the root noun, lower-cased) of the bare
    sentence; else of ``"the " + sentence``; else every noun of either parse, without repeats.
    It keeps "pizza" for "kid eating pizza" where the official rule finds "kid".

    Args:
        parse: ``str -> Doc`` (a spaCy pipeline).
        sentence: the referring expression.
        rule: ``"official"`` | ``"sssc"`` (``segment.models.noun_rule``).

    Returns:
        The nouns (possibly ``[]`` when the expression has none at all).
    """
    if rule == "official":
        doc = parse(sentence)
        if len(doc) == 0 or doc[0].text != "the":
            doc = parse("the " + sentence)
        subjects = [t.text for t in doc if _is_noun(t) and t.dep_ in ("ROOT", "nsubj")]
        return subjects or [t.text for t in doc if t.pos_ == "NOUN"]
    if rule != "sssc":
        raise ValueError(f"extract_nouns: rule must be one of {NOUN_RULES}, got {rule!r}")
    doc = parse(sentence)
    nouns = head_nouns(doc)
    if nouns:
        return nouns
    prefixed = None
    if not sentence.lower().startswith("the "):
        prefixed = parse("the " + sentence)
        nouns = head_nouns(prefixed)
        if nouns:
            return nouns
    nouns = all_nouns(doc)
    if not nouns and prefixed is not None:
        nouns = all_nouns(prefixed)
    return nouns


NOUN_FALLBACKS = ("nltk", "none")
# The NLTK data packages the chunker needs (NLTK >= 3.9 names): Punkt's sentence splitter, which
# word_tokenize runs first, and the averaged-perceptron tagger.
NLTK_RESOURCES = {
    "punkt_tab": "tokenizers/punkt_tab/english/",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng/",
}
# The official chunk grammar (Su Nam Kim's): runs of nouns and adjectives that end on a noun. Its
# second NP rule never fires, since the first has already wrapped every NBAR in an NP.
_NP_GRAMMAR = r"""
    NBAR:
        {<NN.*|JJ>*<NN.*>}
    NP:
        {<NBAR>}
        {<NBAR><IN><NBAR>}
"""


def noun_phrases_from_chunks(chunks: Iterable[Any]) -> list[str]:
    """The phrases the official chunker keeps, from the top level of its parse.

    Each chunk (a subtree) adds its words, joined by spaces, to a pending list. The next unchunked
    token ends the pending list: its words, joined, become one phrase, unless that phrase is
    already kept, in which case the list is *not* cleared and goes on growing (so "dog and dog and
    cat" keeps "dog", then "dog cat"). Whatever is pending at the end is kept item by item. These
    are the official loop's behaviours, kept as they are.

    Args:
        chunks: the top-level children of an ``nltk.Tree``: subtrees (chunks) and
            ``(word, tag)`` tuples.

    Returns:
        The phrases, in order.
    """
    phrases: list[str] = []
    pending: list[str] = []
    for node in chunks:
        if not isinstance(node, tuple):  # a chunk: nltk.Tree
            pending.append(" ".join(word for word, _tag in node.leaves()))
        elif pending:
            phrase = " ".join(pending)
            if phrase not in phrases:
                phrases.append(phrase)
                pending = []
    return phrases + pending


class NltkNounPhrases:
    """``extractor(sentence) -> noun phrases``: the official script's last noun fallback.

    ``get_nouns_and_noun_phrases_nltk``: append "." unless the sentence ends with one, split it
    into words (``nltk.word_tokenize``), tag them (``nltk.pos_tag``), chunk the tags with a
    noun-phrase grammar (runs of nouns and adjectives ending on a noun) and keep the phrases as
    :func:`noun_phrases_from_chunks` says. "left." tagged as a noun gives ``["left"]``; an
    expression without a noun tag gives ``[]``.

    It calls NLTK's public functions, as the official code does, so that any NLTK version gives
    what the official function gives under it. NLTK caches the tagger and the Punkt model per
    process: the first data folder they are loaded from serves every later call.

    Args:
        data_dir: an NLTK data folder holding ``punkt_tab`` and ``averaged_perceptron_tagger_eng``
            (``segment.models.nltk_data``), put first on NLTK's search path; ``""`` searches
            NLTK's own path (``NLTK_DATA``, ``~/nltk_data``, ...).

    Raises:
        NounError: NLTK or one of its two data packages is missing; the message gives the
            download command.
    """

    def __init__(self, data_dir: str = ""):
        try:
            import nltk
        except ImportError as e:
            raise NounError(
                f"NLTK is not installed ({e}); pip install 'sssc[segment]' (or set "
                "segment.models.noun_fallback=none)"
            ) from None
        where = "NLTK's data path"
        if data_dir:
            folder = Path(data_dir).expanduser().resolve()
            if not folder.is_dir():
                raise NounError(
                    f"segment.models.nltk_data={data_dir!r}: no such folder. Make it with: "
                    f"python -m nltk.downloader -d {data_dir} {' '.join(NLTK_RESOURCES)}"
                )
            if str(folder) not in nltk.data.path:
                nltk.data.path.insert(0, str(folder))
            where = str(folder)
        for package, resource in NLTK_RESOURCES.items():
            try:
                nltk.data.find(resource)
            except LookupError:
                raise NounError(
                    f"segment.models.noun_fallback=nltk: the NLTK data package {package!r} "
                    f"({resource}) is not in {where}. Download it with: python -m "
                    f"nltk.downloader -d <folder> {' '.join(NLTK_RESOURCES)}, then set "
                    "segment.models.nltk_data=<folder> (or set segment.models.noun_fallback=none)"
                ) from None
        self._nltk = nltk
        self._chunker = nltk.RegexpParser(_NP_GRAMMAR)
        self.name = f"nltk:{nltk.__version__}"

    def __call__(self, sentence: str) -> list[str]:
        text = sentence if sentence.endswith(".") else sentence + "."
        tagged = self._nltk.pos_tag(self._nltk.word_tokenize(text))
        return noun_phrases_from_chunks(self._chunker.parse(tagged))


class SpacyNounExtractor:
    """``extractor(sentence) -> nouns`` with a trained spaCy pipeline.

    Args:
        model: the pipeline name or path (``segment.models.spacy_model``, default
            ``en_core_web_md``).
        rule: :func:`extract_nouns`' rule (``segment.models.noun_rule``).
        fallback: ``sentence -> phrases``, asked where the rule finds no noun (the official
            :class:`NltkNounPhrases`), or ``None``.
        counts: where to count the expressions the fallback was asked about
            (``nltk_fallback``) and those it found nothing for (``nltk_fallback_empty``).

    Raises:
        NounError: spaCy or the model is not installed; the message gives the install command.
    """

    def __init__(
        self,
        model: str = "en_core_web_md",
        rule: str = "official",
        fallback: Callable[[str], list[str]] | None = None,
        counts: collections.Counter | None = None,
    ):
        self.rule, self.fallback = rule, fallback
        self.counts = collections.Counter() if counts is None else counts
        try:
            import spacy
        except ImportError as e:
            raise NounError(
                f"spaCy is not installed ({e}); pip install 'sssc[segment]', then "
                f"python -m spacy download {model}"
            ) from None
        try:
            # Only the tagger and parser are needed; NER and lemmatizer cost time for nothing.
            self.nlp = spacy.load(model, exclude=["ner", "lemmatizer"])
        except OSError as e:
            raise NounError(
                f"segment.models.spacy_model={model!r}: spaCy cannot load it ({e}). "
                f"{_spacy_install_hint(model)}"
            ) from None
        self.name = model

    def __call__(self, sentence: str) -> list[str]:
        nouns = extract_nouns(self.nlp, sentence, self.rule)
        if nouns or self.fallback is None:
            return nouns
        nouns = self.fallback(sentence)
        self.counts["nltk_fallback"] += 1
        self.counts["nltk_fallback_empty"] += not nouns
        return nouns


class RuleNounExtractor:
    """Model-free extractor: the first word that names a known class (singular or plural).

    Falls back to the last word of the expression, which class projection then maps to the
    nearest class. Enough for the synthetic dataset, whose expressions name the object first.

    Args:
        class_names: the dataset's class names (single or multi-word).
    """

    def __init__(self, class_names: Iterable[str]):
        self.name = "rules"
        forms: dict[str, str] = {}
        for c in class_names:
            c = c.lower().strip()
            for f in (c, c + "s", c + "es"):
                forms.setdefault(f, c)
        # Longest first, so that "traffic light" wins over "light".
        alts = sorted(forms, key=len, reverse=True)
        self._forms = forms
        self._re = re.compile(r"\b(" + "|".join(map(re.escape, alts)) + r")\b") if alts else None

    def __call__(self, sentence: str) -> list[str]:
        s = sentence.lower()
        if self._re is not None:
            m = self._re.search(s)
            if m:
                return [self._forms[m.group(1)]]
        words = re.findall(r"[a-z]+", s)
        return words[-1:]


def _spacy_install_hint(model: str) -> str:
    return (
        f"Install it with: python -m spacy download {model}  (or set segment.models.nouns=rules "
        "for the synthetic dataset)"
    )


def spacy_model_problem(model: str) -> str | None:
    """Why spaCy could not load ``model`` (``segment.models.spacy_model``), found without
    loading it: spaCy or the model package (or folder) is not installed; ``None`` when both are.
    """
    try:
        import spacy
    except ImportError as e:
        return (
            f"spaCy is not installed ({e}); pip install 'sssc[segment]', then "
            f"python -m spacy download {model}"
        )
    if model.startswith("blank:") or spacy.util.is_package(model):
        return None
    if Path(model).expanduser().is_dir():
        return None
    return (
        f"segment.models.spacy_model={model!r}: spaCy cannot find it (no installed package or "
        f"folder of that name). {_spacy_install_hint(model)}"
    )


def make_noun_extractor(
    kind: str,
    spacy_model: str,
    class_names: Iterable[str],
    rule: str = "official",
    fallback: str = "none",
    nltk_data: str = "",
    counts: collections.Counter | None = None,
):
    """``segment.models.nouns``: ``spacy`` (the paper; ``rule`` is ``segment.models.noun_rule``,
    ``fallback`` ``segment.models.noun_fallback``, read from ``nltk_data``) or ``rules``
    (model-free)."""
    if kind == "rules":
        return RuleNounExtractor(class_names)
    if kind == "spacy":
        if fallback not in NOUN_FALLBACKS:
            raise NounError(
                f"segment.models.noun_fallback must be one of {NOUN_FALLBACKS}, got {fallback!r}"
            )
        # The data is checked before spaCy loads, so a missing package fails in a second.
        phrases = NltkNounPhrases(nltk_data) if fallback == "nltk" else None
        return SpacyNounExtractor(spacy_model, rule, phrases, counts)
    raise NounError(f"segment.models.nouns must be 'spacy' or 'rules', got {kind!r}")
