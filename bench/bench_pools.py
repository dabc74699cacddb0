"""Reading an image's S1 pools: whole, painted (``select.candidates: painted``), and the official
code's way, its label PNGs.

16 images of 480x640, 12 SAM-like candidates each (``sssc.kernels.testing.blob_masks``) and 3
objects per image eligible for 6 of them (two objects share their set, as objects of one class
do). Every provider ends with each object's candidate masks decoded, as a Stage 2 or Stage 3
loader needs them:

- ``whole``: the stored RLEs decoded (``select.candidates: whole``, sssc's default).
- ``painted``: :func:`sssc.store.pools.paint_pools` (paint, read back, re-encode), then decoded.
- ``official_png``: what the official loaders do per object: open the object's label PNG
  (written beforehand by ``plt.imsave(cmap=gray)``, not timed), ``convert("L")``, split by value.

``extra_info`` records ms per image and, for ``painted``, its time over ``official_png`` and over
``whole`` (means of the same run). The painted masks are checked against the official ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from benchutil import mean_seconds

from sssc.data import masks as _masks
from sssc.kernels.testing import blob_masks
from sssc.store import ImageRecord, s1_record
from sssc.store.pools import paint_pools, painted_nonempty

IMAGES, CANDS, HEIGHT, WIDTH = 16, 12, 480, 640
OBJECTS = [[0, 2, 4, 6, 8, 10], [0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]
_MEANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """Per image: its S1 line and the paths of its objects' official label PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm

    d = tmp_path_factory.mktemp("pools")
    out = []
    for i in range(IMAGES):
        masks = blob_masks(CANDS, HEIGHT, WIDTH, seed=i, max_frac=0.2)
        cands = [
            {"rle": _masks.encode(m), "box": [0, 0, 1, 1], "score": 0.5, "label": "thing"}
            for m in masks
        ]
        line = s1_record(i, HEIGHT, WIDTH, cands, list(enumerate(OBJECTS)))
        paths = []
        for k, el in enumerate(OBJECTS):
            label = np.zeros((HEIGHT, WIDTH))
            for v, c in enumerate(el, 1):
                label[masks[c]] = v
            paths.append(d / f"pseudo_gt_mask_{i}_{k}.png")
            plt.imsave(paths[-1], label, cmap=cm.gray)
        out.append((line, paths))
    return out


def _whole(pools):
    out = []
    for line, _ in pools:
        rec = ImageRecord._from_json(line)
        out.append([[rec.candidate(c).decode() for c in o.eligible] for o in rec.objects])
    return out


def _painted(pools):
    out = []
    for line, _ in pools:
        rec = paint_pools(ImageRecord._from_json(line))
        out.append([[rec.candidate(c).decode() for c in o.eligible] for o in rec.objects])
    return out


def _official_png(pools):
    from PIL import Image

    out = []
    for _, paths in pools:
        per = []
        for p in paths:
            g = np.array(Image.open(p).convert("L"))
            per.append([g == v for v in np.unique(g) if v != 0])
        out.append(per)
    return out


@pytest.mark.parametrize("provider", ["official_png", "whole", "painted"])
def test_pool_readers(benchmark, pools, provider):
    benchmark.group = f"S1 pools of {IMAGES} images, 480x640, 3 objects x 6 of 12 candidates"
    fn = {"official_png": _official_png, "whole": _whole, "painted": _painted}[provider]
    out = benchmark.pedantic(fn, (pools,), rounds=3, iterations=1)
    mean = mean_seconds(benchmark)
    _MEANS[provider] = mean
    benchmark.extra_info["ms_per_image"] = 1e3 * mean / IMAGES
    if provider == "painted":
        for base in ("official_png", "whole"):
            if base in _MEANS:
                benchmark.extra_info[f"time_over_{base}"] = mean / _MEANS[base]
        want = _official_png(pools)
        for got_img, want_img in zip(out, want, strict=True):
            for got, w in zip(got_img, want_img, strict=True):
                assert [g.tobytes() for g in got] == [m.tobytes() for m in w]


def _check_by_painting(pools):
    """Which objects keep a candidate, by painting every pool (sssc before the tenth session)."""
    return [
        {o.ann_id for o in paint_pools(ImageRecord._from_json(line)).objects if o.eligible}
        for line, _ in pools
    ]


def _check_by_areas(pools):
    """The same from the candidates' areas (``painted_nonempty``, what the plan uses now)."""
    return [painted_nonempty(ImageRecord._from_json(line)) for line, _ in pools]


@pytest.mark.parametrize("provider", ["by_painting", "by_areas"])
def test_which_pools_keep_a_candidate(benchmark, pools, provider):
    """The check a ``samples`` plan makes of every train image at a correct phase's start under
    painted pools: which objects have a target."""
    benchmark.group = f"target check of {IMAGES} images, 480x640, painted pools"
    fn = {"by_painting": _check_by_painting, "by_areas": _check_by_areas}[provider]
    out = benchmark.pedantic(fn, (pools,), rounds=3, iterations=1)
    mean = mean_seconds(benchmark)
    _MEANS[f"check_{provider}"] = mean
    benchmark.extra_info["ms_per_image"] = 1e3 * mean / IMAGES
    if provider == "by_areas" and "check_by_painting" in _MEANS:
        benchmark.extra_info["speedup_over_painting"] = _MEANS["check_by_painting"] / mean
    assert out == _check_by_painting(pools)
