"""``sssc viz``: an image with its Stage 1 candidates, the Stage 2 choices and the expressions.

    sssc viz --run runs/default --image-id 7 [--out viz_7.png]
    sssc viz --run runs/default --first 4            # the store's first 4 images

Like the paper's Figure 5: the first panel shows every candidate of the S1 pool outlined in its own
colour with its id and label; then one panel per object with its chosen candidate (S2) filled in
green, the GT outlined in white, and the object's expressions underneath. Without an S2 store only
the pool is drawn. Pillow only.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np

__all__ = ["add_viz_command", "draw_image", "viz_main"]

_MIN_SIDE = 256  # small images (the synthetic 96 px) are upscaled so the text stays readable
_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ],
    dtype=np.uint8,
)


def _edge(m: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool mask ``[H, W]`` (inside, with a 4-neighbour outside)."""
    p = np.pad(m, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _up(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1) if k > 1 else a


def draw_image(refer, s1, s2, image_id: int):
    """One PNG-ready ``PIL.Image`` for ``image_id``.

    Args:
        refer: the dataset (image, GT, expressions).
        s1: the S1 :class:`~sssc.store.Store`; ``s2``: the S2 store or ``None``.
        image_id: the image.
    """
    from PIL import Image, ImageDraw

    img = refer.load_image(image_id)
    h, w = img.shape[:2]
    k = max(1, int(np.ceil(_MIN_SIDE / min(h, w))))
    rec = s1.get(image_id)
    cands = rec.candidates
    pool = img.astype(np.float32).copy()
    for c in cands:
        e = _edge(c.decode())
        pool[e] = _PALETTE[c.id % len(_PALETTE)]
    panels = [(pool.astype(np.uint8), [f"S1 pool: {len(cands)} candidates"], cands)]
    sents = {}
    for r in refer.image_refs(image_id):
        sents.setdefault(r.ann_id, []).extend(s.sent for s in r.sentences)
    if s2 is not None:
        for o in s2.get(image_id).objects:
            p = img.astype(np.float32).copy()
            if o.chosen is not None:
                m = rec.candidate(o.chosen).decode()
                p[m] = 0.5 * p[m] + 0.5 * np.array([0, 200, 0])
                title = f"object {o.ann_id}: candidate {o.chosen}"
            else:
                title = f"object {o.ann_id}: no candidate"
            try:
                p[_edge(refer.gt_mask(o.ann_id))] = 255
            except Exception:  # noqa: BLE001 - a bad GT only loses the outline, never the picture
                pass
            panels.append((p.astype(np.uint8), [title] + sents.get(o.ann_id, []), None))
    ph, pw = h * k, w * k
    line_h, wrap = 12, max(16, pw // 6)
    texts = [sum((textwrap.wrap(t, wrap) or [""] for t in lines), []) for _, lines, _ in panels]
    th = line_h * max(len(t) for t in texts) + 6
    canvas = Image.new("RGB", (len(panels) * (pw + 8), ph + th), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((arr, _, cs), lines) in enumerate(zip(panels, texts, strict=True)):
        x0 = i * (pw + 8)
        canvas.paste(Image.fromarray(_up(arr, k)), (x0, 0))
        for c in cs or []:
            bx, by = c.box[0] * k, c.box[1] * k
            col = tuple(int(v) for v in _PALETTE[c.id % len(_PALETTE)])
            draw.text((x0 + bx + 2, by + 1), f"{c.id}:{c.label}", fill=col)
        for j, t in enumerate(lines):
            draw.text((x0 + 2, ph + 3 + j * line_h), t, fill="black")
    return canvas


def add_viz_command(subparsers) -> None:
    """Register ``sssc viz`` on an ``argparse`` subparsers object."""
    from .rundir import add_config_args

    p = subparsers.add_parser(
        "viz",
        help="draw candidates, choices and expressions of an image as a PNG",
        description="Draw an image with its S1 candidates, the S2 choice per object and the "
        "expressions (the paper's Figure 5).",
    )
    p.add_argument("--run", required=True, help="run directory (as given to sssc-train --run)")
    p.add_argument("--image-id", type=int, action="append", default=[], help="image id(s)")
    p.add_argument("--first", type=int, default=0, help="draw the store's first N images")
    add_config_args(
        p, "YAML config (default: <run>/select/config.yaml, else <run>/segment/config.yaml)"
    )
    p.add_argument("--out", help="output folder (default: <run>/viz)")
    p.set_defaults(func=viz_main)


def viz_main(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .data.refer import DatasetError, Refer
    from .rundir import load_run_config, missing_store
    from .store import Store, StoreError

    run = Path(args.run)
    if problem := missing_store(run, "segment"):  # before the config and the dataset
        print(f"sssc viz: {problem}", file=sys.stderr)
        return 2
    try:
        selected = (run / "select" / "store.json").exists()
        cfg = load_run_config(run, "select" if selected else "segment", args.config, args.set)
        refer = Refer.from_config(cfg.data, generate=False)
        # the pools as Stage 2 read them, so that its choice names the candidate drawn
        s1 = Store(run / "segment", kind="S1", pools=cfg.select.candidates if selected else "whole")
        s2 = Store(run / "select", kind="S2") if selected else None
        ids = list(args.image_id) + s1.image_ids()[: max(0, args.first)]
        if not ids:
            print("sssc viz: give --image-id N or --first N", file=sys.stderr)
            return 2
        missing = [i for i in ids if i not in s1]
        if missing:
            print(f"sssc viz: image {missing[0]} is not in {s1.dir}", file=sys.stderr)
            return 2
        out = Path(args.out) if args.out else run / "viz"
        out.mkdir(parents=True, exist_ok=True)
        for i in ids:
            path = out / f"image_{i}.png"
            draw_image(refer, s1, s2, i).save(path)
            print(path)
    except (ConfigError, DatasetError, StoreError) as e:
        print(f"sssc viz: {e}", file=sys.stderr)
        return 2
    return 0
