"""``sssc viz`` draws the pool, the choices (green) and the GT outline of an image as a PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sssc import stages
from sssc.cli import main
from sssc.config import load_config
from sssc.data.refer import Refer
from sssc.data.store import Store


def test_viz_panels_choice_and_exit_codes(tmp_path, capsys):
    ov = [
        f"data.root={tmp_path / 'data'}",
        f"data.image_dir={tmp_path / 'data' / 'synthetic' / 'images'}",
        "data.synth.num_images=6",
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
    img = refer.load_image(image_id)
    k = int(np.ceil(256 / min(img.shape[:2])))
    objs = s2.get(image_id).objects
    ph, pw = img.shape[0] * k, img.shape[1] * k
    assert png.shape[1] == (1 + len(objs)) * (pw + 8) and png.shape[0] > ph
    for n, o in enumerate(objs, start=1):
        if o.chosen is None:
            continue
        m = s1.get(image_id).candidate(o.chosen).decode()
        gt_edge = refer.gt_mask(o.ann_id)
        inner = m & ~np.pad(gt_edge, 1)[1:-1, 1:-1]  # away from the GT's white outline
        inner &= ~(np.roll(gt_edge, 1, 0) | np.roll(gt_edge, -1, 0))
        y, x = np.argwhere(inner)[0] if inner.any() else np.argwhere(m)[0]
        panel = png[:ph, n * (pw + 8) : n * (pw + 8) + pw]
        expect = (0.5 * img[y, x] + 0.5 * np.array([0, 200, 0])).astype(np.uint8)
        got = panel[y * k + k // 2, x * k + k // 2]
        assert np.all(np.abs(got.astype(int) - expect) <= 1) or np.all(got == 255)
    capsys.readouterr()
    assert main(["viz", "--run", str(run), "--image-id", "999999"]) == 2
    assert "999999" in capsys.readouterr().err
