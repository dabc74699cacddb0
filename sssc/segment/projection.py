"""Stage 1, step 2: map a free-form noun onto the dataset's class names with CLIP's text tower.

Both the noun and every class name are put in one prompt (``segment.models.projection_prompt``:
the official code's ``"a photo of a {}"`` with CLIP ViT-B/32 by default, the paper's text says
``"a picture of {}"``); the noun goes to the class of highest cosine similarity. Class embeddings
are computed once, noun embeddings once per distinct noun.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PROMPT", "ClassProjector"]

PROMPT = "a photo of a {}"  # the official code's context string (--context-projections)


class ClassProjector:
    """``projector(nouns) -> class indices``, cosine argmax of CLIP text embeddings.

    Args:
        clip: a :class:`sssc.pretrained.Clip`.
        class_names: the projection targets (``data.class_names``).
        prompt: a format string with one ``{}``.
    """

    def __init__(self, clip, class_names: Sequence[str], prompt: str = PROMPT):
        if not class_names:
            raise ValueError("data.class_names is empty: Stage 1 needs the dataset's class names")
        if prompt.count("{}") != 1:
            raise ValueError(
                f"segment.models.projection_prompt must hold exactly one {{}}, got {prompt!r}"
            )
        self.prompt = prompt
        self.clip = clip
        self.class_names = list(class_names)
        self._classes = clip.encode_text(
            [self.prompt.format(c) for c in self.class_names]
        )  # [K, D]
        self._cache: dict[str, int] = {}

    def __call__(self, nouns: Sequence[str]) -> list[int]:
        """The class index of each noun, ``[len(nouns)]``."""
        new = [n for n in dict.fromkeys(nouns) if n not in self._cache]
        if new:
            e = self.clip.encode_text([self.prompt.format(n) for n in new])  # [N, D]
            sim = e @ self._classes.T  # [N, K] cosine (both normalized)
            for n, k in zip(new, sim.argmax(dim=1).tolist(), strict=True):
                self._cache[n] = int(k)
        return [self._cache[n] for n in nouns]

    def similarity(self, nouns: Sequence[str]) -> torch.Tensor:
        """Cosine similarities ``[len(nouns), K]`` (for analysis and tests)."""
        return self.clip.encode_text([self.prompt.format(n) for n in nouns]) @ self._classes.T
