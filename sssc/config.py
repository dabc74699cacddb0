"""Run configuration: YAML files read into typed dataclasses.

A config file gives any subset of the keys below; the rest keep their defaults. An unknown key or a
value of the wrong type is a :class:`ConfigError` that names the dotted key and the file (or the
``--set`` override) it came from. ``load_config(None, [])`` returns the embedded default, the
synthetic dataset on CPU with simulated Stage 1/2 producers (``configs/synthetic.yaml``).

Example::

    cfg = load_config("configs/refcoco.yaml", ["data.batch_expressions=30", "device=cuda"])
    cfg.data.split_by  # "unc"

Relative paths in a config (``data.root``, ``data.image_dir``, weights) are relative to the current
working directory, not to the config file, so that the same file works from a checkout and from an
installed package.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .rundir import TRAIN_PHASES

__all__ = [
    "OFFICIAL_RECIPE",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "RunConfig",
    "SegmentConfig",
    "SegmentModelsConfig",
    "SelectConfig",
    "SelectModelsConfig",
    "SimS1Config",
    "SimS2Config",
    "SynthConfig",
    "TrainConfig",
    "build_section",
    "config_to_dict",
    "embedded_config_path",
    "load_config",
    "resolve_device",
]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the dotted key and its source."""


@dataclass
class SynthConfig:
    """The embedded synthetic dataset, generated under ``data.root`` when missing."""

    num_images: int = 2200
    image_size: int = 96
    seed: int = 0
    val_images: int = 100  # images in the val split (0: a tenth of num_images)
    test_images: int = 100  # images in the test split (0: a tenth of num_images)


@dataclass
class DataConfig:
    """Which REFER-format dataset to read and how to batch it."""

    dataset: str = "synthetic"  # folder under root: refcoco | refcoco+ | refcocog | synthetic
    root: str = "data"  # <root>/<dataset>/instances.json and refs(<split_by>).p
    split_by: str = "synthetic"  # unc | umd | google | synthetic: picks refs(<split_by>).p
    image_dir: str = ""  # "" = <root>/<dataset>/images (the synthetic dataset's layout)
    class_names: list[str] = field(default_factory=list)  # class-projection targets
    train_split: str = "train"
    eval_split: str = "val"
    batch_expressions: int = 60  # expressions per step (paper: 60)
    batching: str = "images"  # images (whole images up to the budget) | samples (official:
    # shuffled images unfolded into expressions, cut into exactly the budget; an image is split
    # where a cut falls inside it)
    samples_gpus: int = 4  # samples: the official run's GPUs, each cutting its own images'
    # expressions into batch_expressions / samples_gpus (4 x 15 = 60)
    samples_images_per_load: int = 7  # samples: a GPU loads its images this many at a time
    # (official --batch-size 7) and drops the last, smaller load of an epoch
    samples_order: str = "sssc"  # samples: the images' order: sssc (ascending ids, permuted by
    # a draw from seed and epoch) | official (REFER's list(set(...)) of image ids, permuted as
    # torch's DistributedSampler does with its seed 0 and set_epoch; refs in file order)
    samples_skip_first: bool = True  # samples: skip every GPU's first load of an epoch
    # (official: its loop iterates log_every(data_loader, ..., skip_first=True))
    samples_draw: str = "sssc"  # samples, one expression per object: which one: sssc (drawn
    # from seed, epoch and object) | official (np.random.choice in the official loader's
    # workers, seeded by torch from torch.manual_seed(100); torch >= 1.9)
    samples_workers: int = 8  # samples_draw=official: the official loader's workers (--workers)
    samples_target_check: str = "resized"  # samples: an object whose target is all one value is
    # skipped, judged after the nearest resize to train.image_size (resized, official) | at the
    # stored resolution (stored)
    text_field: str = "sent"  # which REFER text LAVT reads: sent (the cleaned text; S+S+C's
    # datasets, training and evaluation) | raw (as typed; LAVT-RIS's own datasets)
    polygon_overlap: str = "refer"  # GT of several polygons: refer (LAVT: overlaps are
    # background) | union
    empty_gt: str = "keep"  # a ref whose GT mask is empty: keep (official: queried, trained on,
    # scored with IoU 0 in evaluation) | skip (left out everywhere)
    empty_sentences: str = "skip"  # an expression whose sent is empty or blank: skip (sssc) | keep
    # (official: queried, scored by CLIP, trained on and evaluated as it is, [CLS] [SEP] for LAVT)
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class SimS1Config:
    """Simulated Stage 1: the referred class's instances, with these documented error rates."""

    p_drop: float = 0.1
    jitter_px: float = 1.0
    p_false_positive: float = 0.1
    seed: int = 0
    allow_real_data: bool = False  # labels derived from the GT: refused on a real dataset unless
    # set, and then every table calls them "oracle-derived"


