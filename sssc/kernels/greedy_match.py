"""Constrained greedy matching of expressions to candidate masks (Algorithm 1 of S+S+C).

*Segment, Select, Correct* trains its final model by matching, at every step, each referred object
to one candidate mask of its image: the object that agrees best with an unused candidate takes it,
and all expressions of that object share the same candidate. This module holds the three
implementations of that matching and one dispatcher:

- ``greedy_match_reference``: dense numpy, repeated argmax; slow and obviously correct.
- a Numba kernel for CPU inputs (numpy arrays or CPU tensors), working per image block.
- a Triton kernel for CUDA tensors: one launch for the batch, one program per image block, no host
  synchronisation.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from . import _validate as _v
from ._backend import HAS_TRITON, keep_torch_threads, resolve_backend

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["greedy_match", "greedy_match_reference"]

_OP = "greedy_match"
_BACKENDS = ("numba", "triton", "reference")


def greedy_match(scores, ref_object, ref_group=None, cand_group=None, backend: str = "auto"):
    """Algorithm 1 of *Segment, Select, Correct*: constrained greedy matching.

    The object score of object ``o`` and candidate ``c`` is ``S[o, c] = max_{r: ref_object[r] = o}
    scores[r, c]``. Repeatedly, the largest ``S[o, c]`` among unmatched objects and unused
    candidates is taken, ``c`` is given to every expression of ``o``, and both are excluded; this
    stops when no allowed pair is left. Ties go to the smallest object id (the id value, not its
    position), then to the smallest candidate index, so the result is deterministic.

    ``-inf`` and NaN scores mark pairs that may not be matched. ``+inf`` is an allowed score that
    beats every finite one. With ``ref_group``/``cand_group`` (image ids) pairs from different
    groups are forbidden too, and the kernels only visit same-group pairs: the result equals the
    dense algorithm on ``scores`` with cross-group pairs set to ``-inf``.

    Scores are compared exactly in their own precision: float16/bfloat16 are widened to float32 and
    integers to float64, which changes no comparison (widening is exact, float64 holds every integer
    up to 2**53).

    Args:
        scores: ``[R, C]`` float (or integer) scores, higher is better; numpy array or torch tensor
            (CPU or CUDA, may require grad: it is read, never differentiated).
        ref_object: ``[R]`` integer object id of every expression; any values, need not be sorted
            or contiguous.
        ref_group: optional ``[R]`` integer group (image) id of every expression. Every expression
            of one object must have the same group.
        cand_group: optional ``[C]`` integer group id of every candidate. Give both groups or
            neither.
        backend: ``"auto"`` (Triton on CUDA, Numba otherwise; ``SSSC_KERNEL_BACKEND`` overrides),
            ``"numba"``, ``"triton"`` or ``"reference"``.

    Returns:
        ``[R]`` int64: the candidate index given to each expression's object, or ``-1`` when the
        object got none. A numpy array for numpy ``scores``, else a tensor on ``scores``' device.

    Raises:
        ValueError: wrong ranks or lengths, non-integer ids, only one of the two group arguments,
            or an object whose expressions lie in different groups (not checked for CUDA tensors
            on the Triton backend, where it would need a host synchronisation; such input then
            gives an unspecified matching).
        RuntimeError: ``backend="triton"`` on CPU tensors in a Triton interpreter that cannot run
            the kernel (Triton < 3.7 with NumPy >= 2.4; see ``_backend.interpreter_problem``).
    """
    is_torch = isinstance(scores, torch.Tensor)
    device = scores.device if is_torch else torch.device("cpu")
    scores, ref_object, ref_group, cand_group = _validate(
        scores, ref_object, ref_group, cand_group, is_torch
    )
    name = resolve_backend(
        _OP, backend, device, _BACKENDS, cpu_default="numba", pid_loop_bounds=True
    )
    R, C = scores.shape
    if name != "triton" or device.type == "cpu":
        # On the host the ids are cheap to inspect; on CUDA the check would cost a host sync.
        np_obj, np_rg, np_cg, by_obj = _host_ids(ref_object, ref_group, cand_group)
    if name == "triton":
        if not is_torch:
            raise ValueError(f"{_OP}: backend='triton' needs torch tensors, got numpy arrays")
        return _greedy_match_triton(scores, ref_object, ref_group, cand_group)

    # CPU paths work on numpy views of CPU tensors (no copy for contiguous CPU inputs).
    np_scores = _to_numpy_scores(scores)
    if name == "reference":
        out = _reference_numpy(np_scores, np_obj, np_rg, np_cg)
    elif R == 0 or C == 0:
        out = np.full(R, -1, dtype=np.int64)
    else:
        if np_rg is None:  # one block holding everything
            np_rg = np.zeros(R, dtype=np.int64)
            np_cg = np.zeros(C, dtype=np.int64)
            rows, cands = by_obj, np.arange(C, dtype=np.int64)
        else:
            # Stable: rows stay in object order inside a group, candidates in index order.
            rows = by_obj[np.argsort(np_rg[by_obj], kind="stable")]
            cands = np.argsort(np_cg, kind="stable")
        out = np.full(R, -1, dtype=np.int64)
        _greedy_match_numba(np_scores, np_obj, np_rg, np_cg, by_obj, rows, cands, out)
    if is_torch:
        return torch.from_numpy(out).to(device)
    return out


def greedy_match_reference(scores, ref_object, ref_group=None, cand_group=None):
    """The slow dense reference of :func:`greedy_match` (same arguments, result and checks)."""
    return greedy_match(scores, ref_object, ref_group, cand_group, backend="reference")


# --------------------------------------------------------------------------------------------
# Validation and conversion (the dispatcher's job; kernels never validate)
# --------------------------------------------------------------------------------------------


def _as_kind(x, is_torch: bool, device):
    """``x`` as the same kind (numpy / torch on ``device``) as ``scores``, without copying."""
    if is_torch:
        return torch.as_tensor(x, device=device)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _validate(scores, ref_object, ref_group, cand_group, is_torch):
    device = scores.device if is_torch else None
    if not is_torch:
        scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"{_OP}: scores must be [R, C], got shape {tuple(scores.shape)}")
    is_real = (
        (
            scores.dtype.is_floating_point
            or not (scores.dtype.is_complex or scores.dtype == torch.bool)
        )
        if is_torch
        else (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer))
    )
    if not is_real:
        raise ValueError(f"{_OP}: scores must be float or integer, got dtype {scores.dtype}")
    R, C = scores.shape
    ref_object = _as_kind(ref_object, is_torch, device)
    _v.id_vector(_OP, "ref_object", ref_object, R, "R")
    _v.both_or_neither(_OP, "ref_group", ref_group, "cand_group", cand_group)
    if ref_group is not None:
        ref_group = _as_kind(ref_group, is_torch, device)
        cand_group = _as_kind(cand_group, is_torch, device)
        _v.id_vector(_OP, "ref_group", ref_group, R, "R")
        _v.id_vector(_OP, "cand_group", cand_group, C, "C")
    return scores, ref_object, ref_group, cand_group


def _check_object_groups(ref_object: np.ndarray, ref_group: np.ndarray, order: np.ndarray) -> None:
    """Raise if some object's expressions are in different groups (it could not take one mask).

    ``order`` sorts ``ref_object``.
    """
    if ref_object.size < 2:
        return
    obj, grp = ref_object[order], ref_group[order]
    bad = np.flatnonzero((obj[1:] == obj[:-1]) & (grp[1:] != grp[:-1]))
    if bad.size:
        o = int(obj[bad[0]])
        groups = np.unique(ref_group[ref_object == o]).tolist()
        raise ValueError(
            f"{_OP}: object id {o} has expressions in several groups {groups}; all expressions "
            "of one object must share its image (ref_group)"
        )


def _to_numpy_scores(scores) -> np.ndarray:
    """Scores as a numpy float32/float64 array that Numba accepts; exact widening only."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach()
        if scores.dtype not in (torch.float32, torch.float64):
            # bfloat16 has no numpy dtype; float16 -> float32 is exact; integers -> float64.
            wide = torch.float32 if scores.dtype.is_floating_point else torch.float64
            scores = scores.to(wide)
        return scores.cpu().numpy()
    if scores.dtype in (np.float32, np.float64):
        return scores
    return scores.astype(np.float32 if np.issubdtype(scores.dtype, np.floating) else np.float64)


