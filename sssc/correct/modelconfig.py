"""LAVT model configs: the dataclasses of a model YAML (``configs/lavt-*.yaml``) and their loader.

Shared by the model (:mod:`sssc.correct.lavt`) and its tokenizer (:mod:`sssc.correct.tokenizer`),
which both read a config and neither imports the other's module for it.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sssc.config import ConfigError, build_section

__all__ = [
    "BertSettings",
    "LAVTConfig",
    "PWAMSettings",
    "SwinSettings",
    "load_model_config",
]


@dataclass
class SwinSettings:
    """The Swin backbone (transformers' ``SwinConfig`` fields)."""

    embed_dim: int = 128
    depths: list[int] = field(default_factory=lambda: [2, 2, 18, 2])
    num_heads: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3  # LAVT's setting for Swin-B


@dataclass
class BertSettings:
    """The text encoder (transformers' ``BertConfig`` fields)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1


@dataclass
class PWAMSettings:
    num_heads: int = 1  # LAVT's num_heads_fusion: one head at every stage
    dropout: float = 0.0  # LAVT's fusion_drop


@dataclass
class LAVTConfig:
    """A LAVT model: the backbone, the text encoder, the fusion and the tokenizer's settings."""

    name: str = "lavt-base"
    image_size: int = 480  # training/eval resolution (the model accepts any size)
    max_tokens: int = 20  # LAVT truncates/pads expressions to 20 tokens
    tokenizer: str = "bert"  # bert: BertTokenizerFast from bert_path | words: vocab from the data
    swin: SwinSettings = field(default_factory=SwinSettings)
    bert: BertSettings = field(default_factory=BertSettings)
    pwam: PWAMSettings = field(default_factory=PWAMSettings)
    # none (LAVT: no absolute position anywhere in the backbone) | coords: fixed coordinate
    # features of every token (x, y and their Fourier features), through a linear map per stage,
    # added to the stage's tokens before its blocks (the spatial features of earlier referring
    # segmentation models, e.g. RMI and CMSA)
    position: str = "none"
    # The light decoder's hidden width; 0: LAVT's rule, half of stage 4's (512 for Swin-B)
    decoder_hidden: int = 0
    # sssc: the width of a head that refines the upsampled 1/4-resolution logits at the input
    # resolution with the image (three 3x3 convolutions, a residual that starts at zero); 0: none
    # (LAVT: bilinear upsampling only)
    refine_hidden: int = 0

    @property
    def stage_dims(self) -> list[int]:
        """Channels of the four stages' outputs, ``C * [1, 2, 4, 8]``."""
        return [self.swin.embed_dim * 2**i for i in range(len(self.swin.depths))]


def load_model_config(name_or_path: str | Path | LAVTConfig) -> LAVTConfig:
    """Read a model config: an embedded name (``"lavt-tiny"``, ``"lavt-base"``) or a YAML path.

    Raises:
        ConfigError: the file is missing, not YAML, has an unknown key or a wrong type (the message
            names the key and the file), or the settings are inconsistent.
    """
    if isinstance(name_or_path, LAVTConfig):
        return name_or_path
    path = Path(name_or_path)
    if not path.is_file():
        embedded = Path(str(importlib.resources.files("sssc.configs") / f"{name_or_path}.yaml"))
        if path.suffix == "" and embedded.is_file():
            path = embedded
        else:
            raise ConfigError(
                f"{name_or_path}: model config not found (give a YAML path or an embedded name: "
                "lavt-tiny, lavt-base)"
            )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    cfg = build_section(LAVTConfig, raw, "", str(path))
    _check_config(cfg, str(path))
    return cfg


def _check_config(cfg: LAVTConfig, source: str) -> None:
    s = cfg.swin
    if len(s.depths) != 4 or len(s.num_heads) != 4:
        raise ConfigError(
            f"{source}: 'swin.depths' and 'swin.num_heads' need 4 stages (LAVT fuses after each), "
            f"got {s.depths} and {s.num_heads}"
        )
    for i, (dim, heads) in enumerate(zip(cfg.stage_dims, s.num_heads, strict=True)):
        if heads < 1 or dim % heads:
            raise ConfigError(
                f"{source}: 'swin.num_heads[{i}]'={heads} must divide the stage's width {dim}"
            )
        if dim % cfg.pwam.num_heads:
            raise ConfigError(f"{source}: 'pwam.num_heads' must divide every stage width {dim}")
    if cfg.bert.hidden_size % cfg.bert.num_attention_heads:
        raise ConfigError(f"{source}: 'bert.num_attention_heads' must divide 'bert.hidden_size'")
    if cfg.position not in ("none", "coords"):
        raise ConfigError(f"{source}: 'position' must be 'none' or 'coords', got {cfg.position!r}")
    if cfg.decoder_hidden < 0:
        raise ConfigError(
            f"{source}: 'decoder_hidden' must be >= 0 (0: half of stage 4's width), "
            f"got {cfg.decoder_hidden}"
        )
    if cfg.refine_hidden < 0:
        raise ConfigError(
            f"{source}: 'refine_hidden' must be >= 0 (0: no refine head), got {cfg.refine_hidden}"
        )
    if cfg.tokenizer not in ("bert", "words"):
        raise ConfigError(f"{source}: 'tokenizer' must be 'bert' or 'words', got {cfg.tokenizer!r}")
    if not 0 < cfg.max_tokens <= cfg.bert.max_position_embeddings:
        raise ConfigError(
            f"{source}: 'max_tokens' must be in [1, bert.max_position_embeddings], "
            f"got {cfg.max_tokens}"
        )
