"""Checkpoint files: read them safely, and take LAVT's and S+S+C's published layouts as they are.

Three layouts load into :class:`sssc.correct.lavt.LAVT`:

* ``sssc``: a training checkpoint written by ``sssc-train`` (``model`` in sssc's names, plus
  ``model_name``, ``image_size``, ``vocab``, ``bert_path``), or a bare sssc state dict;
* ``lavt``: LAVT's and S+S+C's ``train.py`` (``{'model', 'bert_model', 'optimizer', 'epoch',
  'args', 'lr_scheduler'}``): ``model`` holds ``backbone.*`` (the multi-modal Swin) and
  ``classifier.*`` (the decoder), ``bert_model`` the BERT without its pooler;
* ``lavt_one``: LAVT's ``lavt_one`` variant, the same but BERT inside ``model`` as
  ``text_encoder.*``.

Reading never unpickles an arbitrary object: ``torch.load(weights_only=True)`` with one more
allowed class, the ``argparse.Namespace`` that the published files keep as ``args``. Any other
global is refused, and the message names it.

Example::

    ckpt = read_checkpoint("model_best_refcoco.pth")
    sd = lavt_official_to_sssc(ckpt["model"], ckpt.get("bert_model"))
    model.load_state_dict(sd)
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "checkpoint_format",
    "lavt_official_to_sssc",
    "published_args",
    "read_checkpoint",
    "state_dict_for_sssc",
    "verify_checksums",
]

# The only class besides tensors and containers that a checkpoint may hold.
_ALLOWED_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and what to do."""


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` a checkpoint on the CPU without running any code from it.

    Args:
        path: the file.

    Returns:
        What the file holds (a dict for every layout above).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a torch checkpoint, is truncated, or holds a global
            other than ``argparse.Namespace`` (named in the message).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    verify_checksums(p)
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        hit = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(e))
        if hit:
            raise CheckpointError(
                f"{p}: refused to load: it holds the Python object {hit.group(1)!r}, and only "
                "tensors, containers and argparse.Namespace are allowed (loading it would run "
                "code from the file). Re-save its state dicts alone from a trusted copy."
            ) from None
        raise CheckpointError(  # torch's own text suggests weights_only=False: not repeated
            f"{p}: not a readable torch checkpoint (its pickle holds something other than "
            "tensors and containers, or is damaged). Use another copy, or rerun with --no-resume "
            "to start the phase again"
        ) from None
    except Exception as e:  # torch's loaders raise many kinds on a foreign or damaged file
        raise CheckpointError(
            f"{p}: not a readable torch checkpoint (truncated or another format: "
            f"{_first_line(e)}). Use another copy, or rerun with --no-resume to start the phase "
            "again"
        ) from None


def verify_checksums(path: str | Path) -> None:
    """Check every record of a checkpoint against its CRC-32 (torch's zip format stores one).

    A file in torch's legacy (pre-1.6, non-zip) format carries no checksum and is not checked.

    Raises:
        CheckpointError: a record's CRC fails, or the zip structure is damaged (truncated).
    """
    p = Path(path)
    with open(p, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if not zipped:
        return
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{p}: damaged checkpoint ({_first_line(e)}; truncated?). Use another copy, or rerun "
            "with --no-resume to start the phase again"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{p}: damaged checkpoint: record {bad!r} fails its CRC-32 check (flipped bytes on "
            "disk or in transfer). Use another copy, or rerun with --no-resume to start the phase "
            "again"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def checkpoint_format(ckpt: Any) -> str:
    """Which layout a loaded checkpoint has: ``sssc`` | ``lavt`` | ``lavt_one`` | ``unknown``."""
    if not isinstance(ckpt, dict):
        return "unknown"
    sd = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else ckpt
    keys = [k.removeprefix("module.") for k in sd if isinstance(k, str)]  # DDP's wrapper
    if any(k.startswith("backbone.") for k in keys) and any(
        k.startswith("classifier.") for k in keys
    ):
        return "lavt_one" if any(k.startswith("text_encoder.") for k in keys) else "lavt"
    if any(k.startswith(("swin.", "pwams.", "decoder.")) for k in keys):
        return "sssc"
    return "unknown"


def published_args(ckpt: dict) -> dict:
    """The ``args`` Namespace of a published checkpoint as a dict (``{}`` when absent)."""
    args = ckpt.get("args")
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else {}


def state_dict_for_sssc(ckpt: Any, path: str | Path = "checkpoint") -> dict[str, Tensor]:
    """The sssc-named state dict of any supported layout.

    Raises:
        CheckpointError: the layout is not one of the three (the message names the file).
    """
    fmt = checkpoint_format(ckpt)
    if fmt == "sssc":
        return ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    if fmt == "lavt":
        bert = ckpt.get("bert_model")
        if not isinstance(bert, dict):
            raise CheckpointError(
                f"{path}: a LAVT checkpoint without 'bert_model' (LAVT's train.py saves BERT "
                "there); this file holds only the vision side"
            )
        return lavt_official_to_sssc(ckpt["model"], bert)
    if fmt == "lavt_one":
        return lavt_official_to_sssc(ckpt["model"])
    keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(
        f"{path}: not a LAVT checkpoint in a known layout (sssc-train's, LAVT's or S+S+C's "
        f"train.py, or lavt_one); its top-level keys are {keys}"
    )


# --------------------------------------------------------------------------------------------
# LAVT's names -> sssc's
# --------------------------------------------------------------------------------------------

# PWAM: LAVT's 1x1 Conv1d layers (weights [out, in, 1]) -> sssc's Linear layers ([out, in]).
_PWAM = {
    "vis_project.0": "vis_project.0",
    "image_lang_att.f_query.0": "query",
    "image_lang_att.f_key.0": "key",
    "image_lang_att.f_value.0": "value",
    "image_lang_att.W.0": "out",
    "project_mm.0": "project_mm.0",
}
# The decoder: SimpleDecoding's named layers -> LAVTDecoder's fuse blocks (conv, BN, ReLU, conv,
# BN, ReLU), fusing stage 4 with 3 (suffix _4), then 2 (_3), then 1 (_2); conv1_1 classifies.
_DECODER = {
    **{
        f"{kind}{j}_{s}": f"fuse.{i}.{3 * (j - 1) + (kind == 'bn')}"
        for kind in ("conv", "bn")
        for j in (1, 2)
        for i, s in enumerate((4, 3, 2))
    },
    "conv1_1": "classifier",
}
_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_NORM = re.compile(r"norm(\d+)\.(weight|bias)")


def lavt_official_to_sssc(
    model_sd: dict[str, Tensor], bert_sd: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Rename a published LAVT state dict (``lavt`` or ``lavt_one`` layout) to sssc's names.

    - ``backbone.patch_embed.*``, ``backbone.layers.i.blocks.*`` and ``backbone.layers.i.
      downsample.*``: the official Swin names, through
      :func:`sssc.correct.lavt.swin_official_to_hf` (qkv split), under ``swin.``;
    - ``backbone.layers.i.fusion.*`` (PWAM): ``pwams.i.*``, 1x1 Conv1d kernels squeezed to
      Linear weights;
    - ``backbone.layers.i.res_gate.{0,2}``: ``gates.i.net.{0,2}``; stage 4's gate, whose output
      LAVT never uses, is dropped;
    - ``backbone.norm{i}``: ``stage_norms.i``; ``classifier.*``: ``decoder.*``;
    - BERT (``bert_sd``, or ``text_encoder.*`` inside ``model_sd``): ``bert.*``, without the
      pooler (LAVT sets it to None) and the ``position_ids`` buffer.

    Args:
        model_sd: the checkpoint's ``model`` entry (``module.`` prefixes from DDP are removed).
        bert_sd: the checkpoint's ``bert_model`` entry (the ``lavt`` layout).

    Returns:
        A state dict for ``LAVT.load_state_dict``.

    Raises:
        CheckpointError: a key this mapping does not know (the message lists them).
    """
    from .lavt import swin_official_to_hf

    def strip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}

    model_sd = strip(model_sd)
    out: dict[str, Tensor] = {}
    swin: dict[str, Tensor] = {}
    bert: dict[str, Tensor] = dict(strip(bert_sd)) if bert_sd is not None else {}
    unknown: list[str] = []
    last_stage = max(
        (int(m.group(1)) for k in model_sd if (m := _LAYER.match(k.removeprefix("backbone.")))),
        default=3,
    )
    for key, value in model_sd.items():
        if key.startswith("text_encoder."):
            bert[key[len("text_encoder.") :]] = value
        elif key.startswith("classifier."):
            name, _, leaf = key[len("classifier.") :].rpartition(".")
            if name not in _DECODER:
                unknown.append(key)
                continue
            out[f"decoder.{_DECODER[name]}.{leaf}"] = value
        elif key.startswith("backbone."):
            rest = key[len("backbone.") :]
            norm = _NORM.fullmatch(rest)
            layer = _LAYER.fullmatch(rest)
            if norm:
                out[f"stage_norms.{norm.group(1)}.{norm.group(2)}"] = value
            elif layer and layer.group(2).startswith("fusion."):
                name, _, leaf = layer.group(2)[len("fusion.") :].rpartition(".")
                if name not in _PWAM:
                    unknown.append(key)
                    continue
                w = value.squeeze(-1) if leaf == "weight" and value.dim() == 3 else value
                out[f"pwams.{layer.group(1)}.{_PWAM[name]}.{leaf}"] = w
            elif layer and layer.group(2).startswith("res_gate."):
                stage, sub = int(layer.group(1)), layer.group(2)[len("res_gate.") :]
                if sub not in ("0.weight", "2.weight"):
                    unknown.append(key)
                elif stage < last_stage:
                    out[f"gates.{stage}.net.{sub}"] = value
            else:
                swin[rest] = value
        else:
            unknown.append(key)
    try:
        out.update({f"swin.{k}": v for k, v in swin_official_to_hf(swin).items()})
    except ValueError as e:
        raise CheckpointError(f"lavt_official_to_sssc: in the backbone: {e}") from None
    for key, value in bert.items():
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue
        out[f"bert.{key}"] = value
    if unknown:
        raise CheckpointError(
            f"lavt_official_to_sssc: {len(unknown)} keys are not part of a LAVT checkpoint: "
            f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    return out
