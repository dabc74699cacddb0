"""pairwise_soft_iou: every backend against an independent float64 formula, forward and backward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from triton_compile import run_compile_script

from sssc.kernels import pairwise_soft_iou, pairwise_soft_iou_reference
from sssc.kernels._backend import HAS_TRITON, triton_interpret
from sssc.kernels.testing import blob_masks, iou_batch

_CAN_TRITON = HAS_TRITON and (torch.cuda.is_available() or triton_interpret())
BACKENDS = [
    "numba",
    "torch",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            not _CAN_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1 (CPU interpreter)"
        ),
    ),
    "reference",
]


# -- an oracle written independently of the module: broadcast products, float64 ----------------


def _formula64(pred, cand, pred_group=None, cand_group=None, eps=1e-7):
    """IoU in float64 by broadcasting ``p[n] * m[c]`` (no GEMM); differentiable in ``pred``."""
    k = pred.shape[1] * pred.shape[2]
    p = pred.double().reshape(pred.shape[0], 1, k)
    m = cand.double().reshape(1, cand.shape[0], k)
    inter = (p * m).sum(-1)
    union = p.sum(-1) + m.sum(-1) - inter
    iou = inter / torch.clamp(union, min=eps)
    if pred_group is not None:
        same = pred_group[:, None] == cand_group[None, :]
        iou = torch.where(same, iou, torch.full_like(iou, -math.inf))
    return iou


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _rel(out, ref):
    """``||out - ref|| / ||ref||`` over the finite entries, in float64 (0 when both are empty)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    fin = torch.isfinite(ref)
    num = (out[fin] - ref[fin]).norm()
    den = ref[fin].norm()
    return float(num / den) if den > 0 else float(num)


