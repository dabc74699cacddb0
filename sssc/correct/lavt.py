"""LAVT, the Language-Aware Vision Transformer for referring segmentation (Yang et al., CVPR 2022).

The model, as published:

- a Swin backbone (Swin-B, window 12, for the paper's runs), run stage by stage on the pieces of
  transformers' ``SwinModel`` so that the published ImageNet-22k weights load;
- after each of the four stages' blocks, a pixel-word attention module (PWAM) and a language gate,
  whose fused output ``x + gate(m) * m`` (``m = PWAM(x, words)``) goes on to the stage's
  downsampling and the next stage (LAVT's "language pathway"; stage 4 has no next stage, so its
  gate, which LAVT builds but never uses, is left out);
- a BERT-base text encoder (transformers' ``BertModel`` without the pooler: LAVT does not use it);
- optionally (model config ``position: coords``; ``lavt-tiny`` only, LAVT has none), fixed
  coordinate features of every token through a linear map per stage, added to the stage's tokens
  before its blocks (:func:`coord_features`);
- LAVT's light decoder: top-down fusion of the four stages' multimodal features (conv-BN-ReLU), a
  2-class output at 1/4 resolution, bilinearly upsampled (``align_corners=True``) to the input size;
- optionally (model config ``refine_hidden``; ``lavt-tiny`` only, LAVT has none), a head that
  refines those logits with the image at the input resolution (:class:`RefineHead`).

Arbitrary input sizes work as in Swin for segmentation: the patch embedding pads the image to a
multiple of the patch size, each block pads its feature map to a multiple of the window (always
partitioning, never shrinking the window), and patch merging pads odd sizes.

Weights come from local files only (:func:`create_model`): the official Swin checkpoint
(``swin_base_patch4_window12_384_22k.pth``) through :func:`swin_official_to_hf`, an HF-format Swin
folder, an HF ``bert-base-uncased`` folder, or a full sssc LAVT checkpoint.

Example::

    model = create_model("lavt-tiny")
    tok = build_tokenizer(model.config, vocab_words=["left", "red", "circle"])
    ids, mask = tok(["the red circle"])
    logits = model(images, ids, mask)  # [B, 2, H, W]
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sssc.correct.modelconfig import (
    BertSettings,
    LAVTConfig,
    PWAMSettings,
    SwinSettings,
    load_model_config,
)
from sssc.correct.tokenizer import build_tokenizer
from sssc.pretrained import BERT_URL, SWIN_URL, existing_path

__all__ = [
    "BERT_URL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAVT",
    "LAVTConfig",
    "LAVTDecoder",
    "LanguageGate",
    "PWAM",
    "SWIN_URL",
    "BertSettings",
    "PWAMSettings",
    "SwinSettings",
    "build_tokenizer",
    "coord_features",
    "create_model",
    "load_model_config",
    "param_groups",
    "set_drop_path",
    "swin_official_to_hf",
]

LAVT_CKPT_HINT = (
    "a checkpoint written by `sssc-train --stage bootstrap|correct` (<run>/<stage>/), or a LAVT / "
    "S+S+C release (https://github.com/yz93/LAVT-RIS, https://github.com/fgirbal/"
    "segment-select-correct)"
)

# LAVT normalises images with ImageNet statistics (the Swin weights were trained with them).
from sssc.data.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def _swin_hf_config(cfg: LAVTConfig) -> Any:
    from transformers import SwinConfig

    s = cfg.swin
    return SwinConfig(
        image_size=cfg.image_size,
        patch_size=s.patch_size,
        num_channels=3,
        embed_dim=s.embed_dim,
        depths=list(s.depths),
        num_heads=list(s.num_heads),
        window_size=s.window_size,
        mlp_ratio=s.mlp_ratio,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=s.drop_path_rate,
        use_absolute_embeddings=False,
    )


def _bert_hf_config(cfg: LAVTConfig) -> Any:
    from transformers import BertConfig

    b = cfg.bert
    return BertConfig(
        vocab_size=b.vocab_size,
        hidden_size=b.hidden_size,
        num_hidden_layers=b.num_hidden_layers,
        num_attention_heads=b.num_attention_heads,
        intermediate_size=b.intermediate_size,
        max_position_embeddings=b.max_position_embeddings,
        hidden_dropout_prob=b.hidden_dropout_prob,
        attention_probs_dropout_prob=b.attention_probs_dropout_prob,
    )


def _instance_norm_tokens(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``InstanceNorm1d`` (no affine) over the pixels of ``x`` ``[B, N, C]``."""
    # Statistics over up to 120*120 pixels: at least float32, even under bf16 autocast.
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    var, mean = torch.var_mean(xf, dim=1, keepdim=True, unbiased=False)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)


