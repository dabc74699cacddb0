"""Pairwise soft IoU: the pseudo-IoU of every (prediction, candidate) pair of an image, batched.

Segment, Select, Correct matches each predicted mask to the candidate masks of its image by a
differentiable IoU, the pseudo-IoU of Romera-Paredes & Torr ("Recurrent Instance Segmentation",
ECCV 2016)::

    I[n, c] = sum_k p[n, k] * m[c, k]
    U[n, c] = sum_k p[n, k] + sum_k m[c, k] - I[n, c]
    IoU[n, c] = I[n, c] / max(U[n, c], eps)

The intersection is a GEMM ``P @ M.T`` over the flattened pixels and the two sums are row sums. With
image ids (``pred_group``, ``cand_group``) only same-image pairs are computed, per image block,
and every other entry is ``-inf``. The backward pass, with ``g = dL/dIoU``, ``a = g / U`` and
``b = g * I / U**2`` (``a = g / eps`` and ``b = 0`` where ``U < eps``), is again one GEMM per
block::

    dL/dp[n, k] = sum_c (a + b)[n, c] * m[c, k] - sum_c b[n, c]

Backends:

* ``numba`` (CPU default): a parallel kernel over (image block, pixel band) that walks each mask
  as 8-pixel words. SAM masks are compact blobs covering about a tenth of the image, so most of the
  GEMM multiplies by zero: all-zero spans of words are skipped with one vectorised OR, a run of
  all-one words (a blob's inside) costs one difference of the predictions' prefix sums, and only
  the words on a blob's edge are multiplied out. It reads every mask byte once and never converts
  masks to float. The backward pass is the same walk into a difference array. Float masks are
  read as ``cand != 0`` (a one-byte-per-pixel copy), uint8 masks by value.
* ``torch``: a GEMM per image block over pixel chunks, converting one cache-sized chunk of ``cand``
  to float at a time (any device; the portable fallback).
* ``triton`` (CUDA default): one launch over (block tile, pixel split) for the forward pass, with
  ``tl.dot`` for the intersection and both row sums in the same pass over the pixels, and one launch
  over (block tile, pixel tile) for the backward pass.
* ``reference``: the formula in float64 torch, the oracle for the tests.

Dtype policy: ``pred`` may be float16, bfloat16, float32 or float64; everything accumulates in
float32 (the numba path differences float64 prefix sums) and the result is float32, on the input's
device. ``cand`` is read as it is (bool, uint8 or float of 0/1); no full float copy of it is ever
made. On CUDA the block layout and the grid size are read back to the host (one sync per pass);
the Triton forward adds partial sums with atomics, so its last bits may vary between runs.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ._backend import HAS_TRITON, keep_torch_threads, resolve_backend

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["pairwise_soft_iou", "pairwise_soft_iou_reference"]

_OP = "pairwise_soft_iou"
_BACKENDS = ("numba", "torch", "triton", "reference")
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

# numba kernels: an 8-byte word of mask pixels is the unit of skipping, and a pixel band keeps the
# band's predictions (up to _NB_PRED rows) in L2 while every candidate of the block streams past it.
_NB_PRED = 16
_BAND = 16384


# --------------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------------


def pairwise_soft_iou_reference(pred, cand, pred_group=None, cand_group=None, eps=1e-7):
    """The formula in float64 torch; slow and memory-hungry (a float64 copy of both inputs).

    Args:
        pred: ``[N, H, W]`` probabilities.
        cand: ``[C, H, W]`` 0/1 masks.
        pred_group, cand_group: optional ``[N]``, ``[C]`` image ids; cross-image pairs are ``-inf``.
        eps: lower clamp of the union.

    Returns:
        ``[N, C]`` float32, differentiable with respect to ``pred``.
    """
    k = pred.shape[1] * pred.shape[2]
    p = pred.reshape(pred.shape[0], k).double()
    m = cand.reshape(cand.shape[0], k).double()
    inter = p @ m.T
    union = p.sum(1)[:, None] + m.sum(1)[None, :] - inter
    iou = inter / union.clamp_min(eps)
    if pred_group is not None:
        iou = iou.masked_fill(pred_group[:, None] != cand_group[None, :], float("-inf"))
    return iou.float()


# --------------------------------------------------------------------------------------------------
# Public dispatcher
# --------------------------------------------------------------------------------------------------


def pairwise_soft_iou(pred, cand, pred_group=None, cand_group=None, eps=1e-7, backend="auto"):
    """Pseudo-IoU of every (prediction, candidate) pair, optionally restricted to same-image pairs.

    ``I = sum(p * m)``, ``U = sum(p) + sum(m) - I``, ``IoU = I / max(U, eps)`` over the ``H * W``
    pixels (Romera-Paredes & Torr's pseudo-IoU; Segment, Select, Correct uses it to match
    predictions to candidate masks). Accumulates in float32 whatever the input dtype.

    Args:
        pred: ``[N, H, W]`` float probabilities in [0, 1] (float16, bfloat16, float32 or float64);
            may require grad.
        cand: ``[C, H, W]`` masks of 0/1 (bool, uint8 or float), on ``pred``'s device.
        pred_group: optional ``[N]`` integer image id of each prediction.
        cand_group: optional ``[C]`` integer image id of each candidate. Give both or neither. With
            them only same-image pairs are computed (the cost scales with those pairs) and the
            other entries are ``-inf`` (and get no gradient).
        eps: positive lower clamp of the union.
        backend: ``"auto"`` (Triton on CUDA, numba on CPU; ``SSSC_KERNEL_BACKEND`` overrides),
            ``"numba"``, ``"torch"``, ``"triton"`` or ``"reference"``.

    Returns:
        ``[N, C]`` float32 on ``pred``'s device, differentiable with respect to ``pred``.

    Raises:
        ValueError: for wrong ranks, mismatched ``H x W``, group lengths that do not match, one
            group argument without the other, a bad ``eps``, or an unusable backend.
    """
    _validate(pred, cand, pred_group, cand_group, eps)
    name = resolve_backend(_OP, backend, pred.device, _BACKENDS, cpu_default="numba")
    if name == "numba" and pred.device.type != "cpu":
        raise ValueError(f"{_OP}: backend='numba' needs CPU tensors, got {pred.device.type}")
    if name == "reference":
        return pairwise_soft_iou_reference(pred, cand, pred_group, cand_group, eps)
    return _SoftIoU.apply(pred, cand, pred_group, cand_group, float(eps), name)


def _validate(pred, cand, pred_group, cand_group, eps):
    if not isinstance(pred, torch.Tensor) or pred.dim() != 3:
        shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"{_OP}: pred must be a tensor [N, H, W]; got shape {shape}")
    if not pred.is_floating_point():
        raise ValueError(f"{_OP}: pred must be a float tensor of probabilities; got {pred.dtype}")
    if not isinstance(cand, torch.Tensor) or cand.dim() != 3:
        shape = tuple(cand.shape) if isinstance(cand, torch.Tensor) else type(cand).__name__
        raise ValueError(f"{_OP}: cand must be a tensor [C, H, W]; got shape {shape}")
    if cand.dtype != torch.bool and cand.dtype != torch.uint8 and not cand.is_floating_point():
        raise ValueError(f"{_OP}: cand must be bool, uint8 or float 0/1 masks; got {cand.dtype}")
    if pred.shape[1:] != cand.shape[1:]:
        raise ValueError(
            f"{_OP}: pred [N, H, W] and cand [C, H, W] must share H x W; got pred shape "
            f"{tuple(pred.shape)} and cand shape {tuple(cand.shape)}"
        )
    if cand.device != pred.device:
        raise ValueError(f"{_OP}: cand is on {cand.device} but pred is on {pred.device}")
    if (pred_group is None) != (cand_group is None):
        given, missing = (
            ("pred_group", "cand_group") if cand_group is None else ("cand_group", "pred_group")
        )
        raise ValueError(f"{_OP}: {given} was given without {missing}; give both or neither")
    if pred_group is not None:
        for arg, g, n, dim in (
            ("pred_group", pred_group, pred.shape[0], "N"),
            ("cand_group", cand_group, cand.shape[0], "C"),
        ):
            if not isinstance(g, torch.Tensor) or g.dim() != 1 or g.shape[0] != n:
                shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
                raise ValueError(
                    f"{_OP}: {arg} must be a tensor [{dim}] = [{n}]; got shape {shape}"
                )
            if g.dtype not in _INT_DTYPES:
                raise ValueError(f"{_OP}: {arg} must hold integer image ids; got {g.dtype}")
            if g.device != pred.device:
                raise ValueError(f"{_OP}: {arg} is on {g.device} but pred is on {pred.device}")
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float))
        or not (math.isfinite(eps) and eps > 0)
    ):
        raise ValueError(f"{_OP}: eps must be a finite number > 0; got {eps!r}")


# --------------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------------


class _SoftIoU(torch.autograd.Function):
    """Forward and backward around a backend's two passes over the pixels."""

    @staticmethod
    def forward(ctx, pred, cand, pred_group, cand_group, eps, backend):
        n, c = pred.shape[0], cand.shape[0]
        k = pred.shape[1] * pred.shape[2]
        p = pred.reshape(n, k)
        m = cand.reshape(c, k)
        if m.dtype == torch.bool:  # a free view; every backend reads bytes
            m = m.view(torch.uint8)
        blocks = _Blocks(pred_group, cand_group, n, c, pred.device)
        inter, psum, msum = _FORWARD[backend](p, m, blocks)
        union = psum[:, None] + msum[None, :] - inter
        out = inter / union.clamp_min(eps)
        if blocks.valid is not None:
            out = out.masked_fill(~blocks.valid, float("-inf"))
        ctx.save_for_backward(m, inter, union)
        ctx.blocks, ctx.eps, ctx.backend = blocks, eps, backend
        ctx.pred_shape, ctx.pred_dtype = pred.shape, pred.dtype
        return out

    @staticmethod
    @once_differentiable  # the kernels are not differentiable: say so rather than return zeros
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        m, inter, union = ctx.saved_tensors
        w, r = _backward_weights(grad_out, inter, union, ctx.blocks.valid, ctx.eps)
        grad = _BACKWARD[ctx.backend](m, w, r, ctx.blocks)
        grad = grad.reshape(ctx.pred_shape).to(ctx.pred_dtype)
        return grad, None, None, None, None, None


