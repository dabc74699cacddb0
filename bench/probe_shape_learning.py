"""Probe: how fast does lavt-tiny's random-init Swin learn to tell a circle from a square?

The embedded default's trained rows stay below their labels (issue 9). The probe behind the
diagnosis in the README (section "Stage 3 on the embedded default"): classify the shape of
single-shape images drawn like the synthetic dataset's (one circle, square or triangle of a
random colour on a random light background, 96x96, resized to the model input), with

- ``cnn``: a 3-layer CNN (3x3 convs, ReLU, max pooling), the yardstick;
- ``swin``: lavt-tiny's Swin (its config, run block by block as LAVT runs it), mean-pooled final
  stage, layer norm, linear head;
- ``swin-stage1-cnn``: lavt-tiny's patch embedding and first Swin stage, then the CNN's layers;
- ``swin-dense``: lavt-tiny's Swin trained densely instead: every stage's features upsampled to
  the first stage's grid, concatenated, a 1x1 convolution to {background, circle, square,
  triangle} per pixel, on multi-shape images drawn like the dataset's (a fresh RNG, not its
  images); it prints the shape accuracy over object pixels and, with ``--save DIR``, writes the
  Swin as an HF folder that ``train.swin_weights`` loads.

It prints the training accuracy over each 100 steps (batch 32, AdamW). Chance is 0.33. Run::

    python bench/probe_shape_learning.py swin --steps 400
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sssc.correct.data import preprocess_image
from sssc.correct.lavt import LAVT
from sssc.correct.modelconfig import load_model_config
from sssc.data.synthetic import COLORS, SHAPES, _shape_mask


def shapes(
    n: int, size: int, seed: int, scale: tuple[float, float] = (0.08, 0.18)
) -> tuple[torch.Tensor, torch.Tensor]:
    rng, colors, s_img = np.random.default_rng(seed), list(COLORS.values()), 96
    x, y = torch.empty(n, 3, size, size), torch.empty(n, dtype=torch.long)
    for i in range(n):
        k, r = int(rng.integers(len(SHAPES))), int(rng.uniform(*scale) * s_img)
        cx, cy = (int(v) for v in rng.integers(r + 1, s_img - r - 1, size=2))
        img = np.empty((s_img, s_img, 3), np.uint8)
        img[:] = rng.integers(190, 246, size=3)
        img[_shape_mask(SHAPES[k], cx, cy, r, s_img)] = colors[int(rng.integers(len(colors)))]
        x[i], y[i] = preprocess_image(img, size), k
    return x, y


def cnn_layers(cin: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(64, len(SHAPES)),
    )  # fmt: skip


def build(mode: str) -> nn.Module:
    if mode == "cnn":
        return cnn_layers(3)
    lavt = LAVT(load_model_config("lavt-tiny"))
    swin, dims = lavt.swin, lavt.config.stage_dims

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.swin = swin
            if mode == "swin":
                self.norm, self.head = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], len(SHAPES))
            else:
                self.head = cnn_layers(dims[0])

        def forward(self, images):
            x, (h, w) = self.swin.embeddings(images)
            for stage in self.swin.encoder.layers[: 1 if mode != "swin" else None]:
                for block in stage.blocks:
                    x = block(x, (h, w), None, False, True)[0]
                if mode == "swin" and stage.downsample is not None:
                    x = stage.downsample(x, (h, w))
                    h, w = (h + 1) // 2, (w + 1) // 2
            if mode == "swin":
                return self.head(self.norm(x).mean(1))
            return self.head(x.transpose(1, 2).reshape(x.shape[0], -1, h, w))

    return Probe()


def dense_shapes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    from sssc.data.synthetic import _draw_image

    rng = np.random.default_rng(seed)
    x, y = torch.empty(n, 3, size, size), torch.empty(n, size, size, dtype=torch.long)
    for i in range(n):
        img, objs = _draw_image(rng, 96)
        lab = np.zeros((96, 96), np.uint8)
        for o in objs:
            lab[o.visible] = SHAPES.index(o.shape) + 1
        x[i] = preprocess_image(img, size)
        y[i] = torch.from_numpy(np.array(Image.fromarray(lab).resize((size, size), 0))).long()
    return x, y


class DenseProbe(nn.Module):
    def __init__(self):
        super().__init__()
        lavt = LAVT(load_model_config("lavt-tiny"))
        self.config, self.swin = lavt.config, lavt.swin
        self.head = nn.Conv2d(sum(lavt.config.stage_dims), len(SHAPES) + 1, 1)

    def forward(self, images):
        x, (h, w) = self.swin.embeddings(images)
        grid, feats = (h, w), []
        for stage in self.swin.encoder.layers:
            for block in stage.blocks:
                x = block(x, (h, w), None, False, True)[0]
            f = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            feats.append(F.interpolate(f, size=grid, mode="bilinear", align_corners=False))
            if stage.downsample is not None:
                x = stage.downsample(x, (h, w))
                h, w = (h + 1) // 2, (w + 1) // 2
        logits = self.head(torch.cat(feats, 1))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["cnn", "swin", "swin-stage1-cnn", "swin-dense"])
    ap.add_argument("--save", default="", help="swin-dense: write the Swin here (an HF folder)")
    ap.add_argument("--size", type=int, default=64, help="model input side (the default's 64)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--scale",
        type=float,
        nargs=2,
        default=(0.08, 0.18),
        help="shape size range, fraction of the image (the dataset's 0.08 0.18)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.mode == "swin-dense":
        x, y = dense_shapes(4000, args.size, args.seed + 1)
        net = DenseProbe()
    else:
        x, y = shapes(8000, args.size, args.seed + 1, tuple(args.scale))
        net = build(args.mode)
    class_weights = torch.tensor([0.3] + [1.0] * len(SHAPES))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    t0, hits = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x), (32,))
        logits = net(x[idx])
        if args.mode == "swin-dense":
            loss = F.cross_entropy(logits, y[idx], weight=class_weights)
            on = y[idx] > 0  # object pixels: is the shape right?
            hits.append((logits.argmax(1)[on] == y[idx][on]).float().mean().item())
        else:
            loss = F.cross_entropy(logits, y[idx])
            hits.append((logits.argmax(1) == y[idx]).float().mean().item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            acc = np.mean(hits[-100:])
            print(f"{args.mode} step {step}: accuracy {acc:.2f} ({time.perf_counter() - t0:.0f} s)")
    if args.save and args.mode == "swin-dense":
        from transformers import SwinModel

        from sssc.correct.lavt import _swin_hf_config

        hf = SwinModel(_swin_hf_config(net.config), add_pooling_layer=False)
        hf.load_state_dict(net.swin.state_dict(), strict=False)  # no final norm: LAVT skips it
        hf.save_pretrained(args.save)


if __name__ == "__main__":
    main()
