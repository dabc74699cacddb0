"""LAVT (sssc.correct.lavt): shapes, gradients, padding, determinism, PWAM against a float64
reference, the Swin stages against transformers' own forward, tokenizers and weight-path errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sssc.config import ConfigError
from sssc.correct.lavt import (
    LAVT,
    PWAM,
    LAVTConfig,
    build_tokenizer,
    create_model,
    load_model_config,
    param_groups,
)

WORDS = ["the red circle left of the blue square", "a green triangle", "biggest shape, right"]


def _batch(model: LAVT, b: int = 2, size: tuple[int, int] = (96, 96), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, *size, generator=g)
    length = model.config.max_tokens
    ids = torch.randint(5, 20, (b, length), generator=g)
    mask = torch.zeros(b, length, dtype=torch.int64)
    for i in range(b):  # ragged: [CLS] w ... [SEP], then padding
        n = 4 + 3 * i
        mask[i, :n] = 1
        ids[i, n:] = 0
    return images, ids, mask


def _tiny(seed: int = 0) -> LAVT:
    torch.manual_seed(seed)
    return create_model("lavt-tiny")


def _reduced_base() -> LAVTConfig:
    """lavt-base's widths with 2 blocks per stage and 1 BERT layer (backward on CPU in seconds)."""
    cfg = load_model_config("lavt-base")
    return dataclasses.replace(
        cfg,
        name="lavt-base-reduced",
        swin=dataclasses.replace(cfg.swin, depths=[2, 2, 2, 2]),
        bert=dataclasses.replace(cfg.bert, num_hidden_layers=1),
    )


# ---------------------------------------------------------------- configs


def test_embedded_configs():
    tiny, base = load_model_config("lavt-tiny"), load_model_config("lavt-base")
    assert (tiny.name, tiny.tokenizer, tiny.max_tokens) == ("lavt-tiny", "words", 20)
    # The published model: Swin-B window 12, BERT-base, 20 tokens, 480x480.
    assert base.swin.embed_dim == 128 and base.swin.depths == [2, 2, 18, 2]
    assert base.swin.num_heads == [4, 8, 16, 32] and base.swin.window_size == 12
    assert (base.bert.hidden_size, base.bert.num_hidden_layers) == (768, 12)
    assert (base.image_size, base.max_tokens, base.tokenizer) == (480, 20, "bert")


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("swin:\n  embed_dimm: 8\n")
    with pytest.raises(ConfigError, match=r"swin\.embed_dimm"):
        load_model_config(bad)
    bad.write_text("swin:\n  depths: [1, 1, 1]\n  num_heads: [1, 1, 1]\n")
    with pytest.raises(ConfigError, match="4 stages"):
        load_model_config(bad)
    with pytest.raises(ConfigError, match="lavt-tiny"):
        load_model_config("lavt-huge")


def test_decoder_width_is_lavts_half_of_stage_4_unless_the_config_sets_it(tmp_path):
    from sssc.correct.lavt import LAVTDecoder

    # LAVT's SimpleDecoding for Swin-B: 512 hidden channels (stage 4 has 1024).
    lavt = LAVTDecoder([128, 256, 512, 1024])
    assert lavt.classifier.in_channels == 512 and lavt.fuse[0][0].in_channels == 1024 + 512
    assert load_model_config("lavt-base").decoder_hidden == 0  # the rule, for the paper's model
    tiny = load_model_config("lavt-tiny")
    model = LAVT(tiny)
    assert tiny.decoder_hidden == 48 and model.decoder.classifier.in_channels == 48
    assert [b[0].in_channels for b in model.decoder.fuse] == [192 + 96, 48 + 48, 48 + 24]
    bad = tmp_path / "m.yaml"
    bad.write_text("decoder_hidden: -1\n")
    with pytest.raises(ConfigError, match="'decoder_hidden' must be >= 0"):
        load_model_config(bad)


def _refine_reference(head, logits, images):
    """RefineHead in float64 with F.conv2d on NCHW tensors (no channels-last, no modules)."""
    convs = [m for m in head.net if isinstance(m, torch.nn.Conv2d)]
    x = torch.cat([logits, images], dim=1).double()
    for i, c in enumerate(convs):
        x = F.conv2d(x, c.weight.double(), c.bias.double(), padding=1)
        if i < len(convs) - 1:
            x = x.clamp_min(0)
    return logits.double() + x


