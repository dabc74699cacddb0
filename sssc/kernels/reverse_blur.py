"""Reverse-blur visual prompts for CLIP: blur outside each mask, resize, crop, normalize.

Stage 2 of *Segment, Select, Correct* scores every candidate mask with CLIP on a "reverse blurred"
image: the pixels inside the mask are kept and everything else is blurred with a Gaussian of
``sigma = 50`` px (the visual prompt of Subramanian et al., ReCLIP). The paper's code does this per
mask at full resolution (OpenCV blur, composite, PIL resize). Here the work is reorganised so that
an image with ``C`` masks costs one blur and one pass over ``C x 3 x size x size`` outputs:

* CLIP's preprocessing is linear up to the normalization, which is affine, so for every mask
  ``out_c = Bn + a_c * (In - Bn)``, with ``In``/``Bn`` the preprocessed image/blurred image and
  ``a_c`` the mask resampled to the output grid (the fraction of mask under each output pixel).
* The blur and the resize are both separable linear maps. Per axis, the composition
  ``resize . blur`` is a ``[size, n]`` matrix whose rows are smooth on the scale of ``sigma``; it
  is applied to the image summed over blocks of ``f ~ sigma / 5`` pixels, so the cost does not
  grow with ``sigma`` (it shrinks). The matrix is built exactly, reflect-101 borders included,
  from the Gaussian's cumulative sum, whatever the ratio of ``sigma`` to the image size.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import _validate as _v
from ._backend import HAS_TRITON, resolve_backend

__all__ = ["CLIP_MEAN", "CLIP_STD", "reverse_blur", "reverse_blur_reference"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_BACKENDS = ("torch", "triton", "exact", "reference")
_CROPS = ("center", "none")
# Block size of the blur path is sigma / _BLOCK_SIGMAS pixels (at least 1): the error of replacing
# a smooth row of the resize-blur matrix by its block means grows with block / sigma.
_BLOCK_SIGMAS = 5.0
# The mask is resampled to the output grid with PIL's antialiased triangle (bilinear) filter: the
# fraction of the mask under each output pixel, smoothed over one output pixel.
_MASK_FILTER = "bilinear"


# --------------------------------------------------------------------------------------------
# Geometry and 1-D operators (shared by every backend)
# --------------------------------------------------------------------------------------------


def _geometry(height: int, width: int, size: int, crop: str) -> tuple[int, int, int, int]:
    """CLIP's resize-then-crop geometry: ``(resized_h, resized_w, crop_top, crop_left)``.

    ``center`` follows torchvision's ``Resize(size)`` (short side to ``size``, the long side
    truncated to an int) and ``CenterCrop(size)`` (offsets rounded half to even, as Python does).
    """
    if crop == "none":
        return size, size, 0, 0
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_h, new_w = size, int(size * width / height)
    return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def _filter(kind: str, x: torch.Tensor) -> torch.Tensor:
    """PIL's resampling filters: bicubic with ``a = -0.5`` (support 2), triangle (support 1)."""
    x = x.abs()
    if kind == "bicubic":
        a = -0.5
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
        return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))
    return (1.0 - x).clamp_min(0.0)


