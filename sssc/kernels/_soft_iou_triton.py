"""pairwise_soft_iou's Triton path (CUDA, or the CPU interpreter): tiled forward and backward
kernels over the image blocks' (prediction, candidate) tiles. See :mod:`sssc.kernels.soft_iou`.
"""

from __future__ import annotations

import torch

from ._backend import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl


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