@dataclass
class SegmentModelsConfig:
    """Stage 1 with the paper's models (local weight paths)."""

    spacy_model: str = "en_core_web_md"
    clip_model: str = "ViT-B-32"  # class projection only (official: OpenAI CLIP ViT-B/32)
    clip_weights: str = ""
    projection_prompt: str = "a photo of a {}"  # official; the paper's text: "a picture of {}"
    query: str = "most_likely"  # most_likely (official: one class per object) | union
    class_order: str = "sorted"  # sorted | set (official: Python set order, hash-dependent)
    gdino_config: str = ""
    gdino_weights: str = ""
    sam_type: str = "vit_h"
    sam_weights: str = ""
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    gdino_caption: str = "comma"  # comma (official ", ".join) | period ("a. b.")
    gdino_labels: str = "exact"  # exact (official: the phrase must name a class) | best_phrase
    gdino_retry: str = "official"  # official (re-ask all as "all Xs", replace) | sssc
    # counted (official: GroundingDINO at the commit S+S+C pins decodes [CLS] into a box's phrase
    # when it is above the text threshold, so the box names no class) | ignored (later versions)
    gdino_cls_token: str = "counted"
    # detector (official: SAM gets the detector's box as is, past the border too) | clamped
    sam_box: str = "detector"
    sam_calls: str = "per_image"  # per_image (all boxes at once) | per_box (official, slower)
    # image (all of an image's refs in one query) | file_runs (official: each run of refs
    # consecutive in the refs file, one split at a time, is one image)
    image_grouping: str = "image"
    # stored (the pixels as stored, on which COCO's annotations are drawn; Stages 2-3 read them
    # so) | exif (official: Stage 1 alone reads each image turned by its EXIF orientation tag, as
    # cv2.imread does)
    image_orientation: str = "stored"
    nouns: str = "spacy"  # spacy (the paper) | rules (model-free, for the synthetic dataset)
    noun_rule: str = "official"  # official (the published code's spaCy rule) | sssc
    # nltk (official: where the rule finds no noun, NLTK's noun-phrase chunker) | none
    noun_fallback: str = "nltk"
    nltk_data: str = ""  # NLTK data folder (punkt_tab, averaged_perceptron_tagger_eng); "" = NLTK's
    gdino_text_encoder: str = ""  # local bert-base-uncased folder; "" = the Hugging Face cache
    gdino_size: int = 800  # detector input: short side (GroundingDINO's 800), long side capped
    gdino_max_size: int = 1333
    amp: str = "bf16"  # autocast on CUDA only: bf16 | fp16 | none


@dataclass
class SegmentConfig:
    backend: str = "simulated"  # simulated | models
    simulate: SimS1Config = field(default_factory=SimS1Config)
    models: SegmentModelsConfig = field(default_factory=SegmentModelsConfig)


@dataclass
class SimS2Config:
    """Simulated Stage 2: right with ``p_correct``; when wrong, systematically so."""

    p_correct: float = 0.6
    wrong_choice: str = "largest"  # largest | central | mixed
    seed: int = 0
    allow_real_data: bool = False  # as segment.simulate.allow_real_data


