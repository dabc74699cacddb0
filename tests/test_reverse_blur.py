"""reverse_blur against independent references: OpenCV's blur and PIL's resize, as the paper did.

The expected outputs are computed here from OpenCV (``cv2.GaussianBlur``, reflect-101 borders) and
PIL (``Image.resize`` bicubic, what CLIP's torchvision preprocessing does to PIL images), with the
resize/crop geometry rewritten from torchvision's formulas, so they share no code with the kernel.
"""

from __future__ import annotations

import math
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from triton_compile import run_compile_script

from sssc.kernels import CLIP_MEAN, CLIP_STD, reverse_blur, reverse_blur_reference
from sssc.kernels._backend import HAS_TRITON, triton_interpret
from sssc.kernels.testing import blob_masks, random_image

# ``sssc.kernels.reverse_blur`` is the function (re-exported); the module holds the private paths.
rb = sys.modules["sssc.kernels.reverse_blur"]

MEAN = np.asarray(CLIP_MEAN, dtype=np.float64).reshape(3, 1, 1)
STD = np.asarray(CLIP_STD, dtype=np.float64).reshape(3, 1, 1)

needs_triton = pytest.mark.skipif(
    not HAS_TRITON or not (torch.cuda.is_available() or triton_interpret()),
    reason="Triton needs CUDA or the interpreter (TRITON_INTERPRET=1)",
)


# --------------------------------------------------------------------------------------------
# Independent pipeline: OpenCV blur, composite at full resolution, PIL resize, crop
# --------------------------------------------------------------------------------------------