def _host_ids(ref_object, ref_group, cand_group):
    """Ids as int64 numpy, the object sort order, and the check that objects keep to one group."""
    np_obj = _to_numpy_ids(ref_object)
    np_rg = np_cg = None
    # numpy's stable sorts are far faster than Numba's mergesort, so the kernel gets the orders.
    by_obj = np.argsort(np_obj, kind="stable")
    if ref_group is not None:
        np_rg, np_cg = _to_numpy_ids(ref_group), _to_numpy_ids(cand_group)
        _check_object_groups(np_obj, np_rg, by_obj)
    return np_obj, np_rg, np_cg, by_obj


def _to_numpy_ids(ids) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    return np.ascontiguousarray(ids, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Reference: dense, object-level S, repeated argmax
# --------------------------------------------------------------------------------------------


def _reference_numpy(scores, ref_object, ref_group, cand_group) -> np.ndarray:
    R, C = scores.shape
    s = np.array(scores, dtype=np.float64)  # exact for every input dtype we accept
    s[np.isnan(s)] = -np.inf
    if ref_group is not None:
        s[ref_group[:, None] != cand_group[None, :]] = -np.inf
    ids, inv = np.unique(ref_object, return_inverse=True)  # ids ascending: row k is the k-th id
    inv = inv.reshape(-1)
    S = np.full((len(ids), C), -np.inf)
    for k in range(len(ids)):
        S[k] = s[inv == k].max(axis=0) if C else S[k]
    obj_cand = np.full(len(ids), -1, dtype=np.int64)
    while S.size:
        # argmax returns the first maximum in row-major order: smallest id, then smallest c.
        flat = int(np.argmax(S))
        k, c = divmod(flat, C)
        if S[k, c] == -np.inf:
            break
        obj_cand[k] = c
        S[k, :] = -np.inf
        S[:, c] = -np.inf
    return obj_cand[inv] if R else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Numba CPU kernel
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _refresh(S, used, k, best_val, best_cand):
    """Object ``k``'s best unused candidate: the first maximum, so ties go to the smaller index."""
    v = -np.inf
    b = -1
    for j in range(S.shape[1]):
        # Strict '>' from -inf skips forbidden (-inf) pairs and keeps the first of equal maxima.
        if not used[j] and S[k, j] > v:
            v = S[k, j]
            b = j
    best_val[k] = v
    best_cand[k] = b


@njit(cache=True)
def _greedy_block(scores, rows, obj_rank, cands, out):
    """Algorithm 1 on one block: ``rows`` sorted by object rank, ``cands`` ascending."""
    nr = rows.shape[0]
    nc = cands.shape[0]
    # Objects are runs of equal rank in rows; their order is the order of their ids.
    starts = np.empty(nr + 1, dtype=np.int64)
    K = 0
    for i in range(nr):
        if i == 0 or obj_rank[rows[i]] != obj_rank[rows[i - 1]]:
            starts[K] = i
            K += 1
    starts[K] = nr
    # Object-level scores. NaN never passes '>', so NaN pairs stay -inf (forbidden).
    S = np.full((K, nc), -np.inf, dtype=scores.dtype)
    for k in range(K):
        for i in range(starts[k], starts[k + 1]):
            r = rows[i]
            for j in range(nc):
                v = scores[r, cands[j]]
                if v > S[k, j]:
                    S[k, j] = v
    # Lazy greedy: each unmatched object caches its best unused candidate; taking a candidate only
    # invalidates the objects whose cached best it was. Equivalent to a global argmax each round.
    used = np.zeros(nc, dtype=np.bool_)
    matched = np.zeros(K, dtype=np.bool_)
    best_val = np.empty(K, dtype=scores.dtype)
    best_cand = np.empty(K, dtype=np.int64)
    for k in range(K):
        _refresh(S, used, k, best_val, best_cand)
    for _ in range(min(K, nc)):
        kb = -1
        for k in range(K):
            # Strict '>' keeps the smallest object rank (= smallest id) among equal maxima.
            if not matched[k] and best_cand[k] >= 0 and (kb < 0 or best_val[k] > best_val[kb]):
                kb = k
        if kb < 0:
            break
        j = best_cand[kb]
        matched[kb] = True
        used[j] = True
        c = cands[j]
        for i in range(starts[kb], starts[kb + 1]):
            out[rows[i]] = c
        for k in range(K):
            if not matched[k] and best_cand[k] == j:
                _refresh(S, used, k, best_val, best_cand)


# Threads pay off only with many blocks: measured on 2 cores, 200 images ran 3.6x faster with
# prange, while 20 images gained nothing and risked thread wake-up stalls on a busy machine.
_PARALLEL_MIN_BLOCKS = 64


@njit(cache=True)
def _blocks(ref_object, ref_group, cand_group, by_obj, rows, cands):
    """Object ranks ``[R]`` and the blocks ``[B, 4]`` (row start/end in ``rows``, cand start/end).

    ``by_obj`` sorts the rows by object id; ``rows`` sorts them by (group, object id) and
    ``cands`` the candidates by (group, index). A merge walk pairs each row group with its
    candidates, so the cost follows the same-group pairs, not ``R x C``. Groups without
    candidates get no block (their rows stay -1).
    """
    R = ref_object.shape[0]
    C = cand_group.shape[0]
    # Ranks of the ids: comparing ranks is comparing ids, and ranks index the object arrays.
    obj_rank = np.empty(R, dtype=np.int64)
    rank = -1
    for i in range(R):
        if i == 0 or ref_object[by_obj[i]] != ref_object[by_obj[i - 1]]:
            rank += 1
        obj_rank[by_obj[i]] = rank
    bounds = np.empty((R, 4), dtype=np.int64)
    nb = 0
    i = 0
    j = 0
    while i < R:
        g = ref_group[rows[i]]
        i_end = i
        while i_end < R and ref_group[rows[i_end]] == g:
            i_end += 1
        while j < C and cand_group[cands[j]] < g:
            j += 1
        j_end = j
        while j_end < C and cand_group[cands[j_end]] == g:
            j_end += 1
        if j_end > j:
            bounds[nb, 0] = i
            bounds[nb, 1] = i_end
            bounds[nb, 2] = j
            bounds[nb, 3] = j_end
            nb += 1
        i = i_end
        j = j_end
    return obj_rank, bounds[:nb]


@njit(cache=True)
def _run_blocks(scores, obj_rank, bounds, rows, cands, out):
    for b in range(bounds.shape[0]):
        r = rows[bounds[b, 0] : bounds[b, 1]]
        _greedy_block(scores, r, obj_rank, cands[bounds[b, 2] : bounds[b, 3]], out)


@njit(cache=True, parallel=True)
def _run_blocks_parallel(scores, obj_rank, bounds, rows, cands, out):
    # Blocks write disjoint rows of out, so they need no synchronisation.
    for b in prange(bounds.shape[0]):
        r = rows[bounds[b, 0] : bounds[b, 1]]
        _greedy_block(scores, r, obj_rank, cands[bounds[b, 2] : bounds[b, 3]], out)


def _greedy_match_numba(scores, ref_object, ref_group, cand_group, by_obj, rows, cands, out):
    """Fill ``out [R]`` (pre-set to -1) with Algorithm 1, one image block at a time."""
    obj_rank, bounds = _blocks(ref_object, ref_group, cand_group, by_obj, rows, cands)
    if bounds.shape[0] >= _PARALLEL_MIN_BLOCKS:
        with keep_torch_threads():
            _run_blocks_parallel(scores, obj_rank, bounds, rows, cands, out)
    else:
        _run_blocks(scores, obj_rank, bounds, rows, cands, out)


# --------------------------------------------------------------------------------------------
# Triton GPU kernel
# --------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _greedy_match_kernel(
        scores_ptr,
        obj_ptr,
        row_perm_ptr,
        row_start_ptr,
        row_end_ptr,
        cand_perm_ptr,
        cand_start_ptr,
        cand_end_ptr,
        used_ptr,
        out_ptr,
        stride_r,
        stride_c,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """One program per sorted row; the first row of each group runs that group's greedy.

        Works at expression level: the largest allowed ``scores[r, c]`` over unmatched rows and
        unused candidates is the largest object score ``S[o, c]``, and among equal maxima the
        smallest object id, then the smallest candidate index, is taken. ``out`` (pre-set to -1)
        doubles as the "row matched" flag and ``used`` as the "candidate taken" flag.
        """
        pid = tl.program_id(0)
        rs = tl.load(row_start_ptr + pid)
        if rs == pid:
            re = tl.load(row_end_ptr + pid)
            cs = tl.load(cand_start_ptr + pid)
            ce = tl.load(cand_end_ptr + pid)
            neg_inf = float("-inf")
            big = 9223372036854775807  # int64 max: "no object/candidate yet"
            n_iter = tl.minimum(re - rs, ce - cs)
            it = n_iter * 0
            while it < n_iter:
                best_v = tl.full([], neg_inf, scores_ptr.dtype.element_ty)
                best_o = tl.full([], big, tl.int64)
                best_c = tl.full([], big, tl.int64)
                for r0 in range(rs, re, BLOCK_R):
                    offs_r = r0 + tl.arange(0, BLOCK_R)
                    in_r = offs_r < re
                    rows = tl.load(row_perm_ptr + offs_r, mask=in_r, other=0)
                    objs = tl.load(obj_ptr + rows, mask=in_r, other=0)
                    free_r = in_r & (tl.load(out_ptr + rows, mask=in_r, other=0) < 0)
                    for c0 in range(cs, ce, BLOCK_C):
                        offs_c = c0 + tl.arange(0, BLOCK_C)
                        in_c = offs_c < ce
                        cands = tl.load(cand_perm_ptr + offs_c, mask=in_c, other=0)
                        free_c = in_c & (tl.load(used_ptr + cands, mask=in_c, other=1) == 0)
                        ok = free_r[:, None] & free_c[None, :]
                        s = tl.load(
                            scores_ptr + rows[:, None] * stride_r + cands[None, :] * stride_c,
                            mask=ok,
                            other=neg_inf,
                        )
                        tile_v = tl.max(tl.max(s, axis=1), axis=0)
                        at_max = ok & (s == tile_v) & (s > neg_inf)
                        objs2 = objs[:, None] + tl.zeros([BLOCK_R, BLOCK_C], tl.int64)
                        tile_o = tl.min(tl.min(tl.where(at_max, objs2, big), axis=1), axis=0)
                        at_o = at_max & (objs2 == tile_o)
                        cands2 = cands[None, :] + tl.zeros([BLOCK_R, BLOCK_C], tl.int64)
                        tile_c = tl.min(tl.min(tl.where(at_o, cands2, big), axis=1), axis=0)
                        # Lexicographic merge: higher score, then smaller object id, then cand.
                        better = (tile_v > best_v) | (
                            (tile_v == best_v)
                            & ((tile_o < best_o) | ((tile_o == best_o) & (tile_c < best_c)))
                        )
                        best_v = tl.where(better, tile_v, best_v)
                        best_o = tl.where(better, tile_o, best_o)
                        best_c = tl.where(better, tile_c, best_c)
                found = best_v > neg_inf
                # Broadcast through int32: the interpreter mis-types a scalar bool broadcast.
                found_r = (tl.zeros([BLOCK_R], tl.int32) + found.to(tl.int32)) != 0
                for r0 in range(rs, re, BLOCK_R):
                    offs_r = r0 + tl.arange(0, BLOCK_R)
                    in_r = offs_r < re
                    rows = tl.load(row_perm_ptr + offs_r, mask=in_r, other=0)
                    objs = tl.load(obj_ptr + rows, mask=in_r, other=0)
                    give = in_r & (objs == best_o) & found_r
                    tl.store(out_ptr + rows, best_c + tl.zeros([BLOCK_R], tl.int64), mask=give)
                tl.store(used_ptr + tl.where(found, best_c, 0), 1, mask=found)
                # The next round reads out/used written by other threads of this program.
                tl.debug_barrier()
                it = tl.where(found, it + 1, n_iter)


def _greedy_match_triton(scores, ref_object, ref_group, cand_group):
    """Launch the Triton kernel; every step stays on the device (no host synchronisation)."""
    R, C = scores.shape
    device = scores.device
    out = torch.full((R,), -1, dtype=torch.int64, device=device)
    if R == 0 or C == 0:
        return out
    s = scores.detach()
    if s.dtype not in (torch.float32, torch.float64):
        s = s.to(torch.float32 if s.dtype.is_floating_point else torch.float64)
    # NaN -> -inf so that the kernel has one "forbidden" value; where() also needs no sync.
    s = torch.where(torch.isnan(s), torch.full((), float("-inf"), dtype=s.dtype, device=device), s)
    obj = ref_object.to(torch.int64).contiguous()
    if ref_group is None:
        rg = torch.zeros(R, dtype=torch.int64, device=device)
        cg = torch.zeros(C, dtype=torch.int64, device=device)
    else:
        rg = ref_group.to(torch.int64)
        cg = cand_group.to(torch.int64)
    rg_sorted, row_perm = torch.sort(rg, stable=True)
    cg_sorted, cand_perm = torch.sort(cg, stable=True)  # stable: ascending index inside a group
    row_start = torch.searchsorted(rg_sorted, rg_sorted, right=False)
    row_end = torch.searchsorted(rg_sorted, rg_sorted, right=True)
    cand_start = torch.searchsorted(cg_sorted, rg_sorted, right=False)
    cand_end = torch.searchsorted(cg_sorted, rg_sorted, right=True)
    used = torch.zeros(C, dtype=torch.int8, device=device)
    _greedy_match_kernel[(R,)](
        s,
        obj,
        row_perm,
        row_start,
        row_end,
        cand_perm,
        cand_start,
        cand_end,
        used,
        out,
        s.stride(0),
        s.stride(1),
        BLOCK_R=16,
        BLOCK_C=64,
    )
    return out