def _backward_weights(grad_out, inter, union, valid, eps):
    """``w = a + b`` and ``r = rowsum(b)`` of the backward GEMM ``dP = w @ M - r``, in float32."""
    g = grad_out.float()
    if valid is not None:  # the -inf entries are constants: no gradient flows through them
        g = g.masked_fill(~valid, 0.0)
    clamped = union < eps
    uc = union.clamp_min(eps)
    a = g / uc
    b = torch.where(clamped, torch.zeros_like(g), g * inter / (uc * uc))
    return (a + b).contiguous(), b.sum(1)


class _Blocks:
    """Image blocks: predictions and candidates sorted by image id, with per-block index ranges.

    ``pidx``/``cidx`` list the rows of each block contiguously; block ``b`` owns
    ``pidx[p_lo[b]:p_hi[b]]`` and ``cidx[c_lo[b]:c_hi[b]]``. Only blocks with at least one
    prediction and one candidate are kept. ``valid`` is the ``[N, C]`` same-image mask (None when
    ungrouped).
    """

    def __init__(self, pred_group, cand_group, n, c, device):
        if pred_group is None:
            self.valid = None
            self.pidx = torch.arange(n, device=device)
            self.cidx = torch.arange(c, device=device)
            lo = torch.zeros(1 if n and c else 0, dtype=torch.int64, device=device)
            self.p_lo, self.p_hi = lo, lo + n
            self.c_lo, self.c_hi = lo, lo + c
            return
        pg, cg = pred_group.long(), cand_group.long()
        self.valid = pg[:, None] == cg[None, :]
        ps, self.pidx = torch.sort(pg, stable=True)
        cs, self.cidx = torch.sort(cg, stable=True)
        ids = torch.unique_consecutive(ps)
        p_lo = torch.searchsorted(ps, ids)
        p_hi = torch.searchsorted(ps, ids, right=True)
        c_lo = torch.searchsorted(cs, ids)
        c_hi = torch.searchsorted(cs, ids, right=True)
        keep = c_hi > c_lo
        self.p_lo, self.p_hi = p_lo[keep], p_hi[keep]
        self.c_lo, self.c_hi = c_lo[keep], c_hi[keep]

    def host(self):
        """The block ranges as numpy int64 arrays (one device-to-host copy)."""
        t = torch.stack([self.p_lo, self.p_hi, self.c_lo, self.c_hi]).cpu().numpy()
        return t[0], t[1], t[2], t[3]