def _inputs(n, c, h, w, seed=0, pred_dtype=torch.float32, cand_dtype=torch.bool, device="cpu"):
    """Blob masks, and predictions that are noisy blobs (IoUs spread over [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    cand = (
        torch.from_numpy(blob_masks(c, h, w, seed=seed)) if c else torch.zeros(0, h, w, dtype=bool)
    )
    base = torch.from_numpy(blob_masks(max(n, 1), h, w, seed=seed + 99))[:n].float()
    pred = torch.sigmoid(6 * (base - 0.5) + 1.5 * torch.randn(n, h, w, generator=g))
    return pred.to(device, pred_dtype), cand.to(device, cand_dtype)


def _check(out, ref, pred_dtype=torch.float32, tol=None):
    assert out.dtype == torch.float32
    assert out.shape == ref.shape
    # -inf exactly where the oracle has it, and nothing unwritten (NaN).
    assert torch.equal(torch.isneginf(out).cpu(), torch.isneginf(ref).cpu())
    assert not torch.isnan(out).any()
    assert _rel(out, ref) < (tol or 2e-6)


SHAPES = [
    pytest.param(0, 5, 7, 9, id="N0"),
    pytest.param(3, 0, 7, 9, id="C0"),
    pytest.param(1, 1, 16, 16, id="N1-C1"),
    pytest.param(5, 7, 13, 11, id="odd-143px"),
    pytest.param(20, 33, 24, 17, id="N20-C33-408px"),
    pytest.param(3, 70, 9, 40, id="C70-360px"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "c", "h", "w"), SHAPES)
def test_dense_matches_formula(backend, n, c, h, w):
    pred, cand = _inputs(n, c, h, w, seed=n + c, device=_device(backend))
    out = pairwise_soft_iou(pred, cand, backend=backend)
    assert out.device == pred.device
    _check(out, _formula64(pred, cand))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "cand_dtype", [torch.bool, torch.uint8, torch.float32], ids=["bool", "uint8", "float32"]
)
def test_cand_dtypes(backend, cand_dtype):
    pred, cand = _inputs(6, 9, 15, 13, seed=3, cand_dtype=cand_dtype, device=_device(backend))
    _check(pairwise_soft_iou(pred, cand, backend=backend), _formula64(pred, cand))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "pred_dtype",
    [torch.float16, torch.bfloat16, torch.float64],
    ids=["float16", "bfloat16", "float64"],
)
def test_pred_dtypes(backend, pred_dtype):
    pred, cand = _inputs(6, 9, 15, 13, seed=4, pred_dtype=pred_dtype, device=_device(backend))
    out = pairwise_soft_iou(pred, cand, backend=backend)
    # Against the formula on the rounded input: the products are exact, only float32 sums remain.
    _check(out, _formula64(pred, cand), tol=1e-5)
    # And against the float32 input, which the half-precision rounding moves a little.
    _check(out, _formula64(pred.float(), cand), tol=5e-3 if pred_dtype != torch.float64 else 2e-6)


def _groups(kind, n, c, device):
    """Image ids: sorted, interleaved, or with empty blocks (ids with no preds or no cands)."""
    rng = np.random.default_rng(n * 31 + c)
    if kind == "sorted":
        pg, cg = np.sort(rng.integers(0, 3, n)), np.sort(rng.integers(0, 3, c))
    elif kind == "interleaved":
        pg, cg = rng.integers(0, 4, n) * 7 + 3, rng.integers(0, 4, c) * 7 + 3
    else:  # "empty": id 5 has predictions only, id 9 candidates only, id 1 both
        pg = rng.choice([1, 5], n)
        cg = rng.choice([1, 9], c)
    return torch.as_tensor(pg, device=device), torch.as_tensor(cg, device=device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["sorted", "interleaved", "empty"])
@pytest.mark.parametrize(("n", "c"), [(0, 4), (4, 0), (9, 20), (19, 41)], ids=lambda v: str(v))
def test_grouped_matches_dense(backend, kind, n, c):
    dev = _device(backend)
    pred, cand = _inputs(n, c, 12, 14, seed=7, device=dev)
    pg, cg = _groups(kind, n, c, dev)
    out = pairwise_soft_iou(pred, cand, pg, cg, backend=backend)
    _check(out, _formula64(pred, cand, pg, cg))
    dense = pairwise_soft_iou(pred, cand, backend=backend)
    same = pg[:, None] == cg[None, :]
    assert _rel(out[same], dense[same]) < 1e-6
    assert torch.isneginf(out[~same]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_is_zero_not_nan(backend):
    dev = _device(backend)
    pred = torch.zeros(3, 5, 7, device=dev)
    cand = torch.zeros(4, 5, 7, dtype=torch.bool, device=dev)
    out = pairwise_soft_iou(pred, cand, backend=backend)
    assert torch.equal(out.cpu(), torch.zeros(3, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_eps_clamps_union(backend):
    pred, cand = _inputs(4, 5, 6, 6, seed=2, device=_device(backend))
    out = pairwise_soft_iou(pred, cand, eps=1e3, backend=backend)
    _check(out, _formula64(pred, cand, eps=1e3))
    assert float(out.max()) < 0.05  # I / eps, with I at most 36 pixels


# -- gradients -----------------------------------------------------------------------------------


def _grad_pair(backend, pred, cand, pg=None, cg=None, eps=1e-7, seed=0):
    """(ours, oracle) gradients of ``sum(w * IoU)`` for an upstream ``w`` that is nonzero even on
    the -inf entries, which must not contribute."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(pred.shape[0], cand.shape[0], generator=g).to(pred.device)
    p = pred.detach().clone().requires_grad_(True)
    out = pairwise_soft_iou(p, cand, pg, cg, eps=eps, backend=backend)
    (ours,) = torch.autograd.grad(out, p, grad_outputs=w)
    p64 = pred.detach().double().requires_grad_(True)
    ref = _formula64(p64, cand, pg, cg, eps=eps)
    w64 = w.double() if pg is None else w.double().masked_fill(torch.isinf(ref), 0.0)
    (oracle,) = torch.autograd.grad(ref, p64, grad_outputs=w64)
    return ours, oracle


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "c", "h", "w"), SHAPES[2:])
def test_grad_dense(backend, n, c, h, w):
    pred, cand = _inputs(n, c, h, w, seed=11, device=_device(backend))
    ours, oracle = _grad_pair(backend, pred, cand)
    assert ours.dtype == pred.dtype and ours.shape == pred.shape
    assert _rel(ours, oracle) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["sorted", "interleaved", "empty"])
