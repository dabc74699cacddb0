"""Tokenizers for LAVT: BERT's WordPiece, from a local folder or from the dataset's own words.

LAVT tokenizes an expression with BERT's tokenizer (special tokens included), keeps the first
``max_tokens`` (20) ids and pads with id 0; the attention mask is 1 on the kept tokens. Both kinds
here do exactly that:

- ``tokenizer: bert`` (``lavt-base``): ``BertTokenizerFast`` from a local ``bert-base-uncased``
  folder.
- ``tokenizer: words`` (``lavt-tiny``): a WordPiece vocabulary of the given words (lower-cased and
  split like BERT's basic tokenizer), sorted, after ``[PAD] [UNK] [CLS] [SEP] [MASK]``. Equal words
  always give the same ids, and feeding a tokenizer's own ``vocab`` back gives the same tokenizer,
  so a checkpoint only needs to store ``vocab``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sssc.correct.modelconfig import load_model_config
from sssc.pretrained import BERT_URL, WeightsError, existing_path

__all__ = ["SPECIAL_TOKENS", "LAVTTokenizer", "build_tokenizer"]
# [PAD] first: LAVT pads with id 0.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class LAVTTokenizer:
    """Expressions -> ``(input_ids, attention_mask)``, both ``[B, max_tokens]`` int64.

    Attributes:
        vocab: the tokens in id order.
        max_tokens: the fixed length L.
    """

    def __init__(self, hf_tokenizer: Any, max_tokens: int):
        self.hf = hf_tokenizer
        self.max_tokens = max_tokens
        vocab = hf_tokenizer.get_vocab()
        self.vocab = sorted(vocab, key=vocab.__getitem__)
        self.pad_id = int(hf_tokenizer.pad_token_id)

    def __call__(self, texts: list[str] | str) -> tuple[Tensor, Tensor]:
        """Tokenize a batch of expressions.

        Args:
            texts: B strings (or one string, as a batch of one).

        Returns:
            ``input_ids`` and ``attention_mask``, ``[B, max_tokens]`` int64.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        ids = torch.full((len(texts), self.max_tokens), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(texts), self.max_tokens), dtype=torch.int64)
        if not texts:
            return ids, mask
        encoded = self.hf(texts, add_special_tokens=True)["input_ids"]
        for i, seq in enumerate(encoded):
            # LAVT truncates after adding the special tokens (a long expression loses its [SEP]).
            seq = seq[: self.max_tokens]
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
            mask[i, : len(seq)] = 1
        return ids, mask

    def __len__(self) -> int:
        return len(self.vocab)


def build_tokenizer(
    model_cfg_or_name: Any,
    vocab_words: Iterable[str] | None = None,
    bert_path: str | Path | None = None,
) -> LAVTTokenizer:
    """The tokenizer a LAVT config asks for.

    Args:
        model_cfg_or_name: a ``LAVTConfig``, an embedded model name or a model YAML path.
        vocab_words: for ``tokenizer: words`` configs (``lavt-tiny``): the words to know, e.g. every
            expression of the training set (whole sentences are fine; they are split here), or a
            tokenizer's saved ``vocab``.
        bert_path: for ``tokenizer: bert`` configs (``lavt-base``): the local bert-base-uncased
            folder (its ``vocab.txt`` is enough).

    Returns:
        A callable ``texts -> (input_ids [B, L], attention_mask [B, L])`` with L = ``max_tokens``.

    Raises:
        FileNotFoundError: ``bert_path`` is missing (the message names the setting).
        ValueError: the vocabulary does not fit the model's embedding table, or no words/path.
    """
    cfg = load_model_config(model_cfg_or_name)
    if cfg.tokenizer == "bert":
        hf = _bert_from_folder(bert_path)
    else:
        if vocab_words is None:
            raise ValueError(
                f"build_tokenizer: model {cfg.name!r} uses a vocabulary built from the data; pass "
                "vocab_words (e.g. the training expressions, or a saved tokenizer.vocab)"
            )
        hf = _wordpiece_from_words(vocab_words)
    tok = LAVTTokenizer(hf, cfg.max_tokens)
    if len(tok) > cfg.bert.vocab_size:
        raise ValueError(
            f"build_tokenizer: the vocabulary has {len(tok)} tokens but model {cfg.name!r} has "
            f"bert.vocab_size={cfg.bert.vocab_size}; raise bert.vocab_size in the model config"
        )
    return tok


def _bert_from_folder(bert_path: str | Path | None) -> Any:
    from transformers import BertTokenizerFast

    if not bert_path:
        raise WeightsError(
            f"bert_path: not set. Give the local bert-base-uncased folder, published at {BERT_URL}"
        )
    p = existing_path("bert_path", bert_path, "the bert-base-uncased folder")
    return BertTokenizerFast.from_pretrained(str(p))


def _wordpiece_from_words(words: Iterable[str]) -> Any:
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertTokenizerFast

    # Split exactly as the tokenizer will, so that every known word is one whole-word piece.
    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    tokens: set[str] = set()
    for text in words:
        if text in SPECIAL_TOKENS:
            continue
        tokens.update(piece for piece, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    vocab = list(SPECIAL_TOKENS) + sorted(tokens - set(SPECIAL_TOKENS))
    with tempfile.TemporaryDirectory(prefix="sssc-vocab-") as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        # The fast tokenizer reads the file once, at construction.
        return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
