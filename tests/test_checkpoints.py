"""Published LAVT / S+S+C checkpoints load as they are, and nothing but weights is unpickled.

The fixtures are built here in the official layout from the official module names (LAVT's
``lib/backbone.py``, ``lib/mask_predictor.py`` and ``lib/_utils.py``: ``backbone.layers.i.fusion``,
``res_gate``, ``norm{i}``, ``classifier.conv1_4`` ...), with random tensors of the official
shapes (1x1 ``Conv1d`` kernels ``[out, in, 1]``, fused ``qkv``). The loaded model is then checked
against forward passes written from the official formulas on the official tensors, not against
sssc's own mapping.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_data import synth_sets
from torch import Tensor

from sssc.cli import main
from sssc.correct.checkpoints import (
    CheckpointError,
    checkpoint_format,
    lavt_official_to_sssc,
    read_checkpoint,
)
from sssc.correct.lavt import create_model, load_model_config

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "blue", "circle", "square"]


def _official_lavt(cfg, seed: int = 0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(model, bert_model)`` state dicts in LAVT's layout, random values of LAVT's shapes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    s, lang = cfg.swin, cfg.bert.hidden_size
    c, w = s.embed_dim, s.window_size
    m: dict[str, Tensor] = {
        "backbone.patch_embed.proj.weight": r(c, 3, s.patch_size, s.patch_size),
        "backbone.patch_embed.proj.bias": r(c),
        "backbone.patch_embed.norm.weight": 1 + r(c),
        "backbone.patch_embed.norm.bias": r(c),
    }
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    index = rel[..., 0] * (2 * w - 1) + rel[..., 1]  # Swin's relative_position_index
    for i, (depth, heads) in enumerate(zip(s.depths, s.num_heads, strict=True)):
        d = c * 2**i
        p = f"backbone.layers.{i}"
        for j in range(depth):
            b = f"{p}.blocks.{j}"
            m.update(
                {
                    f"{b}.norm1.weight": 1 + r(d),
                    f"{b}.norm1.bias": r(d),
                    f"{b}.attn.relative_position_bias_table": r((2 * w - 1) ** 2, heads),
                    f"{b}.attn.relative_position_index": index.clone(),
                    f"{b}.attn.qkv.weight": r(3 * d, d),
                    f"{b}.attn.qkv.bias": r(3 * d),
                    f"{b}.attn.proj.weight": r(d, d),
                    f"{b}.attn.proj.bias": r(d),
                    f"{b}.norm2.weight": 1 + r(d),
                    f"{b}.norm2.bias": r(d),
                    f"{b}.mlp.fc1.weight": r(4 * d, d),
                    f"{b}.mlp.fc1.bias": r(4 * d),
                    f"{b}.mlp.fc2.weight": r(d, 4 * d),
                    f"{b}.mlp.fc2.bias": r(d),
                }
            )
        f = f"{p}.fusion"
        for name, cin in [
            ("vis_project.0", d),
            ("image_lang_att.f_key.0", lang),
            ("image_lang_att.f_query.0", d),
            ("image_lang_att.f_value.0", lang),
            ("image_lang_att.W.0", d),
            ("project_mm.0", d),
        ]:
            m[f"{f}.{name}.weight"] = r(d, cin, 1)
            m[f"{f}.{name}.bias"] = r(d)
        m[f"{p}.res_gate.0.weight"] = r(d, d)
        m[f"{p}.res_gate.2.weight"] = r(d, d)
        if i < 3:
            m[f"{p}.downsample.reduction.weight"] = r(2 * d, 4 * d)
            m[f"{p}.downsample.norm.weight"] = 1 + r(4 * d)
            m[f"{p}.downsample.norm.bias"] = r(4 * d)
        m[f"backbone.norm{i}.weight"] = 1 + r(d)
        m[f"backbone.norm{i}.bias"] = r(d)
    c4 = 8 * c
    # SimpleDecoding's hidden width is c4_dims // factor: LAVT's factor 2, or the config's width
    # (lavt-tiny's 48 is factor 4).
    h = cfg.decoder_hidden or c4 // 2
    for suffix, cin in [("4", c4 + c4 // 2), ("3", h + c4 // 4), ("2", h + c4 // 8)]:
        m[f"classifier.conv1_{suffix}.weight"] = r(h, cin, 3, 3)
        m[f"classifier.conv2_{suffix}.weight"] = r(h, h, 3, 3)
        for bn in (f"bn1_{suffix}", f"bn2_{suffix}"):
            m[f"classifier.{bn}.weight"] = 1 + r(h)
            m[f"classifier.{bn}.bias"] = r(h)
            m[f"classifier.{bn}.running_mean"] = r(h)
            m[f"classifier.{bn}.running_var"] = 1 + r(h).abs()
            m[f"classifier.{bn}.num_batches_tracked"] = torch.tensor(7)
    m["classifier.conv1_1.weight"] = r(2, h, 1, 1)
    m["classifier.conv1_1.bias"] = r(2)

    # BERT as LAVT's own copy of HF BERT names it (pooler set to None, so not saved).
    from transformers import BertConfig, BertModel

    b = cfg.bert
    hf = BertModel(
        BertConfig(
            vocab_size=b.vocab_size,
            hidden_size=b.hidden_size,
            num_hidden_layers=b.num_hidden_layers,
            num_attention_heads=b.num_attention_heads,
            intermediate_size=b.intermediate_size,
            max_position_embeddings=b.max_position_embeddings,
        ),
        add_pooling_layer=False,
    )
    bert = {k: r(*v.shape) for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    return m, bert


def _published(m, bert, *, one=False) -> dict:
    """The dict LAVT's / S+S+C's train.py saves (``lavt_one``: BERT inside ``model``)."""
    args = argparse.Namespace(
        swin_type="base", img_size=480, window12=True, lr=5e-5, ck_bert="bert-base-uncased"
    )
    model = dict(m) | ({f"text_encoder.{k}": v for k, v in bert.items()} if one else {})
    out = {
        "model": model,
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1]}]},
        "epoch": 39,
        "args": args,
        "lr_scheduler": {"base_lrs": [5e-5], "last_epoch": 100, "lr_lambdas": [None]},
    }
    return out if one else out | {"bert_model": bert}


@pytest.fixture(scope="module")
def tiny_bert_cfg(tmp_path_factory):
    """lavt-tiny with BERT's tokenizer (a 10-word vocab.txt), as a published model would be."""
    d = tmp_path_factory.mktemp("tinybert")
    raw = (Path(__file__).parents[1] / "configs" / "lavt-tiny.yaml").read_text()
    raw = raw.replace("tokenizer: words", "tokenizer: bert")
    # LAVT has no coordinate features: its releases carry no weights for them.
    assert "\nposition: coords\n" in raw
    raw = raw.replace("\nposition: coords\n", "\nposition: none\n")
    # Nor a refine head.
    assert "\nrefine_hidden: 8\n" in raw
    raw = raw.replace("\nrefine_hidden: 8\n", "\nrefine_hidden: 0\n")
    (d / "lavt-tiny-bert.yaml").write_text(raw)
    (d / "bert").mkdir()
    (d / "bert" / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return d / "lavt-tiny-bert.yaml", d / "bert"


@pytest.fixture(scope="module")
def official(tiny_bert_cfg):
    return _official_lavt(load_model_config(tiny_bert_cfg[0]))


# ---------------------------------------------------------------- references from the formulas


def _conv1x1(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """LAVT's Conv1d on ``[B, N, C]`` tokens (it permutes to ``[B, C, N]``)."""
    return F.conv1d(x.transpose(1, 2), w, b).transpose(1, 2)


def _inorm(x: Tensor) -> Tensor:
    return F.instance_norm(x.transpose(1, 2), eps=1e-5).transpose(1, 2)


def _official_pwam(sd, i, x, words, mask):
    """LAVT's PWAM (one head) from the official tensors, in float64."""
    p = f"backbone.layers.{i}.fusion"

    def conv(name, t):
        return _conv1x1(t, sd[f"{p}.{name}.weight"].double(), sd[f"{p}.{name}.bias"].double())

    m = mask.double()[:, :, None]
    vis = F.gelu(conv("vis_project.0", x))
    q = _inorm(conv("image_lang_att.f_query.0", x))
    k = conv("image_lang_att.f_key.0", words) * m
    v = conv("image_lang_att.f_value.0", words) * m
    sim = q @ k.transpose(1, 2) * x.shape[-1] ** -0.5 + (1e4 * m.transpose(1, 2) - 1e4)
    lang = _inorm(conv("image_lang_att.W.0", sim.softmax(-1) @ v))
    return F.gelu(conv("project_mm.0", vis * lang))


def _official_decoder(sd, feats):
    """SimpleDecoding in eval mode from the official tensors, in float64."""

    def block(x, s):
        for j in (1, 2):
            x = F.conv2d(x, sd[f"classifier.conv{j}_{s}.weight"].double(), padding=1)
            bn = f"classifier.bn{j}_{s}"
            x = F.batch_norm(
                x,
                sd[f"{bn}.running_mean"].double(),
                sd[f"{bn}.running_var"].double(),
                sd[f"{bn}.weight"].double(),
                sd[f"{bn}.bias"].double(),
                training=False,
            ).relu()
        return x

    x = feats[3]
    for s, skip in zip("432", (feats[2], feats[1], feats[0]), strict=True):
        if x.shape[-1] < skip.shape[-1]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        x = block(torch.cat([x, skip], 1), s)
    return F.conv2d(
        x, sd["classifier.conv1_1.weight"].double(), sd["classifier.conv1_1.bias"].double()
    )


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("layout", ["lavt", "lavt_one", "lavt_ddp"])
def test_published_checkpoint_loads_as_it_is(official, tiny_bert_cfg, tmp_path, layout):
    m, bert = official
    if layout == "lavt_ddp":  # saved from the DDP wrapper rather than its module
        ckpt = _published({f"module.{k}": v for k, v in m.items()}, bert)
    else:
        ckpt = _published(m, bert, one=layout == "lavt_one")
    path = tmp_path / "model_best_refcoco.pth"
    torch.save(ckpt, path)
    assert checkpoint_format(read_checkpoint(path)) == (
        "lavt_one" if layout == "lavt_one" else "lavt"
    )
    model = create_model(tiny_bert_cfg[0], weights=path).double().eval()  # strict: every key used

    sw = model.swin.encoder.layers[1].blocks[1].attention.self
    qkv = m["backbone.layers.1.blocks.1.attn.qkv.weight"]
    d = qkv.shape[1]
    assert torch.equal(sw.query.weight.float(), qkv[:d]) and torch.equal(
        sw.value.weight.float(), qkv[2 * d :]
    )
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight.float(),
        bert["embeddings.word_embeddings.weight"],
    )
    assert torch.equal(model.stage_norms[2].bias.float(), m["backbone.norm2.bias"])

    g = torch.Generator().manual_seed(1)
    words = torch.randn(2, 5, model.config.bert.hidden_size, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        for i, dim in enumerate(model.config.stage_dims):
            x = torch.randn(2, 12, dim, generator=g, dtype=torch.float64)
            want = _official_pwam(m, i, x, words, mask)
            torch.testing.assert_close(model.pwams[i](x, words, mask), want, rtol=1e-9, atol=1e-9)
            if i < 3:
                gate = m[f"backbone.layers.{i}.res_gate.0.weight"].double()
                gate2 = m[f"backbone.layers.{i}.res_gate.2.weight"].double()
                want_gate = torch.tanh(F.linear(F.linear(want, gate).relu(), gate2))
                torch.testing.assert_close(model.gates[i](want), want_gate, rtol=1e-9, atol=1e-9)
        feats = [
            torch.randn(2, dim, 16 // 2**i, 16 // 2**i, generator=g, dtype=torch.float64)
            for i, dim in enumerate(model.config.stage_dims)
        ]
        torch.testing.assert_close(
            model.decoder(feats), _official_decoder(m, feats), rtol=1e-9, atol=1e-9
        )


def test_the_three_layouts_give_the_same_model(official, tiny_bert_cfg, tmp_path):
    m, bert = official
    torch.save(_published(m, bert), tmp_path / "a.pth")
    torch.save(_published(m, bert, one=True), tmp_path / "b.pth")
    sd = create_model(tiny_bert_cfg[0], weights=tmp_path / "a.pth").state_dict()
    torch.save({"model": sd}, tmp_path / "c.pth")
    for name in ("b.pth", "c.pth"):
        other = create_model(tiny_bert_cfg[0], weights=tmp_path / name).state_dict()
        assert sd.keys() == other.keys() and all(torch.equal(sd[k], other[k]) for k in sd)


def test_unknown_and_missing_keys_are_named(official, tiny_bert_cfg, tmp_path):
    m, bert = official
    with pytest.raises(CheckpointError, match="backbone.layers.0.fusion.extra.weight"):
        lavt_official_to_sssc(m | {"backbone.layers.0.fusion.extra.weight": torch.zeros(1)}, bert)
    with pytest.raises(CheckpointError, match="classifier.conv9_9.weight"):
        lavt_official_to_sssc(m | {"classifier.conv9_9.weight": torch.zeros(1)}, bert)
    ckpt = _published(m, bert)
    del ckpt["bert_model"]
    torch.save(ckpt, tmp_path / "nobert.pth")
    with pytest.raises(CheckpointError, match="without 'bert_model'"):
        create_model(tiny_bert_cfg[0], weights=tmp_path / "nobert.pth")
    missing = {k: v for k, v in m.items() if k != "backbone.norm1.weight"}
    torch.save(_published(missing, bert), tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"(?s)does not fit.*stage_norms.1.weight"):
        create_model(tiny_bert_cfg[0], weights=tmp_path / "missing.pth")


def _touch(marker: str) -> None:
    Path(marker).touch()


class _Evil:
    """Unpickling this would run ``_touch`` on the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def test_a_checkpoint_holding_code_is_refused_and_the_code_never_runs(
    official, tiny_bert_cfg, tmp_path
):
    m, bert = official
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(_published(m, bert) | {"extra": _Evil(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        create_model(tiny_bert_cfg[0], weights=path)
    assert str(path) in str(info.value) and "_touch'" in str(info.value)
    assert not marker.exists()
    img = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    argv = ["predict", "--checkpoint", str(path), "--image", str(img), "--text", "x"]
    assert main([*argv, "--out", str(tmp_path / "o.png"), "--bert", str(tiny_bert_cfg[1])]) == 2
    assert not marker.exists()


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"cut.pth: damaged checkpoint.*truncated") as e:
        read_checkpoint(path)
    assert "weights_only" not in str(e.value)


def test_a_flipped_byte_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "flip.pt"
    w = torch.arange(4096, dtype=torch.float32)
    torch.save({"model": {"w": w}}, path)
    data = bytearray(path.read_bytes())
    at = bytes(data).find(w[1000:1004].numpy().tobytes())
    assert at > 0
    data[at + 1] ^= 0x10  # one bit of one weight: torch alone loads it without a word
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], w)
    with pytest.raises(CheckpointError, match=r"flip.pt: damaged checkpoint: record .* CRC-32"):
        read_checkpoint(path)


def test_text_that_is_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt: not a readable torch checkpoint") as e:
        read_checkpoint(path)
    assert "weights_only" not in str(e.value)


def test_predict_and_eval_take_a_published_checkpoint(official, tiny_bert_cfg, tmp_path, capsys):
    m, bert = official
    cfg_path, bert_dir = tiny_bert_cfg
    pub = tmp_path / "pub.pth"
    torch.save(_published(m, bert), pub)
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    argv = ["predict", "--checkpoint", str(pub), "--image", str(tmp_path / "in.png")]
    argv += ["--text", "the red circle", "--out", str(tmp_path / "o.png"), "--model", str(cfg_path)]
    assert main(argv) == 2  # published files name their BERT only by hub id
    assert "bert-base-uncased" in capsys.readouterr().err
    assert main([*argv, "--bert", str(bert_dir)]) == 0

    # sssc eval scores it on two splits; the same weights as an sssc checkpoint score the same.
    data = tmp_path / "data"
    sets = [f"data.root={data}", f"data.image_dir={data}/synthetic/images"]
    sets += [
        *synth_sets(6),
        "data.synth.image_size=32",
        f"train.bert_weights={bert_dir}",
    ]
    argv = ["eval", "--checkpoint", str(pub), "--model", str(cfg_path), "--split", "val", "test"]
    argv += [x for s in sets for x in ("--set", s)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "PointM" in out and "PointIt" in out
    got = json.loads((tmp_path / "eval_pub" / "val" / "metrics.json").read_text())
    assert got["split"] == "val" and (tmp_path / "eval_pub" / "test" / "metrics.json").is_file()
    for k in ("mIoU", "oIoU", "prec@0.5", "prec@0.9", "PointM", "PointIt"):
        assert 0 <= got[k] <= 100

    sd = create_model(cfg_path, weights=pub).state_dict()
    mine = tmp_path / "mine" / "checkpoint.pt"
    mine.parent.mkdir()
    torch.save(
        {"model": sd, "model_name": str(cfg_path), "image_size": 480, "bert_path": str(bert_dir)},
        mine,
    )
    argv = ["eval", "--checkpoint", str(mine), "--split", "val", *argv[argv.index("--set") :]]
    assert main(argv) == 0
    again = json.loads((mine.parent / "eval_checkpoint" / "val" / "metrics.json").read_text())
    for k in ("mIoU", "oIoU", "prec@0.5", "PointM", "num_expressions"):
        assert again[k] == got[k], k


def test_eval_names_a_split_that_does_not_exist(official, tiny_bert_cfg, tmp_path, capsys):
    m, bert = official
    pub = tmp_path / "pub.pth"
    torch.save(_published(m, bert), pub)
    data = tmp_path / "data"
    sets = [
        f"data.root={data}",
        f"data.image_dir={data}/synthetic/images",
        *synth_sets(4),
    ]
    sets += ["data.synth.image_size=32", f"train.bert_weights={tiny_bert_cfg[1]}"]
    argv = ["eval", "--checkpoint", str(pub), "--model", str(tiny_bert_cfg[0]), "--split", "testA"]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 2
    assert "'testA'" in capsys.readouterr().err