_COORD_FEATURES = 14


def coord_features(h: int, w: int, device=None, dtype=torch.float32) -> Tensor:
    """Fixed position features of an ``h x w`` token grid, ``[h*w, 14]`` in row-major order.

    ``x, y`` in [-1, 1] (the token centres, left to right and top to bottom) and ``sin(k pi x),
    cos(k pi x)``, likewise for ``y``, for ``k`` in 1, 2, 4.
    """
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    feats = [x, y]
    for k in (1, 2, 4):
        feats += [torch.sin(k * math.pi * x), torch.cos(k * math.pi * x)]
        feats += [torch.sin(k * math.pi * y), torch.cos(k * math.pi * y)]
    return torch.stack(feats, dim=1).to(dtype)


class PWAM(nn.Module):
    """Pixel-word attention module (LAVT, Sec. 3.2).

    Every pixel attends over the expression's words (padding masked out) and gathers a language
    feature; the result is multiplied element-wise with the projected pixel feature and projected
    again. LAVT's 1x1 ``Conv1d`` projections are written as ``nn.Linear`` on ``[B, N, C]`` tokens
    (the same map and the same default initialisation).

    Args:
        dim: pixel feature width C (keys, values and output have C channels too, as in LAVT).
        lang_dim: word feature width (BERT's hidden size).
        num_heads: attention heads over the words (LAVT: 1).
        dropout: dropout after the two GELU projections (LAVT's ``fusion_drop``, 0).
    """

    def __init__(self, dim: int, lang_dim: int, num_heads: int = 1, dropout: float = 0.0):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.vis_project = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.query = nn.Linear(dim, dim)  # followed by an instance norm over the pixels
        self.key = nn.Linear(lang_dim, dim)
        self.value = nn.Linear(lang_dim, dim)
        self.out = nn.Linear(dim, dim)  # followed by an instance norm over the pixels
        self.project_mm = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """Fuse pixels with words.

        Args:
            x: pixel features ``[B, N, C]`` (N = H*W of the stage).
            words: word features ``[B, L, D]``.
            word_mask: ``[B, L]``, 1 for real tokens and 0 for padding.

        Returns:
            The multimodal features ``[B, N, C]``.
        """
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        m = word_mask.to(x.dtype)[:, :, None]  # [B, L, 1]
        q = _instance_norm_tokens(self.query(x))
        k = self.key(words) * m  # padded words carry no key and no value
        v = self.value(words) * m
        q = q.view(b, n, h, d).transpose(1, 2)  # [B, h, N, d]
        k = k.view(b, -1, h, d).transpose(1, 2)  # [B, h, L, d]
        v = v.view(b, -1, h, d).transpose(1, 2)
        # LAVT scales by the full key width (not per head) and masks with -1e4 before the softmax.
        sim = torch.matmul(q, k.transpose(-1, -2)) * c**-0.5  # [B, h, N, L]
        sim = sim + (1e4 * m.view(b, 1, 1, -1) - 1e4)
        lang = torch.matmul(sim.softmax(dim=-1), v)  # [B, h, N, d]
        lang = _instance_norm_tokens(self.out(lang.transpose(1, 2).reshape(b, n, c)))
        return self.project_mm(self.vis_project(x) * lang)


