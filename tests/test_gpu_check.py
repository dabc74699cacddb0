"""The prepared GPU check (``bench/gpu``): its report's arithmetic against hand-computed figures,
and the whole suite run in its dry mode (CPU, toy sizes, Triton's interpreter) so that the script
a lent GPU runs has been run here first."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _report_module():
    spec = importlib.util.spec_from_file_location(
        "gpu_report", ROOT / "bench" / "gpu" / "report.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _bench(group, provider, median, **extra):
    """One row as pytest-benchmark writes it (only the fields the report reads)."""
    return {
        "group": group,
        "name": f"test[{provider}]",
        "stats": {"median": median, "mean": median * 1.1},
        "extra_info": {"provider": provider, "card": "NVIDIA H200", **extra},
    }


def _write(tmp_path, rows):
    p = tmp_path / "bench.json"
    p.write_text(json.dumps({"benchmarks": rows, "datetime": "2026-12-06", "commit_info": {}}))
    return p


def test_report_kernel_fractions_and_speedups(tmp_path):
    r = _report_module()
    rows, _ = r.load(
        _write(
            tmp_path,
            [
                _bench("ceiling", "copy", 1e-3, min_bytes=4e9),  # 4,000 GB/s
                _bench("soft_iou forward", "torch", 8e-3, min_bytes=1e9),
                _bench("soft_iou forward", "triton", 2e-3, min_bytes=1e9),  # 500 GB/s
                _bench("lavt step", "step@60", 2.0, batch=60),  # not a kernel row
            ],
        )
    )
    table = r.kernel_table(rows)
    (triton,) = [line for line in table if "| triton |" in line]
    cells = [c.strip() for c in triton.strip("|").split("|")]
    assert cells[3] == "4.00x torch"
    assert cells[4] == "500.0"
    assert cells[5] == "12.5%"  # of the measured 4,000 GB/s
    assert cells[6] == f"{500 / 4800:.1%}"  # of the H200's nominal 4.8 TB/s
    assert not [line for line in table if "lavt" in line]
    assert "- |" in next(line for line in table if "| torch |" in line)  # no baseline of its own


def _projection_rows(with_60: bool):
    rows = [
        _bench("stage1 GroundingDINO", "ours", 0.05),
        _bench("stage1 GroundingDINO", "paper", 0.12),
        _bench("stage1 SAM vit_h", "ours", 0.03, boxes=6),
        _bench("stage1 SAM vit_h", "paper_per_box", 0.09, boxes=6),
        _bench("scorer ViT-L-14-336", "streaming", 0.64, prompts=320),  # 2 ms a prompt
        _bench("scorer ViT-L-14-336", "paper_per_mask", 2.0, prompts=40),  # 50 ms a prompt
        _bench("lavt step", "step@15", 0.6, batch=15),
        _bench("lavt step", "matching@15", 0.01, batch=15),
        _bench("lavt step", "step_fp32@15", 1.0, batch=15),
    ]
    if with_60:
        rows += [
            _bench("lavt step", "step@60", 2.0, batch=60),
            _bench("lavt step", "matching@60", 0.1, batch=60),
        ]
    return rows


def test_projection_against_hand_computed_figures(tmp_path):
    r = _report_module()
    rows, _ = r.load(_write(tmp_path, _projection_rows(with_60=True)))
    c = r.costs(rows)
    images, objects = 16_994, 42_404
    steps = 40 * math.ceil(objects / 60)
    assert steps == 28_280
    one, four = r.projection(c, 1), r.projection(c, 4)
    approx = pytest.approx
    assert one["stage1"] == (approx(0.08 * images), approx(0.21 * images))
    assert four["stage1"] == (approx(0.08 * images / 4), approx(0.21 * images / 4))
    # ours: 6 prompts per image; the paper's way: 6 per object
    assert one["stage2"] == (approx(0.002 * 6 * images), approx(0.05 * 6 * objects))
    assert one["correct"] == (approx(2.0 * steps), approx(4 * 1.0 * steps))
    assert one["bootstrap"] == (approx(1.9 * steps), approx(3.9 * steps))
    assert four["correct"] == (approx(0.6 * steps), approx(1.0 * steps))
    assert four["bootstrap"] == (approx(0.59 * steps), approx(0.99 * steps))


def test_projection_when_60_did_not_fit(tmp_path):
    """Batch 60 skipped (out of memory): one GPU runs the four 15s one after another."""
    r = _report_module()
    rows, _ = r.load(_write(tmp_path, _projection_rows(with_60=False)))
    one = r.projection(r.costs(rows), 1)
    steps = 28_280
    assert one["correct"][0] == pytest.approx(4 * 0.6 * steps)
    assert one["bootstrap"][0] == pytest.approx(4 * 0.59 * steps)
    text = r.report(rows, {"datetime": "", "commit": ""})
    assert "not measured" not in text


def test_report_merges_the_parts_and_names_a_missing_one(tmp_path, capsys):
    r = _report_module()
    rows = _projection_rows(with_60=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write(tmp_path / "a", rows[:4])  # Stage 1
    second = _write(tmp_path / "b", rows[4:])  # scorer and lavt
    merged, _ = r.load(first, tmp_path / "cut_off.json", second)
    assert [(x.group, x.provider) for x in merged] == [
        (x["group"], x["extra_info"]["provider"]) for x in rows
    ]
    assert "cut_off.json" in capsys.readouterr().err
    alone, _ = r.load(first)
    assert r.projection(r.costs(merged), 4)["stage1"] == r.projection(r.costs(alone), 4)["stage1"]
    assert r.projection(r.costs(alone), 4)["correct"] == (None, None)


def test_projection_says_what_was_not_measured(tmp_path):
    r = _report_module()
    rows, _ = r.load(_write(tmp_path, _projection_rows(with_60=True)[4:]))  # no Stage 1 rows
    table = "\n".join(r.projection_table(r.costs(rows)))
    assert "| stage1 | not measured | not measured | not measured | not measured | - |" in table


def test_dry_run_of_the_gpu_suite(tmp_path):
    """``bench/bench_cuda.py`` in dry mode, then its report: every group has rows and the report
    has every table. On a CPU this runs the Triton paths in the interpreter."""
    # Not an xdist worker's variables: pytest-benchmark reads PYTEST_XDIST_WORKER and then refuses
    # --benchmark-only in this child, which is a plain pytest run.
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "CUDA_VISIBLE_DEVICES" and not k.startswith("PYTEST_XDIST")
    }
    env.update(SSSC_BENCH_DRY="1", TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "bench" / "bench_cuda.py"), "-q",
         "--benchmark-only", "-p", "no:cacheprovider", f"--benchmark-json={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    r = _report_module()
    rows, _ = r.load(out)
    providers = {(row.group.split()[0], row.provider) for row in rows}
    for kernel in ("soft_iou", "greedy_match", "reverse_blur"):
        assert (kernel, "triton") in providers
    assert ("reverse_blur", "exact") in providers
    assert {p for g, p in providers if g == "scorer"} == {
        "bare_encoder",
        "streaming",
        "streaming_fast",
        "paper_per_mask",
    }
    for row in rows:  # every candidate of every image is prompted (dry run: 3 per image)
        if row.group.startswith("scorer"):
            assert row.extra["prompts"] == 3 * row.extra["images"], row
    assert {p for g, p in providers if g == "lavt"} == {
        "step@15",
        "matching@15",
        "step@60",
        "matching@60",
        "step_fp32@15",
    }
    assert {p for g, p in providers if g == "stage1"} == {"ours", "paper_per_box", "paper"}
    text = r.report(rows, {"datetime": "", "commit": ""})
    assert "DRY RUN" in text
    assert "not measured" not in text
