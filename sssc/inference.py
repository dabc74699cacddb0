"""Inference: the mask of a free-form expression on any image, from a trained checkpoint.

Python::

    import sssc
    mask = sssc.predict("runs/default/correct/checkpoint.pt", "photo.jpg", "the red circle")
    # bool [H, W] at the image's own size

    model = sssc.load_predictor("runs/default/correct/checkpoint.pt")  # load once, ask many times
    masks = sssc.predict(model, image_array, ["the red circle", "the largest square"])  # [2, H, W]

Command line: ``sssc predict --checkpoint CKPT --image PATH --text "..." --out PNG`` writes the
image with the mask drawn over it (and ``--mask-out PNG`` the bare mask).

The image is resized to the checkpoint's training size and normalized as in training; the
foreground probability is upsampled bilinearly to the image's size and thresholded at 0.5 (a
2-class argmax), as the evaluation does. Torch is imported on first use, so ``import sssc`` stays
light.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Predictor", "add_predict_command", "load_predictor", "overlay", "predict"]


@dataclass
class Predictor:
    """A LAVT model with its tokenizer and input size (what a checkpoint holds).

    Attributes:
        model: the :class:`sssc.correct.lavt.LAVT`, in eval mode.
        tokenize: ``list[str] -> (input_ids, attention_mask)``.
        image_size: the square input side the model was trained at.
        device: where the model runs.
    """

    model: Any
    tokenize: Any
    image_size: int
    device: Any


def load_predictor(
    checkpoint: str | Path,
    device: str = "cpu",
    *,
    bert_path: str | Path | None = None,
    model: str | None = None,
) -> Predictor:
    """Rebuild the model and tokenizer of a training checkpoint, sssc's or a published one.

    Args:
        checkpoint: a ``<run>/<phase>/checkpoint.pt`` written by ``sssc-train``, or a checkpoint
            released by LAVT or S+S+C (``model`` + ``bert_model``, or ``lavt_one``), as it is.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when there is one).
        bert_path: the local ``bert-base-uncased`` folder whose ``vocab.txt`` tokenizes the text.
            Published checkpoints need it (they name only the hub id); for sssc checkpoints it
            replaces the path saved at training time.
        model: the model config, for files that do not name it: a bare state dict, or a
            published checkpoint (default: from its ``args.swin_type``, ``"base"`` ->
            ``"lavt-base"``); it overrides an sssc checkpoint's ``model_name``.

    Raises:
        FileNotFoundError: the checkpoint (or the BERT folder) is missing.
        ValueError: the file is not a LAVT checkpoint in a known layout, holds a Python object
            other than ``argparse.Namespace``, or does not fit the model config; ``device`` is
            not one of the above, or names a GPU this torch does not see.
    """
    import torch

    from .config import resolve_device
    from .correct.checkpoints import (
        checkpoint_format,
        published_args,
        read_checkpoint,
        state_dict_for_sssc,
    )
    from .correct.lavt import (
        build_tokenizer,
        check_input_size,
        create_model,
        load_model_config,
    )

    device = resolve_device(str(device))  # before the checkpoint is read
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: checkpoint not found (sssc-train writes <run>/<phase>/checkpoint.pt; LAVT "
            "and S+S+C publish theirs as .pth files)"
        )
    state = read_checkpoint(path)
    fmt = checkpoint_format(state)
    if fmt == "sssc" and ("model_name" in state or model):
        name = model or state["model_name"]
        image_size = int(state.get("image_size", load_model_config(name).image_size))
        vocab, bert = state.get("vocab") or None, bert_path or state.get("bert_path") or None
    elif fmt in ("lavt", "lavt_one"):
        args = published_args(state)
        swin_type = args.get("swin_type", "base")
        if model is None and swin_type != "base":
            raise ValueError(
                f"{path}: a LAVT checkpoint with swin_type={swin_type!r}; sssc ships lavt-base "
                "only, so give a model config that matches it (model=..., --model)"
            )
        name, image_size, vocab = model or "lavt-base", int(args.get("img_size", 480)), None
        bert = bert_path
        if not bert:
            raise ValueError(
                f"{path}: a published {fmt} checkpoint names its BERT only as "
                f"{args.get('ck_bert', 'bert-base-uncased')!r}; give the local bert-base-uncased "
                "folder (bert_path=..., --bert, or train.bert_weights in a config)"
            )
    elif fmt == "sssc":
        raise ValueError(
            f"{path}: a bare sssc state dict does not say which model it is; give the model "
            "config (model=..., --model lavt-tiny)"
        )
    else:
        raise ValueError(
            f"{path}: not a LAVT checkpoint in a known layout (sssc-train's checkpoint.pt, or a "
            "LAVT / S+S+C release)"
        )
    check_input_size(image_size, load_model_config(name), "the checkpoint's image size")
    net = create_model(name)
    try:
        net.load_state_dict(state_dict_for_sssc(state, path))
    except RuntimeError as e:
        raise ValueError(f"{path}: does not fit model config {name!r}:\n{e}") from None
    net.to(device).eval()
    tokenize = build_tokenizer(net.config, vocab_words=vocab, bert_path=bert)
    return Predictor(net, tokenize, image_size, torch.device(device))


def predict(
    model,
    image,
    text,
    threshold: float = 0.5,
    return_prob: bool = False,
    blank: str = "refuse",
) -> np.ndarray:
    """The mask of each expression on an image.

    Args:
        model: a :class:`Predictor` or a checkpoint path (loaded on CPU).
        image: a path, a PIL image or a uint8 RGB array ``[H, W, 3]``.
        text: one expression or a list of them.
        threshold: on the foreground probability (0.5: the model's argmax).
        return_prob: return the float32 probability instead of the bool mask.
        blank: an empty or blank expression: ``refuse`` (``ValueError``; training skips them
            too, ``data.empty_sentences``) or ``keep`` (tokenized as ``[CLS] [SEP]``, as LAVT's
            ``demo_inference.py`` would; README, deviation row 44).

    Returns:
        ``[H, W]`` for one expression, ``[N, H, W]`` for a list; bool (or float32 probabilities),
        at the image's own size.
    """
    import torch
    import torch.nn.functional as F

    from .correct.data import preprocess_image

    p = model if isinstance(model, Predictor) else load_predictor(model)
    rgb = _as_rgb(image)
    texts = _check_texts(text, blank, "predict")
    x = preprocess_image(rgb, p.image_size)[None].expand(len(texts), -1, -1, -1)
    ids, mask = p.tokenize(texts)
    with torch.no_grad():
        logits = p.model(x.to(p.device), ids.to(p.device), mask.to(p.device))
        prob = logits.float().softmax(1)[:, 1:2]
        prob = F.interpolate(prob, size=rgb.shape[:2], mode="bilinear", align_corners=False)
    out = prob[:, 0].cpu().numpy()
    out = out if return_prob else out > threshold
    return out[0] if isinstance(text, str) else out


def _check_texts(text, blank: str, who: str) -> list[str]:
    """``text`` (one expression or a list) as a list, each a string, none blank unless
    ``blank == "keep"``.

    Raises:
        ValueError: naming ``who`` (``predict``, ``--text``) and the expression.
    """
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise ValueError(f"{who}: give at least one expression")
    if blank not in ("refuse", "keep"):
        raise ValueError(f"{who}: blank must be 'refuse' or 'keep', got {blank!r}")
    for k, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{who}: expression {k} is {type(t).__name__}, not a string")
        if blank == "refuse" and not t.strip():
            which = "the expression" if isinstance(text, str) else f"expression {k}"
            raise ValueError(
                f"{who}: {which} is {t!r}: an expression without a word names nothing (training "
                "skips such expressions too, data.empty_sentences); keep it with blank='keep' "
                "(sssc predict --blank keep), as LAVT's demo would"
            )
    return texts


def _as_rgb(image) -> np.ndarray:
    from PIL import Image

    if isinstance(image, (str, Path)):
        from .data.images import read_rgb

        return read_rgb(image).copy()
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"predict: image must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


def overlay(rgb: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.5) -> np.ndarray:
    """The image with the mask blended in ``color`` (uint8 ``[H, W, 3]``)."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    return out.round().astype(np.uint8)


def add_predict_command(sub) -> None:
    """Register ``sssc predict`` on an argparse subparsers object."""
    p = sub.add_parser("predict", help="draw the mask of an expression on an image")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="<run>/<phase>/checkpoint.pt, or a LAVT / S+S+C release (.pth) as published",
    )
    p.add_argument("--bert", help="local bert-base-uncased folder (published checkpoints)")
    p.add_argument("--model", help="model config of a published checkpoint (default lavt-base)")
    p.add_argument("--image", required=True, help="the image (any format PIL reads)")
    p.add_argument("--text", required=True, help="the referring expression")
    p.add_argument(
        "--out",
        required=True,
        help="image file (.png, .jpg, ...): the image with the mask drawn over it",
    )
    p.add_argument("--mask-out", help="image file: the bare mask (white on black)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:N or auto (CUDA when there is one)",
    )
    p.add_argument(
        "--blank",
        choices=("refuse", "keep"),
        default="refuse",
        help="a blank --text: refuse it (default) or run it as [CLS] [SEP] (LAVT's demo)",
    )
    p.set_defaults(func=_predict_cli)