def test_refine_head_starts_as_lavts_output_and_matches_a_float64_reference(tmp_path):
    from sssc.correct.lavt import RefineHead

    base = load_model_config("lavt-tiny")
    assert load_model_config("lavt-base").refine_hidden == 0
    assert not hasattr(LAVT(dataclasses.replace(base, refine_hidden=0)), "refine")
    torch.manual_seed(0)
    plain = LAVT(dataclasses.replace(base, refine_hidden=0)).eval()
    refined = LAVT(dataclasses.replace(base, refine_hidden=8)).eval()
    missing = refined.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("refine.") for k in missing)
    images, ids, mask = _batch(plain, size=(64, 64))
    with torch.no_grad():  # the last convolution starts at zero: LAVT's logits, unchanged
        torch.testing.assert_close(refined(images, ids, mask), plain(images, ids, mask))

    head = RefineHead(8)
    g = torch.Generator().manual_seed(1)
    for p in head.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.3
    logits = torch.randn(2, 2, 24, 20, generator=g)
    pixels = torch.randn(2, 3, 24, 20, generator=g)
    torch.testing.assert_close(
        head(logits, pixels).double(), _refine_reference(head, logits, pixels), rtol=1e-4, atol=1e-4
    )
    # Three 3x3 convolutions: one pixel of the image moves the logits within 3 pixels of it only.
    moved = pixels.clone()
    moved[:, :, 10, 8] += 5.0
    diff = (head(logits, moved) - head(logits, pixels)).abs().amax(dim=(0, 1))
    near = torch.zeros_like(diff, dtype=torch.bool)
    near[7:14, 5:12] = True
    assert diff[10, 8] > 0 and diff[~near].max() == 0
    out = head(logits, pixels).sum()
    out.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    bad = tmp_path / "m.yaml"
    bad.write_text("refine_hidden: -2\n")
    with pytest.raises(ConfigError, match="'refine_hidden' must be >= 0"):
        load_model_config(bad)


# ---------------------------------------------------------------- forward shapes


