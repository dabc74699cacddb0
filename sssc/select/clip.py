"""open_clip models from local weights, and a text encoder that caches one embedding per string."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..segment.weights import check_weights, is_random, random_init

__all__ = ["Clip", "load_clip"]


@dataclass
class Clip:
    """An open_clip model with its tokenizer and preprocessing geometry.

    Attributes:
        model: the open_clip model (eval mode, on ``device``).
        tokenizer: ``list[str] -> LongTensor [B, context_length]``.
        image_size: the square input side (e.g. 336 for ViT-L-14-336).
        mean, std: per-channel normalization of the image tower.
        device: where the model lives.
        name, weights: what was loaded (for the producer).
    """

    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    name: str
    weights: str

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalized text embeddings, float32 ``[len(texts), D]`` on ``device``."""
        out = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            out.append(self.model.encode_text(tok).float())
        if not out:
            return torch.zeros(0, self.embed_dim, device=self.device)
        e = torch.cat(out)
        return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalized image embeddings, float32 ``[B, D]``, of preprocessed ``[B, 3, S, S]``."""
        e = self.model.encode_image(pixels).float()
        return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1])


def load_clip(name: str, weights: str, device: str | torch.device, section: str) -> Clip:
    """Build an open_clip model and load local weights.

    Args:
        name: an open_clip architecture (``ViT-L-14-336``, or one registered with
            ``open_clip.add_model_config``).
        weights: a local checkpoint file, or ``random`` (random init: tests only).
        device: where to put the model.
        section: the config section (``segment.models`` / ``select.models``) for messages.

    Raises:
        WeightsError: the weights file is not set or missing (before anything is built).
        ValueError: ``name`` is not an open_clip architecture.
    """
    check_weights(section, {"clip_weights": weights})
    try:
        import open_clip
    except ImportError as e:
        raise ImportError(f"open_clip is not installed ({e}); pip install 'sssc[select]'") from None
    if name not in open_clip.list_models():
        raise ValueError(
            f"{section}.clip_model={name!r} is not an open_clip architecture "
            f"(e.g. ViT-L-14-336, ViT-B-32; see open_clip.list_models())"
        )
    # open_clip logs a warning for random init; the producer already records it.
    logging.getLogger().disabled, was = True, logging.getLogger().disabled
    try:
        with random_init():
            model = open_clip.create_model(
                name, pretrained=None if is_random(weights) else weights, device=device
            )
    finally:
        logging.getLogger().disabled = was
    model.eval()
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return Clip(
        model,
        open_clip.get_tokenizer(name),
        size,
        mean,
        std,
        torch.device(device),
        name,
        weights,
    )
