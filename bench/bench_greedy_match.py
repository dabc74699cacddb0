"""greedy_match (Algorithm 1 of S+S+C) on one training batch, beside its baselines.

All providers see one training batch from ``sssc.kernels.testing.match_batch``, as a dense
``[R, C]`` float32 matrix with image groups, in two sizes: ``20img`` (20 images x 3 objects x 3
expressions, 10..111 candidates per image) and ``64img`` (64 images x 8 objects x 3 expressions,
10..111 candidates: R = 1,536, C = 3,955). Providers:

- ``plain_python``: Algorithm 1 as a straightforward port writes it: Python lists and loops over
  the dense matrix (the batch is handed over as lists, so conversion is not timed).
- ``scipy_lsa``: ``scipy.optimize.linear_sum_assignment`` per image on the object-level scores (an
  optimal assignment, not the greedy one: it is the usual off-the-shelf alternative).
- ``numba``: ours, with image groups. ``numba_dense``: ours, without groups (one dense block).
- ``triton``: ours on CUDA (skipped without a GPU).

``extra_info`` records the pair counts and pairs/s over the dense ``R x C`` matrix, so rows of the
group compare directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benchutil import mean_seconds
from scipy.optimize import linear_sum_assignment

from sssc.kernels import greedy_match, greedy_match_reference
from sssc.kernels.testing import match_batch

PROVIDERS = ["plain_python", "scipy_lsa", "numba", "numba_dense", "triton"]
_MEANS: dict[tuple, dict[str, float]] = {}  # (R, C) -> provider -> mean s, for the speedups


def plain_python_greedy(scores: list[list[float]], ref_object: list[int]) -> list[int]:
    """Dense Algorithm 1 with lists: object scores, then repeated scans for the best pair."""
    R = len(scores)
    C = len(scores[0]) if R else 0
    objects = sorted(set(ref_object))
    S = []
    for o in objects:
        row = [float("-inf")] * C
        for r in range(R):
            if ref_object[r] == o:
                for c in range(C):
                    v = scores[r][c]
                    if v > row[c]:  # NaN never wins
                        row[c] = v
        S.append(row)
    used_obj = [False] * len(objects)
    used_cand = [False] * C
    chosen = {}
    while True:
        best, bo, bc = float("-inf"), -1, -1
        for k in range(len(objects)):
            if used_obj[k]:
                continue
            for c in range(C):
                if not used_cand[c] and S[k][c] > best:
                    best, bo, bc = S[k][c], k, c
        if bo < 0:
            break
        used_obj[bo] = used_cand[bc] = True
        chosen[objects[bo]] = bc
    return [chosen.get(o, -1) for o in ref_object]


def scipy_lsa_match(scores, ref_object, ref_group, cand_group) -> np.ndarray:
    """Optimal assignment per image on the object-level score block; -inf becomes a large cost."""
    out = np.full(len(ref_object), -1, dtype=np.int64)
    for g in np.unique(ref_group):
        rows = np.flatnonzero(ref_group == g)
        cands = np.flatnonzero(cand_group == g)
        if cands.size == 0:
            continue
        ids, inv = np.unique(ref_object[rows], return_inverse=True)
        block = scores[np.ix_(rows, cands)]
        S = np.full((len(ids), len(cands)), -np.inf, dtype=np.float64)
        np.maximum.at(S, inv.reshape(-1), np.nan_to_num(block, nan=-np.inf))
        S[~np.isfinite(S)] = -1e9
        obj_idx, cand_idx = linear_sum_assignment(S, maximize=True)
        taken = np.full(len(ids), -1, dtype=np.int64)
        ok = S[obj_idx, cand_idx] > -1e9
        taken[obj_idx[ok]] = cands[cand_idx[ok]]
        out[rows] = taken[inv.reshape(-1)]
    return out


BATCHES = {"20img": dict(images=20), "64img": dict(images=64, objects_per_image=8)}


@pytest.fixture(scope="module", params=list(BATCHES))
def batch(request):
    scores, ref_object, ref_group, cand_group = match_batch(**BATCHES[request.param])
    expected = greedy_match_reference(scores, ref_object, ref_group, cand_group)
    return scores, ref_object, ref_group, cand_group, expected


@pytest.mark.parametrize("provider", PROVIDERS)
def test_greedy_match_providers(benchmark, batch, provider):
    scores, obj, rg, cg, expected = batch
    R, C = scores.shape
    benchmark.group = f"greedy_match match_batch R={R} C={C}"
    means = _MEANS.setdefault((R, C), {})
    if provider == "plain_python":
        s_list, o_list = scores.tolist(), obj.tolist()
        fn = lambda: plain_python_greedy(s_list, o_list)
        rounds = 3 if R * C < 1_000_000 else 1  # the 64-image batch takes plain Python ~10 s+
        out = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
        np.testing.assert_array_equal(np.asarray(out), expected)
    elif provider == "scipy_lsa":
        out = benchmark(scipy_lsa_match, scores, obj, rg, cg)
        assert out.shape == expected.shape  # optimal, not greedy: results may differ
    elif provider in ("numba", "numba_dense"):
        groups = (rg, cg) if provider == "numba" else (None, None)
        fn = lambda: greedy_match(scores, obj, *groups, backend="numba")
        fn()  # JIT compile (or load the cache) before timing
        out = benchmark(fn)
        np.testing.assert_array_equal(out, expected)
    else:
        if not torch.cuda.is_available():
            pytest.skip("triton provider needs a CUDA device")
        t = [torch.from_numpy(x).cuda() for x in (scores, obj, rg, cg)]

        def fn():
            res = greedy_match(*t, backend="triton")
            torch.cuda.synchronize()
            return res

        fn()
        out = benchmark(fn)
        np.testing.assert_array_equal(out.cpu().numpy(), expected)
    mean = mean_seconds(benchmark)
    means[provider] = mean
    same_image = int((rg[:, None] == cg[None, :]).sum())
    benchmark.extra_info.update(
        provider=provider,
        pairs=R * C,
        same_image_pairs=same_image,
        pairs_per_s=R * C / mean,
    )
    if "plain_python" in means:  # runs first when the whole group runs
        benchmark.extra_info["speedup_vs_plain_python"] = means["plain_python"] / mean