@pytest.mark.parametrize(
    "size", [(96, 96), (77, 101), (33, 50), (130, 96)], ids=["96x96", "77x101", "33x50", "130x96"]
)
def test_tiny_forward_shapes(size):
    model = _tiny().eval()
    images, ids, mask = _batch(model, 2, size)
    with torch.no_grad():
        out = model(images, ids, mask)
    assert out.shape == (2, 2, *size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_base_forward_shape():
    torch.manual_seed(0)
    model = create_model("lavt-base").eval()
    assert model.config.swin.depths == [2, 2, 18, 2] and model.image_size == 480
    images, ids, mask = _batch(model, 1, (40, 56))
    ids = ids * 100  # a spread of BERT-base ids
    with torch.no_grad():
        out = model(images, ids, mask)
    assert out.shape == (1, 2, 40, 56) and torch.isfinite(out).all()


def test_forward_rejects_mismatched_inputs():
    model = _tiny()
    images, ids, mask = _batch(model, 2)
    with pytest.raises(ValueError, match="attention_mask"):
        model(images, ids, mask[:, :5])
    with pytest.raises(ValueError, match="B = 2"):
        model(images, ids[:1], mask[:1])


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("which", ["lavt-tiny", "lavt-base-reduced"])
def test_every_parameter_gets_a_gradient(which):
    torch.manual_seed(0)
    model = create_model("lavt-tiny" if which == "lavt-tiny" else _reduced_base()).train()
    size = (96, 96) if which == "lavt-tiny" else (64, 64)
    images, ids, mask = _batch(model, 2, size)
    if which != "lavt-tiny":
        ids = ids * 100
    logits = model(images, ids, mask)
    target = (torch.arange(size[1]) < size[1] // 2).expand(2, *size).long()
    F.cross_entropy(logits, target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters the forward does not use: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    # A zero gradient everywhere would mean a dead branch (e.g. a gate stuck at zero). The refine
    # head's last convolution starts at zero, so the two before it get their first gradient after
    # one step (test_refine_head_...: with non-zero weights every one of them gets one).
    dead = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    starts_at_zero = {f"refine.net.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    assert not [n for n in dead if n not in starts_at_zero], f"all-zero gradients: {dead}"
    if which == "lavt-tiny":
        assert model.refine.net[-1].weight.grad.abs().sum() > 0
    # LAVT drops BERT's pooler and Swin's final norm and classifier.
    names = {n for n, _ in model.named_parameters()}
    assert not any("pooler" in n or n.startswith("swin.layernorm") for n in names)


# ---------------------------------------------------------------- padding and language


def test_padded_tokens_do_not_change_the_output():
    model = _tiny().eval()
    images, ids, mask = _batch(model, 2)
    other = ids.clone()
    other[mask == 0] = torch.randint(5, 20, (int((mask == 0).sum()),))
    assert not torch.equal(other, ids)
    with torch.no_grad():
        a = model(images, ids, mask)
        b = model(images, other, mask)
        # ... while a real word does change it (the language path is live).
        changed = ids.clone()
        changed[:, 1] = (changed[:, 1] + 1 - 5) % 15 + 5
        c = model(images, changed, mask)
    assert torch.allclose(a, b, rtol=0, atol=1e-5)
    rel = ((a - c).norm() / a.norm()).item()
    assert rel > 1e-4, f"changing a real token barely moved the output ({rel:.2e})"


# ---------------------------------------------------------------- determinism


def test_deterministic_given_the_seed():
    m1, m2, m3 = _tiny(0), _tiny(0), _tiny(1)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    images, ids, mask = _batch(m1, 2)
    outs = []
    for m in (m1, m2):
        torch.manual_seed(123)  # drop path and dropout draw from the global RNG
        outs.append(m.train()(images, ids, mask))
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------- PWAM vs float64 reference


def _pwam_reference(p: PWAM, x, words, mask):
    """LAVT's PWAM in float64 with its own layout: 1x1 Conv1d on [B, C, N], F.instance_norm."""
    d = lambda t: t.detach().double()

    def conv1x1(lin, t):  # t: [B, Cin, N]
        return torch.einsum("oc,bcn->bon", d(lin.weight), t) + d(lin.bias)[None, :, None]

    x, words, m = d(x).transpose(1, 2), d(words).transpose(1, 2), mask.double()[:, None, :]
    b, c, n = x.shape
    vis = F.gelu(conv1x1(p.vis_project[0], x))
    query = F.instance_norm(conv1x1(p.query, x))  # [B, C, N]
    key = conv1x1(p.key, words) * m  # [B, C, L]
    value = conv1x1(p.value, words) * m
    heads, dh = p.num_heads, c // p.num_heads
    q = query.transpose(1, 2).reshape(b, n, heads, dh).permute(0, 2, 1, 3)
    k = key.reshape(b, heads, dh, -1)
    v = value.reshape(b, heads, dh, -1)
    sim = torch.matmul(q, k) * c**-0.5 + (1e4 * m[:, None] - 1e4)
    out = torch.matmul(torch.softmax(sim, -1), v.transpose(-1, -2))  # [B, h, N, dh]
    out = out.permute(0, 2, 1, 3).reshape(b, n, c).transpose(1, 2)
    lang = F.instance_norm(conv1x1(p.out, out))
    mm = F.gelu(conv1x1(p.project_mm[0], vis * lang))
    return mm.transpose(1, 2)


@pytest.mark.parametrize("heads", [1, 2], ids=["1head", "2heads"])
def test_pwam_matches_float64_reference(heads):
    torch.manual_seed(0)
    p = PWAM(dim=12, lang_dim=10, num_heads=heads).eval()
    x, words = torch.randn(3, 35, 12), torch.randn(3, 7, 10)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 1 + [0] * 6])
    out = p(x, words, mask).double()
    ref = _pwam_reference(p, x, words, mask)
    assert (out - ref).norm() / ref.norm() < 1e-5


# ---------------------------------------------------------------- stages = transformers' Swin


@pytest.mark.parametrize("position", ["none", "coords"])
def test_backbone_stages_match_transformers_swin(position):
    """With PWAM's output forced to zero (and the coordinate maps, with ``position: coords``),
    every stage's features equal the plain Swin's."""
    torch.manual_seed(0)
    model = LAVT(dataclasses.replace(load_model_config("lavt-tiny"), position=position)).eval()
    for p in model.pwams:
        torch.nn.init.zeros_(p.project_mm[0].weight)
        torch.nn.init.zeros_(p.project_mm[0].bias)
    for lin in getattr(model, "coords", []):
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    seen = []
    hooks = [
        p.register_forward_hook(lambda mod, args, out: seen.append(args[0])) for p in model.pwams
    ]
    images, ids, mask = _batch(model, 2, (77, 101))
    with torch.no_grad():
        model(images, ids, mask)
        emb, dims = model.swin.embeddings(images)
        ref = model.swin.encoder(
            emb,
            dims,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
            always_partition=True,
        ).hidden_states[1:]
    for h in hooks:
        h.remove()
    assert len(seen) == len(ref) == 4
    for got, want in zip(seen, ref, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- tokenizers


def test_word_tokenizer_is_deterministic_and_lavt_shaped():
    tok = build_tokenizer("lavt-tiny", vocab_words=WORDS)
    again = build_tokenizer("lavt-tiny", vocab_words=list(reversed(WORDS)))
    assert tok.vocab == again.vocab
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.vocab[5:] == sorted(tok.vocab[5:]) and "," in tok.vocab and "Red" not in tok.vocab
    ids, mask = tok(["The RED circle", "purple circle"])
    v = {w: i for i, w in enumerate(tok.vocab)}
    assert ids.shape == mask.shape == (2, 20) and ids.dtype == mask.dtype == torch.int64
    assert ids[0, :5].tolist() == [v["[CLS]"], v["the"], v["red"], v["circle"], v["[SEP]"]]
    assert ids[1, :4].tolist() == [v["[CLS]"], v["[UNK]"], v["circle"], v["[SEP]"]]
    assert mask.sum(1).tolist() == [5, 4] and (ids[mask == 0] == 0).all()
    # LAVT keeps the first 20 ids after adding [CLS]/[SEP]: a long expression loses its [SEP].
    ids, mask = tok(["red " * 30])
    assert mask.all() and ids[0, 0] == v["[CLS]"] and (ids[0, 1:] == v["red"]).all()
    # A saved vocabulary rebuilds the same tokenizer.
    assert build_tokenizer("lavt-tiny", vocab_words=tok.vocab).vocab == tok.vocab


def test_word_tokenizer_checks_vocab_size_and_words():
    cfg = load_model_config("lavt-tiny")
    small = dataclasses.replace(cfg, bert=dataclasses.replace(cfg.bert, vocab_size=8))
    with pytest.raises(ValueError, match="bert.vocab_size=8"):
        build_tokenizer(small, vocab_words=WORDS)
    with pytest.raises(ValueError, match="vocab_words"):
        build_tokenizer("lavt-tiny")


def test_bert_tokenizer_from_local_folder(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "circle", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "bert")
    tok = build_tokenizer("lavt-base", bert_path=tmp_path / "bert")
    ids, mask = tok(["The red circles"])
    assert ids[0, :6].tolist() == [2, 5, 6, 7, 8, 3] and mask.sum() == 6
    with pytest.raises(FileNotFoundError, match="bert_path.*huggingface.co/bert-base-uncased"):
        build_tokenizer("lavt-base", bert_path=tmp_path / "nowhere")


# ---------------------------------------------------------------- weight paths


@pytest.mark.parametrize(
    ("setting", "source"),
    [
        ("swin_weights", "swin_base_patch4_window12_384_22k.pth"),
        ("bert_weights", "huggingface.co/bert-base-uncased"),
        ("weights", "sssc-train"),
    ],
    ids=["swin", "bert", "lavt"],
)
def test_missing_weights_path_names_the_setting(tmp_path, setting, source):
    path = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError) as info:
        create_model("lavt-tiny", **{setting: str(path)})
    msg = str(info.value)
    assert setting in msg and str(path) in msg and source in msg


def test_full_checkpoint_roundtrip(tmp_path):
    model = _tiny(0).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    images, ids, mask = _batch(model, 2)
    with torch.no_grad():
        want = model(images, ids, mask)
        for name in ("ckpt.pth", "plain.pth"):
            torch.manual_seed(5)  # a different random init, overwritten by the checkpoint
            loaded = create_model("lavt-tiny", weights=tmp_path / name).eval()
            assert torch.equal(loaded(images, ids, mask), want)
    cfg = load_model_config("lavt-tiny")
    narrow = dataclasses.replace(cfg, swin=dataclasses.replace(cfg.swin, embed_dim=16))
    with pytest.raises(ValueError, match="weights: .*does not fit"):
        create_model(narrow, weights=tmp_path / "plain.pth")


# ---------------------------------------------------------------- optimizer groups


def test_param_groups_follow_lavt():
    model = _tiny()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, weight_decay=0.01, bert_layers=1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # no parameter twice
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.01
    assert all("norm" in n or "relative_position_bias_table" in n for n in no_decay)
    assert "swin.encoder.layers.0.blocks.1.attention.self.relative_position_bias_table" in no_decay
    assert "stage_norms.2.weight" in no_decay
    assert "swin.encoder.layers.0.blocks.0.attention.self.query.weight" not in no_decay
    trained = {names[i] for i in ids}
    # LAVT trains BERT's first layers only: not the embeddings, not the later layers.
    assert "bert.encoder.layer.0.attention.self.query.weight" in trained
    assert not any(n.startswith(("bert.embeddings", "bert.encoder.layer.1.")) for n in trained)
    everything = {n for n in names.values()}
    assert trained | {n for n in everything if n.startswith("bert.")} == everything
    groups = param_groups(model, bert_layers=None)
    assert {names[id(p)] for g in groups for p in g["params"]} == everything


def test_training_optimizer_decays_only_what_lavt_decays_and_skips_frozen_bert():
    """The optimizer every phase builds (train.build_optimizer): one AdamW step with all
    gradients zero moves exactly the decayed parameters, by lr * wd * p; norms and relative
    position tables stay; BERT's embeddings and the layers past bert_train_layers are not in it."""
    from sssc.config import TrainConfig
    from sssc.correct.train import build_optimizer

    model = _tiny()
    t = TrainConfig(lr=0.1, weight_decay=0.5, bert_train_layers=1)
    opt = build_optimizer(model, t)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        frozen = n.startswith(("bert.embeddings.", "bert.encoder.layer.1."))
        no_decay = "norm" in n or "relative_position_bias_table" in n
        want = before[n] if frozen or no_decay else before[n] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7, msg=n)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = [n for n, p in model.named_parameters() if id(p) not in in_opt]
    assert frozen and all(
        n.startswith(("bert.embeddings.", "bert.encoder.layer.1.")) for n in frozen
    )
    everything = build_optimizer(model, TrainConfig(bert_train_layers=-1))
    assert sum(len(g["params"]) for g in everything.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("scale", [0.1, 0.0])
def test_backbone_lr_scale_moves_swin_by_that_fraction(scale):
    """train.backbone_lr_scale: Adam's first step moves every parameter by its lr times the sign
    of its gradient, so with unit gradients Swin moves by scale * lr and the rest by lr; the
    poly schedule and a resume with a new lr (set_base_lr) keep the fraction."""
    from sssc.config import TrainConfig
    from sssc.correct.optim import build_optimizer, set_base_lr

    model = _tiny()
    lr = 0.01
    opt = build_optimizer(model, TrainConfig(lr=lr, weight_decay=0.0, backbone_lr_scale=scale))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    moved = 0
    for n, p in model.named_parameters():
        if id(p) not in in_opt:
            continue
        want = before[n] - (scale * lr if n.startswith("swin.") else lr)
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-6, msg=n)
        moved += 1
    assert moved == len(in_opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    opt.step(), sched.step()
    swin = {id(p) for p in model.swin.parameters()}

    def lrs():
        return {(id(g["params"][0]) in swin, g["lr"]) for g in opt.param_groups}

    assert lrs() == {(True, scale * lr * 0.5), (False, lr * 0.5)}
    set_base_lr(opt, sched, 0.002)
    assert lrs() == {(True, scale * 0.002 * 0.5), (False, 0.002 * 0.5)}
    plain = build_optimizer(model, TrainConfig(lr=lr))
    assert {g["lr"] for g in plain.param_groups} == {lr} and len(plain.param_groups) == 4


@pytest.mark.parametrize("branches, per_block", [("both", 2), ("attention", 1)])
def test_drop_path_branches(branches, per_block):
    """Official Swin drops the attention and the MLP branch of every block; transformers' Swin
    only the attention branch. Count the DropPath calls of one training forward."""
    from transformers.models.swin.modeling_swin import SwinDropPath

    from sssc.correct.lavt import set_drop_path

    model = set_drop_path(_tiny(), branches)
    set_drop_path(model, branches)  # idempotent
    calls = []
    for mod in model.modules():
        if isinstance(mod, SwinDropPath):
            mod.register_forward_hook(lambda *a: calls.append(1))
    blocks = sum(len(s.blocks) for s in model.swin.encoder.layers)
    # The first block of the first stage has drop rate 0 (no DropPath module), as in Swin.
    dropping = blocks - 1
    model.train()
    model(*_batch(model, 2, (32, 32)))
    assert len(calls) == per_block * dropping
    sd = model.state_dict()
    assert sd.keys() == _tiny().state_dict().keys()  # no new state


# ------------------------------------------------------------------ position: coords


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (16, 16), (7, 2)], ids=lambda v: str(v))
def test_coord_features_match_a_float64_formula(h, w):
    import numpy as np

    from sssc.correct.lavt import coord_features

    got = coord_features(h, w).double().numpy()
    rows, cols = np.divmod(np.arange(h * w), w)  # row-major tokens
    x, y = (cols + 0.5) / w * 2 - 1, (rows + 0.5) / h * 2 - 1
    want = [x, y]
    for k in (1, 2, 4):
        want += [np.sin(k * np.pi * x), np.cos(k * np.pi * x)]
        want += [np.sin(k * np.pi * y), np.cos(k * np.pi * y)]
    np.testing.assert_allclose(got, np.stack(want, 1), atol=1e-6)


