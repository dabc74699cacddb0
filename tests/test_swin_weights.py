"""Loading published weights into LAVT: the official Swin .pth through the key mapping, HF-format
Swin and BERT folders. Tiny models stand in for the real files, written by the tests themselves."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, SwinConfig, SwinModel

from sssc.correct.lavt import create_model, load_model_config, swin_official_to_hf

# The official Swin naming (microsoft/Swin-Transformer), written here independently of the mapper:
# official name -> transformers' SwinModel name, per model, per stage ({i}) and per block ({j}).
MODEL_NAMES = [
    ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
    ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
    ("patch_embed.norm.weight", "embeddings.norm.weight"),
    ("patch_embed.norm.bias", "embeddings.norm.bias"),
    ("norm.weight", "layernorm.weight"),
    ("norm.bias", "layernorm.bias"),
]
BLOCK_NAMES = [
    ("layers.{i}.blocks.{j}.norm1.weight", "encoder.layers.{i}.blocks.{j}.layernorm_before.weight"),
    ("layers.{i}.blocks.{j}.norm1.bias", "encoder.layers.{i}.blocks.{j}.layernorm_before.bias"),
    (
        "layers.{i}.blocks.{j}.attn.relative_position_bias_table",
        "encoder.layers.{i}.blocks.{j}.attention.self.relative_position_bias_table",
    ),
    (
        "layers.{i}.blocks.{j}.attn.relative_position_index",
        "encoder.layers.{i}.blocks.{j}.attention.self.relative_position_index",
    ),
    (
        "layers.{i}.blocks.{j}.attn.proj.weight",
        "encoder.layers.{i}.blocks.{j}.attention.output.dense.weight",
    ),
    (
        "layers.{i}.blocks.{j}.attn.proj.bias",
        "encoder.layers.{i}.blocks.{j}.attention.output.dense.bias",
    ),
    ("layers.{i}.blocks.{j}.norm2.weight", "encoder.layers.{i}.blocks.{j}.layernorm_after.weight"),
    ("layers.{i}.blocks.{j}.norm2.bias", "encoder.layers.{i}.blocks.{j}.layernorm_after.bias"),
    (
        "layers.{i}.blocks.{j}.mlp.fc1.weight",
        "encoder.layers.{i}.blocks.{j}.intermediate.dense.weight",
    ),
    ("layers.{i}.blocks.{j}.mlp.fc1.bias", "encoder.layers.{i}.blocks.{j}.intermediate.dense.bias"),
    ("layers.{i}.blocks.{j}.mlp.fc2.weight", "encoder.layers.{i}.blocks.{j}.output.dense.weight"),
    ("layers.{i}.blocks.{j}.mlp.fc2.bias", "encoder.layers.{i}.blocks.{j}.output.dense.bias"),
]
# Official qkv = rows [query; key; value] of HF's three projections.
QKV = (
    "layers.{i}.blocks.{j}.attn.qkv.{kind}",
    "encoder.layers.{i}.blocks.{j}.attention.self.{part}.{kind}",
)
DOWNSAMPLE_NAMES = [
    ("layers.{i}.downsample.reduction.weight", "encoder.layers.{i}.downsample.reduction.weight"),
    ("layers.{i}.downsample.norm.weight", "encoder.layers.{i}.downsample.norm.weight"),
    ("layers.{i}.downsample.norm.bias", "encoder.layers.{i}.downsample.norm.bias"),
]


def _hf_swin(embed_dim, depths, num_heads, window, seed=0) -> SwinModel:
    torch.manual_seed(seed)
    cfg = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window,
        drop_path_rate=0.0,
    )
    model = SwinModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # random everything (HF zero-inits the bias tables, ones the norms)
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0) * 0.5)
    return model


def _to_official(hf: SwinModel) -> dict[str, torch.Tensor]:
    """An official-format Swin state dict with the HF model's values (plus head and attn_mask)."""
    sd, cfg = hf.state_dict(), hf.config
    out = {off: sd[ours] for off, ours in MODEL_NAMES}
    for i, depth in enumerate(cfg.depths):
        for j in range(depth):
            for off, ours in BLOCK_NAMES:
                out[off.format(i=i, j=j)] = sd[ours.format(i=i, j=j)]
            for kind in ("weight", "bias"):
                parts = [
                    sd[QKV[1].format(i=i, j=j, part=p, kind=kind)]
                    for p in ("query", "key", "value")
                ]
                out[QKV[0].format(i=i, j=j, kind=kind)] = torch.cat(parts, 0)
            if j % 2:  # shifted blocks carry their precomputed mask as a buffer
                out[f"layers.{i}.blocks.{j}.attn_mask"] = torch.randn(4, 9, 9)
        if i < len(cfg.depths) - 1:
            for off, ours in DOWNSAMPLE_NAMES:
                out[off.format(i=i)] = sd[ours.format(i=i)]
    out["head.weight"] = torch.randn(21841, cfg.embed_dim * 2 ** (len(cfg.depths) - 1))
    out["head.bias"] = torch.randn(21841)
    return out


