"""Inference: sssc.predict and `sssc predict` on images that are not in any dataset."""

import numpy as np
import pytest
import torch
from PIL import Image

import sssc
from sssc.cli import main
from sssc.correct.lavt import build_tokenizer, create_model
from sssc.correct.trainutil import save_checkpoint
from sssc.eval.metrics import to_eval_mask

WORDS = ["the", "red", "blue", "circle", "square", "left", "of", "largest"]
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("lavt-tiny").eval()
    tok = build_tokenizer(model.config, vocab_words=WORDS)
    # A random model's mask may be empty on an image, and the CLI test draws one: shift the
    # object logit so that half of that test's image is object (the median logit margin there).
    p = _reference_prob(model, tok, _image(45, 60, seed=2), "the red circle")
    with torch.no_grad():
        model.decoder.classifier.bias[1] -= float(np.median(np.log(p / (1 - p))))
    path = tmp_path_factory.mktemp("predict") / "checkpoint.pt"
    state = {"model": model.state_dict(), "model_name": "lavt-tiny", "image_size": 32}
    save_checkpoint(path, state | {"vocab": list(tok.vocab), "bert_path": "", "done": True})
    return path, model.eval(), tok


def _image(h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_prob(model, tok, rgb, text):
    """Model input built independently: PIL bilinear resize, float64 normalization."""
    x = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.BILINEAR), np.float64) / 255
    x = torch.from_numpy(((x - MEAN) / STD).transpose(2, 0, 1)).float()[None]
    ids, mask = tok([text])
    with torch.no_grad():
        return torch.softmax(model(x, ids, mask).double(), 1)[0, 1].numpy()


def test_predict_equals_the_evaluation_path_at_the_image_size(ckpt):
    path, model, tok = ckpt
    rgb = _image()
    pred = sssc.predict(str(path), rgb, "the red circle")
    assert pred.dtype == bool and pred.shape == (50, 70)
    prob = _reference_prob(model, tok, rgb, "the red circle")
    # The evaluation's own upsampling (numpy bilinear, > 0.5) of the same probability.
    want = to_eval_mask(prob.astype(np.float32), (50, 70))
    assert np.count_nonzero(pred != want) <= 2  # float32 vs float64 rounding at the threshold
    p = sssc.predict(str(path), rgb, "the red circle", return_prob=True)
    assert p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1


def test_a_list_of_texts_gives_one_mask_each_and_the_predictor_is_reusable(ckpt):
    path, _, _ = ckpt
    pr = sssc.load_predictor(path)
    rgb = _image(40, 33, seed=1)
    texts = ["the red circle", "the largest blue square", "an unknown word"]
    many = sssc.predict(pr, rgb, texts, return_prob=True)
    assert many.shape == (3, 40, 33)
    for k, t in enumerate(texts):
        np.testing.assert_allclose(many[k], sssc.predict(pr, rgb, t, return_prob=True), atol=1e-5)
    assert not np.allclose(many[0], many[1])  # the text matters


def test_cli_draws_the_mask(ckpt, tmp_path, capsys):
    path, _, _ = ckpt
    rgb = _image(45, 60, seed=2)
    img = tmp_path / "in.png"
    Image.fromarray(rgb).save(img)
    out, mask_out = tmp_path / "out.png", tmp_path / "mask.png"
    argv = ["predict", "--checkpoint", str(path), "--image", str(img), "--text", "the red circle"]
    assert main([*argv, "--out", str(out), "--mask-out", str(mask_out)]) == 0
    mask = np.asarray(Image.open(mask_out)) > 0
    np.testing.assert_array_equal(mask, sssc.predict(str(path), rgb, "the red circle"))
    assert 0 < mask.sum() < mask.size  # something drawn, something left as it was
    drawn = np.asarray(Image.open(out)).astype(int)
    assert drawn.shape == rgb.shape
    assert np.array_equal(drawn[~mask], rgb[~mask])  # untouched outside the mask
    red = np.round(0.5 * rgb[mask] + 0.5 * np.array([255, 0, 0])).astype(int)
    assert np.abs(drawn[mask] - red).max() <= 1
    assert "pixels" in capsys.readouterr().out