def _resize_taps(
    n_in: int, n_out: int, start: int, length: int, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps of PIL's antialiased 1-D resize (``ImagingResample``) for outputs ``start..+length``.

    Returns:
        ``idx [length, T]`` int64 input indices and ``w [length, T]`` float64 weights (rows sum to
        1; unused taps have weight 0 and a valid index).
    """
    support = {"bicubic": 2.0, "bilinear": 1.0}[kind]
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support *= fscale
    center = (torch.arange(start, start + length, dtype=torch.float64) + 0.5) * scale
    # PIL truncates (center - support + 0.5) toward zero, then clips to [0, n_in).
    lo = torch.clamp((center - support + 0.5).trunc(), min=0).long()
    hi = torch.clamp((center + support + 0.5).trunc(), max=n_in).long()
    taps = int((hi - lo).max().item()) if length else 1
    idx = lo[:, None] + torch.arange(max(taps, 1))[None, :]
    valid = idx < hi[:, None]
    w = _filter(kind, (idx.double() - center[:, None] + 0.5) / fscale) * valid
    w = w / w.sum(1, keepdim=True)
    return idx.clamp(max=n_in - 1), w


def _taps_matrix(idx: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
    """Dense ``[length, n_in]`` float64 matrix of a tap table."""
    mat = torch.zeros(idx.shape[0], n_in, dtype=torch.float64)
    return mat.scatter_add_(1, idx, w)


def _reflect101(x: torch.Tensor, n: int) -> torch.Tensor:
    """OpenCV's BORDER_REFLECT_101 for any integer index: mirror with period ``2 (n - 1)``."""
    if n == 1:
        return torch.zeros_like(x)
    period = 2 * (n - 1)
    y = torch.remainder(x, period)
    return torch.where(y > n - 1, period - y, y)


def _gauss_radius(sigma: float, integer_image: bool) -> int:
    """OpenCV's kernel radius for ``ksize=(0, 0)``: 3 sigma for 8-bit images, 4 sigma otherwise."""
    ksize = int(round(sigma * (3 if integer_image else 4) * 2 + 1)) | 1
    return ksize // 2


def _gauss_taps(sigma: float, radius: int) -> torch.Tensor:
    """Sampled, truncated, normalized Gaussian ``[2 r + 1]`` float64 (``cv2.getGaussianKernel``)."""
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(k * k) / (2.0 * sigma * sigma))
    return g / g.sum()


def _blur_matrix(n: int, sigma: float, radius: int) -> torch.Tensor:
    """Dense ``[n, n]`` float64 Gaussian blur with reflect-101 borders (for the reference)."""
    g = _gauss_taps(sigma, radius)
    q = torch.arange(n)[:, None]
    src = _reflect101(q + torch.arange(-radius, radius + 1)[None, :], n)
    return torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, src, g.expand(n, -1).clone())


def _pooled_blur_operator(
    n: int, sigma: float, radius: int, block: int, idx: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """``resize . blur`` along one axis, acting on the image summed over blocks of ``block`` px.

    ``U[i, j]`` is the mean over block ``j`` of row ``i`` of ``R K`` (``R`` the resize taps, ``K``
    the reflect-101 Gaussian), so ``U @ blocksum(x) ~= R K x``, exactly when ``block == 1``. ``K``
    is never formed: on the unfolded line ``[-r, n - 1 + r]`` every input pixel maps (mirrored,
    repeatedly when ``r >= n``) to a block, the line splits into runs of one block, and the
    weight of a run is a difference of the Gaussian's cumulative sum. The work is
    ``n * (n + 2 r) / block`` with ``block ~ sigma``, so it does not grow with ``sigma``.

    Returns:
        ``[length, ceil(n / block)]`` float64.
    """
    nb = -(-n // block)
    line = torch.arange(-radius, n + radius)
    blk = torch.div(_reflect101(line, n), block, rounding_mode="floor")
    starts = torch.ones_like(blk, dtype=torch.bool)
    starts[1:] = blk[1:] != blk[:-1]
    first = line[starts]
    last = torch.cat([first[1:] - 1, line[-1:]])
    run_blk = blk[starts]
    # cdf[d + r + 1] = sum of the taps at offsets <= d; offsets beyond the kernel clamp.
    taps = _gauss_taps(sigma, radius)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(taps, 0)])
    q = torch.arange(n)[:, None]
    hi = (last[None, :] - q).clamp(-radius - 1, radius) + radius + 1
    lo = (first[None, :] - 1 - q).clamp(-radius - 1, radius) + radius + 1
    kp = torch.zeros(n, nb, dtype=torch.float64)
    kp.index_add_(1, run_blk, cdf[hi] - cdf[lo])
    sizes = torch.full((nb,), float(block), dtype=torch.float64)
    sizes[-1] = n - block * (nb - 1)
    kp /= sizes
    return (w[:, :, None] * kp[idx]).sum(1)


