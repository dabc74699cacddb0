"""Tiny randomly initialised models for the Stage 1/2 tests (no downloads, no weights).

* CLIP: an open_clip architecture registered under :data:`TINY_CLIP` (one block per tower, 32
  channels, 32 px input) with open_clip's bundled BPE tokenizer.
* GroundingDINO: the package's SwinT (OGC) config with smaller transformer settings and a tiny
  BERT (vocabulary of the synthetic dataset's words) written to a folder.
* SAM: ``segment.models.sam_type=tiny`` (see :mod:`sssc.segment.segmenter`).
* NLTK: an NLTK data folder in the real on-disk formats (``punkt_tab``'s tables and the
  averaged-perceptron tagger's three JSON files) with a designed tagger (:func:`write_tiny_nltk`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TINY_CLIP = "sssc-test-tiny-clip"

_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] . ? , all the a of left right above below largest smallest "
    "red green blue yellow purple orange circle square triangle circles squares triangles "
    "##s ##es"
).split()

# Smaller transformer on top of the SwinT backbone: the architecture family stays GroundingDINO's.
_GDINO_OVERRIDES = """
num_queries = 20
enc_layers = 1
dec_layers = 1
dim_feedforward = 64
use_checkpoint = False
use_transformer_ckpt = False
text_encoder_type = {bert!r}
"""


def register_tiny_clip(folder: str | os.PathLike) -> str:
    """Register the tiny open_clip architecture (idempotent); returns its name."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        p = Path(folder) / f"{TINY_CLIP}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        # Renamed into place: ranks registering at once never read another's half-written file.
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_CLIP_CFG))
        os.replace(tmp, p)
        open_clip.add_model_config(p)
    return TINY_CLIP


def write_tiny_gdino(folder: str | os.PathLike, words: tuple[str, ...] = _WORDS) -> tuple[str, str]:
    """Write a tiny BERT (vocabulary ``words``, special tokens first) and a GroundingDINO config
    using it; returns ``(config, bert_dir)``."""
    import groundingdino
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    bert = folder / "tiny-bert"
    bert.mkdir(parents=True, exist_ok=True)
    (bert / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(str(bert / "vocab.txt")).save_pretrained(bert)
    cfg = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(cfg).save_pretrained(bert)
    base = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    config = folder / "gdino_tiny.py"
    config.write_text(base.read_text() + _GDINO_OVERRIDES.format(bert=str(bert)))
    return str(config), str(bert)


def models_overrides(folder: str | os.PathLike) -> list[str]:
    """``--set`` overrides that run Stages 1-2 with the tiny models (registers tiny CLIP)."""
    clip = register_tiny_clip(folder)
    config, bert = write_tiny_gdino(folder)
    return [
        "segment.backend=models",
        "select.backend=models",
        "segment.models.nouns=rules",
        # A random detector's phrases almost never name a class exactly; the plumbing tests
        # want candidates, so they take sssc's labelling rules (tests/test_detector_rules.py
        # checks the official ones on designed outputs).
        "segment.models.gdino_labels=best_phrase",
        "segment.models.gdino_retry=sssc",
        f"segment.models.clip_model={clip}",
        "segment.models.clip_weights=random",
        f"segment.models.gdino_config={config}",
        "segment.models.gdino_weights=random",
        f"segment.models.gdino_text_encoder={bert}",
        "segment.models.gdino_size=64",
        "segment.models.gdino_max_size=64",
        "segment.models.sam_type=tiny",
        "segment.models.sam_weights=random",
        f"select.models.clip_model={clip}",
        "select.models.clip_weights=random",
        "select.models.batch_size=16",
        "select.models.num_workers=0",
        "select.models.min_area=40",
    ]


# Words with one tag each, over every tag class the grammar reads (NN.*, JJ) and some it does not.
NLTK_TAGS = {
    "dog": "NN",
    "man": "NN",
    "shirt": "NN",
    "dogs": "NNS",
    "john": "NNP",
    "giants": "NNPS",
    "red": "JJ",
    "big": "JJ",
    "tallest": "JJS",
    "bigger": "JJR",
    "of": "IN",
    "on": "IN",
    "the": "DT",
    "a": "DT",
    "and": "CC",
    "running": "VBG",
    "holds": "VBZ",
    "very": "RB",
    "two": "CD",
    ",": ",",
    ".": ".",
}
# The words the designed tagger of the tests' shared NLTK folder (conftest ``nltk_data``) tags
# by its context: a noun alone, a participle after "the".
NLTK_AMBIGUOUS = {"left": ("NN", "VBN", "JJ")}


def write_tiny_nltk(
    folder: str | os.PathLike,
    tags: dict[str, str],
    ambiguous: dict[str, tuple[str, ...]] | None = None,
    abbreviations: tuple[str, ...] = (),
    seed: int = 0,
) -> str:
    """Write an NLTK data folder with ``punkt_tab`` (English) and
    ``averaged_perceptron_tagger_eng``; returns the folder.

    The tagger tags each word of ``tags`` by its tag dictionary. A word of ``ambiguous`` (not in
    the dictionary) goes to the perceptron: random weights on the word and on the previous tag
    choose one of its tags, so its tag depends on its left neighbour. Any other word takes the
    perceptron's bias, ``NN``. Punkt knows ``abbreviations`` and nothing else.
    """
    import random

    rng = random.Random(seed)
    root = Path(folder)
    punkt = root / "tokenizers" / "punkt_tab" / "english"
    punkt.mkdir(parents=True, exist_ok=True)
    (punkt / "collocations.tab").write_text("")
    (punkt / "sent_starters.txt").write_text("")
    (punkt / "abbrev_types.txt").write_text("".join(a + "\n" for a in abbreviations))
    (punkt / "ortho_context.tab").write_text("")
    ambiguous = ambiguous or {}
    classes = sorted({*tags.values(), *(t for ts in ambiguous.values() for t in ts), "NN", "."})
    weights: dict[str, dict[str, float]] = {"bias": {"NN": 0.5}}
    for word, options in ambiguous.items():
        weights[f"i word {word.lower()}"] = {t: rng.uniform(1.0, 2.0) for t in options}
        for prev in classes:
            weights[f"i-1 tag+i word {prev} {word.lower()}"] = {
                t: rng.uniform(-1.5, 1.5) for t in options
            }
    tagger = root / "taggers" / "averaged_perceptron_tagger_eng"
    tagger.mkdir(parents=True, exist_ok=True)
    for part, value in (("weights", weights), ("tagdict", tags), ("classes", classes)):
        (tagger / f"averaged_perceptron_tagger_eng.{part}.json").write_text(json.dumps(value))
    return str(root)
