"""`sssc data synth` and `sssc data check`, through `sssc.cli.main` and the installed script."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sssc.cli import main
from sssc.data import Refer


def _counts(out: str) -> dict[str, tuple[int, int, int]]:
    rows = re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M)
    return {name: tuple(int(v) for v in vals) for name, *vals in rows}


@pytest.fixture()
def synth_root(tmp_path, capsys):
    argv = "--seed 2 --num-images 30 --val-images 0 --test-images 0".split()
    assert main(["data", "synth", "--out", str(tmp_path), *argv]) == 0
    assert "wrote" in capsys.readouterr().out
    return tmp_path


def _check(root, *extra):
    return main(
        [
            "data",
            "check",
            "--root",
            str(root),
            "--dataset",
            "synthetic",
            "--split-by",
            "synthetic",
            *extra,
        ]
    )


def test_synth_then_check_prints_counts_per_split(synth_root, capsys):
    assert _check(synth_root) == 0
    out = capsys.readouterr().out
    refer = Refer(synth_root, "synthetic", "synthetic", synth_root / "synthetic" / "images")
    expected = {}
    for split in refer.splits():
        refs = refer.split_refs(split)
        expected[split] = (
            len(refer.split_image_ids(split)),
            len(refs),
            sum(len(r.sentences) for r in refs),
        )
    expected["total"] = tuple(sum(v[i] for v in expected.values()) for i in range(3))
    assert _counts(out) == expected
    assert out.rstrip().endswith("OK")


def test_check_with_config(synth_root, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  root: {synth_root}\n  image_dir: {synth_root}/synthetic/images\n")
    assert main(["data", "check", "--config", str(cfg)]) == 0
    assert "total" in capsys.readouterr().out


def test_check_missing_image_exits_2_naming_it(synth_root, capsys):
    refer = Refer(synth_root, "synthetic", "synthetic", synth_root / "synthetic" / "images")
    victim = refer.image_path(refer.split_image_ids("val")[0])
    victim.unlink()
    assert _check(synth_root) == 2
    err = capsys.readouterr().err
    assert victim.name in err and "image not found" in err


def test_check_wrong_image_size_exits_2(synth_root, capsys):
    from PIL import Image

    refer = Refer(synth_root, "synthetic", "synthetic", synth_root / "synthetic" / "images")
    img = refer.image_path(refer.split_image_ids("train")[0])
    Image.new("RGB", (5, 7)).save(img)
    assert _check(synth_root) == 2
    assert f"{img.name}: image is 7x5" in capsys.readouterr().err


def test_check_malicious_pickle_exits_2_naming_it(synth_root, capsys):
    target = synth_root / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    refs = synth_root / "synthetic" / "refs(synthetic).p"
    refs.write_bytes(pickle.dumps([Exploit()], protocol=2))
    assert _check(synth_root) == 2
    assert str(refs) in capsys.readouterr().err
    assert not target.exists()


def test_check_skips_are_reported_and_strict_fails(synth_root, capsys):
    path = synth_root / "synthetic" / "refs(synthetic).p"
    refs = pickle.loads(path.read_bytes())
    refs[0]["sentences"] = []
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert _check(synth_root) == 0
    out = capsys.readouterr().out
    assert f"skipped (ref_without_sentences): 1, e.g. ref {refs[0]['ref_id']}" in out
    assert _check(synth_root, "--strict") == 2
    assert "ref_without_sentences" in capsys.readouterr().err


def test_check_reports_an_empty_gt_as_kept_unless_the_config_skips_it(synth_root, capsys):
    import json

    assert _check(synth_root) == 0
    before = _counts(capsys.readouterr().out)  # the dataset as written
    path = synth_root / "synthetic" / "instances.json"
    coco = json.loads(path.read_text())
    refs = pickle.loads((synth_root / "synthetic" / "refs(synthetic).p").read_bytes())
    ann = next(a for a in coco["annotations"] if a["id"] == refs[0]["ann_id"])
    ann["segmentation"] = [ann["segmentation"][0], list(ann["segmentation"][0])]  # twice: empty
    path.write_text(json.dumps(coco))
    assert _check(synth_root) == 0
    out = capsys.readouterr().out
    assert f"counted, kept (empty_mask): 1, e.g. annotation {ann['id']}" in out
    assert "score IoU 0 in evaluation" in out
    assert _counts(out) == before
    config = synth_root / "skip.yaml"
    config.write_text(f"data:\n  root: {synth_root}\n  empty_gt: skip\n")
    assert _check(synth_root, "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "skipped (empty_mask): 1" in out
    assert _counts(out)["total"][1] == before["total"][1] - 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "synthetic", "--split-by", "unc"], r"refs\(unc\)\.p: refs file not found"),
        (["--dataset", "refcoco", "--split-by", "unc"], "refcoco: dataset folder not found"),
        (["--dataset", "synthetic"], "give --split-by"),
    ],
    ids=["wrong-split-by", "missing-dataset", "missing-argument"],
)
def test_check_bad_arguments_exit_2(synth_root, capsys, args, message):
    assert main(["data", "check", "--root", str(synth_root), *args]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_check_refcoco_layout_default_image_dir(tmp_path, capsys):
    """Without --image-dir, a RefCOCO dataset finds images in REFER's mscoco/images/train2014."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_refer import write_fixture
    finally:
        sys.path.pop(0)
    write_fixture(tmp_path)
    coco = tmp_path / "images" / "mscoco" / "images" / "train2014"
    coco.mkdir(parents=True)
    for p in (tmp_path / "images").glob("*.png"):
        p.rename(coco / p.name)
    args = ["data", "check", "--root", str(tmp_path), "--dataset", "refcoco", "--split-by", "unc"]
    assert main(args) == 0
    counts = _counts(capsys.readouterr().out)
    assert counts["train"] == (1, 2, 5) and counts["testB"] == (1, 1, 1)
    assert counts["total"] == (4, 6, 10)


def test_installed_script(synth_root):
    exe = shutil.which("sssc", path=str(Path(sys.executable).parent)) or shutil.which("sssc")
    if exe is None:
        pytest.skip("the sssc console script is not installed (pip install -e .)")
    args = [
        "data",
        "check",
        "--root",
        str(synth_root),
        "--dataset",
        "synthetic",
        "--split-by",
        "synthetic",
    ]
    ok = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "total" in ok.stdout and ok.stdout.rstrip().endswith("OK")
    bad = subprocess.run([exe, *args[:-1], "umd"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "refs(umd).p" in bad.stderr and "Traceback" not in bad.stderr