@dataclass
class SelectModelsConfig:
    """Stage 2 with CLIP: reverse blur, then score every candidate against the expression."""

    clip_model: str = "ViT-L-14-336"
    clip_weights: str = ""
    sigma: float = 50.0
    min_area: int = 500
    small_masks: str = "official"  # official (skip < min_area, drop the object if all are) | sssc
    channel_order: str = "rgb"  # rgb (correct) | bgr (the official code fed CLIP BGR images)
    prompt: str = "reverse_blur"  # reverse_blur (the paper) | red_ellipse (its ablation)
    # reverse blur: exact (official: each mask composited at full resolution, then resized) |
    # fast (the image's planes resized once, each mask averaged per output pixel: faster, an
    # approximation at mask edges; README row 35)
    composite: str = "exact"
    score: str = "mean"  # mean | max similarity over the object's expressions
    batch_size: int = 256  # prompts per CLIP forward, packed across images
    num_workers: int = 2  # DataLoader workers decoding images and RLE candidates
    amp: str = "bf16"  # autocast on CUDA only: bf16 | fp16 | none


@dataclass
class SelectConfig:
    backend: str = "simulated"  # simulated | models
    # the S1 candidates as Stages 2-3 see them: whole (Stage 1's masks) | painted (official: each
    # object's candidates drawn into one label map in detection order, later on top, read back
    # by colour; README rows 33-34, sssc.store.pools)
    candidates: str = "whole"
    simulate: SimS2Config = field(default_factory=SimS2Config)
    models: SelectModelsConfig = field(default_factory=SelectModelsConfig)


@dataclass
class EvalConfig:
    resolution: Union[str, int] = 480  # noqa: UP007 - 480 (LAVT) or "original"
    upsample: str = "lavt"  # lavt (logits, align_corners=True, argmax) | sssc (probabilities)
    point_rule: str = "tris"  # PointM/PointIt as TRIS computes them | sssc (pixel centres)


