"""Stage 1, step 1: the noun an expression refers to.

The paper parses each expression with spaCy and keeps the *subject or root noun* ("the man on the
left" -> "man"). Two rules are available (:func:`extract_nouns`, ``segment.models.noun_rule``):
``official``, the published code's (always parse ``"the " + sentence`` unless it starts with
"the", keep every ROOT/nsubj noun), and ``sssc``'s (the bare sentence first, one head noun).

Two extractors share that interface, ``extractor(sentence) -> list[str]``:

* :class:`SpacyNounExtractor` runs a trained spaCy pipeline (default ``en_core_web_md``);
* :class:`RuleNounExtractor` needs no model: the first word that is one of the known class names
  (or a plural of one). It is meant for the synthetic dataset, whose expressions always name their
  object's shape first ("the circle left of the square").

The parse rules themselves (:func:`head_nouns`, :func:`all_nouns`) work on any ``spacy.tokens.Doc``
with ``pos``/``dep``/``head`` set, so they are tested on hand-built docs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "NOUN_RULES",
    "NounError",
    "RuleNounExtractor",
    "SpacyNounExtractor",
    "all_nouns",
    "extract_nouns",
    "head_nouns",
    "make_noun_extractor",
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
    fallback, an NLTK noun-phrase chunker, is not reproduced: an expression without a spaCy noun
    gives ``[]`` (and its object is queried as "object", as the official query does).

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


class SpacyNounExtractor:
    """``extractor(sentence) -> nouns`` with a trained spaCy pipeline.

    Args:
        model: the pipeline name or path (``segment.models.spacy_model``, default
            ``en_core_web_md``).

    Raises:
        NounError: spaCy or the model is not installed; the message gives the install command.
    """

    def __init__(self, model: str = "en_core_web_md", rule: str = "official"):
        self.rule = rule
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
                f"segment.models.spacy_model={model!r}: spaCy cannot load it ({e}). Install it "
                f"with: python -m spacy download {model}  (or set segment.models.nouns=rules "
                "for the synthetic dataset)"
            ) from None
        self.name = model

    def __call__(self, sentence: str) -> list[str]:
        return extract_nouns(self.nlp, sentence, self.rule)


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


def make_noun_extractor(
    kind: str, spacy_model: str, class_names: Iterable[str], rule: str = "official"
):
    """``segment.models.nouns``: ``spacy`` (the paper; ``rule`` is ``segment.models.noun_rule``)
    or ``rules`` (model-free)."""
    if kind == "rules":
        return RuleNounExtractor(class_names)
    if kind == "spacy":
        return SpacyNounExtractor(spacy_model, rule)
    raise NounError(f"segment.models.nouns must be 'spacy' or 'rules', got {kind!r}")