# --------------------------------------------------------------------------------------------------
# numba (CPU)
# --------------------------------------------------------------------------------------------------


def _numba_tasks(blocks):
    """Tasks (block, chunk of up to _NB_PRED predictions), most expensive first.

    A prange over tasks with chunk size 1 hands them out dynamically, so sorting by cost gives a
    longest-first schedule. ``first`` marks the task that also counts the block's mask pixels.
    """
    p_lo, p_hi, c_lo, c_hi = blocks.host()
    rows = []
    for b in range(len(p_lo)):
        for s in range(p_lo[b], p_hi[b], _NB_PRED):
            e = min(s + _NB_PRED, p_hi[b])
            cost = (c_hi[b] - c_lo[b]) * (4 + e - s)
            rows.append((cost, s, e, c_lo[b], c_hi[b], int(s == p_lo[b])))
    rows.sort(key=lambda r: -r[0])
    return np.asarray([r[1:] for r in rows], dtype=np.int64).reshape(-1, 5)


_FULL = np.uint64(0x0101010101010101)  # eight mask bytes that are all 1
_CAP = 1 << 15  # runs and edge words recorded per band before they are flushed
_SPAN = 64  # words tested at once for "all zero" before walking them one by one


@numba.njit(cache=True, nogil=True)
def _numba_fwd_flush(  # pragma: no cover - jitted
    p,
    m,
    rows,
    cidx,
    c0,
    w0,
    w1,
    cs,
    ptot,
    built,
    tot,
    run_c,
    run_lo,
    run_hi,
    n_runs,
    edge_c,
    edge_w,
    n_edges,
):
    """Add the recorded runs and edge words of one band to ``tot`` (building the band's prefix
    sums ``cs`` first if they are not built yet): the band's predictions are read here, right
    after one another, instead of between the mask reads that would evict them from cache."""
    nb = rows.shape[0]
    if not built:
        for j in range(nb):
            prow = p[rows[j], 8 * w0 : 8 * w1]
            acc = 0.0
            for w in range(w1 - w0):
                v = np.float32(0.0)
                for q in range(8):
                    v += prow[8 * w + q]
                acc += v
                cs[w + 1, j] = acc
            ptot[j] += acc
    for i in range(n_runs):
        ci, lo, hi = run_c[i], run_lo[i], run_hi[i]
        for j in range(nb):
            tot[ci, j] += cs[hi, j] - cs[lo, j]
    for i in range(n_edges):
        ci = edge_c[i]
        c = cidx[c0 + ci]
        k = 8 * (w0 + edge_w[i])
        for j in range(nb):
            prow = p[rows[j], k : k + 8]
            a = np.float32(0.0)
            for r in range(8):
                a += prow[r] * np.float32(m[c, k + r])
            tot[ci, j] += a


