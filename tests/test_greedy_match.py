"""greedy_match (Algorithm 1 of Segment, Select, Correct) against an independent brute force.

The brute force here shares no code with the module: it lists every allowed (object score, object
id, candidate) triple, sorts them by (-score, id, candidate) and scans, skipping used objects and
candidates. That is Algorithm 1 read literally, with its tie rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from triton_compile import run_compile_script

from sssc.kernels import greedy_match, greedy_match_reference
from sssc.kernels._backend import HAS_TRITON, triton_interpret
from sssc.kernels.testing import match_batch

CAN_TRITON = HAS_TRITON and (torch.cuda.is_available() or triton_interpret())
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not CAN_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1 (its CPU interpreter)"
)


def brute_force(scores, ref_object, ref_group=None, cand_group=None) -> np.ndarray:
    """Algorithm 1 by sorting all allowed object-level pairs once; float64, plain Python."""
    s = np.asarray(scores, dtype=np.float64)
    R, C = s.shape
    ids = [int(o) for o in ref_object]
    best: dict[tuple[int, int], float] = {}
    for r in range(R):
        for c in range(C):
            v = s[r, c]
            if np.isnan(v) or v == -np.inf:
                continue
            if ref_group is not None and ref_group[r] != cand_group[c]:
                continue
            key = (ids[r], c)
            best[key] = max(best.get(key, -np.inf), v)
    triples = sorted((-v, o, c) for (o, c), v in best.items())
    taken_obj: dict[int, int] = {}
    taken_cand: set[int] = set()
    for _, o, c in triples:
        if o in taken_obj or c in taken_cand:
            continue
        taken_obj[o] = c
        taken_cand.add(c)
    return np.array([taken_obj.get(o, -1) for o in ids], dtype=np.int64)


def _random_case(rng, R, C, n_obj, levels=None, p_forbid=0.0, p_nan=0.0, ids=None):
    obj_ids = ids if ids is not None else rng.permutation(10 * n_obj + 5)[:n_obj] * 3 - 20
    ref_object = obj_ids[rng.integers(0, n_obj, size=R)] if R else np.zeros(0, np.int64)
    scores = rng.random((R, C))
    if levels:
        scores = np.round(scores * levels) / levels
    scores[rng.random((R, C)) < p_forbid] = -np.inf
    scores[rng.random((R, C)) < p_nan] = np.nan
    return scores.astype(np.float32), ref_object.astype(np.int64)


def _grouped_case(rng, n_groups, objs_per_group, refs_per_obj, cands_per_group, levels=4):
    """Groups with unsorted, sparse ids; rows and candidates interleaved across groups."""
    gids = rng.permutation(max(50, 2 * n_groups))[:n_groups] * 7 - 30
    rg, ro, cg = [], [], []
    next_obj = 0
    for gi, g in enumerate(gids):
        for _ in range(objs_per_group[gi]):
            oid = int(rng.integers(-1000, 1000)) * 1000 + next_obj  # unique, unsorted, negative ok
            next_obj += 1
            for _ in range(refs_per_obj):
                rg.append(g)
                ro.append(oid)
        cg.extend([g] * cands_per_group[gi])
    rg, ro, cg = np.array(rg, np.int64), np.array(ro, np.int64), np.array(cg, np.int64)
    rp, cp = rng.permutation(len(rg)), rng.permutation(len(cg))
    rg, ro, cg = rg[rp], ro[rp], cg[cp]
    scores = np.round(rng.random((len(rg), len(cg))) * levels) / levels
    scores[rg[:, None] != cg[None, :]] = -np.inf
    return scores.astype(np.float32), ro, rg, cg


def _cases():
    rng = np.random.default_rng(1234)
    cases = {}
    cases["R0"] = (np.zeros((0, 5), np.float32), np.zeros(0, np.int64), None, None)
    cases["C0"] = (np.zeros((4, 0), np.float32), np.array([3, 1, 3, 2]), None, None)
    cases["R0C0"] = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64), None, None)
    cases["R1C1"] = (np.array([[0.5]], np.float32), np.array([7]), None, None)
    cases["R1C1_forbidden"] = (np.array([[-np.inf]], np.float32), np.array([7]), None, None)
    cases["R1C7"] = (*_random_case(rng, 1, 7, 1), None, None)
    cases["R9C1"] = (*_random_case(rng, 9, 1, 4), None, None)
    cases["odd_13x17"] = (*_random_case(rng, 13, 17, 6), None, None)
    cases["more_objects_than_cands"] = (*_random_case(rng, 20, 3, 10), None, None)
    s, o = _random_case(rng, 12, 9, 5)
    s[[0, 4, 5]] = -np.inf  # whole rows forbidden
    cases["all_inf_rows"] = (s, o, None, None)
    cases["all_inf"] = (np.full((5, 6), -np.inf, np.float32), np.array([1, 2, 1, 3, 2]), None, None)
    cases["nan"] = (*_random_case(rng, 15, 11, 6, p_nan=0.3), None, None)
    cases["all_nan"] = (np.full((3, 4), np.nan, np.float32), np.array([0, 1, 0]), None, None)
    cases["ties"] = (*_random_case(rng, 21, 14, 8, levels=2), None, None)
    cases["all_equal"] = (np.ones((7, 5), np.float32), np.array([9, 3, 5, 3, 1, 8, 9]), None, None)
    sparse = np.array([10**12, -5, 7, 0, 3, 99, 6])
    cases["sparse_ids"] = (*_random_case(rng, 18, 10, 7, ids=sparse), None, None)
    cases["forbidden_ties"] = (*_random_case(rng, 30, 25, 12, levels=3, p_forbid=0.5), None, None)
    s, o = _random_case(rng, 10, 8, 5)
    s[2, 3] = np.inf
    s[7, 1] = np.inf
    cases["posinf"] = (s, o, None, None)
    cases["groups_small"] = _grouped_case(rng, 4, [1, 3, 2, 2], 2, [3, 0, 5, 1])
    cases["groups_ties"] = _grouped_case(
        rng, 6, [3, 1, 4, 2, 2, 3], 3, [5, 7, 2, 0, 4, 9], levels=2
    )
    cases["groups_batch"] = match_batch(
        images=4, max_cands=15, min_cands=2, seed=3, ties=True, p_forbidden=0.3
    )
    # Candidates of a group without rows, and a group whose rows have no candidates.
    s, o, rg, cg = _grouped_case(rng, 3, [2, 0, 2], 2, [3, 4, 0])
    cases["groups_orphans"] = (s, o, rg, cg)
    return cases


CASES = _cases()
SMALL_CASES = [k for k, v in CASES.items() if v[0].size <= 2500]


def _run(case, backend, kind="numpy", dtype=np.float32, groups=True, device="cpu"):
    scores, obj, rg, cg = CASES[case]
    if not groups:
        rg = cg = None
    scores = scores.astype(dtype)
    if kind == "torch":
        t = lambda x: None if x is None else torch.as_tensor(x, device=device)
        out = greedy_match(t(scores), t(obj), t(rg), t(cg), backend=backend)
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.int64 and out.device.type == torch.device(device).type
        return out.cpu().numpy()
    out = greedy_match(scores, obj, rg, cg, backend=backend)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    return out


# ------------------------------------------------------------------------------------------------
# Every backend against the brute force
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [True, False], ids=["groups", "dense"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_backends_match_brute_force(case, backend, kind, groups):
    scores, obj, rg, cg = CASES[case]
    use_groups = groups and rg is not None
    expected = brute_force(scores, obj, rg if use_groups else None, cg if use_groups else None)
    out = _run(case, backend, kind=kind, groups=use_groups)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=["float16", "float64"])
@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("case", ["ties", "forbidden_ties", "nan", "groups_ties", "posinf"])
def test_cpu_dtypes(case, backend, dtype):
    scores, obj, rg, cg = CASES[case]
    expected = brute_force(scores.astype(dtype), obj, rg, cg)
    np.testing.assert_array_equal(_run(case, backend, dtype=dtype), expected)
    np.testing.assert_array_equal(_run(case, backend, kind="torch", dtype=dtype), expected)


def test_torch_bfloat16_and_integer_scores():
    scores, obj, _, _ = CASES["forbidden_ties"]
    finite = np.where(np.isfinite(scores), scores, -1.0)
    s_bf = torch.from_numpy(scores).to(torch.bfloat16)  # levels k/3 round in bf16: compare on it
    expected = brute_force(s_bf.float().numpy(), obj)
    np.testing.assert_array_equal(greedy_match(s_bf, torch.from_numpy(obj)).numpy(), expected)
    ints = (finite * 3).round().astype(np.int32)
    np.testing.assert_array_equal(greedy_match(ints, obj), brute_force(ints, obj))


@pytest.mark.parametrize("case", ["groups_small", "groups_ties", "groups_batch", "groups_orphans"])
def test_groups_equal_dense_with_cross_group_forbidden(case):
    """Group args only speed things up: same result as the dense matrix with -inf across groups."""
    scores, obj, rg, cg = CASES[case]
    # Put finite values across groups: the group arguments alone must forbid them.
    noisy = np.where(rg[:, None] != cg[None, :], 2.0, scores).astype(np.float32)
    with_groups = greedy_match(noisy, obj, rg, cg)
    masked = np.where(rg[:, None] != cg[None, :], -np.inf, noisy).astype(np.float32)
    np.testing.assert_array_equal(with_groups, greedy_match(masked, obj))
    np.testing.assert_array_equal(with_groups, brute_force(masked, obj))
    np.testing.assert_array_equal(greedy_match_reference(noisy, obj, rg, cg), with_groups)


@pytest.mark.parametrize("threshold", [None, 1], ids=["many_blocks", "forced"])
def test_numba_parallel_blocks(monkeypatch, threshold):
    """The prange path (taken for many image blocks) gives the serial result."""
    import sys

    module = sys.modules["sssc.kernels.greedy_match"]
    rng = np.random.default_rng(99)
    if threshold is None:
        n = module._PARALLEL_MIN_BLOCKS + 6
        case = _grouped_case(rng, n, [2] * n, 2, list(rng.integers(1, 4, size=n)), levels=3)
    else:
        monkeypatch.setattr(module, "_PARALLEL_MIN_BLOCKS", threshold)
        case = CASES["groups_ties"]
    calls = []
    parallel = module._run_blocks_parallel
    monkeypatch.setattr(module, "_run_blocks_parallel", lambda *a: calls.append(1) or parallel(*a))
    scores, obj, rg, cg = case
    np.testing.assert_array_equal(greedy_match(scores, obj, rg, cg), brute_force(*case))
    assert calls, "the parallel path was not taken"


def test_non_contiguous_scores_and_ids():
    scores, obj, rg, cg = CASES["groups_ties"]
    expected = brute_force(scores, obj, rg, cg)
    s_t = np.ascontiguousarray(scores.T).T  # Fortran order
    assert not s_t.flags.c_contiguous
    np.testing.assert_array_equal(greedy_match(s_t, obj, rg, cg), expected)
    wide = np.zeros((scores.shape[0], 2 * scores.shape[1]), np.float32)
    wide[:, ::2] = scores
    obj2 = np.stack([obj, obj], 1)[:, 0]  # strided view
    out = greedy_match(
        torch.from_numpy(wide)[:, ::2],
        torch.from_numpy(obj2),
        torch.from_numpy(rg),
        torch.from_numpy(cg),
    )
    np.testing.assert_array_equal(out.numpy(), expected)


def test_int32_ids_and_requires_grad():
    scores, obj, rg, cg = CASES["groups_small"]
    s = torch.from_numpy(scores).requires_grad_(True)
    obj32, rg32, cg16 = obj.astype(np.int32), rg.astype(np.int32), cg.astype(np.int16)
    out = greedy_match(s, *(torch.from_numpy(x) for x in (obj32, rg32, cg16)))
    np.testing.assert_array_equal(out.numpy(), brute_force(scores, obj, rg, cg))


def test_tie_rule_uses_id_value_not_position():
    # Two objects tie on candidate 0; the smaller id (3) wins although it comes second.
    scores = np.array([[1.0, 0.5], [1.0, 0.2]], np.float32)
    obj = np.array([8, 3])
    for backend in ("numba", "reference"):
        np.testing.assert_array_equal(greedy_match(scores, obj, backend=backend), [1, 0])
    # Same object, tie across candidates: the smaller candidate index wins.
    scores = np.array([[0.3, 0.9, 0.9], [0.9, 0.1, 0.1]], np.float32)
    np.testing.assert_array_equal(greedy_match(scores, np.array([4, 4])), [0, 0])


def test_object_score_is_max_over_expressions():
    # Object 1's expressions prefer different candidates; its max (0.9 on cand 1) beats object 2.
    scores = np.array([[0.8, 0.1], [0.2, 0.9], [0.1, 0.85]], np.float32)
    out = greedy_match(scores, np.array([1, 1, 2]))
    np.testing.assert_array_equal(out, [1, 1, 0])


def test_env_backend_override(monkeypatch):
    scores, obj, _, _ = CASES["ties"]
    monkeypatch.setenv("SSSC_KERNEL_BACKEND", "reference")
    np.testing.assert_array_equal(greedy_match(scores, obj), brute_force(scores, obj))
    monkeypatch.setenv("SSSC_KERNEL_BACKEND", "nope")
    with pytest.raises(ValueError, match="SSSC_KERNEL_BACKEND"):
        greedy_match(scores, obj)


# ------------------------------------------------------------------------------------------------
# Triton (CUDA, or the CPU interpreter)
# ------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("groups", [True, False], ids=["groups", "dense"])
@pytest.mark.parametrize("case", SMALL_CASES)
def test_triton_matches_brute_force(case, groups):
    scores, obj, rg, cg = CASES[case]
    use_groups = groups and rg is not None
    expected = brute_force(scores, obj, rg if use_groups else None, cg if use_groups else None)
    out = _run(case, "triton", kind="torch", groups=use_groups, device=TRITON_DEVICE)
    np.testing.assert_array_equal(out, expected)


@needs_triton
@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=["float16", "float64"])
def test_triton_dtypes(dtype):
    scores, obj, rg, cg = CASES["groups_ties"]
    expected = brute_force(scores.astype(dtype), obj, rg, cg)
    out = _run("groups_ties", "triton", kind="torch", dtype=dtype, device=TRITON_DEVICE)
    np.testing.assert_array_equal(out, expected)


@needs_triton
def test_triton_multi_tile_block():
    """A block larger than one tile in both directions (16 rows x 64 candidates per tile)."""
    rng = np.random.default_rng(7)
    scores, obj = _random_case(rng, 37, 150, 20, levels=5, p_forbid=0.2)
    t = torch.from_numpy(scores).to(TRITON_DEVICE)
    out = greedy_match(t, torch.from_numpy(obj).to(TRITON_DEVICE), backend="triton")
    np.testing.assert_array_equal(out.cpu().numpy(), brute_force(scores, obj))


@needs_triton
def test_triton_training_batch():
    """The benchmark's batch shape (20 images, up to 111 candidates), with ties and -inf."""
    scores, obj, rg, cg = match_batch(ties=True, p_forbidden=0.2, seed=5)
    t = [torch.from_numpy(x).to(TRITON_DEVICE) for x in (scores, obj, rg, cg)]
    out = greedy_match(*t, backend="triton")
    np.testing.assert_array_equal(out.cpu().numpy(), brute_force(scores, obj, rg, cg))