@dataclass
class TrainConfig:
    """Stage 3 (LAVT training). The defaults are the published recipe (LAVT, S+S+C).

    ``bootstrap_epochs`` train on the S2 masks (ZSBootstrap); ``correct_epochs`` then train from
    the bootstrap checkpoint with the matching loss on the S1 pools; with ``plus_epochs`` the
    ``+epochs`` baseline continues bootstrap training for ``correct_epochs`` more (Table 4).
    """

    model: str = "lavt-base"  # lavt-base | lavt-tiny | a model config file
    swin_weights: str = ""  # local path: swin_base_patch4_window12_384_22k.pth or an HF folder
    bert_weights: str = ""  # local path: an HF bert-base-uncased folder
    random_init: bool = False  # allow an empty swin_weights/bert_weights (random weights);
    # otherwise an empty path is an error (the paper starts from ImageNet-22k Swin and BERT)
    image_size: int = 480  # images and targets are resized to image_size x image_size
    bootstrap_epochs: int = 40
    correct_epochs: int = 40
    plus_epochs: bool = False  # also train the +epochs baseline (same compute as correct)
    # train +epochs in a second process beside correct (both start from the bootstrap model and
    # are independent; one process, on CPU only, each on train.threads threads): the same result
    # in less wall time on a CPU with cores to spare
    parallel_phases: bool = False
    lr: float = 5e-5  # AdamW
    # Swin's learning rate as a fraction of lr (LAVT: 1, one lr for the whole model); 0.1 keeps
    # a pretrained tiny Swin's features while the rest learns (README, deviation row 28)
    backbone_lr_scale: float = 1.0
    weight_decay: float = 1e-2
    poly_power: float = 0.9  # lr * (1 - step / total) ** poly_power, per phase
    # with select.candidates=painted, the region of a label map Stage 3 reads as background:
    # minimum (what the maps mean) | largest (official: Pillow numbers a PNG's colours by
    # frequency, so an S2 mask over half the image trains inverted; README row 34)
    label_background: str = "minimum"
    # total: steps (the phase's steps) | loads (official: epochs x a GPU's loads of
    # data.samples_images_per_load images, fewer than its steps on RefCOCO; README row 32)
    lr_horizon: str = "steps"
    class_weights: list[float] = field(default_factory=lambda: [0.9, 1.1])  # background, object
    # weight of a soft IoU loss added to the cross-entropy in iou_loss_phases (0: LAVT's and
    # S+S+C's loss, the cross-entropy alone; README, deviation row 30)
    iou_loss_weight: float = 0.0
    # the phases that add it: those trained on fixed S2 labels; in correct, whose target is the
    # candidate of highest soft IoU with the prediction, it reinforces the matching's own choice
    iou_loss_phases: list[str] = field(default_factory=lambda: ["bootstrap", "plus_epochs"])
    grad_clip: float = 0.0  # max global grad norm; 0 = off (LAVT does not clip)
    unmatched: str = "ignore"  # object left without a candidate: ignore (in effect the official
    # code's: it draws a random candidate but adds no loss) | random (sssc: CE on a random one)
    single_candidate: str = "compete"  # compete (sssc) | always (official: kept, CE counted twice)
    match_ties: str = "sssc"  # sssc (object id, candidate index) | official (batch scan order)
    # where the correct phase tells S1 candidates apart: image_size (official: as the resized label
    # image gives them; one the resize loses is none, ones equal after it are one) | stored
    candidates_at: str = "image_size"
    bert_train_layers: int = 10  # LAVT trains BERT's first 10 layers only; -1: all of BERT
    bert_dropout: bool = False  # LAVT keeps BERT in eval mode while training (dropout off)
    drop_path: str = "both"  # both (official Swin: attention and MLP) | attention (HF Swin)
    # -1: torch's RNG seeded once per phase (seed), so dropout and drop path draw anew every epoch
    # | N: torch.manual_seed(N) at every epoch's start (official: 100, so every epoch draws the
    # same masks step for step)
    epoch_seed: int = -1
    selection: str = "last"  # last epoch (no GT) | best_gt (official: best val oIoU against GT)
    # best_gt: on which val expressions: all | official_draw (the one per ref the official
    # loop's validation loader draws; data.samples_workers workers)
    selection_val: str = "all"
    loss_norm: str = "samples"  # samples (official: mean of per-expression CE) | pixels
    match_size: int = 0  # soft IoU at this resolution (0: image_size); only picks the match
    amp: bool = False  # bf16 autocast on CUDA (ignored on CPU); the official code trains in fp32
    compile: bool = False  # torch.compile the model
    num_workers: int = 0  # DataLoader workers
    threads: int = 0  # torch CPU threads (0: torch's default; 1 is faster on a busy machine)
    # threads of the bootstrap phase, which always runs alone (0: train.threads); with
    # parallel_phases, the cores that correct and +epochs share later
    bootstrap_threads: int = 0
    cache_data: bool = False  # keep decoded images and masks in memory (small datasets)
    # expressions of an object per epoch, drawn anew each epoch: 1 (official: S+S+C trains with
    # --one-sentence-per-item, one random expression per object and image); 0 = all of them
    sentences_per_object: int = 1
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: per epoch)
    eval_every: int = 1  # evaluate on data.eval_split every N epochs (and always at the end)
    log_every: int = 10  # steps between log lines
    resume: bool = True  # continue from <run>/<stage>/checkpoint.pt when present


@dataclass
class RunConfig:
    recipe: str = "sssc"  # sssc | official: every setting of OFFICIAL_RECIPE at once
    seed: int = 0
    device: str = "auto"  # auto (CUDA when there is one, else the CPU) | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# The official S+S+C / LAVT behaviours where sssc's default differs (the README's deviation table
# lists every one with its reason). ``recipe: official`` applies them all over the config file's
# values; a --set override still wins.
OFFICIAL_RECIPE: dict[str, Any] = {
    "data.batching": "samples",
    "data.samples_order": "official",
    "data.samples_draw": "official",
    "segment.models.class_order": "set",
    "segment.models.sam_calls": "per_box",
    "segment.models.image_grouping": "file_runs",
    "segment.models.image_orientation": "exif",
    "select.models.channel_order": "bgr",
    "train.single_candidate": "always",
    "train.match_ties": "official",
    "train.lr_horizon": "loads",
    "select.candidates": "painted",
    "train.label_background": "largest",
    "train.epoch_seed": 100,
    "data.empty_sentences": "keep",
    # Not train.selection=best_gt: model selection on GT masks is only ever set by name.
}