@numba.njit(parallel=True, cache=True, nogil=True)
def _numba_fwd_kernel(
    p, m, mw, pidx, cidx, tasks, band, cap, inter, psum, msum
):  # pragma: no cover
    """I, sum(p) and sum(m) for every task's pairs; no validation (the dispatcher did it).

    ``p`` is ``[N, K]`` float32, ``m`` the ``[C, K]`` mask bytes and ``mw`` the same bytes as
    ``[C, K/8]`` uint64 words. Per band of pixels, every candidate's words are walked first:
    spans of words that are all zero are skipped with one vectorised OR, a run of full words (all
    8 pixels set: a blob's inside) is recorded as a run, a partly set word (its edge) as an edge
    word. Then ``_numba_fwd_flush`` turns runs into differences of the predictions' prefix sums
    over words and multiplies edge words out, 8 pixels at a time. Prefix sums are float64 (they
    are differenced), 8-pixel sums float32.
    """
    k_words = mw.shape[1]
    band_w = band // 8
    for t in numba.prange(tasks.shape[0]):
        s, e, c0, c1, first = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3], tasks[t, 4]
        nb = e - s
        nc = c1 - c0
        rows = pidx[s:e]
        cs = np.zeros((band_w + 1, nb), np.float64)  # cs[x, j]: sum of p[j] over band words < x
        tot = np.zeros((nc, nb), np.float64)
        cnt = np.zeros(nc, np.int64)
        ptot = np.zeros(nb, np.float64)
        # Runs and edge words recorded during the walk, flushed when full and at the band's end.
        run_c = np.empty(cap, np.int64)
        run_lo = np.empty(cap, np.int64)
        run_hi = np.empty(cap, np.int64)
        edge_c = np.empty(cap, np.int64)
        edge_w = np.empty(cap, np.int64)
        for w0 in range(0, k_words, band_w):
            w1 = min(w0 + band_w, k_words)
            built = False
            n_runs = 0
            n_edges = 0
            for ci in range(nc):
                c = cidx[c0 + ci]
                mrow = mw[c]
                for wb in range(w0, w1, _SPAN):
                    we = min(wb + _SPAN, w1)
                    span = mrow[wb:we]
                    any_set = np.uint64(0)
                    for q in range(we - wb):
                        any_set |= span[q]
                    if any_set == 0:
                        continue
                    if n_runs + _SPAN + 1 > cap or n_edges + _SPAN + 1 > cap:
                        _numba_fwd_flush(
                            p,
                            m,
                            rows,
                            cidx,
                            c0,
                            w0,
                            w1,
                            cs,
                            ptot,
                            built,
                            tot,
                            run_c,
                            run_lo,
                            run_hi,
                            n_runs,
                            edge_c,
                            edge_w,
                            n_edges,
                        )
                        built = True
                        n_runs = 0
                        n_edges = 0
                    run = -1
                    for q in range(we - wb + 1):
                        word = span[q] if q < we - wb else np.uint64(0)
                        if word == _FULL:
                            if run < 0:
                                run = q
                            continue
                        if run >= 0:
                            run_c[n_runs] = ci
                            run_lo[n_runs] = wb - w0 + run
                            run_hi[n_runs] = wb - w0 + q
                            n_runs += 1
                            cnt[ci] += 8 * (q - run)
                            run = -1
                        if word == 0:
                            continue
                        edge_c[n_edges] = ci
                        edge_w[n_edges] = wb - w0 + q
                        n_edges += 1
                        k = 8 * (wb + q)
                        for r in range(8):
                            cnt[ci] += m[c, k + r]
            _numba_fwd_flush(
                p,
                m,
                rows,
                cidx,
                c0,
                w0,
                w1,
                cs,
                ptot,
                built,
                tot,
                run_c,
                run_lo,
                run_hi,
                n_runs,
                edge_c,
                edge_w,
                n_edges,
            )
        for j in range(nb):
            psum[rows[j]] = ptot[j]
            for ci in range(nc):
                inter[rows[j], cidx[c0 + ci]] = tot[ci, j]
        if first:
            for ci in range(nc):
                msum[cidx[c0 + ci]] = cnt[ci]


