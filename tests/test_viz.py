"""``sssc viz`` draws the pool, the choices (green) and the GT outline of an image as a PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from tiny_data import synth_sets

from sssc import stages, viz
from sssc.cli import main
from sssc.config import load_config
from sssc.data.refer import Refer
from sssc.store import Store


def test_viz_panels_choice_and_exit_codes(tmp_path, capsys):
    ov = [
        f"data.root={tmp_path / 'data'}",
        f"data.image_dir={tmp_path / 'data' / 'synthetic' / 'images'}",
        *synth_sets(6),
    ]
    cfg = load_config(None, ov)
    run = tmp_path / "run"
    stages.run_stage("select", cfg, run)
    s1, s2 = Store(run / "segment"), Store(run / "select")
    image_id = next(
        i for i in s2.image_ids() if any(o.chosen is not None for o in s2.get(i).objects)
    )
    assert (
        main(["viz", "--run", str(run), "--image-id", str(image_id), "--out", str(tmp_path / "v")])
        == 0
    )
    png = np.asarray(Image.open(tmp_path / "v" / f"image_{image_id}.png").convert("RGB"))
    refer = Refer.from_config(cfg.data)
    img = refer.load_image(image_id).astype(np.float64)
    k = int(np.ceil(256 / min(img.shape[:2])))
    objs = s2.get(image_id).objects
    ph, pw = img.shape[0] * k, img.shape[1] * k
    assert png.shape[1] == (1 + len(objs)) * (pw + 8) and png.shape[0] > ph

    def edge(m):  # an independent outline: the mask minus its 4-neighbour erosion
        return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1))

    def up(a):
        return np.kron(a, np.ones((k, k, 1))) if a.ndim == 3 else np.kron(a, np.ones((k, k)))

    rec = s1.get(image_id)
    for n, o in enumerate(objs, start=1):  # each object's panel, pixel for pixel
        want = img.copy()
        if o.chosen is not None:
            m = rec.candidate(o.chosen).decode()
            want[m] = 0.5 * want[m] + 0.5 * np.array([0.0, 200.0, 0.0])
        want[edge(refer.gt_mask(o.ann_id))] = 255.0
        panel = png[:ph, n * (pw + 8) : n * (pw + 8) + pw].astype(np.float64)
        assert np.abs(panel - up(want)).max() <= 1.0, f"object panel {n}"
    # The pool panel: every candidate's outline in its palette colour (labels are drawn in the
    # palette colours too, so only outline pixels are compared).
    palette = {tuple(int(v) for v in c) for c in viz._PALETTE}
    pool = png[:ph, :pw]
    outline = np.zeros(img.shape[:2], bool)
    for c in rec.candidates:
        outline |= edge(c.decode())
    got = {tuple(int(v) for v in px) for px in pool[up(outline).astype(bool)]}
    assert outline.any() and got <= palette
    capsys.readouterr()
    assert main(["viz", "--run", str(run), "--image-id", "999999"]) == 2
    assert "999999" in capsys.readouterr().err


def test_viz_names_a_missing_run_or_store(tmp_path, capsys):
    """Before the config and the dataset (which would be reported instead, and wrongly)."""
    run = tmp_path / "run"
    assert main(["viz", "--run", str(run), "--first", "1"]) == 2
    assert capsys.readouterr().err == f"sssc viz: --run {run}: no such run folder\n"
    run.write_text("")
    assert main(["viz", "--run", str(run), "--first", "1"]) == 2
    assert capsys.readouterr().err == f"sssc viz: --run {run}: is a file, not a run folder\n"
    run.unlink()
    (run / "select").mkdir(parents=True)
    assert main(["viz", "--run", str(run), "--first", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sssc viz: {run / 'segment'}: no Stage 1 store here")
    assert f"`sssc-train --stage segment --run {run}` makes it" in err