def _stage1_fusion_input(model: LAVT, images, ids, mask):
    seen = []
    hook = model.pwams[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model.eval()(images, ids, mask)
    hook.remove()
    return seen[0]  # [B, N, C] after stage 1's blocks


def test_position_coords_tell_tokens_of_a_flat_image_apart():
    """A flat image gives every stage-1 token the same features without position (windows of 4
    tile the 16x16 grid of a 64x64 input, so no padding breaks the symmetry); with ``position:
    coords`` they differ from left to right and from top to bottom."""
    cfg = load_model_config("lavt-tiny")
    images = torch.full((1, 3, 64, 64), 0.3)
    ids = torch.tensor([[2, 5, 6, 3]])
    mask = torch.ones_like(ids)
    for position in ("none", "coords"):
        torch.manual_seed(0)
        model = LAVT(dataclasses.replace(cfg, position=position))
        x = _stage1_fusion_input(model, images, ids, mask).view(16, 16, -1)
        spread_x = (x[:, :1] - x).abs().amax().item()  # along each row
        spread_y = (x[:1] - x).abs().amax().item()
        if position == "none":
            assert spread_x < 1e-4 and spread_y < 1e-4
        else:
            assert spread_x > 1e-2 and spread_y > 1e-2
            assert (x[:, 0] - x[:, -1]).abs().amax() > 1e-2  # the left edge is not the right


def test_position_setting_is_checked(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("position: everywhere\n")
    with pytest.raises(ConfigError, match="'position' must be 'none' or 'coords'"):
        load_model_config(path)
    assert load_model_config("lavt-base").position == "none"  # LAVT itself has no coordinates


def test_sizes_off_the_patch_grid_are_refused_where_sssc_trains_and_predicts(tmp_path):
    """Off multiples of the patch size, sssc's upsampling (to the padded grid, then a crop) is
    not LAVT's (straight to the input size): the logits differ there, so sssc's paths refuse."""
    import torch.nn.functional as F

    from sssc.correct.lavt import check_input_size
    from sssc.inference import load_predictor

    cfg = load_model_config("lavt-tiny")
    for size in (64, 480, 4):
        check_input_size(size, cfg, "train.image_size")
    with pytest.raises(ValueError, match=r"train.image_size=62 is not a multiple of .* 4"):
        check_input_size(62, cfg, "train.image_size")
    # Where the two differ: a 4x4 logit grid over a 16x16 input cropped to 14x14.
    grid = torch.randn(1, 2, 4, 4)
    lavt = F.interpolate(grid, size=(14, 14), mode="bilinear", align_corners=True)
    ours = F.interpolate(grid, size=(16, 16), mode="bilinear", align_corners=True)[..., :14, :14]
    assert not torch.allclose(lavt, ours)
    # A checkpoint trained at such a size is refused before anything is built.
    model = create_model("lavt-tiny")
    path = tmp_path / "odd.pt"
    torch.save({"model": model.state_dict(), "model_name": "lavt-tiny", "image_size": 62}, path)
    with pytest.raises(ValueError, match="the checkpoint's image size=62 is not a multiple"):
        load_predictor(path)


def test_training_refuses_an_image_size_off_the_patch_grid(tmp_path):
    """Before any stage runs or anything is written."""
    from sssc.config import load_config
    from sssc.correct.train import TrainError, train_phase
    from sssc.stages import StageError, run_stage

    cfg = load_config(None, ["train.image_size=62", f"data.root={tmp_path}"])
    with pytest.raises(TrainError, match="train.image_size=62 is not a multiple"):
        train_phase("bootstrap", cfg, tmp_path / "run", refer=object())
    with pytest.raises(StageError, match="train.image_size=62 is not a multiple"):
        run_stage("correct", cfg, tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