# Values with a closed set of choices; checked after the types, with the same kind of message.
_CHOICES: dict[str, tuple[str, ...]] = {
    "recipe": ("sssc", "official"),
    "data.text_field": ("raw", "sent"),
    "data.batching": ("images", "samples"),
    "data.samples_order": ("sssc", "official"),
    "data.samples_draw": ("sssc", "official"),
    "data.samples_target_check": ("resized", "stored"),
    "data.polygon_overlap": ("refer", "union"),
    "data.empty_gt": ("keep", "skip"),
    "data.empty_sentences": ("skip", "keep"),
    "eval.upsample": ("lavt", "sssc"),
    "eval.point_rule": ("tris", "sssc"),
    "segment.models.noun_rule": ("official", "sssc"),
    "segment.models.noun_fallback": ("nltk", "none"),
    "train.candidates_at": ("image_size", "stored"),
    "segment.models.query": ("most_likely", "union"),
    "segment.models.class_order": ("sorted", "set"),
    "segment.models.gdino_caption": ("comma", "period"),
    "segment.models.gdino_labels": ("exact", "best_phrase"),
    "segment.models.gdino_retry": ("official", "sssc"),
    "segment.models.gdino_cls_token": ("counted", "ignored"),
    "segment.models.sam_box": ("detector", "clamped"),
    "segment.models.sam_calls": ("per_image", "per_box"),
    "segment.models.image_grouping": ("image", "file_runs"),
    "segment.models.image_orientation": ("stored", "exif"),
    "select.models.small_masks": ("official", "sssc"),
    "select.models.channel_order": ("rgb", "bgr"),
    "select.models.composite": ("exact", "fast"),
    "train.single_candidate": ("compete", "always"),
    "train.match_ties": ("sssc", "official"),
    "train.lr_horizon": ("steps", "loads"),
    "select.candidates": ("whole", "painted"),
    "train.label_background": ("minimum", "largest"),
    "train.drop_path": ("both", "attention"),
    "train.selection": ("last", "best_gt"),
    "train.selection_val": ("all", "official_draw"),
    "train.loss_norm": ("samples", "pixels"),
    "segment.backend": ("simulated", "models"),
    "select.backend": ("simulated", "models"),
    "select.simulate.wrong_choice": ("largest", "central", "mixed"),
    "segment.models.nouns": ("spacy", "rules"),
    "segment.models.amp": ("bf16", "fp16", "none"),
    "select.models.prompt": ("reverse_blur", "red_ellipse"),
    "select.models.score": ("mean", "max"),
    "select.models.amp": ("bf16", "fp16", "none"),
    "train.unmatched": ("ignore", "random"),
}
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_PROBABILITIES = (
    "segment.simulate.p_drop",
    "segment.simulate.p_false_positive",
    "select.simulate.p_correct",
    "segment.models.box_threshold",
    "segment.models.text_threshold",
)
_NON_NEGATIVE = (
    "segment.simulate.jitter_px",
    "select.models.min_area",
    "data.synth.val_images",
    "data.synth.test_images",
)
_POSITIVE_INTS = (
    "data.batch_expressions",
    "data.samples_gpus",
    "data.samples_images_per_load",
    "data.samples_workers",
    "data.synth.num_images",
    "data.synth.image_size",
    "segment.models.gdino_size",
    "segment.models.gdino_max_size",
    "select.models.batch_size",
    "train.image_size",
    "train.eval_every",
    "train.log_every",
)


def resolve_device(device: str) -> str:
    """The torch device of a ``device`` setting: ``auto`` is ``cuda`` when CUDA is available.

    Raises:
        ConfigError: not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; or ``cuda`` (or ``cuda:N``)
            was asked for and this torch sees no such GPU.
    """
    import torch

    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"device={device!r}: give auto, cpu, cuda or cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r}, but torch sees {torch.cuda.device_count()} CUDA device(s); "
                "use device=auto or device=cpu"
            )
    return device


