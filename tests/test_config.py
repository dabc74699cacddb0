"""Config loading: defaults, dataset configs, unknown keys, wrong types, --set overrides."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml
from tiny_data import synth_sets

from sssc.config import (
    ConfigError,
    RunConfig,
    config_to_dict,
    embedded_config_path,
    load_config,
)

DATASET_CONFIGS = {  # name: (dataset folder, split_by, eval split)
    "refcoco": ("refcoco", "unc", "val"),
    "refcoco+": ("refcoco+", "unc", "val"),
    "refcocog-umd": ("refcocog", "umd", "val"),
    "refcocog-google": ("refcocog", "google", "val"),
}


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and v:
            out |= _keys(v, f"{prefix}{k}.")
    return out


def _write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_embedded_default_lists_every_key_with_its_default():
    raw = yaml.safe_load(embedded_config_path("synthetic").read_text())
    assert _keys(raw) == _keys(config_to_dict(RunConfig()))
    cfg = load_config(None, [])
    expected = config_to_dict(RunConfig())
    expected["data"]["class_names"] = ["circle", "square", "triangle"]
    got = config_to_dict(cfg)
    # The embedded default trains a tiny model on CPU; every other train key is the recipe's.
    cpu_keys = ("model", "image_size", "bootstrap_epochs", "correct_epochs", "plus_epochs", "lr")
    for key in (*cpu_keys, "grad_clip", "cache_data", "sentences_per_object", "class_weights"):
        expected["train"][key] = got["train"][key]
    for key in (
        "threads",
        "bootstrap_threads",
        "eval_every",
        "bert_train_layers",
        "loss_norm",
        "random_init",
        "parallel_phases",
        "swin_weights",  # the shipped pretraining analogue (tests/test_pretrain.py)
        "backbone_lr_scale",  # the pretrained tiny Swin fine-tuned at 0.1 x lr
        "iou_loss_weight",  # a soft IoU loss beside the cross-entropy (deviation 30)
    ):
        expected["train"][key] = got["train"][key]
    # A random tiny model on the CPU, on purpose; the schema's defaults are the safe ones.
    assert (got["device"], got["train"]["random_init"]) == ("cpu", True)
    assert (RunConfig().device, RunConfig().train.random_init) == ("auto", False)
    expected["device"] = "cpu"
    expected["data"]["batch_expressions"] = got["data"]["batch_expressions"]
    assert got["train"]["model"] == "lavt-tiny" and got["train"]["image_size"] == 64
    assert config_to_dict(RunConfig())["train"]["model"] == "lavt-base"
    assert got == expected


def test_partial_file_keeps_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, "data:\n  batch_expressions: 30\nseed: 3\n"), [])
    assert (cfg.seed, cfg.data.batch_expressions) == (3, 30)
    assert cfg.select.simulate.p_correct == 0.6 and cfg.data.synth == RunConfig().data.synth


def test_empty_file_is_the_schema_default(tmp_path):
    assert load_config(_write(tmp_path, ""), []) == RunConfig()


@pytest.mark.parametrize(
    "text, key",
    [
        ("data:\n  synth:\n    num_imgs: 3\n", "'data.synth.num_imgs'"),
        ("segmnt: {}\n", "'segmnt'"),
        ("select:\n  models:\n    sigmaa: 3\n", "'select.models.sigmaa'"),
    ],
    ids=["nested", "top-level", "models-section"],
)
def test_unknown_key_names_dotted_key_and_file(tmp_path, text, key):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, [])
    assert key in str(e.value) and str(p) in str(e.value) and "unknown key" in str(e.value)


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("data:\n  batch_expressions: many\n", "'data.batch_expressions'", "must be int"),
        ("data:\n  batch_expressions: true\n", "'data.batch_expressions'", "must be int"),
        ("data:\n  batch_expressions: 2.5\n", "'data.batch_expressions'", "must be int"),
        ("segment:\n  simulate:\n    p_drop: x\n", "'segment.simulate.p_drop'", "must be float"),
        ("data:\n  class_names: person\n", "'data.class_names'", "must be list[str]"),
        ("data:\n  class_names: [a, 3]\n", "'data.class_names[1]'", "must be str"),
        ("data: 3\n", "data", "must be a mapping"),
        ("train: [1]\n", "train", "must be a mapping"),
        ("eval:\n  resolution: [480]\n", "'eval.resolution'", "must be Union[str, int]"),
    ],
    ids=[
        "str-for-int",
        "bool-for-int",
        "float-for-int",
        "str-for-float",
        "str-for-list",
        "int-in-list",
        "scalar-for-section",
        "list-for-dict",
        "list-for-union",
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, text, key, expected):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, [])
    msg = str(e.value)
    assert key in msg and expected in msg and str(p) in msg


@pytest.mark.parametrize(
    "override, message",
    [
        ("select.simulate.wrong_choice=random", "must be one of"),
        ("select.simulate.p_correct=1.5", "probability"),
        ("eval.resolution=full", "'original'"),
        ("eval.resolution=0", "positive int"),
        ("data.batch_expressions=0", "positive int"),
        ("segment.backend=gpu", "must be one of"),
    ],
)
def test_out_of_range_values_are_named(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert override.split("=")[0] in str(e.value) and message in str(e.value)


def test_int_is_accepted_for_float_and_resolution_takes_both():
    cfg = load_config(None, ["select.models.sigma=25", "eval.resolution=original"])
    assert cfg.select.models.sigma == 25.0 and isinstance(cfg.select.models.sigma, float)
    assert cfg.eval.resolution == "original"
    assert load_config(None, ["eval.resolution=320"]).eval.resolution == 320


def test_overrides_apply_in_order_with_yaml_values():
    cfg = load_config(
        None,
        [
            *synth_sets(10),
            "data.class_names=[a, b]",
            "train.lr=0.001",
            "train.class_weights=[1, 2]",
            "device=cuda:1",
            "seed=1",
            "seed=2",
        ],
    )
    assert cfg.data.synth.num_images == 10 and isinstance(cfg.data.synth.num_images, int)
    assert cfg.data.class_names == ["a", "b"]
    assert cfg.train.lr == 0.001 and cfg.train.class_weights == [1.0, 2.0]
    assert (cfg.device, cfg.seed) == ("cuda:1", 2)


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.synth.num_imgs=10", "'data.synth.num_imgs'"),
        ("data.sinth.num_images=10", "'data.sinth'"),
        ("datasets=refcoco", "'datasets'"),
        ("seed.value=1", "'seed.value'"),
    ],
    ids=["leaf", "section", "top-level", "below-a-scalar"],
)
def test_unknown_override_key_fails_clearly(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert key in msg and override in msg and "--set" in msg


@pytest.mark.parametrize("bad", ["num_images", "=3", ""])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, [bad])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found") as e:
        load_config(tmp_path / "nope.yaml", [])
    assert "nope.yaml" in str(e.value)
    p = _write(tmp_path, "data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p, [])


@pytest.mark.parametrize("name", sorted(DATASET_CONFIGS))
def test_dataset_configs(name):
    folder, split_by, eval_split = DATASET_CONFIGS[name]
    cfg = load_config(name, [])  # a bare name picks the embedded config
    assert cfg == load_config(embedded_config_path(name), [])
    assert (cfg.data.dataset, cfg.data.split_by, cfg.data.eval_split) == (
        folder,
        split_by,
        eval_split,
    )
    names = cfg.data.class_names
    assert len(names) == 80 and len(set(names)) == 80  # COCO's 80 categories
    assert {"person", "dog", "toothbrush", "traffic light"} <= set(names)
    assert cfg.data.batch_expressions == 60  # the paper's batch
    assert cfg.segment.backend == "models" and cfg.select.backend == "models"
    assert cfg.select.models.sigma == 50.0
    assert "train2014" in cfg.data.image_dir


@pytest.mark.parametrize("recipe", ["sssc", "official"])
@pytest.mark.parametrize("name", sorted(DATASET_CONFIGS))
def test_dataset_configs_train_each_object_once_an_epoch(name, recipe, tmp_path):
    """S+S+C's training set has one item per image and, with ``--one-sentence-per-item`` (which its
    README's training commands pass), gives each of the image's objects one of its expressions,
    drawn at random (LAVT's own draws one per object too). So a RefCOCO-family config's epoch
    holds each train object once, with one of its expressions, whichever batching it uses
    (``samples`` is the official recipe's)."""
    from tiny_data import TENTHS

    from sssc.correct.data import ImageSet, pack_samples
    from sssc.data.refer import Refer
    from sssc.data.synthetic import generate

    generate(tmp_path, num_images=20, **TENTHS)
    cfg = load_config(
        name,
        [
            f"recipe={recipe}",
            f"data.root={tmp_path}",
            "data.dataset=synthetic",
            "data.split_by=synthetic",
            "data.image_dir=",
            *synth_sets(20),
        ],
    )
    refer = Refer.from_config(cfg.data)
    refs = refer.split_refs(cfg.data.train_split)
    assert sum(len(r.sentences) for r in refs) > len(refs)  # objects with several expressions
    per = cfg.train.sentences_per_object
    owner = {s.sent_id: r.ann_id for r in refs for s in r.sentences}
    if cfg.data.batching == "samples":
        # One GPU cutting steps of one expression, its first load in too: all but the last (a
        # buffer keeps it), in the config's order and draw.
        d = cfg.data
        batches = pack_samples(
            refer, d.train_split, 1, cfg.seed, 0, per, 1, 1, None, d.samples_order,
            draw=d.samples_draw, workers=d.samples_workers, skip_first=False,
        )  # fmt: skip
        objects = [owner[s] for b in batches for _, s in b]
        assert len(objects) == len(set(objects)) == len(refs) - 1
    else:
        ds = ImageSet(refer, cfg.data.train_split, 16, per_object=per, seed=cfg.seed)
        ids = refer.split_image_ids(cfg.data.train_split)
        objects = [owner[s] for i in ids for s in ds[i]["sent_ids"]]
        assert sorted(objects) == sorted(r.ann_id for r in refs)


def test_config_to_dict_is_json_and_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=0.1"])
    d = config_to_dict(cfg)
    p = _write(tmp_path, yaml.safe_dump(json.loads(json.dumps(d))))
    assert load_config(p, []) == cfg
    assert dataclasses.is_dataclass(cfg) and d["train"]["lr"] == 0.1


def test_recipe_official_sets_every_official_behaviour_and_explicit_keys_win(tmp_path):
    from sssc.config import OFFICIAL_RECIPE

    def get(cfg, dotted):
        for part in dotted.split("."):
            cfg = getattr(cfg, part)
        return cfg

    default = load_config(None, [])
    official = load_config(None, ["recipe=official"])
    assert official.recipe == "official"
    for key, value in OFFICIAL_RECIPE.items():
        assert get(official, key) == value, key
        assert get(default, key) != value, key  # each is a real deviation of the default
    # From a file too: the preset goes over the file's values; --set overrides win, before or
    # after the recipe.
    f = _write(tmp_path, "recipe: official\nselect:\n  models:\n    channel_order: rgb\n")
    assert load_config(f, []).select.models.channel_order == "bgr"
    cfg = load_config(f, ["select.models.channel_order=rgb"])
    assert cfg.select.models.channel_order == "rgb" and cfg.train.single_candidate == "always"
    for order in (
        ["recipe=official", "train.match_ties=sssc"],
        ["train.match_ties=sssc", "recipe=official"],
    ):
        cfg = load_config(None, order)
        assert cfg.train.match_ties == "sssc" and cfg.train.single_candidate == "always"
    # GT-based selection is never part of a preset.
    assert official.train.selection == "last"
    with pytest.raises(ConfigError, match="'recipe' must be one of"):
        load_config(None, ["recipe=paper"])


# ---------------------------------------------------------------------- values the schema checks


@pytest.mark.parametrize(
    "override, key",
    [
        ("device=banana", "'device'"),
        ("device=gpu", "'device'"),
        ("segment.simulate.jitter_px=-1", "jitter_px"),
        ("segment.simulate.jitter_px=.nan", "jitter_px"),
        ("data.synth.image_size=8", "data.synth.image_size"),
        ("train.lr=.inf", "train.lr"),
        ("train.weight_decay=.nan", "train.weight_decay"),
        ("select.models.sigma=0", "sigma"),
        ("segment.models.box_threshold=1.5", "box_threshold"),
        ("train.bootstrap_threads=-1", "'train.bootstrap_threads' must be >= 0"),
        ("train.epoch_seed=-2", "'train.epoch_seed' must be -1 (seed once per phase)"),
        ("train.backbone_lr_scale=-0.1", "'train.backbone_lr_scale' must be in [0, 1]"),
        ("train.backbone_lr_scale=2", "'train.backbone_lr_scale' must be in [0, 1]"),
        ("train.iou_loss_weight=-1", "'train.iou_loss_weight' must be a finite weight >= 0"),
        ("train.iou_loss_weight=.nan", "'train.iou_loss_weight' must be a finite number"),
        ("train.iou_loss_phases=[bootstrap, select]", "'train.iou_loss_phases' must list"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


def test_float_written_without_a_dot_is_a_number():
    # YAML 1.1 (PyYAML) reads 1e-3 as the string "1e-3"; a float setting takes it as a number.
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3
    assert load_config(None, ["train.class_weights=[1e-1, 2E+0]"]).train.class_weights == [0.1, 2.0]
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=fast"])


@pytest.mark.parametrize("dev", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_values_accepted(dev):
    assert load_config(None, [f"device={dev}"]).device == dev


def test_auto_device_is_the_cpu_without_cuda(monkeypatch):
    import torch

    from sssc.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["refcoco", "refcoco+", "refcocog-umd", "refcocog-google"])
def test_real_data_configs_are_safe(name):
    cfg = load_config(name, [])
    assert cfg.device == "auto"
    assert not cfg.train.random_init
    assert (cfg.segment.backend, cfg.select.backend) == ("models", "models")


def test_simulated_backend_on_real_data_needs_an_explicit_allow(tmp_path):
    text = "data:\n  dataset: refcoco\n  split_by: unc\n"
    with pytest.raises(ConfigError, match=r"segment.backend.*allow_real_data"):
        load_config(_write(tmp_path, text), [])
    sets = ["segment.simulate.allow_real_data=true"]
    with pytest.raises(ConfigError, match=r"select.backend.*allow_real_data"):
        load_config(_write(tmp_path, text), sets)
    cfg = load_config(_write(tmp_path, text), [*sets, "select.simulate.allow_real_data=true"])
    assert cfg.segment.backend == "simulated"


def test_sample_batches_split_evenly_over_the_official_gpus():
    base = ["data.batching=samples", "data.batch_expressions=6"]
    with pytest.raises(ConfigError, match=r"multiple of 'data.samples_gpus' \(4\)"):
        load_config(None, base)
    for order in ([*base, "data.samples_gpus=2"], ["data.samples_gpus=3", *base]):
        assert load_config(None, order).data.batch_expressions == 6
    assert load_config(None, ["data.batch_expressions=6"]).data.batching == "images"  # no rule
    with pytest.raises(ConfigError, match="'data.samples_images_per_load' must be a positive"):
        load_config(None, ["data.samples_images_per_load=0"])


def test_the_official_draw_needs_one_expression_per_object_or_all():
    draw = ["data.batching=samples", "data.samples_draw=official"]
    for per in (0, 1):
        cfg = load_config(None, [*draw, f"train.sentences_per_object={per}"])
        assert cfg.data.samples_draw == "official"
    with pytest.raises(ConfigError, match="needs 'train.sentences_per_object' 1 or 0, not 2"):
        load_config(None, [*draw, "train.sentences_per_object=2"])
    # Under images batching the key has no effect, so no rule.
    load_config(None, ["data.samples_draw=official", "train.sentences_per_object=2"])
    with pytest.raises(ConfigError, match="'data.samples_workers' must be a positive"):
        load_config(None, ["data.samples_workers=0"])
    assert load_config(None, ["recipe=official"]).data.samples_skip_first is True