def test_grad_grouped(backend, kind):
    dev = _device(backend)
    pred, cand = _inputs(19, 41, 12, 14, seed=5, device=dev)
    pg, cg = _groups(kind, 19, 41, dev)
    ours, oracle = _grad_pair(backend, pred, cand, pg, cg)
    assert _rel(ours, oracle) < 1e-5
    # Predictions without a same-image candidate get exactly zero gradient.
    lonely = ~(pg[:, None] == cg[None, :]).any(1)
    assert torch.equal(ours[lonely], torch.zeros_like(ours[lonely]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_clamped_union(backend):
    pred, cand = _inputs(4, 5, 6, 6, seed=8, device=_device(backend))
    ours, oracle = _grad_pair(backend, pred, cand, eps=50.0)  # some unions below eps, some above
    assert _rel(ours, oracle) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_half_precision(backend):
    pred, cand = _inputs(6, 9, 15, 13, seed=9, pred_dtype=torch.bfloat16, device=_device(backend))
    ours, oracle = _grad_pair(backend, pred, cand)
    assert ours.dtype == torch.bfloat16
    assert _rel(ours, oracle) < 1e-2  # the gradient itself is rounded to bfloat16


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("grouped", [False, True], ids=["dense", "grouped"])
def test_gradcheck_cpu(backend, grouped):
    """Full Jacobian against finite differences on tiny float64 inputs. The output is float32 by
    contract, so the tolerances are float32's; the -inf entries are masked to 0 (not finite)."""
    g = torch.Generator().manual_seed(1)
    p = torch.rand(3, 5, 6, dtype=torch.float64, generator=g).requires_grad_(True)
    cand = torch.rand(4, 5, 6, generator=g) > 0.5
    groups = (torch.tensor([0, 1, 0]), torch.tensor([1, 0, 0, 1])) if grouped else (None, None)
    same = (groups[0][:, None] == groups[1][None, :]) if grouped else torch.ones(3, 4, dtype=bool)
    fn = lambda x: pairwise_soft_iou(x, cand, *groups, backend=backend).masked_fill(~same, 0.0)
    assert torch.autograd.gradcheck(fn, (p,), eps=1e-3, atol=2e-4, rtol=1e-3)


@pytest.mark.skipif(not _CAN_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1")
def test_triton_split_k(monkeypatch):
    """Several programs add partial sums of one tile (split over pixels) atomically."""
    from sssc.kernels import _soft_iou_triton

    monkeypatch.setattr(_soft_iou_triton, "_sm_count", lambda device: 64)  # ask for many programs
    dev = _device("triton")
    pred, cand = _inputs(5, 7, 40, 52, seed=12, device=dev)  # 17 pixel tiles: 3 splits
    pg = torch.tensor([0, 1, 0, 1, 1], device=dev)
    cg = torch.tensor([1, 0, 0, 1, 1, 0, 1], device=dev)
    _check(pairwise_soft_iou(pred, cand, pg, cg, backend="triton"), _formula64(pred, cand, pg, cg))
    ours, oracle = _grad_pair("triton", pred, cand, pg, cg)
    assert _rel(ours, oracle) < 1e-5


def test_iou_batch_slice_numba_vs_torch():
    """Realistic blocks (many candidates per image, 8-pixel words with ragged edges) on a small
    slice of the training batch: the CPU paths agree with the formula."""
    pred, cand, pg, cg = iou_batch(images=3, max_cands=30, height=40, width=56, seed=1)
    ref = _formula64(pred, cand, pg, cg)
    for backend in ("numba", "torch"):
        _check(pairwise_soft_iou(pred, cand, pg, cg, backend=backend), ref)


@pytest.mark.parametrize(
    ("band", "cap"),
    [(64, 70), (136, 1 << 15), (2048, 66)],
    ids=["8-words-tiny-cap", "17-words", "256-words-tiny-cap"],
)
def test_numba_bands_and_flushes(band, cap):
    """The numba kernels over many pixel bands, and with run/edge buffers so small that they are
    flushed in the middle of a band (the defaults only do either on large images)."""
    from sssc.kernels import soft_iou

    pred, cand, pg, cg = iou_batch(images=3, max_cands=30, height=41, width=57, seed=2)
    n, c, k = pred.shape[0], cand.shape[0], 41 * 57
    p, m = pred.reshape(n, k), cand.reshape(c, k).view(torch.uint8)
    blocks = soft_iou._Blocks(pg, cg, n, c, pred.device)
    inter, psum, msum = soft_iou._numba_forward(p, m, blocks, band=band, cap=cap)
    same = pg[:, None] == cg[None, :]
    p64, m64 = p.double(), m.double()
    assert _rel(inter[same], (p64 @ m64.T)[same]) < 1e-6
    assert _rel(psum, p64.sum(1)) < 1e-6
    assert torch.equal(msum.double(), m64.sum(1))
    w = torch.randn(n, c, generator=torch.Generator().manual_seed(0)) * same
    r = torch.randn(n, generator=torch.Generator().manual_seed(1))
    grad = soft_iou._numba_backward(m, w, r, blocks, band=band)
    assert _rel(grad, w.double() @ m64 - r.double()[:, None]) < 1e-6


def test_torch_path_many_chunks(monkeypatch):
    """The torch path converts candidates to float one pixel chunk at a time; force 3 chunks."""
    from sssc.kernels import _soft_iou_torch

    monkeypatch.setattr(_soft_iou_torch, "_CHUNK_ELEMS", 1 << 10)  # 1024-pixel chunks
    pred, cand, pg, cg = iou_batch(images=2, max_cands=12, height=40, width=70, seed=3)
    _check(pairwise_soft_iou(pred, cand, pg, cg, backend="torch"), _formula64(pred, cand, pg, cg))
    ours, oracle = _grad_pair("torch", pred, cand, pg, cg)
    assert _rel(ours, oracle) < 1e-5


# -- dispatch and validation ---------------------------------------------------------------------


def test_env_override_and_reference(monkeypatch):
    pred, cand = _inputs(3, 4, 8, 8)
    monkeypatch.setenv("SSSC_KERNEL_BACKEND", "torch")
    a = pairwise_soft_iou(pred, cand)
    monkeypatch.setenv("SSSC_KERNEL_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="SSSC_KERNEL_BACKEND"):
        pairwise_soft_iou(pred, cand)
    monkeypatch.delenv("SSSC_KERNEL_BACKEND")
    assert _rel(a, pairwise_soft_iou_reference(pred, cand)) < 1e-6


_P, _C = torch.rand(3, 8, 9), torch.zeros(4, 8, 9, dtype=torch.bool)
_PG, _CG = torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long)
BAD = [
    pytest.param(dict(pred=torch.rand(3, 72)), r"pred .*\(3, 72\)", id="pred-rank"),
    pytest.param(dict(cand=torch.zeros(1, 4, 8, 9)), r"cand .*\(1, 4, 8, 9\)", id="cand-rank"),
    pytest.param(dict(cand=torch.zeros(4, 9, 8)), r"H x W.*\(3, 8, 9\).*\(4, 9, 8\)", id="hw"),
    pytest.param(
        dict(pred=torch.ones(3, 8, 9, dtype=torch.long)), r"pred.*torch.int64", id="pred-dtype"
    ),
    pytest.param(
        dict(pred_group=_PG, cand_group=None), "pred_group.*without cand_group", id="one-group"
    ),
    pytest.param(
        dict(pred_group=None, cand_group=_CG), "cand_group.*without pred_group", id="other-group"
    ),
    pytest.param(
        dict(pred_group=_PG[:2], cand_group=_CG), r"pred_group .*\[3\].*\(2,\)", id="pred-group-len"
    ),
    pytest.param(
        dict(pred_group=_PG, cand_group=_CG[None]),
        r"cand_group .*\[4\].*\(1, 4\)",
        id="cand-group-rank",
    ),
    pytest.param(
        dict(pred_group=_PG.float(), cand_group=_CG), "pred_group.*integer", id="float-group"
    ),
    pytest.param(dict(eps=0.0), "eps", id="eps-zero"),
    pytest.param(dict(eps=-1e-7), "eps", id="eps-negative"),
    pytest.param(dict(eps=float("nan")), "eps", id="eps-nan"),
    pytest.param(dict(backend="cuda-magic"), "backend", id="backend"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD)
def test_bad_input_raises(kwargs, match):
    args = dict(pred=_P, cand=_C, pred_group=None, cand_group=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pairwise_soft_iou(**args)


_COMPILE_SM90 = r"""
from sssc.kernels import _soft_iou_triton as S

fwd_sig = dict(
    pidx_ptr="*i64", cidx_ptr="*i64", tiles_ptr="*i64", inter_ptr="*fp32", psum_ptr="*fp32",
    msum_ptr="*fp32", K="i32", k_per_split="i32", stride_pn="i32", stride_cn="i32",
    stride_in="i32", BLOCK_N="constexpr", BLOCK_C="constexpr", BLOCK_K="constexpr",
    NATIVE_DOT="constexpr", PRECISION="constexpr",
)
bwd_sig = dict(
    cand_ptr="*u8", w_ptr="*fp32", r_ptr="*fp32", pidx_ptr="*i64", cidx_ptr="*i64",
    tiles_ptr="*i64", grad_ptr="*fp32", K="i32", stride_cn="i32", stride_wn="i32",
    stride_gn="i32", BLOCK_N="constexpr", BLOCK_C="constexpr", BLOCK_K="constexpr",
    PRECISION="constexpr",
)
for pred, cand, native in [("*fp32", "*u8", False), ("*fp16", "*u8", True),
                           ("*bf16", "*u8", False), ("*fp64", "*fp32", False)]:
    ptx = compile_sm90(
        S._soft_iou_fwd_kernel,
        dict(pred_ptr=pred, cand_ptr=cand, **fwd_sig),
        dict(BLOCK_N=S._TRITON_BN, BLOCK_C=S._TRITON_BC, BLOCK_K=S._TRITON_BK,
             NATIVE_DOT=native, PRECISION="tf32x3"),
    ).asm["ptx"]
    # tl.dot on tensor cores, and the split-K atomics
    assert "mma" in ptx and "atom" in ptx, pred
ptx = compile_sm90(
    S._soft_iou_bwd_kernel,
    bwd_sig,
    dict(BLOCK_N=S._TRITON_BWD_BN, BLOCK_C=S._TRITON_BWD_BC, BLOCK_K=S._TRITON_BWD_BK,
         PRECISION="tf32x3"),
).asm["ptx"]
assert "mma" in ptx
print("OK")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package")
def test_triton_kernels_compile_for_sm90():
    """The real compiler (not the interpreter) lowers both kernels for Hopper with the wrapper's
    launch settings, for every pred dtype, in a fresh process with a cold Triton cache."""
    run_compile_script(_COMPILE_SM90)


def test_numba_kernels_leave_torchs_thread_count_alone():
    """Numba's OpenMP layer resets OpenMP's thread count on its first parallel launch; torch reads
    it too, so without a guard a caller's torch.set_num_threads(1) silently became 2 (and a
    resumed training run differed from an uninterrupted one in the 6th digit)."""
    import subprocess
    import sys

    code = (
        "import torch, numpy as np; torch.set_num_threads(1)\n"
        "from sssc.kernels import greedy_match, pairwise_soft_iou\n"
        "p = torch.rand(40, 64, 64); c = torch.rand(30, 64, 64) > 0.5\n"
        "pairwise_soft_iou(p, c, backend='numba')\n"
        "pairwise_soft_iou(p.requires_grad_(), c, backend='numba').sum().backward()\n"
        "s = np.random.rand(400, 300).astype(np.float32)\n"
        "obj = np.repeat(np.arange(200), 2); g = np.repeat(np.arange(100), 4)\n"
        "greedy_match(s, obj, g, np.repeat(np.arange(100), 3), backend='numba')\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "1", out.stderr[-2000:]
