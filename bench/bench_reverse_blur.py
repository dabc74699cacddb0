"""reverse_blur (Stage 2's visual prompt) for one image and its candidate masks, beside baseline.

All providers see ``sssc.kernels.testing.random_image(480, 640)`` and 30
``sssc.kernels.testing.blob_masks``, sigma = 50 px, CLIP ViT-L/14@336px preprocessing. Providers:

- ``opencv_per_mask``: the paper's way, per mask: ``cv2.GaussianBlur`` of the full image,
  composite, PIL ``Image.resize`` bicubic (short side 336), center crop, to tensor, normalize.
- ``ours``: ``reverse_blur`` on CPU tensors (torch backend): one blur, one fused pass (an
  approximation at mask edges: ``select.models.composite: fast``).
- ``exact_dense``: the official composite-then-resize in float32 as dense batched products over
  every mask's full-resolution composite (the exact backend's CUDA path; its CPU path until
  2026-12-07), in chunks of 8 MB of masks as that CPU path ran.
- ``exact``: ``reverse_blur(backend="exact")`` on CPU tensors: the same formula, each mask's
  work over its bounding box (``select.models.composite: exact``, Stage 2's default).
- ``triton``: ``reverse_blur`` on CUDA (skipped without a GPU).

``extra_info`` records images/s and masks/s, the speed-up over ``opencv_per_mask`` measured in the
same run, and for ``exact`` the speed-up over ``exact_dense``. A second group sweeps sigma (5, 50,
200) for ``ours`` to show that the cost does not grow with sigma.
"""

from __future__ import annotations

import importlib

import cv2
import numpy as np
import pytest
import torch
from benchutil import mean_seconds
from PIL import Image

from sssc.kernels import CLIP_MEAN, CLIP_STD, reverse_blur
from sssc.kernels.testing import blob_masks, random_image

HEIGHT, WIDTH, NUM_MASKS, SIZE = 480, 640, 30, 336
PROVIDERS = ["opencv_per_mask", "ours", "exact_dense", "exact", "triton"]
_MEANS: dict[str, float] = {}  # provider -> mean seconds, for the speed-up in the same run


def opencv_per_mask(
    image_hwc: np.ndarray, masks: np.ndarray, sigma: float = 50.0, size: int = SIZE
) -> torch.Tensor:
    """The per-mask loop of the paper's code: blur, composite, PIL resize, crop, normalize."""
    mean = torch.tensor(CLIP_MEAN).reshape(3, 1, 1)
    std = torch.tensor(CLIP_STD).reshape(3, 1, 1)
    h, w = image_hwc.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_h, new_w = size, int(size * w / h)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    outs = []
    for m in masks:
        blurred = cv2.GaussianBlur(image_hwc, (0, 0), sigma)
        composite = np.where(m[..., None], image_hwc, blurred)
        pil = Image.fromarray(composite).resize((new_w, new_h), Image.BICUBIC)
        pil = pil.crop((left, top, left + size, top + size))
        t = torch.from_numpy(np.asarray(pil)).permute(2, 0, 1).float() / 255.0
        outs.append((t - mean) / std)
    return torch.stack(outs)


def exact_dense(image: torch.Tensor, masks: torch.Tensor, sigma: float = 50.0, size: int = SIZE):
    """The exact formula as dense products over every mask's full-resolution composite."""
    rb = importlib.import_module("sssc.kernels.reverse_blur")
    return rb._reverse_blur_exact(
        image, masks, sigma, size, "center", CLIP_MEAN, CLIP_STD, per_box=False
    )


@pytest.fixture(scope="module")
def blur_inputs():
    image = random_image(HEIGHT, WIDTH)
    masks = blob_masks(NUM_MASKS, HEIGHT, WIDTH)
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    expected = opencv_per_mask(hwc, masks[:3])  # accuracy check on a few masks, not timed
    return image, masks, hwc, expected


def _record(benchmark, provider: str, masks: int) -> None:
    mean = mean_seconds(benchmark)
    _MEANS[provider] = mean
    benchmark.extra_info.update(
        provider=provider, images_per_s=1.0 / mean, masks_per_s=masks / mean
    )
    if provider != "opencv_per_mask" and "opencv_per_mask" in _MEANS:
        benchmark.extra_info["speedup_vs_opencv_per_mask"] = _MEANS["opencv_per_mask"] / mean
    if provider == "exact" and "exact_dense" in _MEANS:
        benchmark.extra_info["speedup_vs_exact_dense"] = _MEANS["exact_dense"] / mean


def _mae_01(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference in [0, 1] pixel units (undo the normalization's std)."""
    std = torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
    return float(((a.cpu() - b.cpu()) * std).abs().mean())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reverse_blur_providers(benchmark, blur_inputs, provider):
    image, masks, hwc, expected = blur_inputs
    benchmark.group = f"reverse_blur {WIDTH}x{HEIGHT} C={NUM_MASKS} sigma=50 size={SIZE}"
    if provider == "opencv_per_mask":
        out = benchmark.pedantic(opencv_per_mask, args=(hwc, masks), rounds=2, iterations=1)
    elif provider == "exact_dense":
        out = benchmark(exact_dense, torch.from_numpy(image), torch.from_numpy(masks))
    elif provider in ("ours", "exact"):
        img, m = torch.from_numpy(image), torch.from_numpy(masks)
        backend = "torch" if provider == "ours" else "exact"
        out = benchmark(reverse_blur, img, m, 50.0, SIZE, backend=backend)
    else:
        if not torch.cuda.is_available():
            pytest.skip("triton provider needs a CUDA device")
        img, m = torch.from_numpy(image).cuda(), torch.from_numpy(masks).cuda()

        def fn():
            res = reverse_blur(img, m, 50.0, SIZE, backend="triton")
            torch.cuda.synchronize()
            return res

        fn()  # compile before timing
        out = benchmark(fn)
    assert out.shape == (NUM_MASKS, 3, SIZE, SIZE)
    assert _mae_01(out[:3], expected) <= 0.01
    _record(benchmark, provider, NUM_MASKS)


@pytest.mark.parametrize("sigma", [5.0, 50.0, 200.0], ids=lambda s: f"sigma{s:g}")
def test_reverse_blur_sigma_sweep(benchmark, blur_inputs, sigma):
    image, masks, _, _ = blur_inputs
    benchmark.group = f"reverse_blur ours sigma sweep {WIDTH}x{HEIGHT} C={NUM_MASKS}"
    img, m = torch.from_numpy(image), torch.from_numpy(masks)
    out = benchmark(reverse_blur, img, m, sigma, SIZE, backend="torch")
    assert torch.isfinite(out).all()
    mean = mean_seconds(benchmark)
    benchmark.extra_info.update(sigma=sigma, images_per_s=1.0 / mean, masks_per_s=NUM_MASKS / mean)