@numba.njit(parallel=True, cache=True, nogil=True)
def _numba_bwd_kernel(m, mw, w, r, pidx, cidx, tasks, band, grad):  # pragma: no cover - jitted
    """grad[pidx[j]] = sum_c w[pidx[j], c] * m[c] - r[pidx[j]] over each task's candidates.

    The same word walk as the forward pass. A run of full words adds ``w`` to a float64 difference
    array over words (at its start, and subtracts it at its end); the pixels of edge words are
    added to a per-word buffer, zeroed only for the words that have edges. One prefix sum over the
    words of a band then writes every pixel. Each task owns its prediction rows, so no two threads
    write the same gradient row.
    """
    k_words = mw.shape[1]
    band_w = band // 8
    for t in numba.prange(tasks.shape[0]):
        s, e, c0, c1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3]
        nb = e - s
        rows = pidx[s:e]
        diffw = np.zeros((band_w + 1, nb), np.float64)  # word-major: the j loops are contiguous
        edge = np.zeros((band_w, nb, 8), np.float32)
        touched = np.zeros(band_w, np.bool_)
        wc = np.zeros(nb, np.float64)
        base = np.zeros(nb, np.float64)
        rr = np.zeros(nb, np.float64)
        for j in range(nb):
            rr[j] = r[rows[j]]
        for w0 in range(0, k_words, band_w):
            w1 = min(w0 + band_w, k_words)
            diffw[:, :] = 0.0
            touched[:] = False
            for ci in range(c0, c1):
                c = cidx[ci]
                nz = False
                for j in range(nb):
                    wc[j] = w[rows[j], c]
                    nz = nz or wc[j] != 0
                if not nz:
                    continue
                mrow = mw[c]
                for wb in range(w0, w1, _SPAN):
                    we = min(wb + _SPAN, w1)
                    span = mrow[wb:we]
                    any_set = np.uint64(0)
                    for q in range(we - wb):
                        any_set |= span[q]
                    if any_set == 0:
                        continue
                    run = -1
                    for q in range(we - wb + 1):
                        word = span[q] if q < we - wb else np.uint64(0)
                        if word == _FULL:
                            if run < 0:
                                run = q
                            continue
                        if run >= 0:
                            for j in range(nb):
                                diffw[wb - w0 + run, j] += wc[j]
                                diffw[wb - w0 + q, j] -= wc[j]
                            run = -1
                        if word == 0:
                            continue
                        wl = wb - w0 + q
                        if not touched[wl]:
                            edge[wl, :, :] = 0.0
                            touched[wl] = True
                        for q8 in range(8):
                            v = np.float32(m[c, 8 * (wb + q) + q8])
                            if v != 0:
                                for j in range(nb):
                                    edge[wl, j, q8] += np.float32(wc[j]) * v
            base[:] = 0.0
            for wl in range(w1 - w0):
                k = 8 * (w0 + wl)
                for j in range(nb):
                    base[j] += diffw[wl, j]
                    bj = np.float32(base[j] - rr[j])
                    if touched[wl]:
                        for q8 in range(8):
                            grad[rows[j], k + q8] = bj + edge[wl, j, q8]
                    else:
                        for q8 in range(8):
                            grad[rows[j], k + q8] = bj


def _numba_masks(m):
    """Mask bytes ``[C, K8]`` and their ``[C, K8 / 8]`` uint64 view.

    ``K8`` is ``K`` rounded up to a multiple of 8 so that each mask row is whole words. When ``K``
    already is one (480 x 480, 640 x 480, ...) bool/uint8 masks are not copied; otherwise the
    padded copy is 1 byte per pixel (never a float copy).
    """
    if m.dtype != torch.uint8:
        m = m.ne(0).view(torch.uint8)  # float 0/1 masks: one byte per pixel
    pad = -m.shape[1] % 8
    if pad:
        m = torch.nn.functional.pad(m, (0, pad))
    mb = m.contiguous().numpy()
    return mb, mb.view(np.uint64)


def _numba_forward(p, m, blocks, band=_BAND, cap=_CAP):
    n, c = p.shape[0], m.shape[0]
    inter = torch.zeros((n, c), dtype=torch.float32)
    psum = torch.zeros(n, dtype=torch.float32)
    msum = torch.zeros(c, dtype=torch.float32)
    tasks = _numba_tasks(blocks)
    p = p.detach()
    if len(tasks) and p.shape[1]:
        pf = p.to(torch.float32)
        pad = -p.shape[1] % 8
        if pad:
            pf = torch.nn.functional.pad(pf, (0, pad))
        mb, mw = _numba_masks(m)
        with keep_torch_threads(), numba.parallel_chunksize(1):
            _numba_fwd_kernel(
                pf.contiguous().numpy(),
                mb,
                mw,
                blocks.pidx.numpy(),
                blocks.cidx.numpy(),
                tasks,
                band,
                cap,
                inter.numpy(),
                psum.numpy(),
                msum.numpy(),
            )
    # Predictions of blocks without candidates were not visited: their rows are all -inf, but
    # keep their sums honest anyway.
    seen = torch.zeros(n, dtype=torch.bool)
    for s, e in tasks[:, :2]:
        seen[s:e] = True
    rest = blocks.pidx[~seen]
    if len(rest):
        psum[rest] = p[rest].sum(1, dtype=torch.float32)
    return inter, psum, msum