def test_cli_missing_checkpoint_exits_2_naming_it(tmp_path, capsys):
    img = tmp_path / "in.png"
    Image.fromarray(_image()).save(img)
    argv = ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--image", str(img)]
    assert main([*argv, "--text", "x", "--out", str(tmp_path / "o.png")]) == 2
    assert "nope.pt: checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, says",
    [("gpu", "device='gpu': give auto, cpu, cuda or cuda:N"), ("cuda:7", "torch sees")],
)
def test_a_device_that_is_not_there_exits_2_before_the_checkpoint_is_read(
    tmp_path, capsys, device, says
):
    img = tmp_path / "in.png"
    Image.fromarray(_image()).save(img)
    argv = ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--image", str(img)]
    assert main([*argv, "--text", "x", "--out", str(tmp_path / "o.png"), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sssc predict: ") and says in err and "nope.pt" not in err
    with pytest.raises(ValueError, match="give auto, cpu, cuda or cuda:N"):
        sssc.load_predictor(tmp_path / "nope.pt", "gpu")


def test_auto_device_is_the_cpu_without_a_gpu(ckpt):
    path, _, _ = ckpt
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    p = sssc.load_predictor(path, "auto")
    assert p.device == torch.device("cpu")
    rgb = _image(seed=4)
    np.testing.assert_array_equal(
        sssc.predict(p, rgb, "the red circle"), sssc.predict(str(path), rgb, "the red circle")
    )


@pytest.mark.parametrize(
    "flag, out, says",
    [
        ("--out", "nodir/o.png", "the folder"),
        ("--out", ".", "is a folder"),
        ("--out", "o", "without an extension"),
        ("--mask-out", "nodir/m.png", "the folder"),
        ("--mask-out", "m.notanimage", "'.notanimage'"),
    ],
    ids=["out-no-folder", "out-folder", "out-no-extension", "mask-no-folder", "mask-extension"],
)
def test_cli_refuses_an_unwritable_output_before_the_model_runs(tmp_path, capsys, flag, out, says):
    """Checked before the checkpoint is even read: the missing checkpoint is not what is named,
    and nothing is written."""
    img = tmp_path / "in.png"
    Image.fromarray(_image()).save(img)
    argv = ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--image", str(img)]
    outs = {"--out": str(tmp_path / "o.png"), flag: str(tmp_path / out)}
    assert main([*argv, "--text", "x", *[a for kv in outs.items() for a in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sssc predict: {flag} ") and says in err and "nope.pt" not in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in.png"]


@pytest.mark.parametrize("text", ["", "   "])
def test_a_blank_expression_is_refused(ckpt, tmp_path, capsys, text):
    path, _, _ = ckpt
    rgb = _image(45, 60, seed=2)
    with pytest.raises(ValueError, match="without a word"):
        sssc.predict(str(path), rgb, text)
    with pytest.raises(ValueError, match="expression 1 is"):
        sssc.predict(str(path), rgb, ["the red circle", text])
    img = tmp_path / "in.png"
    Image.fromarray(rgb).save(img)
    argv = ["predict", "--checkpoint", str(path), "--image", str(img), "--text", text]
    assert main([*argv, "--out", str(tmp_path / "o.png")]) == 2
    assert "without a word names nothing" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("text", ["", "   "])
def test_blank_keep_runs_the_expression_as_lavts_demo(ckpt, tmp_path, capsys, text):
    """``blank="keep"``: the blank text goes through the tokenizer as it is (LAVT's demo
    encodes it as [CLS] [SEP]); the mask is the evaluation path's on those tokens."""
    path, model, tok = ckpt
    rgb = _image()
    ids, mask = tok([text])
    assert int(mask.sum()) == 2  # [CLS] [SEP] and nothing else
    pred = sssc.predict(str(path), rgb, text, blank="keep")
    want = to_eval_mask(_reference_prob(model, tok, rgb, text).astype(np.float32), (50, 70))
    assert np.count_nonzero(pred != want) <= 2
    with pytest.raises(ValueError, match="blank must be"):
        sssc.predict(str(path), rgb, text, blank="skip")
    img = tmp_path / "in.png"
    Image.fromarray(rgb).save(img)
    argv = ["predict", "--checkpoint", str(path), "--image", str(img), "--text", text]
    assert main([*argv, "--out", str(tmp_path / "o.png"), "--blank", "keep"]) == 0
    assert (tmp_path / "o.png").exists() and "pixels" in capsys.readouterr().out