def _clip_geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """torchvision Resize(size) + CenterCrop(size): (new_h, new_w, top, left)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def _pil_resize(hwc: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """PIL bicubic resize of an HxWx3 uint8 (as RGB) or float (per channel, mode F) image, to
    float64 in [0, 1]."""
    if hwc.dtype == np.uint8:
        out = Image.fromarray(hwc).resize((new_w, new_h), Image.BICUBIC)
        return np.asarray(out).astype(np.float64) / 255.0
    chans = [
        np.asarray(
            Image.fromarray(hwc[..., k].astype(np.float32), mode="F").resize(
                (new_w, new_h), Image.BICUBIC
            )
        )
        for k in range(3)
    ]
    return np.stack(chans, -1).astype(np.float64)


def opencv_pipeline(
    image: np.ndarray, masks: np.ndarray, sigma: float, size: int, crop: str = "center"
) -> np.ndarray:
    """The paper's way, per mask: returns [C, 3, size, size] float64 in [0, 1], not normalized."""
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    h, w = hwc.shape[:2]
    if sigma > 0:
        blurred = cv2.GaussianBlur(hwc, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    else:
        blurred = hwc
    if crop == "none":
        new_h, new_w, top, left = size, size, 0, 0
    else:
        new_h, new_w, top, left = _clip_geometry(h, w, size)
    outs = []
    for m in masks:
        keep = m.astype(bool)[..., None]
        composite = np.where(keep, hwc, blurred)
        resized = _pil_resize(composite, new_h, new_w)
        outs.append(resized[top : top + size, left : left + size].transpose(2, 0, 1))
    return np.stack(outs) if outs else np.zeros((0, 3, size, size))


def unnormalize(out: torch.Tensor) -> np.ndarray:
    return out.detach().cpu().double().numpy() * STD + MEAN


def mae(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean()) if a.size else 0.0


def make_inputs(h: int, w: int, c: int, image_dtype: str, mask_dtype: str = "bool", seed: int = 0):
    img = random_image(h, w, seed=seed)
    if image_dtype == "float32":
        img = img.astype(np.float32) / 255.0
    masks = blob_masks(c, h, w, seed=seed + 1)
    if mask_dtype == "uint8":
        masks = masks.astype(np.uint8)
    elif mask_dtype == "float32":
        masks = masks.astype(np.float32)
    return img, masks


SHAPES = [
    pytest.param(480, 640, 336, id="landscape480x640"),
    pytest.param(300, 200, 336, id="portrait300x200"),
    pytest.param(90, 257, 64, id="wide90x257"),
    pytest.param(20, 17, 48, id="tiny20x17"),
]


# --------------------------------------------------------------------------------------------
# Against OpenCV + PIL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [5.0, 50.0], ids=lambda s: f"sigma{s:g}")
@pytest.mark.parametrize("image_dtype", ["uint8", "float32"])
@pytest.mark.parametrize("h,w,size", SHAPES)
def test_matches_opencv(h, w, size, image_dtype, sigma):
    img, masks = make_inputs(h, w, 3, image_dtype)
    expected = opencv_pipeline(img, masks, sigma, size)
    out = reverse_blur(torch.from_numpy(img), torch.from_numpy(masks), sigma=sigma, size=size)
    assert out.shape == (3, 3, size, size) and out.dtype == torch.float32
    assert mae(unnormalize(out), expected) <= 0.01
    # The blurred part really is blurred: a sharp-only output would be far from OpenCV's.
    plain = opencv_pipeline(img, np.ones_like(masks), 0.0, size)
    assert mae(plain, expected) > 0.01


@pytest.mark.parametrize("sigma", [5.0, 50.0], ids=lambda s: f"sigma{s:g}")
@pytest.mark.parametrize("h,w,size", SHAPES)
def test_reference_is_exact(h, w, size, sigma):
    """The float64 reference equals OpenCV + PIL on float images up to float32 rounding, also
    when the kernel is wider than the image (reflect-101 folds many times)."""
    img, masks = make_inputs(h, w, 2, "float32")
    expected = opencv_pipeline(img, masks, sigma, size)
    ref = reverse_blur_reference(torch.from_numpy(img), torch.from_numpy(masks), sigma, size)
    assert mae(unnormalize(ref), expected) <= 2e-5


@pytest.mark.parametrize("crop", ["center", "none"])
@pytest.mark.parametrize("sigma", [0.0, 5.0, 50.0, 200.0], ids=lambda s: f"sigma{s:g}")
@pytest.mark.parametrize("image_dtype", ["uint8", "float32"])
@pytest.mark.parametrize("h,w,size", SHAPES)
def test_exact_backend_is_the_reference_in_float32(h, w, size, image_dtype, sigma, crop):
    """``backend="exact"`` (Stage 2's default prompt) computes the reference's formula, batched
    in float32: composite at full resolution, then resize."""
    img, masks = make_inputs(h, w, 4, image_dtype)
    args = (torch.from_numpy(img), torch.from_numpy(masks), sigma, size, crop)
    out = reverse_blur(*args, backend="exact")
    assert out.shape == (4, 3, size, size) and out.dtype == torch.float32
    ref = reverse_blur_reference(*args)
    assert float((out - ref).abs().max()) <= 2e-5


def _awkward_masks(h: int, w: int) -> torch.Tensor:
    """Masks whose boxes test the exact path's per-box work: empty, one pixel in each corner
    (which the center crop of a non-square image drops), a row, a column, two far-apart specks
    (one box spanning the image), the whole image, and a blob."""
    masks = torch.zeros(10, h, w, dtype=torch.bool)
    masks[1, 0, 0] = masks[2, h - 1, w - 1] = masks[3, 0, w - 1] = True
    masks[4, h // 2, :] = True
    masks[5, :, w // 3] = True
    masks[6, 1, 2] = masks[6, h - 2, w - 3] = True
    masks[7] = True
    masks[8] = torch.from_numpy(blob_masks(1, h, w, seed=5)[0])
    masks[9, h // 4 : h // 2, w // 5 : w // 2] = True
    return masks


@pytest.mark.parametrize("crop", ["center", "none"])
@pytest.mark.parametrize("image_dtype", ["uint8", "float32"])
@pytest.mark.parametrize("h,w,size", SHAPES)
def test_exact_backend_per_box_equals_the_dense_products(h, w, size, image_dtype, crop):
    """On the CPU the exact backend works over each mask's bounding box; its output equals the
    dense batched products it replaces (CUDA's path, run here on the CPU) and the float64
    reference, for boxes that are empty, one pixel, cropped away or the whole image."""
    img = torch.from_numpy(make_inputs(h, w, 1, image_dtype)[0])
    masks = _awkward_masks(h, w)
    rb = sys.modules["sssc.kernels.reverse_blur"]
    args = (img, masks, 50.0, size, crop, CLIP_MEAN, CLIP_STD)
    dense = rb._reverse_blur_exact(*args, per_box=False)
    out = reverse_blur(img, masks, 50.0, size, crop, backend="exact")
    assert float((out - dense).abs().max()) <= 2e-5
    assert float((out - reverse_blur_reference(img, masks, 50.0, size, crop)).abs().max()) <= 2e-5
    # uint8 and float 0/1 masks give the same prompts as bool ones
    for other in (masks.to(torch.uint8), masks.to(torch.float32)):
        assert torch.equal(reverse_blur(img, other, 50.0, size, crop, backend="exact"), out)
    if crop == "center" and abs(w - h) / 2 > 10:  # the crop drops the corners' pixels (far
        # beyond the resize's taps): their prompts are the empty mask's, the blurred image's
        for k in (1, 2, 3):
            assert torch.equal(out[k], out[0])
        assert not torch.equal(out[4], out[0])  # a row through the middle is kept


def test_exact_backend_matches_the_official_uint8_pipeline_where_the_fast_one_does_not():
    """At mask edges the fast backend's per-pixel mask average is not the official
    composite-then-resize; the exact one is, up to the official uint8 rounding (OpenCV's blur,
    the uint8 composite, PIL's resize)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8).repeat(20, 0).repeat(20, 1)
    img = np.ascontiguousarray(img.transpose(2, 0, 1))  # [3, 120, 160] colour blocks
    masks = np.zeros((4, 120, 160), bool)
    for k, (y0, y1, x0, x1) in enumerate([(10, 70, 20, 90), (0, 120, 75, 85), (33, 37, 0, 160),
                                          (50, 118, 101, 159)]):  # fmt: skip
        masks[k, y0:y1, x0:x1] = True
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    blurred = cv2.GaussianBlur(hwc, (0, 0), 50.0, borderType=cv2.BORDER_REFLECT_101)
    new_h, new_w, top, left = _clip_geometry(120, 160, 64)
    official = []
    for m in masks:  # all in uint8, as the official code
        comp = np.where(m[..., None], hwc, blurred)
        pil = Image.fromarray(comp).resize((new_w, new_h), Image.BICUBIC)
        official.append(np.asarray(pil)[top : top + 64, left : left + 64].transpose(2, 0, 1))
    official = np.stack(official).astype(np.float64) / 255.0
    args = (torch.from_numpy(img), torch.from_numpy(masks), 50.0, 64)
    exact = np.abs(unnormalize(reverse_blur(*args, backend="exact")) - official).max()
    fast = np.abs(unnormalize(reverse_blur(*args, backend="torch")) - official).max()
    assert exact <= 2.5 / 255  # rounding: the blur's, the composite's and the resize's
    assert fast > 5 / 255  # the approximation, at the mask edges


@pytest.mark.parametrize("sigma", [5.0, 50.0, 200.0], ids=lambda s: f"sigma{s:g}")
@pytest.mark.parametrize("h,w,size", SHAPES)
def test_fast_path_close_to_reference(h, w, size, sigma):
    img, masks = make_inputs(h, w, 3, "uint8")
    args = (torch.from_numpy(img), torch.from_numpy(masks), sigma, size)
    out = unnormalize(reverse_blur(*args, backend="torch"))
    ref = unnormalize(reverse_blur_reference(*args))
    # The differences sit on mask boundaries; upsampling (the tiny image) widens them.
    rel_tol = 0.015 if size > min(h, w) else 0.005
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) <= rel_tol
    assert mae(out, ref) <= 3e-3


@pytest.mark.parametrize("mask_dtype", ["bool", "uint8", "float32"])
@pytest.mark.parametrize("c", [0, 1, 5], ids=lambda c: f"C{c}")
def test_mask_dtypes_and_counts(c, mask_dtype):
    img, masks = make_inputs(60, 80, c, "uint8", mask_dtype)
    out = reverse_blur(torch.from_numpy(img), torch.from_numpy(masks), sigma=5, size=32)
    assert out.shape == (c, 3, 32, 32) and out.dtype == torch.float32
    assert mae(unnormalize(out), opencv_pipeline(img, masks, 5, 32)) <= 0.01


@pytest.mark.parametrize("image_dtype", ["uint8", "float32"])
def test_all_one_and_all_zero_masks(image_dtype):
    img, _ = make_inputs(120, 90, 0, image_dtype)
    h, w = img.shape[1:]
    masks = np.stack([np.ones((h, w), bool), np.zeros((h, w), bool), np.ones((h, w), bool)])
    out = unnormalize(reverse_blur(torch.from_numpy(img), torch.from_numpy(masks), 50, 64))
    # All-one: the plain preprocessed image, exactly (the mask weights sum to 1 everywhere).
    plain = opencv_pipeline(
        img.astype(np.float32) / (255.0 if image_dtype == "uint8" else 1.0), masks[:1], 0.0, 64
    )[0]
    np.testing.assert_allclose(out[0], plain, atol=1e-4)
    np.testing.assert_array_equal(out[0], out[2])
    # All-zero: the preprocessed blurred image.
    assert mae(out[1], opencv_pipeline(img, masks[1:2], 50.0, 64)[0]) <= 0.005
    assert mae(out[1], plain) > 0.01


def test_sigma_zero_is_plain_preprocessing():
    img, masks = make_inputs(70, 100, 3, "uint8")
    out = unnormalize(reverse_blur(torch.from_numpy(img), torch.from_numpy(masks), 0.0, 40))
    plain = opencv_pipeline(img.astype(np.float32) / 255.0, masks[:1], 0.0, 40)[0]
    for c in range(3):
        np.testing.assert_allclose(out[c], plain, atol=1e-4)


@pytest.mark.parametrize("sigma", [5.0, 50.0], ids=lambda s: f"sigma{s:g}")
def test_crop_none_resizes_without_keeping_aspect(sigma):
    img, masks = make_inputs(90, 160, 3, "uint8")
    out = reverse_blur(torch.from_numpy(img), torch.from_numpy(masks), sigma, 48, crop="none")
    assert mae(unnormalize(out), opencv_pipeline(img, masks, sigma, 48, crop="none")) <= 0.01


def test_custom_mean_std_and_reference_backend():
    img, masks = make_inputs(50, 40, 2, "uint8")
    args = (
        torch.from_numpy(img),
        torch.from_numpy(masks),
        50.0,
        24,
        "center",
        (0, 0, 0),
        (1, 1, 1),
    )
    out = reverse_blur(*args).double().numpy()
    assert mae(out, opencv_pipeline(img, masks, 50.0, 24)) <= 0.01
    ref = reverse_blur(*args, backend="reference")
    torch.testing.assert_close(ref, reverse_blur_reference(*args))


# --------------------------------------------------------------------------------------------
# Building blocks against brute force / PIL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_in,n_out",
    [(480, 336), (640, 448), (17, 336), (7, 7), (1, 5), (333, 64)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("kind", ["bicubic", "bilinear"])
def test_resize_taps_match_pil(n_in, n_out, kind):
    row = np.random.default_rng(n_in).random(n_in).astype(np.float32)
    pil_filter = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[kind]
    expected = np.asarray(Image.fromarray(row[None], mode="F").resize((n_out, 1), pil_filter))[0]
    mat = rb._taps_matrix(*rb._resize_taps(n_in, n_out, 0, n_out, kind), n_in)
    np.testing.assert_allclose(mat.numpy() @ row, expected, atol=1e-5)


@pytest.mark.parametrize(
    "n,sigma,block",
    [
        (480, 50.0, 10),
        (480, 5.0, 1),
        (17, 50.0, 10),
        (20, 50.0, 1),
        (2, 3.0, 1),
        (1, 50.0, 1),
        (1, 5.0, 1),
        (333, 200.0, 40),
        (96, 5.0, 3),
    ],
    ids=lambda v: str(v),
)
def test_pooled_blur_operator_is_resize_times_blur(n, sigma, block):
    """The run/CDF construction equals the brute-force product resize @ blur @ block-mean."""
    radius = rb._gauss_radius(sigma, integer_image=False)
    n_out = max(1, (n * 7) // 10)
    idx, w = rb._resize_taps(n, n_out, 0, n_out, "bicubic")
    # Brute force from OpenCV itself: blurring the identity along axis 0 gives K column by column.
    blur = cv2.GaussianBlur(
        np.eye(n), (1, 2 * radius + 1), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
    )
    nb = -(-n // block)
    pool = np.zeros((n, nb))
    for p in range(n):
        pool[p, p // block] = 1.0
    pool /= pool.sum(0, keepdims=True)
    expected = rb._taps_matrix(idx, w, n).numpy() @ blur @ pool
    got = rb._pooled_blur_operator(n, sigma, radius, block, idx, w).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Triton (interpreter on CPU) against the torch composite
# --------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("mask_dtype", ["bool", "uint8", "float32"])
@pytest.mark.parametrize(
    "h,w,size,crop",
    [(30, 40, 19, "center"), (45, 23, 37, "center"), (9, 13, 20, "none"), (40, 40, 16, "center")],
    ids=lambda v: str(v),
)
def test_triton_matches_torch(h, w, size, crop, mask_dtype):
    img, masks = make_inputs(h, w, 3, "uint8", mask_dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    image = torch.from_numpy(img).to(device)
    m = torch.from_numpy(masks).to(device)
    bn, diff = rb._planes(image.float() / 255, 50.0, size, crop, CLIP_MEAN, CLIP_STD, True)
    out = torch.full((3, 3, size, size), math.nan, device=device)  # unwritten elements stay NaN
    rb._composite_triton(bn, diff, m, size, crop, out=out)
    assert torch.isfinite(out).all()
    expected = rb._composite_torch(bn, diff, m, size, crop)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    full = reverse_blur(image, m, 50.0, size, crop, backend="triton")
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-5)


@needs_triton
def test_triton_empty_and_strided_output():
    img, masks = make_inputs(24, 20, 0, "float32")
    out = reverse_blur(torch.from_numpy(img), torch.from_numpy(masks), 5.0, 8, backend="triton")
    assert out.shape == (0, 3, 8, 8)
    img, masks = make_inputs(24, 20, 2, "float32")
    bn, diff = rb._planes(torch.from_numpy(img), 5.0, 8, "center", CLIP_MEAN, CLIP_STD, False)
    big = torch.full((2, 3, 8, 16), math.nan)
    rb._composite_triton(bn, diff, torch.from_numpy(masks), 8, "center", out=big[..., ::2])
    assert torch.isfinite(big[..., ::2]).all() and torch.isnan(big[..., 1::2]).all()
    torch.testing.assert_close(
        big[..., ::2], rb._composite_torch(bn, diff, torch.from_numpy(masks), 8, "center")
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _good():
    return torch.zeros(3, 10, 12, dtype=torch.uint8), torch.zeros(2, 10, 12, dtype=torch.bool)


@pytest.mark.parametrize(
    "case,match",
    [
        ("image_rank", r"image must be \[3, H, W\], got shape \(10, 12\)"),
        ("image_channels", r"image must be \[3, H, W\], got shape \(4, 10, 12\)"),
        ("masks_rank", r"masks must be \[C, H, W\], got shape \(10, 12\)"),
        ("mismatch", r"masks H x W must match image H x W; masks shape \(2, 10, 11\)"),
        ("sigma_negative", r"sigma must be a finite number >= 0; got -1"),
        ("sigma_nan", r"sigma must be a finite number >= 0; got nan"),
        ("sigma_inf", r"sigma must be a finite number >= 0; got inf"),
        ("size_zero", r"size must be an integer >= 1, got size=0"),
        ("crop", r"crop='left' is unknown"),
        ("image_dtype", r"image must be uint8 or float, got dtype torch.int32"),
    ],
)
def test_bad_input_raises(case, match):
    image, masks = _good()
    kwargs = {}
    if case == "image_rank":
        image = image[0]
    elif case == "image_channels":
        image = torch.zeros(4, 10, 12, dtype=torch.uint8)
    elif case == "masks_rank":
        masks = masks[0]
    elif case == "mismatch":
        masks = masks[:, :, :11]
    elif case == "sigma_negative":
        kwargs["sigma"] = -1
    elif case == "sigma_nan":
        kwargs["sigma"] = float("nan")
    elif case == "sigma_inf":
        kwargs["sigma"] = float("inf")
    elif case == "size_zero":
        kwargs["size"] = 0
    elif case == "crop":
        kwargs["crop"] = "left"
    elif case == "image_dtype":
        image = image.int()
    with pytest.raises(ValueError, match=match):
        reverse_blur(image, masks, **kwargs)


_COMPILE_SM90 = r"""
import importlib

# the package re-exports the function under the module's name
rb = importlib.import_module("sssc.kernels.reverse_blur")

ints = ["out_h", "out_w", "tiles_x", "s_oc", "s_ok", "s_oy", "s_ox", "s_mc", "s_my", "s_mx",
        "s_pk", "s_py", "s_px"]
signature = dict(out_ptr="*fp32", mask_ptr="*u8", bn_ptr="*fp32", diff_ptr="*fp32",
                 yidx_ptr="*i32", yw_ptr="*fp32", xidx_ptr="*i32", xw_ptr="*fp32")
signature.update({n: "i32" for n in ints})
signature.update(TAPS_Y="constexpr", TAPS_X="constexpr", BLOCK_Y="constexpr",
                 BLOCK_X="constexpr")
# the wrapper's launch settings for a 480 x 640 image at CLIP's 336 (downscaling taps)
new_h, new_w, top, left = rb._geometry(480, 640, 336, "center")
taps_y = rb._resize_taps(480, new_h, top, 336, rb._MASK_FILTER)[0].shape[1]
taps_x = rb._resize_taps(640, new_w, left, 336, rb._MASK_FILTER)[0].shape[1]
compiled = compile_sm90(
    rb._composite_kernel, signature,
    dict(TAPS_Y=taps_y, TAPS_X=taps_x, BLOCK_Y=16, BLOCK_X=32),
)
assert compiled.asm["cubin"]
print("OK")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package")
def test_triton_kernel_compiles_for_sm90():
    """The real compiler lowers the composite kernel for Hopper with the wrapper's settings, in a
    fresh process with a cold Triton cache (see ``triton_compile``)."""
    run_compile_script(_COMPILE_SM90)
