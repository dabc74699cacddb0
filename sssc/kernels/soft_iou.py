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

import torch
from torch.autograd.function import once_differentiable

from . import _validate as _v
from ._backend import resolve_backend
from ._soft_iou_numba import _numba_backward, _numba_forward
from ._soft_iou_torch import _torch_backward, _torch_forward
from ._soft_iou_triton import _triton_backward, _triton_forward

__all__ = ["pairwise_soft_iou", "pairwise_soft_iou_reference"]

_OP = "pairwise_soft_iou"
_BACKENDS = ("numba", "torch", "triton", "reference")


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
        RuntimeError: ``backend="triton"`` on CPU tensors in a Triton interpreter that cannot run
            the kernel (Triton < 3.7 with NumPy >= 2.4; see ``_backend.interpreter_problem``).
    """
    _validate(pred, cand, pred_group, cand_group, eps)
    name = resolve_backend(
        _OP, backend, pred.device, _BACKENDS, cpu_default="numba", pid_loop_bounds=True
    )
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
    _v.same_device(_OP, "cand", cand, "pred", pred)
    _v.both_or_neither(_OP, "pred_group", pred_group, "cand_group", cand_group)
    if pred_group is not None:
        for arg, g, n, dim in (
            ("pred_group", pred_group, pred.shape[0], "N"),
            ("cand_group", cand_group, cand.shape[0], "C"),
        ):
            if not isinstance(g, torch.Tensor):
                _v.fail(_OP, f"{arg} must be a tensor [{dim}] = [{n}]; got {type(g).__name__}")
            _v.id_vector(_OP, arg, g, n, dim)
            _v.same_device(_OP, arg, g, "pred", pred)
    _v.finite_number(_OP, "eps", eps, 0.0, strict=True)


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


_FORWARD = {"numba": _numba_forward, "torch": _torch_forward, "triton": _triton_forward}
_BACKWARD = {"numba": _numba_backward, "torch": _torch_backward, "triton": _triton_backward}
