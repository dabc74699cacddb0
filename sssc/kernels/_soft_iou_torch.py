"""pairwise_soft_iou's torch path (any device): a GEMM per image block over cache-sized pixel
chunks. See :mod:`sssc.kernels.soft_iou`.
"""

from __future__ import annotations

import torch

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
