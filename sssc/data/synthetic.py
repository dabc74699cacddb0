"""A synthetic referring dataset in the REFER on-disk format, generated in seconds on a CPU.

Each image holds 3 to 5 flat shapes (categories ``circle``, ``square``, ``triangle``) in one of
four colours, usually with two or three instances of the same category, so that an expression has
to use an attribute, a relation or a superlative to pick one out:

* attribute:   ``"the red circle"``
* relation:    ``"the circle left of the square"``, ``"the triangle above the blue square"``
* superlative: ``"the largest circle"``, ``"the leftmost triangle"``

Every expression is TRUE and UNIQUE for its object under these rules, on the visible part of each
instance (its GT mask): ``A left of B`` means A's box centre is left of B's (likewise right of,
above, below); ``the largest X`` means the X with the largest visible area; ``the leftmost X`` the X
whose box centre is leftmost. The generator keeps a margin (8% of the image for positions, 30% for
areas) so that the choice is also clear to the eye. Objects with fewer than three such expressions
are drawn but not referred to.

Shapes may overlap, but every instance keeps at least 70% of its pixels visible and touching
shapes differ in colour; its GT mask is the visible part. ``instances.json`` stores it as COCO
polygons, as RefCOCO does, so that REFER's ``getMask`` and LAVT's loader read it: the visible part
cut into non-overlapping rectangles along pixel edges (each row's runs of pixels, merged down the
rows while they stay the same), which pycocotools rasterises back to exactly those pixels (checked
for every annotation as it is written).
Annotations also carry ``"shape"`` and ``"color"``.
Splits are by image: by default about 80% train, 10% val, 10% test (``val_images`` and
``test_images`` set other sizes).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = ["COLORS", "SHAPES", "ensure_generated", "generate", "mask_polygons", "split_sizes"]

SHAPES = ("circle", "square", "triangle")
COLORS = {  # RGB, far apart so that a colour name is never in doubt
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}
_VERSION = 2  # 2: polygons (1 stored bare RLE dicts, which REFER's getMask cannot read)
_MIN_VISIBLE = 0.7  # fraction of an instance's pixels that must stay visible
_POS_MARGIN = 0.08  # of the image size, for left/right/above/below and leftmost/...
_AREA_RATIO = 1.3  # largest/smallest must beat every other instance by this factor
_PLACE_TRIES = 30


@dataclass
class _Obj:
    shape: str
    color: str
    full: np.ndarray  # bool [S, S], as drawn
    visible: np.ndarray | None = None  # bool [S, S], after later shapes are drawn over it
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x, y, w, h of the visible part
    area: int = 0

    @property
    def cx(self) -> float:
        return self.bbox[0] + self.bbox[2] / 2

    @property
    def cy(self) -> float:
        return self.bbox[1] + self.bbox[3] / 2


def generate(
    out_dir: str | Path,
    seed: int = 0,
    num_images: int = 2200,
    image_size: int = 96,
    replace: bool = True,
    val_images: int = 100,
    test_images: int = 100,
) -> Path:
    """Write the synthetic dataset under ``out_dir`` in the REFER layout.

    Writes ``<out>/synthetic/instances.json``, ``<out>/synthetic/refs(synthetic).p``,
    ``<out>/synthetic/images/*.png`` and ``<out>/synthetic/generator.json`` (the settings). The
    defaults make the embedded default's dataset (``configs/synthetic.yaml``): 2,200 images, 100
    of them val and 100 test. The folder is built under a temporary name next to it and renamed
    into place, so a reader never sees half a dataset. Same arguments, same bytes.

    An existing ``<out>/synthetic`` is never removed unless sssc generated it (its
    ``generator.json`` says so) and ``replace`` is true; then it is swapped out atomically.

    Args:
        out_dir: the dataset root (``data.root``).
        seed: RNG seed.
        num_images: number of images.
        image_size: side of the square images, in pixels (at least 32).
        replace: replace an earlier sssc-generated folder; if false, one that appeared while
            this one was written (another run) is kept and this one discarded.
        val_images: images in the val split (0: a tenth of ``num_images``).
        test_images: images in the test split (0: a tenth of ``num_images``).

    Returns:
        The dataset folder ``<out>/synthetic``.

    Raises:
        ValueError: bad sizes, or ``<out>/synthetic`` exists and sssc did not generate it.
    """
    if num_images < 1 or image_size < 32:
        raise ValueError(
            f"generate: need num_images >= 1 and image_size >= 32, got {num_images}, {image_size}"
        )
    split_sizes(num_images, val_images, test_images)  # raises on sizes that do not fit
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "synthetic"
    if final.exists() and _stored_settings(final) is None:
        raise ValueError(_foreign(final))
    _sweep_dead_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".synthetic.tmp-{os.getpid()}-", dir=out))
    try:
        _write(tmp, seed, num_images, image_size, val_images, test_images)
        try:
            os.replace(tmp, final)  # only succeeds when final is absent (or an empty folder)
        except OSError:
            if not replace:  # another run made it meanwhile: theirs stays, ours goes
                return final
            if _stored_settings(final) is None:
                raise ValueError(_foreign(final)) from None
            old = Path(tempfile.mkdtemp(prefix=f".synthetic.old-{os.getpid()}-", dir=out))
            os.replace(final, old / "synthetic")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)  # sssc's own earlier dataset
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # ours, half written
    return final


def _foreign(folder: Path) -> str:
    return (
        f"{folder}: exists and was not generated by sssc (no sssc generator.json); sssc never "
        "removes it. Give another dataset root for the synthetic dataset (data.root; --out of "
        "`sssc data synth`)"
    )


def _stored_settings(folder: Path) -> dict | None:
    """The settings an sssc-generated dataset folder was made with; ``None`` if not sssc's."""
    try:
        d = json.loads((folder / "generator.json").read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("generator") == "sssc.data.synthetic" else None


def _sweep_dead_temporaries(out: Path) -> None:
    """Remove the half-written folders of generator runs that were killed (their pid is gone)."""
    from ..rundir import pid_alive

    for p in out.glob(".synthetic.*-*-*"):
        kind, _, rest = p.name.partition("-")
        if kind not in (".synthetic.tmp", ".synthetic.old") or not p.is_dir():
            continue
        pid = rest.split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def ensure_generated(data_cfg: Any) -> Path:
    """The synthetic dataset of a ``DataConfig``: generated when missing, never replaced.

    Raises:
        DatasetError: ``<root>/synthetic`` exists but sssc did not generate it, or generated it
            with other ``data.synth`` settings (both values named); it is left as it is.
    """
    from .refer import DatasetError

    synth = data_cfg.synth
    settings = _settings(
        synth.seed, synth.num_images, synth.image_size, synth.val_images, synth.test_images
    )
    folder = Path(data_cfg.root) / "synthetic"
    if folder.exists():
        stored = _stored_settings(folder)
        if stored is None:
            raise DatasetError(_foreign(folder))
        if stored != settings:
            there, now = _with_split_sizes(stored), _with_split_sizes(settings)
            diff = ", ".join(
                f"{k}: {there.get(k)!r} there, {v!r} now"
                for k, v in now.items()
                if there.get(k) != v
            )
            raise DatasetError(
                f"{folder}: generated with other data.synth settings ({diff}); it may be in use "
                "by another run, so it is not replaced. Set data.root to another folder for these "
                f"settings, or regenerate it with `sssc data synth --out {data_cfg.root} "
                f"--seed {synth.seed} --num-images {synth.num_images} --image-size "
                f"{synth.image_size} --val-images {synth.val_images} --test-images "
                f"{synth.test_images}`"
            )
        return folder
    print(
        f"sssc: generating the synthetic dataset in {folder} "
        f"(seed={synth.seed}, num_images={synth.num_images}, image_size={synth.image_size}, "
        f"val_images={synth.val_images}, test_images={synth.test_images})",
        file=sys.stderr,
    )
    try:
        return generate(
            data_cfg.root,
            synth.seed,
            synth.num_images,
            synth.image_size,
            replace=False,
            val_images=synth.val_images,
            test_images=synth.test_images,
        )
    except ValueError as e:
        raise DatasetError(str(e)) from None


def _settings(
    seed: int, num_images: int, image_size: int, val_images: int = 0, test_images: int = 0
) -> dict:
    out = {
        "generator": "sssc.data.synthetic",
        "version": _VERSION,
        "seed": seed,
        "num_images": num_images,
        "image_size": image_size,
    }
    # Split sizes other than a tenth each are recorded (a folder made before they could be set
    # holds the tenths, and its generator.json stays valid).
    n_val, n_test = split_sizes(num_images, val_images, test_images)
    tenth = split_sizes(num_images, 0, 0)
    if (n_val, n_test) != tenth:
        out.update(val_images=n_val, test_images=n_test)
    return out


def _with_split_sizes(settings: dict) -> dict:
    """Settings with the split sizes spelled out (a tenth each where they are not recorded)."""
    out = dict(settings)
    n = out.get("num_images")
    if isinstance(n, int) and n >= 1 and "val_images" not in out:
        out["val_images"], out["test_images"] = split_sizes(n)
    return out


def _write(
    folder: Path, seed: int, num_images: int, image_size: int, val_images: int, test_images: int
) -> None:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir()
    splits = _image_splits(num_images, rng, *split_sizes(num_images, val_images, test_images))
    images, anns, refs = [], [], []
    cat_id = {s: i + 1 for i, s in enumerate(SHAPES)}
    sent_id = 0
    for k in range(num_images):
        image_id = k + 1
        file_name = f"synthetic_{image_id:06d}.png"
        img, objs = _draw_image(rng, image_size)
        Image.fromarray(img).save(folder / "images" / file_name, compress_level=1)
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size}
        )
        ann_ids = []
        for o in objs:
            polygons = mask_polygons(o.visible)
            ann_ids.append(len(anns) + 1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[o.shape],
                    "segmentation": polygons,
                    "area": o.area,
                    "bbox": list(o.bbox),
                    "iscrowd": 0,
                    "shape": o.shape,
                    "color": o.color,
                }
            )
        for i, o in enumerate(objs):
            exprs = _choose_expressions(rng, objs, i, image_size)
            if exprs is None:
                continue
            sentences = []
            for e in exprs:
                sentences.append({"sent_id": sent_id, "sent": e, "raw": e, "tokens": e.split()})
                sent_id += 1
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": ann_ids[i],
                    "image_id": image_id,
                    "split": splits[k],
                    "category_id": cat_id[o.shape],
                    "file_name": file_name,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "sentences": sentences,
                }
            )
    coco = {
        "info": _settings(seed, num_images, image_size, val_images, test_images),
        "images": images,
        "annotations": anns,
        "categories": [{"id": cat_id[s], "name": s, "supercategory": "shape"} for s in SHAPES],
    }
    (folder / "instances.json").write_text(json.dumps(coco))
    # Protocol 2, as the published REFER files (written by Python 2).
    (folder / "refs(synthetic).p").write_bytes(pickle.dumps(refs, protocol=2))
    (folder / "generator.json").write_text(
        json.dumps(_settings(seed, num_images, image_size, val_images, test_images))
    )


def mask_polygons(mask: np.ndarray) -> list[list[int]]:
    """COCO polygons that pycocotools rasterises to exactly ``mask``, none overlapping another.

    Each polygon is a rectangle along pixel edges (``[x0, y0, x1, y0, x1, y1, x0, y1]`` covers
    columns ``x0..x1-1`` of rows ``y0..y1-1``): the runs of set pixels of each row, a run merged
    with the one below while the next row has a run with the same extent.

    Raises:
        RuntimeError: pycocotools rasterises the polygons otherwise (checked on every call).
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return []
    padded = np.vstack([mask, np.zeros((1, w), bool)]).view(np.uint8)  # an empty row closes runs
    open_runs: dict[tuple[int, int], int] = {}  # (x0, x1) -> first row
    rects: list[tuple[int, int, int, int]] = []
    for y in range(int(rows[0]), int(rows[-1]) + 2):
        edges = np.flatnonzero(np.diff(padded[y], prepend=0, append=0))
        runs = set(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))
        for run in [r for r in open_runs if r not in runs]:
            rects.append((run[0], open_runs.pop(run), run[1], y))
        for run in runs:
            open_runs.setdefault(run, y)
    polys = [
        [x0, y0, x1, y0, x1, y1, x0, y1]
        for x0, y0, x1, y1 in sorted(rects, key=lambda r: (r[1], r[0]))
    ]
    rles = mask_utils.frPyObjects(polys, h, w)
    union = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    # The union is the mask and the areas add up to it: no pixel is covered twice.
    if not np.array_equal(union, mask) or int(mask_utils.area(rles).sum()) != int(mask.sum()):
        raise RuntimeError("mask_polygons: pycocotools rasterised the polygons otherwise")
    return polys


def split_sizes(num_images: int, val_images: int = 0, test_images: int = 0) -> tuple[int, int]:
    """The val and test image counts of the synthetic dataset (0: a tenth of the images each).

    Raises:
        ValueError: a negative count, or no image left for train.
    """
    if val_images < 0 or test_images < 0:
        raise ValueError(
            f"val_images and test_images must be >= 0, got {val_images} and {test_images}"
        )
    n = num_images
    n_val = val_images or (n // 10 if n >= 10 else int(n >= 2))
    n_test = test_images or (n // 10 if n >= 10 else int(n >= 3))
    if n_val + n_test >= n:
        raise ValueError(
            f"val_images ({n_val}) and test_images ({n_test}) leave no train image of {n} "
            "(num_images); 0 for both makes them a tenth of the images each"
        )
    return n_val, n_test


def _image_splits(n: int, rng: np.random.Generator, n_val: int, n_test: int) -> list[str]:
    names = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return [names[i] for i in rng.permutation(n)]


def _shape_mask(shape: str, cx: int, cy: int, s: int, size: int) -> np.ndarray:
    """bool ``[S, S]``: the pixels whose centre (integer coordinates) lies in the shape."""
    yy, xx = _grid(size)
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= s * s
    if shape == "square":
        h = max(int(round(s * 0.9)), 2)  # about a circle's area
        return (abs(xx - cx) <= h) & (abs(yy - cy) <= h)
    # Triangle, apex up: below the base line and inside both slanted edges.
    h = int(round(s * 1.2))
    base = cy + h * 3 // 4
    depth = base - (cy - h)  # apex to base, in rows
    return (yy <= base) & (abs(xx - cx) * depth <= h * (yy - (cy - h)))


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    yy.flags.writeable = xx.flags.writeable = False  # shared between calls
    return yy, xx


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation (the mask and its 8-neighbours)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])


def _draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[_Obj]]:
    """One image: RGB uint8 ``[S, S, 3]`` and its instances, in drawing order."""
    n = int(rng.integers(3, 6))
    main = SHAPES[int(rng.integers(len(SHAPES)))]
    n_main = min(n, int(rng.integers(2, 4)))  # 2-3 of one category: the hard case
    shapes = [main] * n_main + [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n - n_main)]
    shapes = [shapes[i] for i in rng.permutation(n)]
    color_names = list(COLORS)
    objs: list[_Obj] = []
    for shape in shapes:
        for _ in range(_PLACE_TRIES):
            s = int(rng.uniform(0.08, 0.18) * size)
            cx, cy = (int(v) for v in rng.integers(s + 1, size - s - 1, size=2))
            full = _shape_mask(shape, cx, cy, s, size)
            # The new shape is drawn on top: each earlier one must stay mostly visible.
            if not all((o.visible & ~full).sum() >= _MIN_VISIBLE * o.full.sum() for o in objs):
                continue
            # Touching shapes of one colour would read as one blob: give them different colours.
            near = _dilate(full)
            taken = {o.color for o in objs if (o.full & near).any()}
            free = [c for c in color_names if c not in taken]
            if free:
                break
        else:
            continue  # no room left: draw fewer shapes
        color = free[int(rng.integers(len(free)))]
        for o in objs:
            o.visible = o.visible & ~full
        objs.append(_Obj(shape, color, full, visible=full.copy()))
    bg = rng.integers(190, 246, size=3)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    for o in objs:
        img[o.full] = COLORS[o.color]
        ys, xs = np.nonzero(o.visible)
        o.area = int(len(ys))
    for o in objs:
        ys, xs = np.nonzero(o.visible)
        o.bbox = (
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        )
    return img, objs


def _choose_expressions(
    rng: np.random.Generator, objs: list[_Obj], i: int, size: int
) -> list[str] | None:
    """Three true, unique expressions for ``objs[i]``, one of each kind where possible."""
    kinds = _candidate_expressions(objs, i, size * _POS_MARGIN)
    pools = [list(kinds[k]) for k in ("attribute", "relation", "superlative")]
    if sum(len(p) for p in pools) < 3:
        return None
    for p in pools:
        rng.shuffle(p)
    chosen: list[str] = []
    order = [int(j) for j in rng.permutation(len(pools))]
    while len(chosen) < 3:  # round robin over the kinds, so expressions differ in kind
        for j in order:
            if pools[j] and len(chosen) < 3:
                chosen.append(pools[j].pop())
    return chosen


def _candidate_expressions(objs: list[_Obj], i: int, margin: float) -> dict[str, list[str]]:
    t = objs[i]
    same = [o for j, o in enumerate(objs) if o.shape == t.shape and j != i]
    out: dict[str, list[str]] = {"attribute": [], "relation": [], "superlative": []}
    if not any(o.color == t.color for o in same):
        out["attribute"].append(f"the {t.color} {t.shape}")
    if same:
        others = same
        tests = {
            "largest": all(t.area >= _AREA_RATIO * o.area for o in others),
            "smallest": all(o.area >= _AREA_RATIO * t.area for o in others),
            "leftmost": all(t.cx + margin <= o.cx for o in others),
            "rightmost": all(t.cx >= o.cx + margin for o in others),
            "topmost": all(t.cy + margin <= o.cy for o in others),
            "bottommost": all(t.cy >= o.cy + margin for o in others),
        }
        out["superlative"] += [f"the {w} {t.shape}" for w, ok in tests.items() if ok]
    for lm in objs:
        if lm.shape == t.shape:
            continue
        same_lm = [o for o in objs if o.shape == lm.shape]
        if len(same_lm) == 1:
            lm_phrase = f"the {lm.shape}"
        elif sum(o.color == lm.color for o in same_lm) == 1:
            lm_phrase = f"the {lm.color} {lm.shape}"
        else:
            continue  # the landmark itself would be ambiguous
        # The target holds with a margin; every other instance of its shape fails outright.
        rels = {  # word: (target holds with the margin, some other instance holds at all)
            "left of": (t.cx + margin <= lm.cx, any(o.cx < lm.cx for o in same)),
            "right of": (t.cx >= lm.cx + margin, any(o.cx > lm.cx for o in same)),
            "above": (t.cy + margin <= lm.cy, any(o.cy < lm.cy for o in same)),
            "below": (t.cy >= lm.cy + margin, any(o.cy > lm.cy for o in same)),
        }
        for word, (target_ok, other_ok) in rels.items():
            if target_ok and not other_ok:
                out["relation"].append(f"the {t.shape} {word} {lm_phrase}")
    return out