def _predict_cli(args) -> int:
    import sys

    from PIL import Image

    try:
        outs = [(f, o) for f, o in (("--out", args.out), ("--mask-out", args.mask_out)) if o]
        for flag, out in outs:  # before the model loads and runs
            _check_output(flag, out)
        _check_texts(args.text, args.blank, "--text")
        rgb = _as_rgb(args.image)
        p = load_predictor(args.checkpoint, args.device, bert_path=args.bert, model=args.model)
        mask = predict(p, rgb, args.text, blank=args.blank)
        Image.fromarray(overlay(rgb, mask)).save(args.out)
        if args.mask_out:
            Image.fromarray(mask.astype(np.uint8) * 255).save(args.mask_out)
    except (OSError, ValueError) as e:
        print(f"sssc predict: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {int(mask.sum())} of {mask.size} pixels ({100 * mask.mean():.1f}%)")
    return 0


def _check_output(flag: str, out: str) -> None:
    """An image path PIL can write: an existing folder, a file name with an image extension.

    Raises:
        ValueError: naming the flag and what is wrong.
    """
    from PIL import Image

    path = Path(out)
    if path.is_dir():
        raise ValueError(f"{flag} {out}: is a folder; give a file name such as {path / 'mask.png'}")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {out}: the folder {path.parent} does not exist")
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(
            f"{flag} {out}: PIL cannot tell an image format from "
            f"{repr(path.suffix) if path.suffix else 'a name without an extension'}; end the name "
            "with .png (or another image extension)"
        )


