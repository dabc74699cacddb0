"""pairwise_soft_iou's Numba path (CPU): bit-packed candidate masks, empty 8-byte words
skipped, pixel bands that keep a block's predictions in cache. See :mod:`sssc.kernels.soft_iou`.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ._backend import keep_torch_threads

# An 8-byte word of mask pixels is the unit of skipping, and a pixel band keeps the band's
# predictions (up to _NB_PRED rows) in L2 while every candidate of the block streams past it.
_NB_PRED = 16
_BAND = 8192


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
    mf = np.empty(8, np.float32)
    for i in range(n_edges):
        ci = edge_c[i]
        c = cidx[c0 + ci]
        k = 8 * (w0 + edge_w[i])
        for r in range(8):  # the word's 8 mask values, converted once for all nb predictions
            mf[r] = np.float32(m[c, k + r])
        for j in range(nb):
            prow = p[rows[j], k : k + 8]
            a = np.float32(0.0)
            for r in range(8):
                a += prow[r] * mf[r]
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
