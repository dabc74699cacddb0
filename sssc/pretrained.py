"""Pretrained weights: every weight path checked before any work starts, and the CLIP loader that
Stage 1 (class projection) and Stage 2 (scoring) share.

Every weight setting is a local path. The special value ``random`` builds the architecture with
random weights instead (tests, benchmarks and CI only; every producer records it). One function,
:func:`existing_path`, words the message for a path that does not exist, wherever it is checked
(Stage 1-2 models, LAVT's Swin and BERT, the tokenizer's BERT folder).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BERT_URL",
    "RANDOM",
    "SWIN_URL",
    "WEIGHTS_SOURCES",
    "Clip",
    "WeightsError",
    "check_weights",
    "clip_source",
    "existing_path",
    "is_random",
    "load_clip",
    "problems_message",
    "random_init",
    "sha256_file",
    "shipped_weights",
    "verify_manifest",
    "weight_problems",
]

RANDOM = "random"

# Where the published weights live; named in every "weights not found" error.
SWIN_URL = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_base_patch4_window12_384_22k.pth"
)
BERT_URL = "https://huggingface.co/bert-base-uncased (the folder: config.json, weights, vocab.txt)"

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
    "swin_weights": SWIN_URL,
    "bert_weights": BERT_URL,
    "bert_path": BERT_URL,
}


class WeightsError(FileNotFoundError):
    """A weight setting is empty or points at a missing file; the message says where to get it."""


def is_random(path: str) -> bool:
    return path.strip().lower() == RANDOM


def clip_source(model: str) -> str:
    """Where the official weights of the open_clip architecture ``model`` are published: the URL
    of its ``openai`` release in open_clip's registry (ViT-B-32 for Stage 1's class projection,
    ViT-L-14-336 for Stage 2's scoring), or the registry itself for another architecture."""
    try:
        from open_clip.pretrained import get_pretrained_url

        url = get_pretrained_url(model, "openai")
    except Exception:  # open_clip missing, or an architecture it does not know
        url = ""
    if url:
        return f"{url} (open_clip's {model} 'openai'; list others with open_clip.list_pretrained())"
    return WEIGHTS_SOURCES["clip_weights"]


def weight_problems(
    section: str,
    settings: dict[str, str],
    optional: tuple[str, ...] = (),
    sources: dict[str, str] | None = None,
) -> list[str]:
    """One message per weight setting that is empty or names a missing file (see
    :func:`check_weights`); ``sources`` overrides where a setting's official weights are."""
    problems = []
    for key, value in settings.items():
        value = (value or "").strip()
        if is_random(value) or (not value and key in optional):
            continue
        where = (sources or {}).get(key) or WEIGHTS_SOURCES.get(key, "the model's official release")
        if not value:
            problems.append(
                f"{section}.{key} is empty: set it to a local weights file (download from "
                f"{where}), or to '{RANDOM}' for random weights (tests only)"
            )
        elif not Path(value).exists():
            problems.append(
                f"{section}.{key}={value!r}: no such file ({Path(value).resolve()}). The official "
                f"weights are published at {where}"
            )
    return problems


def problems_message(problems: list[str], before: str) -> str:
    """One problem as it is; several as a list under a line saying what they hold up."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} things are missing before {before}:\n" + "\n".join(
        f"  - {p}" for p in problems
    )


def check_weights(
    section: str,
    settings: dict[str, str],
    optional: tuple[str, ...] = (),
    sources: dict[str, str] | None = None,
) -> None:
    """Fail before any work if a weight setting is empty or names a missing file.

    Args:
        section: the config section, e.g. ``segment.models``, for the message.
        settings: setting name -> path (or ``random``).
        optional: settings that may be empty (a packaged default is used then).
        sources: setting name -> where its official weights are, where the setting's default
            source (``WEIGHTS_SOURCES``) does not fit, e.g. :func:`clip_source` of the model.

    Raises:
        WeightsError: naming every such setting, its file, and where the official weights are.
    """
    problems = weight_problems(section, settings, optional, sources)
    if problems:
        raise WeightsError(problems_message(problems, f"{section} can load its models"))


SHIPPED = "sssc:"  # a weights setting "sssc:NAME" names a folder shipped in configs/weights/NAME


def shipped_weights(setting: str, name: str) -> Path:
    """The folder of weights shipped with sssc (``configs/weights/<name>``), checksum checked.

    Raises:
        WeightsError: no such shipped folder, or :func:`verify_manifest` fails.
    """
    import importlib.resources

    folder = Path(str(importlib.resources.files("sssc.configs") / "weights" / name))
    if not (folder / "pretrain.json").is_file():
        raise WeightsError(
            f"{setting}: {SHIPPED}{name} is not shipped with sssc (no {folder / 'pretrain.json'}); "
            f"build it with `python -m sssc.correct.pretrain --out {folder}`"
        )
    verify_manifest(folder, setting)
    return folder


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_manifest(folder: Path, setting: str) -> None:
    """Every file named in ``<folder>/pretrain.json`` matches its SHA-256 there.

    Raises:
        WeightsError: a file is missing or differs (the message says how to rebuild it).
    """
    import json

    manifest = folder / "pretrain.json"
    rebuild = f"python -m sssc.correct.pretrain --out {folder}"
    for file, want in json.loads(manifest.read_text())["sha256"].items():
        p = folder / file
        got = sha256_file(p) if p.is_file() else "missing"
        if got != want:
            raise WeightsError(
                f"{setting}: {p} does not match the SHA-256 in {manifest} ({got[:16]} instead of "
                f"{want[:16]}); the shipped weights are damaged: restore them from the repository "
                f"or rebuild them with `{rebuild}`"
            )


def existing_path(
    setting: str, path: str | Path, what: str = "the weights", source: str | None = None
) -> Path:
    """``path`` as a :class:`Path` when it exists (``sssc:NAME``: :func:`shipped_weights`).

    Raises:
        WeightsError: naming the setting, the path and where the official weights are published.
    """
    if str(path).startswith(SHIPPED):
        return shipped_weights(setting, str(path)[len(SHIPPED) :])
    p = Path(path).expanduser()
    if not p.exists():
        where = source or WEIGHTS_SOURCES.get(
            setting.rpartition(".")[2], "the model's official release"
        )
        raise WeightsError(
            f"{setting}: {p} does not exist. Give a local path to {what}; the official ones are "
            f"published at {where}"
        )
    return p


@contextlib.contextmanager
def random_init(seed: int = 0):
    """Build random weights from a fixed seed (without touching the caller's RNG state), so that
    two runs with ``random`` weights, e.g. a killed run and its resume, get the same model."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------ CLIP


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
    check_weights(section, {"clip_weights": weights}, sources={"clip_weights": clip_source(name)})
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