class LanguageGate(nn.Module):
    """LAVT's language gate: a per-element weight in (-1, 1) for the PWAM output.

    ``gate(m) = tanh(W2 relu(W1 m))``, and the stage continues with ``x + gate(m) * m``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh()
        )
        # LAVT zero-initialises these in the constructor, but its backbone's init_weights() then
        # re-initialises every Linear with trunc_normal(std=0.02); that is what trains (two zero
        # matrices would get zero gradients forever), so we start there.
        for lin in (self.net[0], self.net[2]):
            nn.init.trunc_normal_(lin.weight, std=0.02)

    def forward(self, m: Tensor) -> Tensor:
        """``m`` ``[B, N, C]`` -> the gate ``[B, N, C]``."""
        return self.net(m)


class LAVTDecoder(nn.Module):
    """LAVT's light decoder ("SimpleDecoding"): top-down fusion, 2-class logits at 1/4 resolution.

    Stage 4 and 3 are concatenated (4 upsampled if smaller), then two 3x3 conv-BN-ReLU; the
    result is fused the same way with stage 2, then with stage 1; a 1x1 conv gives the 2 classes.
    The hidden width is LAVT's, half of stage 4's (512 for Swin-B), unless ``hidden`` is given.

    Args:
        dims: the four stages' widths ``[C1, C2, C3, C4]``.
        hidden: the hidden width; 0 or None: ``C4 // 2``.
    """

    def __init__(self, dims: list[int], hidden: int | None = None):
        super().__init__()
        hidden = hidden or dims[3] // 2
        self.fuse = nn.ModuleList(
            [
                self._block(dims[3] + dims[2], hidden),
                self._block(hidden + dims[1], hidden),
                self._block(hidden + dims[0], hidden),
            ]
        )
        self.classifier = nn.Conv2d(hidden, 2, kernel_size=1)

    @staticmethod
    def _block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, feats: list[Tensor]) -> Tensor:
        """``feats``: the stages' ``[B, Ci, Hi, Wi]``, finest first -> logits ``[B, 2, H1, W1]``."""
        x = feats[3]
        for block, skip in zip(self.fuse, (feats[2], feats[1], feats[0]), strict=True):
            if x.shape[-2] < skip.shape[-2] or x.shape[-1] < skip.shape[-1]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = block(torch.cat([x, skip], dim=1))
        return self.classifier(x)


