"""The pretraining analogue of lavt-tiny's Swin: shapes and colours, densely, on fresh images.

LAVT starts from a Swin pretrained on ImageNet-22k: its features already tell what the things in
an image are. The embedded default's lavt-tiny has no such weights, so this module builds an
analogue: lavt-tiny's Swin (run stage by stage as LAVT runs it), every stage's features upsampled
to the first stage's grid and concatenated, and two 1x1 convolutions that classify every pixel's
shape ({background, circle, square, triangle}) and colour ({background, the 4 colours}). It trains
on images drawn like the synthetic dataset's (:func:`sssc.data.synthetic._draw_image`) from an RNG
stream of their own, so never on the dataset's images, and never sees an expression or a referring
mask. Only the Swin is kept: it is written as an HF Swin folder that ``train.swin_weights`` loads.

It differs from ImageNet pretraining in two ways, both in the README's deviation table: the labels
are per pixel (single-shape classification trains this Swin far more slowly:
``bench/probe_shape_learning.py``), and the world is the dataset's world.

The embedded default ships the result (``configs/weights/lavt-tiny-shapes``, about 5 MB;
``train.swin_weights: sssc:lavt-tiny-shapes``) with a ``pretrain.json`` that holds the settings and
the SHA-256 of the weights, checked every time they load (:func:`sssc.pretrained.shipped_weights`).
Rebuild it, and check that the rebuild is bit-identical, with::

    python -m sssc.correct.pretrain --out configs/weights/lavt-tiny-shapes
    python -m sssc.correct.pretrain --check sssc:lavt-tiny-shapes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.synthetic import COLORS, SHAPES, _draw_image
from ..pretrained import sha256_file
from .data import preprocess_image
from .lavt import _swin_hf_config
from .modelconfig import load_model_config

__all__ = [
    "PRETRAIN_STREAM",
    "DenseShapeColour",
    "PretrainSettings",
    "draw_pretraining_images",
    "pretrain_swin",
    "sha256_file",
]

# The images' RNG: SeedSequence(seed, spawn_key=(PRETRAIN_STREAM,)), a stream apart from the
# dataset generator's default_rng(seed), whatever the seed.
PRETRAIN_STREAM = 0x5EED5


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """What the shipped weights were built with (all of it goes into ``pretrain.json``)."""

    model: str = "lavt-tiny"
    steps: int = 1500
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    num_images: int = 4000  # drawn once, batches sampled from them
    draw_size: int = 96  # the synthetic images' size
    image_size: int = 64  # the model input (train.image_size of the embedded default)
    background_weight: float = 0.3  # cross-entropy weight of the background class (both heads)
    seed: int = 0
    threads: int = 1  # one thread: the rebuild is bit-identical on this machine kind


def draw_pretraining_images(
    n: int, size: int, seed: int = 0, draw_size: int = 96
) -> tuple[Tensor, Tensor]:
    """``n`` fresh synthetic images and their per-pixel shape and colour labels.

    Returns:
        ``(images, labels)``: float32 ``[n, 3, size, size]`` (ImageNet-normalised, as LAVT's input)
        and int64 ``[n, 2, size, size]``: channel 0 the shape (0 background, ``1 + SHAPES.index``),
        channel 1 the colour (0 background, ``1 + list(COLORS).index``), of the visible instance at
        each pixel, resized with nearest neighbour (as LAVT resizes its targets).
    """
    from PIL import Image

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(PRETRAIN_STREAM,)))
    colours = list(COLORS)
    images = torch.empty(n, 3, size, size)
    labels = torch.empty(n, 2, size, size, dtype=torch.long)
    for i in range(n):
        img, objs = _draw_image(rng, draw_size)
        shape = np.zeros((draw_size, draw_size), np.uint8)
        colour = np.zeros((draw_size, draw_size), np.uint8)
        for o in objs:
            shape[o.visible] = SHAPES.index(o.shape) + 1
            colour[o.visible] = colours.index(o.color) + 1
        images[i] = preprocess_image(img, size)
        for c, lab in enumerate((shape, colour)):
            small = Image.fromarray(lab).resize((size, size), Image.NEAREST)
            labels[i, c] = torch.from_numpy(np.asarray(small, dtype=np.int64))
    return images, labels


class DenseShapeColour(nn.Module):
    """A model config's Swin with per-pixel shape and colour heads (see the module docstring)."""

    def __init__(self, model: str = "lavt-tiny"):
        super().__init__()
        from transformers import SwinModel

        self.config = load_model_config(model)
        swin = SwinModel(_swin_hf_config(self.config), add_pooling_layer=False)
        self.swin = nn.Module()  # the names LAVT gives it: swin.embeddings.*, swin.encoder.*
        self.swin.embeddings, self.swin.encoder = swin.embeddings, swin.encoder
        dims = sum(self.config.stage_dims)
        self.shape_head = nn.Conv2d(dims, len(SHAPES) + 1, 1)
        self.colour_head = nn.Conv2d(dims, len(COLORS) + 1, 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Shape and colour logits, ``[B, 4, H, W]`` and ``[B, 5, H, W]`` (0: background)."""
        x, (h, w) = self.swin.embeddings(images)
        grid, feats = (h, w), []
        for stage in self.swin.encoder.layers:
            for block in stage.blocks:
                x = block(x, (h, w), None, False, True)[0]  # as LAVT runs them
            f = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            feats.append(F.interpolate(f, size=grid, mode="bilinear", align_corners=False))
            if stage.downsample is not None:
                x = stage.downsample(x, (h, w))
                h, w = (h + 1) // 2, (w + 1) // 2
        f = torch.cat(feats, 1)
        size = images.shape[-2:]
        return tuple(
            F.interpolate(head(f), size=size, mode="bilinear", align_corners=False)
            for head in (self.shape_head, self.colour_head)
        )


def pretrain_swin(
    out: str | Path, settings: PretrainSettings = PretrainSettings(), progress: bool = True
) -> dict:
    """Train :class:`DenseShapeColour` and write its Swin as an HF folder under ``out``.

    ``out`` gets ``config.json``, ``model.safetensors`` and ``pretrain.json`` (the settings, the
    last 100 steps' pixel accuracies over object pixels, the versions, the weights' SHA-256). The
    folder is written under a temporary name and renamed into place; an existing ``out`` that has
    no ``pretrain.json`` (not sssc's) is refused.

    Returns:
        The contents of ``pretrain.json``.
    """
    from tqdm.auto import tqdm
    from transformers import SwinModel

    s, out = settings, Path(out)
    if out.exists() and not (out / "pretrain.json").exists():
        raise ValueError(f"{out} exists and was not written by sssc.correct.pretrain; not replaced")
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        torch.manual_seed(s.seed)
        net = DenseShapeColour(s.model)
        images, labels = draw_pretraining_images(s.num_images, s.image_size, s.seed, s.draw_size)
        weight_shape = torch.tensor([s.background_weight] + [1.0] * len(SHAPES))
        weight_colour = torch.tensor([s.background_weight] + [1.0] * len(COLORS))
        opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        gen = torch.Generator().manual_seed(s.seed)
        hits: list[tuple[float, float]] = []
        t0 = time.perf_counter()
        bar = tqdm(range(s.steps), desc="pretrain", disable=not progress, mininterval=2)
        for _ in bar:
            idx = torch.randint(0, len(images), (s.batch,), generator=gen)
            y = labels[idx]
            shape_logits, colour_logits = net(images[idx])
            loss = F.cross_entropy(shape_logits, y[:, 0], weight=weight_shape) + F.cross_entropy(
                colour_logits, y[:, 1], weight=weight_colour
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                on = y[:, 0] > 0
                hits.append(
                    (
                        (shape_logits.argmax(1)[on] == y[:, 0][on]).float().mean().item(),
                        (colour_logits.argmax(1)[on] == y[:, 1][on]).float().mean().item(),
                    )
                )
            bar.set_postfix(loss=f"{loss.item():.3f}", shape=f"{hits[-1][0]:.2f}")
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    hf = SwinModel(_swin_hf_config(net.config), add_pooling_layer=False)
    missing, unexpected = hf.load_state_dict(net.swin.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("layernorm.") for k in missing), missing  # LAVT skips the final norm
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        hf.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the weights are for everyone who reads
        for f in tmp.iterdir():
            f.chmod(0o644)
        last = np.array(hits[-100:])
        import transformers

        record = {
            "built_by": "python -m sssc.correct.pretrain",
            "what": "lavt-tiny's Swin, trained to classify every pixel's shape and colour on "
            "fresh synthetic images (no expressions, no referring masks)",
            "settings": dataclasses.asdict(s),
            "shape_accuracy_last_100": round(float(last[:, 0].mean()), 4),
            "colour_accuracy_last_100": round(float(last[:, 1].mean()), 4),
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sha256": {"model.safetensors": sha256_file(tmp / "model.safetensors")},
        }
        (tmp / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "pretrain.json").chmod(0o644)
        if out.exists():
            shutil.rmtree(out)  # an earlier sssc build (it has pretrain.json)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sssc.correct.pretrain", description=__doc__.splitlines()[0]
    )
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="write the pretrained Swin here (an HF folder)")
    group.add_argument(
        "--check",
        metavar="WEIGHTS",
        help="rebuild WEIGHTS (a folder or sssc:NAME) from its pretrain.json settings in a "
        "temporary folder and compare the SHA-256",
    )
    for f in dataclasses.fields(PretrainSettings):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = ap.parse_args(argv)
    if args.check:
        from ..pretrained import existing_path

        folder = existing_path("swin_weights", args.check)
        shipped = json.loads((folder / "pretrain.json").read_text())
        settings = PretrainSettings(**shipped["settings"])
        with tempfile.TemporaryDirectory() as d:
            rebuilt = pretrain_swin(Path(d) / "w", settings)
        same = rebuilt["sha256"] == shipped["sha256"]
        print(
            f"{folder}: shipped {shipped['sha256']['model.safetensors'][:16]}, rebuilt "
            f"{rebuilt['sha256']['model.safetensors'][:16]}: "
            + ("identical" if same else "DIFFERENT")
            + f" ({rebuilt['seconds']} s)"
        )
        return 0 if same else 1
    settings = PretrainSettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainSettings)}
    )
    rec = pretrain_swin(args.out, settings)
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