def test_official_mapping_assigns_everything_and_reproduces_the_outputs():
    hf = _hf_swin(8, [2, 1, 3, 2], [1, 2, 2, 4], window=3, seed=0)
    official = _to_official(hf)
    mapped = swin_official_to_hf({"model": official})
    fresh = _hf_swin(8, [2, 1, 3, 2], [1, 2, 2, 4], window=3, seed=1)
    want = hf.state_dict()
    assert set(mapped) == set(want)  # every parameter and buffer assigned, nothing extra
    result = fresh.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, want[k]), k
    # Large enough that HF's default path keeps window 3 at stage 4 (3x4): below the window it
    # shrinks the window but not the bias table, and fails.
    x = torch.randn(2, 3, 96, 100)
    with torch.no_grad():
        a, b = hf(x).last_hidden_state, fresh(x).last_hidden_state
    assert torch.equal(a, b)


def test_official_mapping_rejects_unknown_keys():
    official = _to_official(_hf_swin(8, [2, 2, 2, 2], [1, 2, 2, 4], window=3))
    official["layers.0.blocks.0.attn.rope.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.attn\.rope\.weight"):
        swin_official_to_hf(official)


def _tiny_swin_like_lavt(seed=0) -> SwinModel:
    s = load_model_config("lavt-tiny").swin
    return _hf_swin(s.embed_dim, s.depths, s.num_heads, s.window_size, seed=seed)


def _assert_swin_loaded(model, hf: SwinModel) -> None:
    want = hf.state_dict()
    got = model.swin.state_dict()
    assert set(got) == {k for k in want if not k.startswith("layernorm.")}
    for k, v in got.items():
        assert torch.equal(v, want[k]), k


def test_lavt_loads_the_official_pth(tmp_path):
    hf = _tiny_swin_like_lavt()
    torch.save({"model": _to_official(hf)}, tmp_path / "swin_official.pth")
    model = create_model("lavt-tiny", swin_weights=tmp_path / "swin_official.pth")
    _assert_swin_loaded(model, hf)
    # Releases without the relative_position_index buffers load too (the index is the window's).
    official = {k: v for k, v in _to_official(hf).items() if "relative_position_index" not in k}
    torch.save(official, tmp_path / "no_index.pth")
    _assert_swin_loaded(create_model("lavt-tiny", swin_weights=tmp_path / "no_index.pth"), hf)
    # The official file for another architecture fails, naming the setting.
    other = _hf_swin(16, [2, 2, 2, 2], [1, 2, 4, 8], window=6)
    torch.save({"model": _to_official(other)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="swin_weights: .*does not fit"):
        create_model("lavt-tiny", swin_weights=tmp_path / "other.pth")


def test_lavt_loads_an_hf_swin_folder(tmp_path):
    hf = _tiny_swin_like_lavt()
    hf.save_pretrained(tmp_path / "swin")
    model = create_model("lavt-tiny", swin_weights=tmp_path / "swin")
    _assert_swin_loaded(model, hf)
    _hf_swin(16, [2, 2, 2, 2], [1, 2, 4, 8], window=6).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="swin_weights: .*embed_dim"):
        create_model("lavt-tiny", swin_weights=tmp_path / "other")


def test_lavt_loads_an_hf_bert_folder(tmp_path):
    b = load_model_config("lavt-tiny").bert
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=b.vocab_size,
        hidden_size=b.hidden_size,
        num_hidden_layers=b.num_hidden_layers,
        num_attention_heads=b.num_attention_heads,
        intermediate_size=b.intermediate_size,
        max_position_embeddings=b.max_position_embeddings,
    )
    bert = BertModel(cfg)  # with the pooler, as bert-base-uncased ships; LAVT drops it
    bert.save_pretrained(tmp_path / "bert")
    model = create_model("lavt-tiny", bert_weights=tmp_path / "bert")
    want = bert.state_dict()
    got = model.bert.state_dict()
    assert set(got) == {k for k in want if not k.startswith("pooler.")}
    for k, v in got.items():
        assert torch.equal(v, want[k]), k
    torch.save(want, tmp_path / "bert.bin")
    with pytest.raises(ValueError, match="bert_weights: .*not a folder"):
        create_model("lavt-tiny", bert_weights=tmp_path / "bert.bin")