class RefineHead(nn.Module):
    """sssc: refine the upsampled logits at the input resolution with the image (LAVT has none).

    LAVT predicts at 1/4 of the input and upsamples bilinearly: at 480x480 on COCO that grid is
    fine against the objects, but lavt-tiny's 16x16 grid of a 64x64 input puts a synthetic object
    on about 3.5 cells, and even perfect logits reach only 76.5 mIoU there (README). Three 3x3
    convolutions over ``[logits, image]`` at the input resolution add a residual to the logits;
    the last one starts at zero, so a new head leaves the model's output as LAVT's.

    Args:
        hidden: the convolutions' width.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 + 3, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, logits: Tensor, images: Tensor) -> Tensor:
        """``logits`` ``[B, 2, H, W]`` and ``images`` ``[B, 3, H, W]`` -> refined logits."""
        x = torch.cat([logits, images.to(logits.dtype)], dim=1)
        # Channels-last: 2.1x as fast for these narrow convolutions on CPU (oneDNN;
        # bench/bench_train_step.py -k refine_head_layout).
        x = x.contiguous(memory_format=torch.channels_last)
        return logits + self.net(x).contiguous()


class LAVT(nn.Module):
    """LAVT: Swin with language fusion after every stage, BERT, and the light decoder.

    Attributes:
        config: the :class:`LAVTConfig` it was built from.
        image_size: the training/evaluation resolution of the config (any size is accepted).
    """

    def __init__(self, config: LAVTConfig):
        super().__init__()
        from transformers import BertModel, SwinModel

        self.config = config
        self.image_size = config.image_size
        swin = SwinModel(_swin_hf_config(config), add_pooling_layer=False)
        # Only the embeddings and the stages are used: LAVT normalises each stage's output with
        # its own LayerNorm instead of Swin's final norm. The names stay HF's (swin.embeddings.*,
        # swin.encoder.layers.*) so that HF Swin state dicts load as they are.
        self.swin = nn.Module()
        self.swin.embeddings = swin.embeddings
        self.swin.encoder = swin.encoder
        self.bert = BertModel(_bert_hf_config(config), add_pooling_layer=False)
        dims = config.stage_dims
        lang = config.bert.hidden_size
        self.pwams = nn.ModuleList(
            PWAM(d, lang, config.pwam.num_heads, config.pwam.dropout) for d in dims
        )
        # Stage 4's fused output feeds nothing (no downsample, and the decoder reads the PWAM
        # features), so LAVT's fourth gate never gets a gradient; it is dropped like the pooler.
        self.gates = nn.ModuleList(LanguageGate(d) for d in dims[:-1])
        self.stage_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.decoder = LAVTDecoder(dims, config.decoder_hidden)
        if config.refine_hidden:
            self.refine = RefineHead(config.refine_hidden)
        if config.position == "coords":
            self.coords = nn.ModuleList(nn.Linear(_COORD_FEATURES, d) for d in dims)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Segment the referred object of every (image, expression) pair.

        Args:
            images: ``[B, 3, H, W]`` float, normalised with ImageNet mean/std; any H, W.
            input_ids: ``[B, L]`` int64 token ids (L <= max position embeddings).
            attention_mask: ``[B, L]``, 1 for tokens and 0 for padding.

        Returns:
            Logits ``[B, 2, H, W]`` (background, foreground) at the input size.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if input_ids.shape != attention_mask.shape or input_ids.shape[0] != images.shape[0]:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be [B, L] with B = {images.shape[0]}"
            )
        words = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        x, (h, w) = self.swin.embeddings(images)  # [B, h*w, C], padded to a patch multiple
        feats = []
        for i, stage in enumerate(self.swin.encoder.layers):
            if self.config.position == "coords":
                x = x + self.coords[i](coord_features(h, w, x.device, x.dtype))
            for block in stage.blocks:
                # always_partition: pad to the window instead of shrinking it on small maps (Swin
                # for segmentation, as LAVT); it also keeps HF from mutating the block's window.
                x = block(x, (h, w), None, False, True)[0]
            m = self.pwams[i](x, words, attention_mask)
            # The decoder reads the multimodal features (LAVT's x_residual), normalised per stage.
            out = self.stage_norms[i](m)
            feats.append(out.transpose(1, 2).reshape(out.shape[0], -1, h, w))
            if stage.downsample is not None:
                x = x + self.gates[i](m) * m
                x = stage.downsample(x, (h, w))
                h, w = (h + 1) // 2, (w + 1) // 2
        logits = self.decoder(feats)  # on the patch grid of the padded image
        height, width = images.shape[-2:]
        patch = self.config.swin.patch_size
        padded = (logits.shape[-2] * patch, logits.shape[-1] * patch)
        # Upsample to the padded size, then crop the padding, so that every logit stays over the
        # pixels it saw (the same as LAVT's plain upsampling when H, W are patch multiples).
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=True)
        logits = logits[:, :, :height, :width]
        if self.config.refine_hidden:
            logits = self.refine(logits, images)
        return logits


def set_drop_path(model: LAVT, branches: str = "both") -> LAVT:
    """Which residual branches of each Swin block stochastic depth drops.

    The official Swin (and LAVT's copy of it) applies ``DropPath`` to both the attention and the
    MLP branch of every block; transformers' ``SwinLayer`` applies it to the attention branch
    only. ``"both"`` adds the MLP branch's (a ``DropPath`` after ``output.dropout``, which feeds
    the residual sum directly; no parameters, so state dicts are unchanged); ``"attention"``
    keeps transformers' behaviour. Idempotent.

    Args:
        model: the model (changed in place).
        branches: ``"both"`` | ``"attention"`` (``train.drop_path``).

    Returns:
        The model.
    """
    if branches not in ("both", "attention"):
        raise ValueError(f"drop_path branches must be 'both' or 'attention', got {branches!r}")
    for stage in model.swin.encoder.layers:
        for block in stage.blocks:
            out = block.output
            base = out.dropout[0] if isinstance(out.dropout, nn.Sequential) else out.dropout
            if branches == "both" and not isinstance(block.drop_path, nn.Identity):
                out.dropout = nn.Sequential(base, type(block.drop_path)(block.drop_path.drop_prob))
            else:
                out.dropout = base
    return model


def param_groups(
    model: LAVT, weight_decay: float = 1e-2, bert_layers: int | None = 10
) -> list[dict[str, Any]]:
    """LAVT's optimizer parameter groups (its train.py), for ``torch.optim.AdamW(groups, lr=...)``.

    - the visual side (Swin, PWAMs, gates, stage norms): weight decay, except the norms and the
      relative position bias tables (no decay);
    - the decoder (and sssc's refine head, when the config has one): weight decay;
    - BERT: the first ``bert_layers`` encoder layers only. LAVT lists ``encoder.layer[0:10]`` of
      BERT-base, so its word embeddings and last two layers are never updated (they still receive
      gradients). ``bert_layers=None`` trains all of BERT, embeddings included (for randomly
      initialised text encoders such as lavt-tiny's).

    Args:
        model: the model.
        weight_decay: the decayed groups' weight decay (LAVT: 1e-2).
        bert_layers: how many of BERT's first encoder layers to train, or None for all of BERT.

    Returns:
        A list of ``{"params": [...], "weight_decay": float}`` dicts; no parameter appears twice.
    """
    no_decay, decay = [], []
    visual = [model.swin, model.pwams, model.gates, model.stage_norms]
    if hasattr(model, "coords"):
        visual.append(model.coords)
    for part in visual:
        for name, p in part.named_parameters():
            # "norm": LayerNorms (layernorm_before/after, embeddings.norm, downsample.norm and the
            # stage norms live in a ModuleList, whose names are plain indices).
            is_norm = "norm" in name or part is model.stage_norms
            skip = is_norm or "relative_position_bias_table" in name
            (no_decay if skip else decay).append(p)
    head = list(model.decoder.parameters())
    if hasattr(model, "refine"):
        head += list(model.refine.parameters())
    if bert_layers is None:
        bert = list(model.bert.parameters())
    else:
        bert = [p for layer in model.bert.encoder.layer[:bert_layers] for p in layer.parameters()]
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
        {"params": head, "weight_decay": weight_decay},
        {"params": bert, "weight_decay": weight_decay},
    ]


# --------------------------------------------------------------------------------------------
# Official Swin checkpoint -> transformers' SwinModel layout
# --------------------------------------------------------------------------------------------

# (official regex, HF template). qkv is split separately; attn_mask and head.* are dropped.
_SWIN_RULES: list[tuple[str, str]] = [
    (r"patch_embed\.proj\.(weight|bias)", "embeddings.patch_embeddings.projection.{0}"),
    (r"patch_embed\.norm\.(weight|bias)", "embeddings.norm.{0}"),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.norm1\.(weight|bias)",
        "encoder.layers.{0}.blocks.{1}.layernorm_before.{2}",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.norm2\.(weight|bias)",
        "encoder.layers.{0}.blocks.{1}.layernorm_after.{2}",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
        "encoder.layers.{0}.blocks.{1}.attention.self.relative_position_bias_table",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_index",
        "encoder.layers.{0}.blocks.{1}.attention.self.relative_position_index",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
        "encoder.layers.{0}.blocks.{1}.attention.output.dense.{2}",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)",
        "encoder.layers.{0}.blocks.{1}.intermediate.dense.{2}",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)",
        "encoder.layers.{0}.blocks.{1}.output.dense.{2}",
    ),
    (
        r"layers\.(\d+)\.downsample\.reduction\.weight",
        "encoder.layers.{0}.downsample.reduction.weight",
    ),
    (r"layers\.(\d+)\.downsample\.norm\.(weight|bias)", "encoder.layers.{0}.downsample.norm.{1}"),
    (r"norm\.(weight|bias)", "layernorm.{0}"),
]
_SWIN_QKV = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")
# Not parameters of the model: the classifier, and the shifted-window masks that HF recomputes.
_SWIN_DROP = re.compile(r"head\..*|layers\.\d+\.blocks\.\d+\.attn_mask")


def swin_official_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official Swin state dict (microsoft/Swin-Transformer) to ``SwinModel``'s names.

    The fused ``attn.qkv`` (rows: query, key, value) is split into ``query``/``key``/``value``;
    ``head.*`` and the ``attn_mask`` buffers are dropped; every other key must be known.

    Args:
        state_dict: the checkpoint's ``"model"`` entry (a ``{"model": ...}`` dict is unwrapped).

    Returns:
        A state dict for ``SwinModel(config, add_pooling_layer=False)``.

    Raises:
        ValueError: a key that this mapping does not know (the message lists them).
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    rules = [(re.compile(pat), tmpl) for pat, tmpl in _SWIN_RULES]
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if _SWIN_DROP.fullmatch(key):
            continue
        qkv = _SWIN_QKV.fullmatch(key)
        if qkv:
            stage, block, kind = qkv.groups()
            prefix = f"encoder.layers.{stage}.blocks.{block}.attention.self"
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}.{name}.{kind}"] = part.clone()
            continue
        for pat, tmpl in rules:
            hit = pat.fullmatch(key)
            if hit:
                out[tmpl.format(*hit.groups())] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"swin_official_to_hf: {len(unknown)} keys are not part of an official Swin "
            f"checkpoint: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    return out


# --------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------


def create_model(
    name_or_path: str | Path | LAVTConfig = "lavt-tiny",
    *,
    swin_weights: str | Path | None = None,
    bert_weights: str | Path | None = None,
    weights: str | Path | None = None,
) -> LAVT:
    """Build LAVT from a config and load local weights.

    Args:
        name_or_path: an embedded model config (``"lavt-tiny"``, ``"lavt-base"``), a YAML path or
            a :class:`LAVTConfig`.
        swin_weights: the official ``swin_base_patch4_window12_384_22k.pth`` (any official Swin
            ``.pth`` matching the config) or an HF-format Swin folder (``config.json`` + weights).
        bert_weights: an HF BERT folder (``bert-base-uncased``); the pooler is not loaded.
        weights: a full LAVT checkpoint, loaded last (so it wins over the other two): sssc's
            (a state dict, or ``{"model": state_dict}``), or one published by LAVT or S+S+C as
            it is (``model`` + ``bert_model``, or ``lavt_one`` with BERT inside ``model``); see
            :mod:`sssc.correct.checkpoints`. Nothing but tensors, containers and the published
            files' ``argparse.Namespace`` is unpickled.

    Returns:
        The model, in training mode.

    Raises:
        FileNotFoundError: a weights path does not exist (the message names the setting, the path
            and where the official weights are published).
        ValueError: the weights do not fit the config (the message names the setting).
    """
    cfg = load_model_config(name_or_path)
    model = LAVT(cfg)
    if swin_weights:
        _load_swin(model, existing_path("swin_weights", swin_weights))
    if bert_weights:
        _load_bert(model, existing_path("bert_weights", bert_weights))
    if weights:
        from .checkpoints import read_checkpoint, state_dict_for_sssc

        path = existing_path("weights", weights, source=LAVT_CKPT_HINT)
        _load_into(model, state_dict_for_sssc(read_checkpoint(path), path), "weights", path)
    return model


def check_input_size(size: int, config: LAVTConfig, setting: str) -> None:
    """Refuse a training or evaluation size that is not a multiple of the patch size.

    :class:`LAVT` takes any size, but there it upsamples its logits to the padded size and crops
    the padding, while LAVT upsamples them straight to the input size: the two agree only at
    multiples of the patch size (README, the paragraph under the deviation table). sssc's own
    paths stay there, so that they never differ from LAVT silently.

    Raises:
        ValueError: the message names ``setting``.
    """
    patch = config.swin.patch_size
    if size % patch:
        raise ValueError(
            f"{setting}={size} is not a multiple of {config.name}'s patch size {patch}: LAVT "
            "upsamples its logits from the padded patch grid, which lines up with the pixels "
            f"only at multiples of {patch}; choose one (LAVT's 480, the embedded default's 64)"
        )


def _load_into(module: nn.Module, sd: dict[str, Tensor], setting: str, path: Path) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{setting}: {path} does not fit this model's config (architecture mismatch):\n{e}"
        ) from None


def _load_swin(model: LAVT, path: Path) -> None:
    if path.is_dir():
        from transformers import SwinModel

        hf = SwinModel.from_pretrained(str(path), add_pooling_layer=False)
        c, s = hf.config, model.config.swin
        theirs = (c.embed_dim, list(c.depths), list(c.num_heads), c.window_size, c.patch_size)
        ours = (s.embed_dim, list(s.depths), list(s.num_heads), s.window_size, s.patch_size)
        if theirs != ours:
            raise ValueError(
                f"swin_weights: {path} is a Swin with (embed_dim, depths, num_heads, window_size, "
                f"patch_size) = {theirs}, but the model config has {ours}"
            )
        sd = hf.state_dict()
    else:
        sd = swin_official_to_hf(torch.load(path, map_location="cpu", weights_only=True))
    # LAVT has no use for Swin's final norm (each stage output has its own norm).
    sd = {k: v for k, v in sd.items() if not k.startswith("layernorm.")}
    # Some Swin releases leave out the relative_position_index buffers; they are a function of
    # the window size alone, so the model's own copies are the right values.
    for k, v in model.swin.state_dict().items():
        if k.endswith("relative_position_index"):
            sd.setdefault(k, v)
    _load_into(model.swin, sd, "swin_weights", path)


def _load_bert(model: LAVT, path: Path) -> None:
    if not path.is_dir():
        raise ValueError(
            f"bert_weights: {path} is not a folder; give the HF bert-base-uncased folder "
            f"(config.json and model weights), published at {BERT_URL}"
        )
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(path), add_pooling_layer=False)
    _load_into(model.bert, hf.state_dict(), "bert_weights", path)