def _numba_backward(m, w, r, blocks, band=_BAND):
    k = m.shape[1]
    tasks = _numba_tasks(blocks)
    if not (len(tasks) and k):
        return torch.zeros((w.shape[0], k), dtype=torch.float32)
    mb, mw = _numba_masks(m)
    # Every row of a task is written whole; only the rows of no task need zeros (no memset of
    # the whole [N, K] buffer).
    grad = torch.empty((w.shape[0], mb.shape[1]), dtype=torch.float32)
    seen = torch.zeros(w.shape[0], dtype=torch.bool)
    for s, e in tasks[:, :2]:
        seen[s:e] = True
    grad[blocks.pidx[~seen]] = 0.0
    with keep_torch_threads(), numba.parallel_chunksize(1):
        _numba_bwd_kernel(
            mb,
            mw,
            w.contiguous().numpy(),
            r.contiguous().numpy(),
            blocks.pidx.numpy(),
            blocks.cidx.numpy(),
            tasks,
            band,
            grad.numpy(),
        )
    return grad[:, :k]


# --------------------------------------------------------------------------------------------------
# torch (any device): GEMM per block over cache-sized pixel chunks
# --------------------------------------------------------------------------------------------------

_CHUNK_ELEMS = 1 << 18  # candidate elements converted to float per chunk (1 MiB of float32)