def eval_checkpoint_main(args: argparse.Namespace) -> int:
    """``sssc eval --checkpoint``: score a model (sssc's or a published LAVT / S+S+C release) on
    one or more splits against the GT; each split's ``metrics.json`` goes under ``--out``."""
    import dataclasses

    import torch

    from .config import ConfigError, load_config, resolve_device
    from .correct.evaluate import evaluate_model
    from .data.refer import DatasetError, Refer
    from .eval.metrics import format_table

    ckpt = Path(args.checkpoint)
    try:
        cfg = load_config(args.config, args.set)
        p = load_predictor(ckpt, "cpu", bert_path=cfg.train.bert_weights or None, model=args.model)
        device = torch.device(resolve_device(cfg.device))
        p.model.to(device)
        # The checkpoint's own input size, whatever the config's training size says.
        cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, image_size=p.image_size)
        )
        refer = Refer.from_config(cfg.data)
        splits = args.split or [cfg.data.eval_split]
        for s in splits:
            if not refer.split_refs(s):
                raise ConfigError(
                    f"--split {s!r}: no expressions in that split of {cfg.data.dataset} "
                    f"({cfg.data.split_by}); the splits are {sorted(refer.splits())}"
                )
        results = {s: evaluate_model(p.model, refer, cfg, p.tokenize, device, s) for s in splits}
    except (ConfigError, DatasetError, OSError, ValueError) as e:
        print(f"sssc eval: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else ckpt.parent / f"eval_{ckpt.stem}"
    rows = {}
    for split, m in results.items():
        m = {
            "what": f"the model of {ckpt}",
            **m,
            "checkpoint": str(ckpt),
            "producer": {"name": "checkpoint", "path": str(ckpt)},
            "image_size": p.image_size,
            "selection": "as given (sssc eval scores the file it is handed)",
        }
        out = out_dir / split / "metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(m, indent=1) + "\n")
        print(f"{ckpt} on {split} at resolution {m['resolution']}; written to {out}")
        rows[split] = m
    print(format_table(rows))
    return 0