_COMPILE_SM90 = r"""
import importlib

# the package re-exports the function under the module's name
G = importlib.import_module("sssc.kernels.greedy_match")

names = ["obj", "row_perm", "row_start", "row_end", "cand_perm", "cand_start", "cand_end"]
for dtype in ("*fp32", "*fp64"):
    signature = {"scores_ptr": dtype, **{f"{n}_ptr": "*i64" for n in names}}
    signature.update(used_ptr="*i8", out_ptr="*i64", stride_r="i32", stride_c="i32")
    signature.update(BLOCK_R="constexpr", BLOCK_C="constexpr")
    compiled = compile_sm90(G._greedy_match_kernel, signature, {"BLOCK_R": 16, "BLOCK_C": 64})
    assert compiled.asm["cubin"], dtype
print("OK")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package")
def test_triton_kernel_compiles_for_sm90():
    """The real compiler accepts the kernel (fp32 and fp64 scores); the interpreter forgives e.g.
    loop type changes. A fresh process with a cold cache, whatever ran before (see
    ``triton_compile``)."""
    run_compile_script(_COMPILE_SM90)


@needs_triton
def test_triton_numpy_input_is_refused():
    with pytest.raises(ValueError, match="torch tensors"):
        greedy_match(np.zeros((2, 2), np.float32), np.array([0, 1]), backend="triton")


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA skips this check (host sync)")
def test_triton_cpu_checks_object_groups():
    args, pattern = BAD["object_spans_groups"]
    with pytest.raises(ValueError, match=pattern):
        greedy_match(*(torch.from_numpy(np.asarray(a)) for a in args), backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_auto_has_no_host_sync():
    scores, obj, rg, cg = match_batch(images=5, max_cands=40, ties=True, p_forbidden=0.2)
    t = [torch.from_numpy(x).cuda() for x in (scores, obj, rg, cg)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = greedy_match(*t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and out.dtype == torch.int64
    np.testing.assert_array_equal(out.cpu().numpy(), brute_force(scores, obj, rg, cg))


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ------------------------------------------------------------------------------------------------

LEVELS = [-np.inf, np.nan, 0.0, 0.25, 0.5, 0.75, 1.0]


@st.composite
def matching_problems(draw, max_r=12, max_c=10):
    R = draw(st.integers(0, max_r))
    C = draw(st.integers(0, max_c))
    n_obj = draw(st.integers(1, max(R, 1)))
    pool = draw(st.lists(st.integers(-50, 50), min_size=n_obj, max_size=n_obj, unique=True))
    obj = np.array([draw(st.sampled_from(pool)) for _ in range(R)], dtype=np.int64)
    flat = draw(st.lists(st.sampled_from(LEVELS), min_size=R * C, max_size=R * C))
    scores = np.array(flat, dtype=np.float32).reshape(R, C)
    if draw(st.booleans()):
        n_groups = draw(st.integers(1, 3))
        obj_group = {o: draw(st.integers(0, n_groups - 1)) for o in pool}
        rg = np.array([obj_group[o] for o in obj], dtype=np.int64)
        cg = np.array([draw(st.integers(0, n_groups - 1)) for _ in range(C)], dtype=np.int64)
        return scores, obj, rg, cg
    return scores, obj, None, None


def _check_properties(out, scores, obj, rg, cg):
    R, C = scores.shape
    assert out.shape == (R,) and out.dtype == np.int64
    assert ((out >= -1) & (out < max(C, 1))).all()
    # One candidate per object, the same for all its expressions.
    per_obj = {}
    for o, c in zip(obj.tolist(), out.tolist(), strict=True):
        assert per_obj.setdefault(o, c) == c
    # No candidate used twice (across objects).
    given = [c for c in per_obj.values() if c >= 0]
    assert len(given) == len(set(given))
    allowed = ~np.isnan(scores) & (scores > -np.inf)
    if rg is not None:
        allowed &= rg[:, None] == cg[None, :]
    # A matched expression's object has an allowed pair with its candidate.
    for o, c in per_obj.items():
        if c >= 0:
            assert allowed[obj == o, c].any()
    # -1 only when nothing is left: no allowed pair with a candidate nobody took.
    free = np.ones(C, dtype=bool)
    free[given] = False
    for o, c in per_obj.items():
        if c < 0:
            assert not (allowed[obj == o] & free[None, :]).any()
    np.testing.assert_array_equal(out, brute_force(scores, obj, rg, cg))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=matching_problems())
def test_property_numba(problem):
    scores, obj, rg, cg = problem
    _check_properties(greedy_match(scores, obj, rg, cg, backend="numba"), scores, obj, rg, cg)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=matching_problems())
def test_property_reference(problem):
    scores, obj, rg, cg = problem
    _check_properties(greedy_match_reference(scores, obj, rg, cg), scores, obj, rg, cg)


@needs_triton
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=matching_problems(max_r=8, max_c=8))
def test_property_triton(problem):
    scores, obj, rg, cg = problem
    t = lambda x: None if x is None else torch.from_numpy(x).to(TRITON_DEVICE)
    out = greedy_match(t(scores), t(obj), t(rg), t(cg), backend="triton").cpu().numpy()
    _check_properties(out, scores, obj, rg, cg)


# ------------------------------------------------------------------------------------------------
# Bad input and imports
# ------------------------------------------------------------------------------------------------

S4x3 = np.zeros((4, 3), np.float32)
OBJ4 = np.arange(4)
BAD = {
    "scores_1d": ((np.zeros(4, np.float32), OBJ4), "scores.*\\(4,\\)"),
    "scores_3d": ((np.zeros((4, 3, 1), np.float32), OBJ4), "scores.*\\(4, 3, 1\\)"),
    "scores_complex": ((S4x3.astype(np.complex64), OBJ4), "scores.*complex64"),
    "object_len": ((S4x3, np.arange(5)), "ref_object.*\\(5,\\)"),
    "object_2d": ((S4x3, np.zeros((4, 1), np.int64)), "ref_object.*\\(4, 1\\)"),
    "object_float": ((S4x3, OBJ4.astype(np.float32)), "ref_object.*float32"),
    "only_ref_group": ((S4x3, OBJ4, np.zeros(4, np.int64), None), "both ref_group and cand_group"),
    "only_cand_group": ((S4x3, OBJ4, None, np.zeros(3, np.int64)), "both ref_group"),
    "ref_group_len": (
        (S4x3, OBJ4, np.zeros(3, np.int64), np.zeros(3, np.int64)),
        "ref_group.*\\(3,\\)",
    ),
    "cand_group_len": (
        (S4x3, OBJ4, np.zeros(4, np.int64), np.zeros(4, np.int64)),
        "cand_group.*\\(4,\\)",
    ),
    "cand_group_float": ((S4x3, OBJ4, np.zeros(4, np.int64), np.zeros(3)), "cand_group.*float64"),
    "object_spans_groups": (
        (S4x3, np.array([5, 6, 5, 7]), np.array([0, 0, 1, 1]), np.zeros(3, np.int64)),
        "object id 5",
    ),
}


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name, kind):
    args, pattern = BAD[name]
    if kind == "torch":
        args = tuple(None if a is None else torch.from_numpy(np.asarray(a)) for a in args)
    with pytest.raises(ValueError, match=pattern):
        greedy_match(*args)


def test_nan_is_not_bad_input():
    scores = np.array([[np.nan, 0.2], [0.4, np.nan]], np.float32)
    np.testing.assert_array_equal(greedy_match(scores, np.array([0, 1])), [1, 0])


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend='cuda'"):
        greedy_match(S4x3, OBJ4, backend="cuda")


def test_import_forms():
    import importlib
    import sys

    import sssc.kernels
    import sssc.kernels.greedy_match  # noqa: F401  (the submodule imports)
    from sssc.kernels.greedy_match import greedy_match as gm

    module = sys.modules["sssc.kernels.greedy_match"]
    assert module.greedy_match is gm is greedy_match
    assert importlib.import_module("sssc.kernels.greedy_match") is module
    # The package re-exports the function under the submodule's name, shadowing the module.
    assert sssc.kernels.greedy_match is greedy_match
    assert "greedy_match" in sssc.kernels.__all__ and "greedy_match" in module.__all__
