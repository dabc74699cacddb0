"""Local weight files of the paper's models, checked before any work starts.

Every weight setting is a local path. The special value ``random`` builds the architecture with
random weights instead (tests, benchmarks and CI only; every producer records it).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = [
    "RANDOM",
    "WEIGHTS_SOURCES",
    "WeightsError",
    "check_weights",
    "is_random",
    "random_init",
]

RANDOM = "random"

# Where the official weights are published, per setting.
WEIGHTS_SOURCES = {
    "clip_weights": (
        "open_clip's pretrained registry, e.g. ViT-L-14-336 'openai': "
        "https://openaipublic.azureedge.net/clip/models/"
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt "
        "(list them with open_clip.list_pretrained())"
    ),
    "gdino_weights": (
        "https://github.com/IDEA-Research/GroundingDINO/releases "
        "(groundingdino_swint_ogc.pth, with the config GroundingDINO_SwinT_OGC.py)"
    ),
    "gdino_config": (
        "the groundingdino package (groundingdino/config/GroundingDINO_SwinT_OGC.py); "
        "leave empty to use it"
    ),
    "gdino_text_encoder": (
        "https://huggingface.co/bert-base-uncased (a local folder with config.json, "
        "vocab.txt and the weights); leave empty to use the Hugging Face cache"
    ),
    "sam_weights": (
        "https://github.com/facebookresearch/segment-anything#model-checkpoints "
        "(sam_vit_h_4b8939.pth for sam_type vit_h)"
    ),
}


class WeightsError(FileNotFoundError):
    """A weight setting is empty or points at a missing file; the message says where to get it."""


def is_random(path: str) -> bool:
    return path.strip().lower() == RANDOM


def check_weights(section: str, settings: dict[str, str], optional: tuple[str, ...] = ()) -> None:
    """Fail before any work if a weight setting is empty or names a missing file.

    Args:
        section: the config section, e.g. ``segment.models``, for the message.
        settings: setting name -> path (or ``random``).
        optional: settings that may be empty (a packaged default is used then).

    Raises:
        WeightsError: naming the setting, the file, and where the official weights are.
    """
    for key, value in settings.items():
        value = (value or "").strip()
        if is_random(value) or (not value and key in optional):
            continue
        where = WEIGHTS_SOURCES.get(key, "the model's official release")
        if not value:
            raise WeightsError(
                f"{section}.{key} is empty: set it to a local weights file (download from "
                f"{where}), or to '{RANDOM}' for random weights (tests only)"
            )
        if not Path(value).exists():
            raise WeightsError(
                f"{section}.{key}={value!r}: no such file ({Path(value).resolve()}). The official "
                f"weights are published at {where}"
            )


@contextlib.contextmanager
def random_init(seed: int = 0):
    """Build random weights from a fixed seed (without touching the caller's RNG state), so that
    two runs with ``random`` weights, e.g. a killed run and its resume, get the same model."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