def _chunk(c_count, k_total):
    return max(1024, (_CHUNK_ELEMS // max(c_count, 1)) // 64 * 64) if k_total else 1


def _torch_forward(p, m, blocks):
    n, c = p.shape[0], m.shape[0]
    p = p.detach()
    psum = p.sum(1, dtype=torch.float32)
    inter = torch.zeros((n, c), dtype=torch.float32, device=p.device)
    msum = torch.zeros(c, dtype=torch.float32, device=p.device)
    k_total = p.shape[1]
    for p0, p1, c0, c1 in zip(*blocks.host(), strict=True):
        pi, ci = blocks.pidx[p0:p1], blocks.cidx[c0:c1]
        pb = p.index_select(0, pi)
        ib = torch.zeros((p1 - p0, c1 - c0), dtype=torch.float32, device=p.device)
        sb = torch.zeros(c1 - c0, dtype=torch.float32, device=p.device)
        step = _chunk(c1 - c0, k_total)
        for k0 in range(0, k_total, step):
            mk = m[ci, k0 : k0 + step].float()  # the only float copy: one chunk
            ib.addmm_(pb[:, k0 : k0 + step].float(), mk.T)
            sb += mk.sum(1)
        inter[pi[:, None], ci[None, :]] = ib
        msum[ci] = sb
    return inter, psum, msum


def _torch_backward(m, w, r, blocks):
    k_total = m.shape[1]
    grad = torch.zeros((w.shape[0], k_total), dtype=torch.float32, device=w.device)
    for p0, p1, c0, c1 in zip(*blocks.host(), strict=True):
        pi, ci = blocks.pidx[p0:p1], blocks.cidx[c0:c1]
        wb = w[pi[:, None], ci[None, :]]
        gb = torch.empty((p1 - p0, k_total), dtype=torch.float32, device=w.device)
        step = _chunk(c1 - c0, k_total)
        for k0 in range(0, k_total, step):
            torch.mm(wb, m[ci, k0 : k0 + step].float(), out=gb[:, k0 : k0 + step])
        grad[pi] = gb - r[pi, None]
    return grad


# --------------------------------------------------------------------------------------------------
# Triton (CUDA, or the CPU interpreter)
# --------------------------------------------------------------------------------------------------

_TRITON_BN, _TRITON_BC, _TRITON_BK = 16, 64, 128
_TRITON_BWD_BN, _TRITON_BWD_BC, _TRITON_BWD_BK = 16, 32, 128


def _tile_table(blocks, bn, bc):
    """Rows ``(p_start, p_count, c_start, c_count, first_c_tile, first_p_tile)`` per output tile.

    Built on the device; the number of tiles is the one value read back (it sizes the grid). With
    ``bc=None`` a tile spans all the candidates of its block (the backward pass loops over them).
    """
    p_cnt, c_cnt = blocks.p_hi - blocks.p_lo, blocks.c_hi - blocks.c_lo
    nt_p = (p_cnt + bn - 1) // bn
    nt_c = torch.ones_like(c_cnt) if bc is None else (c_cnt + bc - 1) // bc
    per_block = nt_p * nt_c
    total = int(per_block.sum()) if len(per_block) else 0  # host sync: the grid size
    dev = blocks.pidx.device
    if total == 0:
        return torch.zeros((0, 6), dtype=torch.int64, device=dev)
    blk = torch.repeat_interleave(
        torch.arange(len(per_block), device=dev), per_block, output_size=total
    )
    local = torch.arange(total, device=dev) - (torch.cumsum(per_block, 0) - per_block)[blk]
    ti, tc = local // nt_c[blk], local % nt_c[blk]
    p_start = blocks.p_lo[blk] + ti * bn
    p_count = torch.clamp(p_cnt[blk] - ti * bn, max=bn)
    if bc is None:
        c_start, c_count = blocks.c_lo[blk], c_cnt[blk]
    else:
        c_start = blocks.c_lo[blk] + tc * bc
        c_count = torch.clamp(c_cnt[blk] - tc * bc, max=bc)
    return torch.stack(
        [p_start, p_count, c_start, c_count, (tc == 0).long(), (ti == 0).long()], 1
    ).contiguous()


if HAS_TRITON:

    @triton.jit
    def _soft_iou_fwd_kernel(
        pred_ptr,
        cand_ptr,
        pidx_ptr,
        cidx_ptr,
        tiles_ptr,
        inter_ptr,
        psum_ptr,
        msum_ptr,
        K,
        k_per_split,
        stride_pn,
        stride_cn,
        stride_in,
        BLOCK_N: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_K: tl.constexpr,
        NATIVE_DOT: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One (tile, pixel split): I, sum(p), sum(m) of the tile's pairs, added atomically."""
        t = tl.program_id(0)
        split = tl.program_id(1)
        p_start = tl.load(tiles_ptr + t * 6 + 0)
        p_count = tl.load(tiles_ptr + t * 6 + 1)
        c_start = tl.load(tiles_ptr + t * 6 + 2)
        c_count = tl.load(tiles_ptr + t * 6 + 3)
        first_c = tl.load(tiles_ptr + t * 6 + 4)
        first_p = tl.load(tiles_ptr + t * 6 + 5)
        rn = tl.arange(0, BLOCK_N)
        rc = tl.arange(0, BLOCK_C)
        rk = tl.arange(0, BLOCK_K)
        mask_n = rn < p_count
        mask_c = rc < c_count
        prow = tl.load(pidx_ptr + p_start + rn, mask=mask_n, other=0)
        crow = tl.load(cidx_ptr + c_start + rc, mask=mask_c, other=0)
        acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        sp = tl.zeros((BLOCK_N,), dtype=tl.float32)
        sm = tl.zeros((BLOCK_C,), dtype=tl.float32)
        k_lo = split * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            kk = k0 + rk
            mask_k = kk < k_hi
            p = tl.load(
                pred_ptr + prow[:, None] * stride_pn + kk[None, :],
                mask=mask_n[:, None] & mask_k[None, :],
                other=0.0,
            )
            m = tl.load(
                cand_ptr + crow[:, None] * stride_cn + kk[None, :],
                mask=mask_c[:, None] & mask_k[None, :],
                other=0,
            )
            sp += tl.sum(p.to(tl.float32), 1)
            sm += tl.sum(m.to(tl.float32), 1)
            if NATIVE_DOT:  # float16 predictions: exact products, float32 accumulation
                acc = tl.dot(p, tl.trans(m.to(p.dtype)), acc)
            else:
                acc = tl.dot(
                    p.to(tl.float32), tl.trans(m.to(tl.float32)), acc, input_precision=PRECISION
                )
        tl.atomic_add(
            inter_ptr + prow[:, None] * stride_in + crow[None, :],
            acc,
            mask=mask_n[:, None] & mask_c[None, :],
        )
        # Only the first tile along the other axis adds each row sum (a plain mask, not a branch).
        tl.atomic_add(psum_ptr + prow, sp, mask=rn < p_count * first_c)
        tl.atomic_add(msum_ptr + crow, sm, mask=rc < c_count * first_p)

    @triton.jit
    def _soft_iou_bwd_kernel(
        cand_ptr,
        w_ptr,
        r_ptr,
        pidx_ptr,
        cidx_ptr,
        tiles_ptr,
        grad_ptr,
        K,
        stride_cn,
        stride_wn,
        stride_gn,
        BLOCK_N: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One (prediction tile, pixel tile): dP = W @ M - r over the block's candidates."""
        t = tl.program_id(0)
        kb = tl.program_id(1)
        p_start = tl.load(tiles_ptr + t * 6 + 0)
        p_count = tl.load(tiles_ptr + t * 6 + 1)
        c_start = tl.load(tiles_ptr + t * 6 + 2)
        c_count = tl.load(tiles_ptr + t * 6 + 3)
        rn = tl.arange(0, BLOCK_N)
        rc = tl.arange(0, BLOCK_C)
        kk = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_n = rn < p_count
        mask_k = kk < K
        prow = tl.load(pidx_ptr + p_start + rn, mask=mask_n, other=0)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for c0 in range(0, c_count, BLOCK_C):
            mask_c = (c0 + rc) < c_count
            crow = tl.load(cidx_ptr + c_start + c0 + rc, mask=mask_c, other=0)
            w = tl.load(
                w_ptr + prow[:, None] * stride_wn + crow[None, :],
                mask=mask_n[:, None] & mask_c[None, :],
                other=0.0,
            )
            m = tl.load(
                cand_ptr + crow[:, None] * stride_cn + kk[None, :],
                mask=mask_c[:, None] & mask_k[None, :],
                other=0,
            )
            acc = tl.dot(w, m.to(tl.float32), acc, input_precision=PRECISION)
        r = tl.load(r_ptr + prow, mask=mask_n, other=0.0)
        tl.store(
            grad_ptr + prow[:, None] * stride_gn + kk[None, :],
            acc - r[:, None],
            mask=mask_n[:, None] & mask_k[None, :],
        )


def _triton_forward(p, m, blocks):
    n, c = p.shape[0], m.shape[0]
    k_total = p.shape[1]
    p = p.detach().contiguous()
    m = m.contiguous()
    inter = torch.zeros((n, c), dtype=torch.float32, device=p.device)
    psum = torch.zeros(n, dtype=torch.float32, device=p.device)
    msum = torch.zeros(c, dtype=torch.float32, device=p.device)
    tiles = _tile_table(blocks, _TRITON_BN, _TRITON_BC)
    if len(tiles) == 0 or k_total == 0:
        return inter, p.sum(1, dtype=torch.float32), msum
    # Split the pixels so that the grid fills the GPU (a batch has only tens of block tiles).
    k_tiles = triton.cdiv(k_total, _TRITON_BK)
    target = 4 * _sm_count(p.device)
    splits = max(1, min(triton.cdiv(target, len(tiles)), triton.cdiv(k_tiles, 8)))
    k_per_split = triton.cdiv(k_tiles, splits) * _TRITON_BK
    splits = triton.cdiv(k_total, k_per_split)
    # float16 predictions go to the tensor cores as they are (0/1 masks are exact in float16, the
    # products are exact, the sums float32). bfloat16 ones take the float32 path, which is exact for
    # them too (8 mantissa bits fit in tf32), because Triton's interpreter miscomputes bfloat16 dots
    # (triton 3.9) and a path the tests cannot check is not one we ship.
    native = p.dtype == torch.float16
    _soft_iou_fwd_kernel[(len(tiles), splits)](
        p,
        m,
        blocks.pidx,
        blocks.cidx,
        tiles,
        inter,
        psum,
        msum,
        k_total,
        k_per_split,
        p.stride(0),
        m.stride(0),
        inter.stride(0),
        BLOCK_N=_TRITON_BN,
        BLOCK_C=_TRITON_BC,
        BLOCK_K=_TRITON_BK,
        NATIVE_DOT=native,
        PRECISION=_dot_precision(p.device),
    )
    if blocks.valid is not None:
        # Predictions of blocks without candidates were not visited; their sums do not matter
        # (every entry of their rows is -inf), but keep them honest.
        lonely = ~blocks.valid.any(1)
        psum[lonely] = p[lonely].sum(1, dtype=torch.float32)
    return inter, psum, msum


def _triton_backward(m, w, r, blocks):
    k_total = m.shape[1]
    m = m.contiguous()
    grad = torch.zeros((w.shape[0], k_total), dtype=torch.float32, device=w.device)
    tiles = _tile_table(blocks, _TRITON_BWD_BN, None)
    if len(tiles) == 0 or k_total == 0:
        return grad
    grid = (len(tiles), triton.cdiv(k_total, _TRITON_BWD_BK))
    _soft_iou_bwd_kernel[grid](
        m,
        w,
        r,
        blocks.pidx,
        blocks.cidx,
        tiles,
        grad,
        k_total,
        m.stride(0),
        w.stride(0),
        grad.stride(0),
        BLOCK_N=_TRITON_BWD_BN,
        BLOCK_C=_TRITON_BWD_BC,
        BLOCK_K=_TRITON_BWD_BK,
        PRECISION=_dot_precision(w.device),
    )
    return grad


def _dot_precision(device):
    """float32 dots: three tf32 passes on NVIDIA (~float32 accuracy on tensor cores; one tf32 pass
    keeps only 10 mantissa bits), plain float32 elsewhere (AMD, the interpreter)."""
    if device.type == "cuda" and torch.version.hip is None:
        return "tf32x3"
    return "ieee"


def _sm_count(device):
    if device.type != "cuda":
        return 1  # the interpreter: as few programs as possible
    return torch.cuda.get_device_properties(device).multi_processor_count


_FORWARD = {"numba": _numba_forward, "torch": _torch_forward, "triton": _triton_forward}
_BACKWARD = {"numba": _numba_backward, "torch": _torch_backward, "triton": _triton_backward}