def embedded_config_path(name: str = "synthetic") -> Path:
    """Path of a config shipped in the package (``sssc.configs``), e.g. ``"refcoco+"``."""
    return Path(str(importlib.resources.files("sssc.configs") / f"{name}.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config into a :class:`RunConfig` and apply ``--set`` overrides.

    Args:
        path: a YAML file; ``None`` means the embedded default (``configs/synthetic.yaml``). A bare
            name such as ``"refcoco"`` that is not an existing file picks the embedded config of
            that name.
        overrides: ``"a.b=value"`` strings, applied in order; the value is parsed with
            ``yaml.safe_load`` (so ``10`` is an int, ``[a, b]`` a list, ``null`` None).

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, a value has the wrong
            type or is out of range. The message names the dotted key and the source.
    """
    file = _resolve_path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{file}: cannot read config file: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    source = str(file)
    cfg = _build_run(raw, [], source)
    applied: list[tuple[str, Any, str]] = []
    for ov in overrides or []:
        key, value = _parse_override(ov)
        source = f"override --set {ov!r} (on top of {file})"
        applied.append((key, value, source))
        cfg = _build_run(raw, applied, source)
    _check_whole(cfg, str(file) + (" with the --set overrides" if overrides else ""))
    return cfg


def _check_whole(cfg: RunConfig, source: str) -> None:
    """Rules across keys, checked once every override is in (so that ``--set num_images=12
    --set val_images=0`` works in that order too)."""
    from .data.synthetic import split_sizes

    sy = cfg.data.synth
    try:
        split_sizes(sy.num_images, sy.val_images, sy.test_images)
    except ValueError as e:
        raise ConfigError(f"{source}: 'data.synth': {e}") from None
    d = cfg.data
    if d.batching == "samples" and d.batch_expressions % d.samples_gpus:
        raise ConfigError(
            f"{source}: 'data.batch_expressions' ({d.batch_expressions}) must be a multiple of "
            f"'data.samples_gpus' ({d.samples_gpus}) with data.batching=samples: each GPU's cut "
            "is an equal share"
        )
    per = cfg.train.sentences_per_object
    if d.batching == "samples" and d.samples_draw == "official" and per not in (0, 1):
        raise ConfigError(
            f"{source}: 'data.samples_draw: official' draws one expression per object (the "
            "official --one-sentence) or takes all: it needs 'train.sentences_per_object' 1 or "
            f"0, not {per}"
        )
    if cfg.train.label_background != "minimum" and cfg.select.candidates != "painted":
        raise ConfigError(
            f"{source}: 'train.label_background' ({cfg.train.label_background}) reads the "
            "official label maps: it needs 'select.candidates: painted' (it is "
            f"{cfg.select.candidates})"
        )
    for stage in ("segment", "select"):
        sec = getattr(cfg, stage)
        if (
            cfg.data.dataset != "synthetic"
            and sec.backend == "simulated"
            and not sec.simulate.allow_real_data
        ):
            raise ConfigError(
                f"{source}: '{stage}.backend' is simulated on dataset {cfg.data.dataset!r}: its "
                "labels would be derived from the GT masks. Use backend: models, or set "
                f"{stage}.simulate.allow_real_data: true for an oracle-derived run"
            )


def _build_run(raw: Any, applied: list[tuple[str, Any, str]], source: str) -> RunConfig:
    """The :class:`RunConfig` of a file's raw dict and the ``--set`` overrides so far.

    Precedence: the schema's defaults < the file < ``recipe: official``'s preset (when the file
    or an override selects it) < the overrides, in order.
    """
    recipe = raw.get("recipe") if isinstance(raw, dict) else None
    for key, value, _ in applied:
        if key == "recipe":
            recipe = value
    if recipe == "official":
        for key, value in OFFICIAL_RECIPE.items():
            raw = _set_dotted(raw, key, value, "recipe: official")
    for key, value, src in applied:
        raw = _set_dotted(raw, key, value, src)
    cfg = build_section(RunConfig, raw, "", source)
    _check_values(cfg, source)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """A plain, JSON-serialisable dict of a config (for reports and ``metrics.json``)."""
    return dataclasses.asdict(cfg)


def _resolve_path(path: str | Path | None) -> Path:
    if path is None:
        return embedded_config_path("synthetic")
    p = Path(path)
    if p.is_file():
        return p
    if p.suffix == "" and p.parent == Path("."):
        embedded = embedded_config_path(str(p))
        if embedded.is_file():
            return embedded
    raise ConfigError(
        f"{p}: config file not found (give a YAML path, or one of the embedded names: "
        f"{', '.join(_embedded_names())})"
    )


def _embedded_names() -> list[str]:
    root = importlib.resources.files("sssc.configs")
    return sorted(f.name[: -len(".yaml")] for f in root.iterdir() if f.name.endswith(".yaml"))


def _parse_override(ov: str) -> tuple[str, Any]:
    key, sep, text = ov.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {ov!r}: expected KEY=VALUE, e.g. data.synth.num_images=10")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {ov!r}: the value is not valid YAML: {e}") from None
    return key, value


def _set_dotted(raw: Any, key: str, value: Any, source: str) -> dict:
    """Return a copy of ``raw`` with ``key`` (dotted) set; unknown keys fail against the schema."""
    if not isinstance(raw, dict):
        raw = {}
    out = dict(raw)
    parts = key.split(".")
    node_type: Any = RunConfig
    node = out
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        if node_type is not None:  # inside a typed section: the key must exist
            hints = _hints(node_type)
            if part not in hints:
                raise ConfigError(_unknown_key_message(dotted, node_type, source))
            tp = hints[part]
            if i < len(parts) - 1 and not (dataclasses.is_dataclass(tp) or tp is dict):
                raise ConfigError(
                    f"{source}: unknown key {key!r}: {dotted!r} is a {_type_name(tp)}, "
                    "not a section"
                )
            node_type = tp if dataclasses.is_dataclass(tp) else None  # dict: free-form below
        if i == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
    return out


@typing.no_type_check
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key_message(dotted: str, cls: type, source: str) -> str:
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    section = dotted.rpartition(".")[0] or "the top level"
    return f"{source}: unknown key {dotted!r}; the keys of {section} are: {known}"


def build_section(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """Turn a dict into the dataclass ``cls``, checking every key and type on the way.

    Other config schemas (the LAVT model configs) are read with it, so every config file gets the
    same messages: the dotted key, the expected type, the ``source`` it came from.
    """
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: {where} must be a mapping of keys to values, got "
            f"{type(raw).__name__} {raw!r}"
        )
    hints = _hints(cls)
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in hints:
            raise ConfigError(_unknown_key_message(str(dotted), cls, source))
        kwargs[key] = _convert(hints[key], value, dotted, source)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, dotted: str, source: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value if value is not None else {}, dotted + ".", source)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _convert(arg, value, dotted, source)
            except ConfigError:
                continue
        return _wrong_type(tp, value, dotted, source)
    if origin is list:
        if not isinstance(value, list):
            return _wrong_type(tp, value, dotted, source)
        return [_convert(args[0], v, f"{dotted}[{i}]", source) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            return _wrong_type(tp, value, dotted, source)
        return dict(value)
    # bool is an int in Python; a config "true" for a count is a mistake, not a 1.
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return _wrong_type(tp, value, dotted, source)
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _wrong_type(tp, value, dotted, source)
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {dotted!r} must be a finite number, got {value!r}")
        return float(value)
    if tp is bool:
        if not isinstance(value, bool):
            return _wrong_type(tp, value, dotted, source)
        return value
    if tp is str:
        if not isinstance(value, str):
            return _wrong_type(tp, value, dotted, source)
        return value
    raise TypeError(f"config schema: unsupported type {tp!r} for {dotted}")  # a bug in this file


def _wrong_type(tp: Any, value: Any, dotted: str, source: str) -> Any:
    raise ConfigError(
        f"{source}: {dotted!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )


def _get_dotted(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_values(cfg: RunConfig, source: str) -> None:
    for key, choices in _CHOICES.items():
        value = _get_dotted(cfg, key)
        if value not in choices:
            raise ConfigError(f"{source}: {key!r} must be one of {choices}, got {value!r}")
    for key in _PROBABILITIES:
        value = _get_dotted(cfg, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{source}: {key!r} is a probability in [0, 1], got {value!r}")
    for key in _POSITIVE_INTS:
        value = _get_dotted(cfg, key)
        if value < 1:
            raise ConfigError(f"{source}: {key!r} must be a positive int, got {value!r}")
    for key in _NON_NEGATIVE:
        value = _get_dotted(cfg, key)
        if value < 0:
            raise ConfigError(f"{source}: {key!r} must be >= 0, got {value!r}")
    if not _DEVICE.fullmatch(cfg.device):
        raise ConfigError(
            f"{source}: 'device' must be auto, cpu, cuda or cuda:N, got {cfg.device!r}"
        )
    if cfg.data.synth.image_size < 32:
        raise ConfigError(
            f"{source}: 'data.synth.image_size' must be >= 32 (room for the shapes), "
            f"got {cfg.data.synth.image_size!r}"
        )
    if cfg.select.models.sigma <= 0:
        raise ConfigError(
            f"{source}: 'select.models.sigma' must be > 0, got {cfg.select.models.sigma!r}"
        )
    t = cfg.train
    if t.epoch_seed < -1:
        raise ConfigError(
            f"{source}: 'train.epoch_seed' must be -1 (seed once per phase) or a seed >= 0, got "
            f"{t.epoch_seed!r}"
        )
    if t.bert_train_layers < -1:
        raise ConfigError(
            f"{source}: 'train.bert_train_layers' must be -1 (all of BERT) or a number of "
            f"layers >= 0, got {t.bert_train_layers!r}"
        )
    keys = ("bootstrap_epochs", "correct_epochs", "match_size", "num_workers", "threads")
    for key in (*keys, "bootstrap_threads", "sentences_per_object", "checkpoint_every"):
        if getattr(t, key) < 0:
            raise ConfigError(f"{source}: 'train.{key}' must be >= 0, got {getattr(t, key)!r}")
    if not (t.lr > 0 and t.weight_decay >= 0 and t.grad_clip >= 0 and t.poly_power >= 0):
        raise ConfigError(
            f"{source}: 'train.lr' must be > 0 and 'train.weight_decay', 'train.grad_clip', "
            f"'train.poly_power' >= 0, got {t.lr!r}, {t.weight_decay!r}, {t.grad_clip!r}, "
            f"{t.poly_power!r}"
        )
    if not 0 <= t.backbone_lr_scale <= 1:
        raise ConfigError(
            f"{source}: 'train.backbone_lr_scale' must be in [0, 1] (a fraction of train.lr; 0 "
            f"freezes Swin), got {t.backbone_lr_scale!r}"
        )
    if len(t.class_weights) != 2 or min(t.class_weights) <= 0:
        raise ConfigError(
            f"{source}: 'train.class_weights' must be two positive weights [background, object], "
            f"got {t.class_weights!r}"
        )
    if t.iou_loss_weight < 0:  # (non-finite floats are refused for every key)
        raise ConfigError(
            f"{source}: 'train.iou_loss_weight' must be a finite weight >= 0 (0: the "
            f"cross-entropy alone), got {t.iou_loss_weight!r}"
        )
    if not set(t.iou_loss_phases) <= set(TRAIN_PHASES):
        raise ConfigError(
            f"{source}: 'train.iou_loss_phases' must list phases among {list(TRAIN_PHASES)}, "
            f"got {t.iou_loss_phases!r}"
        )
    res = cfg.eval.resolution
    if not (res == "original" or (isinstance(res, int) and res > 0)):
        raise ConfigError(
            f"{source}: 'eval.resolution' must be a positive int (e.g. 480, as LAVT) or "
            f"'original', got {res!r}"
        )
    if not cfg.data.dataset or not cfg.data.split_by:
        raise ConfigError(f"{source}: 'data.dataset' and 'data.split_by' must not be empty")
