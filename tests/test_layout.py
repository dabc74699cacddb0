"""The house shows the data flow: stage packages never import each other, evaluation never imports
the model code, and the kernels load alone (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SSSC = Path(__file__).resolve().parents[1] / "sssc"
STAGES = ("segment", "select", "correct")


def _imports(path: Path) -> set[str]:
    """The sssc subpackages (first component after ``sssc.``) a module imports, lazily or not."""
    pkg = path.relative_to(SSSC.parent).with_suffix("").parts  # ("sssc", "segment", "runner")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(pkg[: len(pkg) - node.level])
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        for n in names:
            parts = n.split(".")
            if parts[0] == "sssc" and len(parts) > 1:
                out.add(parts[1])
    return out


def _package_imports(pkg: str) -> dict[str, set[str]]:
    return {str(p.relative_to(SSSC)): _imports(p) for p in sorted((SSSC / pkg).rglob("*.py"))}


def test_the_ast_reader_sees_relative_and_lazy_imports(tmp_path):
    mod = SSSC / "segment" / "runner.py"
    assert {"data", "store", "pretrained"} <= _imports(mod)


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_package_imports_another(stage):
    others = set(STAGES) - {stage} | {"stages"}
    bad = {m: sorted(i & others) for m, i in _package_imports(stage).items() if i & others}
    assert not bad, f"sssc.{stage} imports another stage: {bad}"


def test_eval_and_store_import_no_stage():
    for pkg in ("eval", "store", "data"):
        forbidden = set(STAGES) | {"stages", "inference"}
        bad = {m: sorted(i & forbidden) for m, i in _package_imports(pkg).items() if i & forbidden}
        assert not bad, f"sssc.{pkg} imports stage code: {bad}"


def _loaded(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return [m for m in eval(out.stdout.strip().splitlines()[-1]) if m.startswith("sssc")]


def test_import_sssc_kernels_loads_no_other_sssc_module():
    mods = _loaded("import sssc.kernels\nfrom sssc.kernels import greedy_match")
    assert [m for m in mods if m != "sssc" and not m.startswith("sssc.kernels")] == []
    assert "sssc.kernels.greedy_match" in mods


def test_sssc_eval_loads_no_model_code():
    mods = _loaded("import sssc.eval, sssc.eval.stores, sssc.eval.cli")
    assert not [m for m in mods if m.split(".")[1:2] in (["correct"], ["segment"], ["select"])]


def test_sssc_predict_is_still_sssc_predict():
    """``sssc.predict`` is the function, however sssc.inference was first imported."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sssc.inference, sssc\nprint(callable(sssc.predict), sssc.load_predictor)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert out.stdout.startswith("True <function load_predictor")


@pytest.mark.parametrize("name", ["numba", "torch", "reference"])
def test_one_environment_backend_serves_all_three_ops(monkeypatch, name):
    """SSSC_KERNEL_BACKEND=numba|torch|reference runs every op: an op without that backend keeps
    its auto choice (reverse_blur has no Numba path, greedy_match no torch one)."""
    import numpy as np
    import torch

    from sssc.kernels import (
        greedy_match,
        greedy_match_reference,
        pairwise_soft_iou,
        pairwise_soft_iou_reference,
        reverse_blur,
        reverse_blur_reference,
    )
    from sssc.kernels.testing import blob_masks, random_image

    monkeypatch.setenv("SSSC_KERNEL_BACKEND", name)
    s = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    np.testing.assert_array_equal(
        greedy_match(s, np.array([0, 1])), greedy_match_reference(s, [0, 1])
    )
    p = torch.rand(3, 8, 8)
    c = torch.rand(2, 8, 8) > 0.5
    assert torch.allclose(pairwise_soft_iou(p, c), pairwise_soft_iou_reference(p, c), atol=1e-5)
    img = torch.from_numpy(random_image(40, 48))
    masks = torch.from_numpy(blob_masks(2, 40, 48))
    got, want = (
        reverse_blur(img, masks, sigma=3, size=32),
        reverse_blur_reference(img, masks, 3, 32),
    )
    assert (got - want).abs().mean() < 0.05
    monkeypatch.setenv("SSSC_KERNEL_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="SSSC_KERNEL_BACKEND"):
        reverse_blur(img, masks)


@pytest.mark.parametrize(
    "triton_version, numpy_version, fails",
    [  # measured on this project's kernels in Triton's interpreter, 2026-12-06
        ("3.3.1", "2.4.6", True),
        ("3.5.1", "2.4.6", True),
        ("3.6.0", "2.4.6", True),
        ("3.6.0+git9f3a", "2.4.0rc1", True),
        ("3.3.1", "2.3.5", False),
        ("3.6.0", "2.3.5", False),
        ("3.7.0", "2.4.6", False),
        ("3.8.0", "2.4.6", False),
        ("3.10.0", "3.0.0", False),  # compared as numbers, not strings
    ],
)
def test_interpreter_problem_matches_the_measured_versions(triton_version, numpy_version, fails):
    from sssc.kernels._backend import interpreter_problem

    problem = interpreter_problem(triton_version, numpy_version)
    assert (problem is not None) == fails
    if fails:
        assert triton_version in problem and numpy_version in problem and "triton>=3.7" in problem


def test_interpreter_problem_is_a_clear_error_for_the_ops_that_have_it(monkeypatch):
    """soft IoU and greedy matching (loop bounds from tl.program_id) refuse an interpreter that
    cannot run them, before launching; reverse_blur's kernel has no such loop and is not refused;
    a CUDA tensor is never refused (compiled kernels are not affected)."""
    import numpy as np
    import torch

    from sssc.kernels import (
        _backend,
        greedy_match,
        pairwise_soft_iou,
        reverse_blur,
        reverse_blur_reference,
    )
    from sssc.kernels.testing import blob_masks, random_image

    if not _backend.HAS_TRITON:
        pytest.skip("triton is not installed")
    # Triton picks interpreting at kernel definition: the real runs below need the README's
    # TRITON_INTERPRET=1 from the start; the refusals happen before any launch either way.
    interpreting = _backend.triton_interpret()
    real_problem = _backend.interpreter_problem(*_backend._versions())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backend, "_versions", lambda: ("3.6.0", "2.4.6"))
    with pytest.raises(RuntimeError, match=r"pairwise_soft_iou: .*Triton 3\.6\.0.*NumPy 2\.4\.6"):
        pairwise_soft_iou(torch.rand(2, 4, 4), torch.rand(2, 4, 4) > 0.5, backend="triton")
    s = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(RuntimeError, match=r"greedy_match: .*triton>=3\.7"):
        greedy_match(s, torch.tensor([0, 1]), backend="triton")
    cuda = _backend.resolve_backend(
        "pairwise_soft_iou", "triton", torch.device("cuda"), ("triton",), "numba", True
    )
    assert cuda == "triton"
    if not interpreting:
        return
    img = torch.from_numpy(random_image(24, 32))
    masks = torch.from_numpy(blob_masks(2, 24, 32))
    out = reverse_blur(img, masks, sigma=3, size=16, backend="triton")  # not refused
    assert (out - reverse_blur_reference(img, masks, 3, 16)).abs().mean() < 0.05
    if real_problem is not None:  # this interpreter cannot run them: its kernel tests say so
        return
    # With versions that work, the same calls run.
    monkeypatch.setattr(_backend, "_versions", lambda: ("3.8.0", "2.4.6"))
    got = greedy_match(s, torch.tensor([0, 1]), backend="triton")
    np.testing.assert_array_equal(got.numpy(), [0, 1])