def _block_sum(x: torch.Tensor, by: int, bx: int) -> torch.Tensor:
    """``[K, H, W]`` summed over ``by x bx`` blocks (zero-padded at the far edges)."""
    k, h, w = x.shape
    nby, nbx = -(-h // by), -(-w // bx)
    if nby * by != h or nbx * bx != w:
        x = F.pad(x, (0, nbx * bx - w, 0, nby * by - h))
    return x.reshape(k, nby, by, nbx, bx).sum((2, 4))


# --------------------------------------------------------------------------------------------
# Fast path: the per-image planes, then the per-mask composite
# --------------------------------------------------------------------------------------------


def _normalize_affine(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(3, 1, 1)
    return m, s


@functools.lru_cache(maxsize=64)
def _blur_operators(
    h: int, w: int, sigma: float, size: int, crop: str, integer_image: bool
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-axis ``resize . blur`` operators (float32, CPU) and block sizes, cached: images of one
    size (a dataset's usual case) build them once."""
    new_h, new_w, top, left = _geometry(h, w, size, crop)
    radius = _gauss_radius(sigma, integer_image)
    by = min(max(1, int(sigma / _BLOCK_SIGMAS)), h)
    bx = min(max(1, int(sigma / _BLOCK_SIGMAS)), w)
    uy = _pooled_blur_operator(h, sigma, radius, by, *_resize_taps(h, new_h, top, size, "bicubic"))
    ux = _pooled_blur_operator(w, sigma, radius, bx, *_resize_taps(w, new_w, left, size, "bicubic"))
    return uy.float(), ux.float(), by, bx


def _planes(
    image: torch.Tensor, sigma: float, size: int, crop: str, mean, std, integer_image: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Bn`` and ``In - Bn`` ``[3, size, size]`` float32: the normalized blurred image and the
    normalized difference between the sharp and the blurred image, at the output resolution."""
    _, h, w = image.shape
    new_h, new_w, top, left = _geometry(h, w, size, crop)
    m, s = _normalize_affine(mean, std, image.device)
    sharp = F.interpolate(
        image[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
    )[0, :, top : top + size, left : left + size]
    if sigma == 0:
        return (sharp - m) / s, torch.zeros_like(sharp)
    uy, ux, by, bx = _blur_operators(h, w, sigma, size, crop, integer_image)
    uy = uy.to(device=image.device, non_blocking=True)
    ux = ux.to(device=image.device, non_blocking=True)
    pooled = _block_sum(image, by, bx)
    # Contract the longer axis first: the second product then runs on the smaller array.
    if pooled.shape[2] >= pooled.shape[1]:
        blurred = uy @ (pooled @ ux.T)
    else:
        blurred = (uy @ pooled) @ ux.T
    bn = (blurred - m) / s
    return bn, sharp / s - blurred / s


def _mask_weights(masks: torch.Tensor, size: int, crop: str) -> torch.Tensor:
    """``a [C, size, size]`` float32: each mask resampled to the output grid (torch path)."""
    c, h, w = masks.shape
    new_h, new_w, top, left = _geometry(h, w, size, crop)
    m = masks.to(torch.float32)[:, None]
    a = F.interpolate(
        m, size=(new_h, new_w), mode=_MASK_FILTER, antialias=True, align_corners=False
    )
    return a[:, 0, top : top + size, left : left + size]


# Masks are converted to float and resampled this many bytes at a time: temporaries below glibc's
# mmap threshold are reused from the heap instead of being page-faulted in anew on every call.
_CHUNK_BYTES = 1 << 23


def _composite_torch(
    bn: torch.Tensor,
    diff: torch.Tensor,
    masks: torch.Tensor,
    size: int,
    crop: str,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out [C, 3, size, size] = bn + a_c * diff`` with ``a_c`` from :func:`_mask_weights`."""
    c, h, w = masks.shape
    if out is None:
        out = torch.empty(c, 3, size, size, dtype=torch.float32, device=bn.device)
    step = max(1, _CHUNK_BYTES // (4 * h * w)) if bn.device.type == "cpu" else max(c, 1)
    for i in range(0, c, step):
        a = _mask_weights(masks[i : i + step], size, crop)
        torch.addcmul(bn, a[:, None], diff, out=out[i : i + step])
    return out


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _composite_kernel(
        out_ptr,
        mask_ptr,
        bn_ptr,
        diff_ptr,
        yidx_ptr,
        yw_ptr,
        xidx_ptr,
        xw_ptr,
        out_h,
        out_w,
        tiles_x,
        s_oc,
        s_ok,
        s_oy,
        s_ox,
        s_mc,
        s_my,
        s_mx,
        s_pk,
        s_py,
        s_px,
        TAPS_Y: tl.constexpr,
        TAPS_X: tl.constexpr,
        BLOCK_Y: tl.constexpr,
        BLOCK_X: tl.constexpr,
    ):
        """One program per (mask, output tile): resample the mask, composite, store 3 channels."""
        c = tl.program_id(0).to(tl.int64)
        tile = tl.program_id(1)
        oy = (tile // tiles_x) * BLOCK_Y + tl.arange(0, BLOCK_Y)
        ox = (tile % tiles_x) * BLOCK_X + tl.arange(0, BLOCK_X)
        in_y = oy < out_h
        in_x = ox < out_w
        inside = in_y[:, None] & in_x[None, :]
        acc = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
        mask_base = mask_ptr + c * s_mc
        for ky in tl.static_range(TAPS_Y):
            iy = tl.load(yidx_ptr + oy * TAPS_Y + ky, mask=in_y, other=0)
            wy = tl.load(yw_ptr + oy * TAPS_Y + ky, mask=in_y, other=0.0)
            for kx in tl.static_range(TAPS_X):
                ix = tl.load(xidx_ptr + ox * TAPS_X + kx, mask=in_x, other=0)
                wx = tl.load(xw_ptr + ox * TAPS_X + kx, mask=in_x, other=0.0)
                m = tl.load(
                    mask_base + iy[:, None] * s_my + ix[None, :] * s_mx, mask=inside, other=0
                )
                acc += (wy[:, None] * wx[None, :]) * m.to(tl.float32)
        plane = oy[:, None] * s_py + ox[None, :] * s_px
        dst = out_ptr + c * s_oc + oy[:, None] * s_oy + ox[None, :] * s_ox
        for k in tl.static_range(3):
            bn = tl.load(bn_ptr + k * s_pk + plane, mask=inside, other=0.0)
            diff = tl.load(diff_ptr + k * s_pk + plane, mask=inside, other=0.0)
            tl.store(dst + k * s_ok, bn + acc * diff, mask=inside)


def _composite_triton(
    bn: torch.Tensor,
    diff: torch.Tensor,
    masks: torch.Tensor,
    size: int,
    crop: str,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same as :func:`_composite_torch`, fused in one Triton kernel (``out`` may be strided)."""
    c, h, w = masks.shape
    dev = bn.device
    if out is None:
        out = torch.empty(c, 3, size, size, dtype=torch.float32, device=dev)
    if c == 0:
        return out
    if masks.dtype == torch.bool:
        masks = masks.view(torch.uint8)  # free; Triton loads bytes and converts
    new_h, new_w, top, left = _geometry(h, w, size, crop)
    yidx, yw = _resize_taps(h, new_h, top, size, _MASK_FILTER)
    xidx, xw = _resize_taps(w, new_w, left, size, _MASK_FILTER)
    yidx, xidx = (t.to(device=dev, dtype=torch.int32).contiguous() for t in (yidx, xidx))
    yw, xw = (t.to(device=dev, dtype=torch.float32).contiguous() for t in (yw, xw))
    bn, diff = bn.contiguous(), diff.contiguous()
    block_y, block_x = 16, 32
    tiles_x = triton.cdiv(size, block_x)
    grid = (c, triton.cdiv(size, block_y) * tiles_x)
    _composite_kernel[grid](
        out,
        masks,
        bn,
        diff,
        yidx,
        yw,
        xidx,
        xw,
        size,
        size,
        tiles_x,
        *out.stride(),
        *masks.stride(),
        *bn.stride(),
        TAPS_Y=yidx.shape[1],
        TAPS_X=xidx.shape[1],
        BLOCK_Y=block_y,
        BLOCK_X=block_x,
    )
    return out


# --------------------------------------------------------------------------------------------
# Reference and dispatcher
# --------------------------------------------------------------------------------------------


def reverse_blur_reference(
    image: torch.Tensor,
    masks: torch.Tensor,
    sigma: float = 50.0,
    size: int = 336,
    crop: str = "center",
    mean=CLIP_MEAN,
    std=CLIP_STD,
) -> torch.Tensor:
    """The exact full-resolution path in float64, one mask at a time (slow, obviously correct).

    Blur the whole image with a dense reflect-101 Gaussian matrix per axis (OpenCV's kernel), then
    for each mask: composite at full resolution, resize with PIL's antialiased bicubic weights
    (for a uint8 image, each pass clipped to [0, 1] as PIL clips an 8-bit image's), crop,
    normalize. Inputs are assumed valid (see :func:`reverse_blur`).

    Returns:
        ``[C, 3, size, size]`` float32 on the input's device.
    """
    integer_image = not image.dtype.is_floating_point
    img = image.detach().to("cpu", torch.float64)
    if integer_image:
        img = img / 255.0
    _, h, w = img.shape
    if sigma > 0:
        radius = _gauss_radius(sigma, integer_image)
        blurred = _blur_matrix(h, sigma, radius) @ img @ _blur_matrix(w, sigma, radius).T
    else:
        blurred = img
    new_h, new_w, top, left = _geometry(h, w, size, crop)
    ry = _taps_matrix(*_resize_taps(h, new_h, top, size, "bicubic"), h)
    rx = _taps_matrix(*_resize_taps(w, new_w, left, size, "bicubic"), w)
    m = torch.as_tensor(mean, dtype=torch.float64).reshape(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float64).reshape(3, 1, 1)
    outs = []
    for mask in masks.detach().to("cpu", torch.float64):
        composite = mask * img + (1.0 - mask) * blurred
        outs.append((_pil_resize(composite, ry, rx, integer_image) - m) / s)
    out = torch.stack(outs) if outs else torch.zeros(0, 3, size, size, dtype=torch.float64)
    return out.to(device=image.device, dtype=torch.float32)


@functools.lru_cache(maxsize=16)
def _exact_operators(
    h: int, w: int, sigma: float, size: int, crop: str, integer_image: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dense float32 (CPU) operators of the exact path, cached per image size: the blur along
    each axis (the identity for ``sigma == 0``) and PIL's resize taps, as matrices."""
    if sigma > 0:
        radius = _gauss_radius(sigma, integer_image)
        by, bx = _blur_matrix(h, sigma, radius), _blur_matrix(w, sigma, radius)
    else:
        by, bx = torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64)
    new_h, new_w, top, left = _geometry(h, w, size, crop)
    ry = _taps_matrix(*_resize_taps(h, new_h, top, size, "bicubic"), h)
    rx = _taps_matrix(*_resize_taps(w, new_w, left, size, "bicubic"), w)
    return by.float(), bx.float(), ry.float(), rx.float()


def _reverse_blur_exact(
    image: torch.Tensor,
    masks: torch.Tensor,
    sigma: float,
    size: int,
    crop: str,
    mean,
    std,
    per_box: bool | None = None,
) -> torch.Tensor:
    """The reference's math in float32, on the input's device: one blur per image, then per mask
    the composite at full resolution and PIL's two resize passes as matrix products (the
    official order; its uint8 rounding is not reproduced).

    On CUDA the masks go through the dense products in one batch. On the CPU each mask costs its
    bounding box instead of the image (:func:`_exact_in_boxes`), with the same formula;
    ``per_box`` overrides that choice (the tests and the bench compare the two)."""
    integer_image = not image.dtype.is_floating_point
    img = image.to(torch.float32)
    if integer_image:
        img = img / 255.0
    _, h, w = img.shape
    dev = img.device
    by, bx, ry, rx = (
        t.to(dev, non_blocking=True)
        for t in _exact_operators(h, w, sigma, size, crop, integer_image)
    )
    blurred = by @ img @ bx.T  # [3, H, W]
    m, s = _normalize_affine(mean, std, dev)
    diff = img - blurred
    if per_box is None:
        per_box = dev.type == "cpu"
    exact = _exact_in_boxes if per_box else _exact_dense
    return exact(blurred, diff, masks, ry, rx, integer_image, m, s)


def _exact_dense(
    blurred: torch.Tensor,
    diff: torch.Tensor,
    masks: torch.Tensor,
    ry: torch.Tensor,
    rx: torch.Tensor,
    clip: bool,
    m: torch.Tensor,
    s: torch.Tensor,
) -> torch.Tensor:
    """The exact path as dense batched products (CUDA; the CPU's until 2026-12-07): every mask's
    full-resolution composite ``B + m_c * D`` through both resize passes, all masks at once on
    CUDA, a few at a time on the CPU. Returns ``[C, 3, S, S]`` float32."""
    c, h, w = masks.shape
    out = torch.empty(c, 3, ry.shape[0], rx.shape[0], dtype=torch.float32, device=blurred.device)
    step = max(1, _CHUNK_BYTES // (12 * h * w)) if blurred.device.type == "cpu" else max(c, 1)
    for i in range(0, c, step):
        comp = torch.addcmul(blurred, masks[i : i + step].to(torch.float32)[:, None], diff)
        out[i : i + step] = (_pil_resize(comp, ry, rx, clip) - m) / s
    return out


def _true_span(b: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and one past the last index of a True along ``dim`` of a bool tensor (both
    meaningless where there is none)."""
    n = b.shape[dim]
    return b.to(torch.int8).argmax(dim), n - b.flip(dim).to(torch.int8).argmax(dim)


def _tap_span(r: torch.Tensor) -> tuple[list[int], list[int]]:
    """For each input pixel of a resize matrix ``r`` ``[S, n]``: the first and one past the last
    output pixel whose taps reach it (``(S, 0)`` for a pixel that the crop drops)."""
    used = r != 0
    any_ = used.any(0)
    first, end = _true_span(used, 0)
    return torch.where(any_, first, r.shape[0]).tolist(), torch.where(any_, end, 0).tolist()


def _exact_in_boxes(
    blurred: torch.Tensor,
    diff: torch.Tensor,
    masks: torch.Tensor,
    ry: torch.Tensor,
    rx: torch.Tensor,
    clip: bool,
    m: torch.Tensor,
    s: torch.Tensor,
) -> torch.Tensor:
    """The exact path on the CPU, mask by mask over its bounding box.

    The composite is ``B + m_c * D`` (``D = I - B``) and PIL's horizontal pass is linear, so its
    output is ``B rx^T`` (once per image) plus ``(m_c * D) rx^T``, which is zero outside the rows
    of the mask's box and the output columns whose taps reach the box. Only that window changes,
    so only it is clipped (8-bit images) and passed through ``ry`` again, on top of the blurred
    image's output; the rest of the prompt is the blurred image's prompt. The same formula as the
    dense products, summed in another order (float32 rounding apart), at a cost that follows the
    box's area instead of the image's.

    Returns:
        ``[C, 3, S, S]`` float32.
    """
    c = masks.shape[0]
    hb = blurred @ rx.T  # [3, H, S]: the horizontal pass of the blurred image
    hbc = hb.clamp(0.0, 1.0) if clip else hb
    base = ry @ hbc  # [3, S, S]: its vertical pass
    out = ((base.clamp(0.0, 1.0) if clip else base) - m) / s
    out = out.expand(c, *out.shape).clone()
    if c == 0:
        return out
    set_ = masks if masks.dtype == torch.bool else masks != 0
    # (max over uint8 bytes: a tenth of the time of torch's any over bool on the CPU)
    set_ = set_.view(torch.uint8)
    rows = set_.amax(2) != 0  # [C, H]
    has = rows.any(1).tolist()
    y_lo, y_hi = (t.tolist() for t in _true_span(rows, 1))
    j_first, j_last = _tap_span(rx)
    i_first, i_last = _tap_span(ry)
    for k in range(c):
        if not has[k]:
            continue
        y0, y1 = y_lo[k], y_hi[k]
        x0, x1 = (int(t) for t in _true_span(set_[k, y0:y1].amax(0) != 0, 0))  # the box's rows
        j0, j1 = min(j_first[x0:x1]), max(j_last[x0:x1])
        i0, i1 = min(i_first[y0:y1]), max(i_last[y0:y1])
        if j1 <= j0 or i1 <= i0:  # the crop drops the whole box
            continue
        inside = masks[k, y0:y1, x0:x1].to(torch.float32) * diff[:, y0:y1, x0:x1]
        # Both passes as single 2-D products: channels stacked with the rows, then the columns.
        delta = (inside.view(-1, x1 - x0) @ rx[j0:j1, x0:x1].T).view(3, y1 - y0, j1 - j0)
        if clip:
            delta = (hb[:, y0:y1, j0:j1] + delta).clamp_(0.0, 1.0) - hbc[:, y0:y1, j0:j1]
        vert = ry[i0:i1, y0:y1] @ delta.transpose(0, 1).reshape(y1 - y0, -1)
        window = base[:, i0:i1, j0:j1] + vert.view(i1 - i0, 3, j1 - j0).transpose(0, 1)
        if clip:
            window = window.clamp_(0.0, 1.0)
        out[k, :, i0:i1, j0:j1] = (window - m) / s
    return out


def _pil_resize(x: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor, clip: bool) -> torch.Tensor:
    """PIL's separable resize as matrices: the horizontal pass, then the vertical one; for an
    8-bit image each pass's output is clipped to [0, 1], as PIL clips each pass's overshoot to
    [0, 255] (its rounding to integers is not reproduced)."""
    x = x @ rx.T
    if clip:
        x = x.clamp(0.0, 1.0)
    x = ry @ x
    return x.clamp(0.0, 1.0) if clip else x


def _check(image, masks, sigma, size, crop) -> None:
    if not isinstance(image, torch.Tensor) or not isinstance(masks, torch.Tensor):
        raise ValueError(
            f"reverse_blur: image and masks must be torch tensors, got {type(image).__name__} "
            f"and {type(masks).__name__}"
        )
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"reverse_blur: image must be [3, H, W], got shape {tuple(image.shape)}")
    if masks.dim() != 3:
        raise ValueError(f"reverse_blur: masks must be [C, H, W], got shape {tuple(masks.shape)}")
    if masks.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"reverse_blur: masks H x W must match image H x W; masks shape {tuple(masks.shape)}, "
            f"image shape {tuple(image.shape)}"
        )
    if image.dtype != torch.uint8 and not image.dtype.is_floating_point:
        raise ValueError(f"reverse_blur: image must be uint8 or float, got dtype {image.dtype}")
    if masks.dtype.is_complex:
        raise ValueError(f"reverse_blur: masks must be bool, uint8 or float, got {masks.dtype}")
    _v.same_device("reverse_blur", "masks", masks, "image", image)
    _v.finite_number("reverse_blur", "sigma", sigma, 0.0, strict=False)
    if int(size) != size or size < 1:
        raise ValueError(f"reverse_blur: size must be an integer >= 1, got size={size}")
    if crop not in _CROPS:
        raise ValueError(f"reverse_blur: crop={crop!r} is unknown; choose one of {_CROPS}")


def reverse_blur(
    image: torch.Tensor,
    masks: torch.Tensor,
    sigma: float = 50.0,
    size: int = 336,
    crop: str = "center",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    backend: str = "auto",
) -> torch.Tensor:
    """CLIP inputs for every mask of one image, with everything outside the mask blurred.

    For each mask ``c``, ``out[c] = normalize(crop(resize(m_c * I + (1 - m_c) * G_sigma(I))))``
    where ``G_sigma`` is a Gaussian blur of standard deviation ``sigma`` input pixels with
    reflect-101 borders (OpenCV's default; its kernel radius, 3 sigma for uint8 images and 4 sigma
    for float ones, is used too). The resize is PIL's antialiased bicubic (``a = -0.5``), the one
    CLIP's torchvision preprocessing applies to PIL images: ``crop="center"`` resizes the short
    side to ``size`` (long side truncated) and center-crops, ``crop="none"`` resizes to
    ``size x size`` ignoring the aspect ratio. ``normalize`` is ``(x - mean) / std`` per channel.

    Dtype policy: uint8 images are scaled by 1/255; the fast backends compute in float32 (their
    operators are built in float64), the reference in float64; the output is float32.

    This is the visual prompt of Subramanian et al. (ReCLIP, 2022) as used by Segment, Select,
    Correct to score SAM candidates with CLIP (sigma = 50 px).

    The fast backends (``torch``, ``triton``) blur once per image (cost independent of
    ``sigma``) and write all ``C`` outputs in one pass as ``Bn + a_c * (In - Bn)``, with ``a_c``
    the mask averaged over each output pixel (antialiased triangle filter): an approximation of
    the composite-then-resize above whose mean absolute difference to it, before normalization,
    is well under 0.01 of the [0, 1] range, but up to a few hundredths at mask edges (so it can
    tip near-tied CLIP choices; README, deviation row 35). ``exact`` computes the formula as it
    is (the reference's math in float32, on any device: dense batched products on CUDA, each
    mask's bounding box on the CPU): the official prompt up to its uint8 rounding.

    Args:
        image: ``[3, H, W]`` uint8, or float in [0, 1].
        masks: ``[C, H, W]`` bool (uint8 or float 0/1 accepted).
        sigma: blur standard deviation in input pixels (the paper: 50); 0 means no blur.
        size: output side (336 for CLIP ViT-L/14@336px).
        crop: ``"center"`` or ``"none"``.
        mean, std: per-channel normalization (CLIP's by default).
        backend: ``"auto"`` (Triton on CUDA, torch on CPU), ``"torch"``, ``"triton"``,
            ``"exact"`` or ``"reference"``; ``SSSC_KERNEL_BACKEND`` overrides ``"auto"``.

    Returns:
        ``[C, 3, size, size]`` float32 on the input's device.

    Raises:
        ValueError: bad shapes, dtypes, ``sigma`` (negative or non-finite), ``size`` or ``crop``.
    """
    _check(image, masks, sigma, size, crop)
    sigma, size = float(sigma), int(size)
    name = resolve_backend("reverse_blur", backend, image.device, _BACKENDS, cpu_default="torch")
    if name == "reference":
        return reverse_blur_reference(image, masks, sigma, size, crop, mean, std)
    if name == "exact":
        return _reverse_blur_exact(image, masks, sigma, size, crop, mean, std)
    integer_image = not image.dtype.is_floating_point
    img = image.to(torch.float32)
    if integer_image:
        img = img / 255.0
    bn, diff = _planes(img, sigma, size, crop, mean, std, integer_image)
    if name == "triton":
        return _composite_triton(bn, diff, masks, size, crop)
    return _composite_torch(bn, diff, masks, size, crop)
