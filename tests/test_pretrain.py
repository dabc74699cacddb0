"""The pretraining analogue of lavt-tiny's Swin (sssc.correct.pretrain) and the shipped weights."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from sssc.correct.lavt import IMAGENET_MEAN, IMAGENET_STD, create_model
from sssc.correct.pretrain import (
    PretrainSettings,
    draw_pretraining_images,
    pretrain_swin,
)
from sssc.data.synthetic import COLORS
from sssc.pretrained import WeightsError, existing_path, shipped_weights, verify_manifest

TINY = PretrainSettings(steps=3, batch=4, num_images=6)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rgb(images: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised ``[N, 3, H, W]`` back to uint8 ``[N, H, W, 3]``."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (images * std + mean) * 255
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def test_labels_name_the_colour_and_shape_drawn_at_each_pixel():
    images, labels = draw_pretraining_images(6, 96, seed=3)  # the drawing size: no resampling
    rgb, colours = _rgb(images), list(COLORS.values())
    shape, colour = labels[:, 0].numpy(), labels[:, 1].numpy()
    assert ((shape > 0) == (colour > 0)).all()  # an object pixel has both labels
    for i in range(len(images)):
        assert (shape[i] > 0).any()
        for k in np.unique(colour[i]):
            px = rgb[i][colour[i] == k]
            if k == 0:  # the background: one light colour (hidden parts of objects are drawn over)
                assert (np.abs(px.astype(int) - np.median(px, 0)).max(1) <= 1).mean() > 0.9
            else:
                assert np.abs(px.astype(int) - colours[k - 1]).max() <= 1
    # Shapes of one kind in one image are told apart by nothing but their labels: every shape id
    # in use is a valid class.
    assert set(np.unique(shape)) <= {0, 1, 2, 3}


def test_images_depend_on_the_seed_and_nothing_else():
    a, la = draw_pretraining_images(3, 64, seed=0)
    b, lb = draw_pretraining_images(3, 64, seed=0)
    c, _ = draw_pretraining_images(3, 64, seed=1)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_pretraining_is_reproducible_and_loads_into_lavt(tmp_path):
    r1 = pretrain_swin(tmp_path / "a", TINY, progress=False)
    r2 = pretrain_swin(tmp_path / "b", TINY, progress=False)
    r3 = pretrain_swin(tmp_path / "c", PretrainSettings(steps=3, batch=4, num_images=6, seed=1))
    assert r1["sha256"] == r2["sha256"] != r3["sha256"]
    digest = r1["sha256"]["model.safetensors"]
    assert digest == _sha256(tmp_path / "a" / "model.safetensors")
    assert json.loads((tmp_path / "a" / "pretrain.json").read_text())["settings"]["steps"] == 3

    from safetensors.torch import load_file

    saved = load_file(tmp_path / "a" / "model.safetensors")
    model = create_model("lavt-tiny", swin_weights=tmp_path / "a")
    random = create_model("lavt-tiny")
    ours = model.swin.state_dict()
    key = "encoder.layers.0.blocks.0.attention.self.query.weight"
    assert torch.equal(ours[key], saved[key])
    assert not torch.equal(random.swin.state_dict()[key], saved[key])
    assert all(torch.equal(ours[k], v) for k, v in saved.items() if not k.startswith("layernorm."))


def test_a_folder_sssc_did_not_write_is_not_replaced(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match="not written by sssc"):
        pretrain_swin(tmp_path / "w", TINY, progress=False)
    assert (tmp_path / "w" / "mine.txt").exists()


def test_shipped_weights_are_checked_against_their_checksum(tmp_path):
    folder = shipped_weights("train.swin_weights", "lavt-tiny-shapes")
    assert existing_path("swin_weights", "sssc:lavt-tiny-shapes") == folder
    rec = json.loads((folder / "pretrain.json").read_text())
    assert rec["sha256"]["model.safetensors"] == _sha256(folder / "model.safetensors")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    verify_manifest(copy, "train.swin_weights")  # an intact copy passes
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match the SHA-256.*pretrain"):
        verify_manifest(copy, "train.swin_weights")
    (copy / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="missing"):
        verify_manifest(copy, "train.swin_weights")
    with pytest.raises(WeightsError, match="sssc:nope is not shipped"):
        existing_path("swin_weights", "sssc:nope")


def test_the_embedded_default_starts_from_the_shipped_swin():
    from safetensors.torch import load_file

    from sssc.config import load_config

    t = load_config(None).train
    assert t.swin_weights == "sssc:lavt-tiny-shapes" and not t.bert_weights
    folder = existing_path("swin_weights", t.swin_weights)
    model = create_model(t.model, swin_weights=t.swin_weights)
    saved = load_file(folder / "model.safetensors")
    ours = model.swin.state_dict()
    kept = {k: v for k, v in saved.items() if not k.startswith("layernorm.")}  # LAVT skips it
    assert len(kept) > 50 and all(torch.equal(ours[k], v) for k, v in kept.items())


def test_missing_or_unknown_swin_weights_stop_the_run_before_any_stage(tmp_path, capsys):
    from sssc.cli import train_main

    for value in ("sssc:nope", str(tmp_path / "no-such-swin")):
        args = ["--stage", "correct", "--run", str(tmp_path / "run"), "--set"]
        rc = train_main(
            [*args, f"data.root={tmp_path}/data", "--set", f"train.swin_weights={value}"]
        )
        assert rc == 2
        assert value in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run" / "segment").exists()
