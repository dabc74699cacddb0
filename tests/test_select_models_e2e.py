"""Stages 1-2 end to end with tiny random models on the synthetic dataset; a killed run resumes.

GroundingDINO (SwinT config, tiny BERT), a tiny SAM and a tiny open_clip model, all randomly
initialised from a fixed seed, so a rerun builds the same models.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

for _mod in ("groundingdino", "segment_anything", "open_clip"):
    pytest.importorskip(_mod, reason="Stage 1/2 models are in the segment and select extras")

from tiny_data import synth_sets  # noqa: E402
from tiny_models import models_overrides  # noqa: E402

from sssc import stages  # noqa: E402
from sssc.config import load_config  # noqa: E402
from sssc.data.refer import Refer  # noqa: E402
from sssc.store import Store, store_complete  # noqa: E402

TESTS = Path(__file__).parent


def _overrides(tmp: Path) -> list[str]:
    return models_overrides(tmp / "models") + [
        f"data.root={tmp / 'data'}",
        f"data.image_dir={tmp / 'data' / 'synthetic' / 'images'}",
        *synth_sets(8),
    ]


_THREADS = 1


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """One explicit thread setting for this module and its subprocesses, whatever ran before:
    a process whose thread count was changed and restored rounds differently from a fresh one."""
    n = torch.get_num_threads()
    torch.set_num_threads(_THREADS)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = load_config(None, _overrides(tmp))
    m = stages.run_stage("select", cfg, tmp / "run")
    return tmp, cfg, m


def test_stores_hold_the_models_labels(run):
    tmp, cfg, m = run
    refer = Refer.from_config(cfg.data)
    s1, s2 = Store(tmp / "run" / "segment", kind="S1"), Store(tmp / "run" / "select", kind="S2")
    assert s1.producer["name"] == "models" and s1.producer["sam"] == "tiny:random"
    assert s2.producer["name"] == "models" and s2.producer["segment"] == s1.producer
    assert m["producer"] == s2.producer and m["num_expressions"] > 0
    ids = s1.image_ids()
    assert ids == s2.image_ids() and len(ids) > 0
    n_cands = 0
    for i in ids:
        r1, r2 = s1.get(i), s2.get(i)
        info = refer.images[i]
        assert (r1.height, r1.width) == (info.height, info.width)
        refs = [r for s in ("train", "val") for r in refer.image_refs(i, s)]
        assert [o.ann_id for o in r1.objects] == sorted({r.ann_id for r in refs})
        for c in r1.candidates:
            mask = c.decode()
            assert mask.shape == (info.height, info.width) and c.score > 0.35  # box threshold
            assert c.label in cfg.data.class_names
            x, y, w, h = c.box
            assert 0 <= x and 0 <= y and x + w <= info.width + 1e-3 and y + h <= info.height + 1e-3
        n_cands += len(r1.candidates)
        for o1, o2 in zip(r1.objects, r2.objects, strict=True):
            # The rule extractor + identical text prompts project each shape onto its class.
            cat = refer.categories[refer.annotation(o1.ann_id)["category_id"]]
            assert all(r1.candidate(e).label == cat for e in o1.eligible)
            assert o2.ann_id == o1.ann_id and list(o2.eligible) == list(o1.eligible)
            assert len(o2.scores) == len(o1.eligible)
            if o1.eligible:
                big = [e for e in o1.eligible if r1.candidate(e).area >= cfg.select.models.min_area]
                pool = big or list(o1.eligible)
                best = max(pool, key=lambda e: o2.scores[o1.eligible.index(e)])
                assert o2.chosen == best
            else:
                assert o2.chosen is None
    assert n_cands > 0
    assert (tmp / "run" / "segment" / "metrics.json").exists()
    # S1 oracle >= S2 choice: the oracle takes the best eligible candidate per expression.
    seg = json.loads((tmp / "run" / "segment" / "metrics.json").read_text())
    assert seg["mIoU"] >= m["mIoU"] - 1e-9


_KILLER = """
import os, signal, sys
import torch
# As the parent (see _threads): CPU matmuls round differently under other thread settings, and
# the resumed shards (computed in the parent) must match the uninterrupted run byte for byte.
torch.set_num_threads({threads})
sys.path.insert(0, {tests!r})
from tiny_models import register_tiny_clip
register_tiny_clip({models!r})
from sssc import stages
from sssc.config import load_config
from sssc.select import runner
stages.SHARD_SIZE = 2
calls = [0]
orig = runner.ModelsSelector.__call__
def call(self, image_id):
    calls[0] += 1
    if calls[0] == 4:  # in the middle of the second shard
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, image_id)
runner.ModelsSelector.__call__ = call
stages.run_stage("select", load_config(None, {ov!r}), {run!r})
"""


def test_killed_select_resumes_to_the_same_store(run, monkeypatch):
    tmp, cfg, _ = run
    ov = _overrides(tmp)
    new = tmp / "killed"
    shutil.copytree(tmp / "run" / "segment", new / "segment")
    code = _KILLER.format(
        tests=str(TESTS),
        models=str(tmp / "models"),
        ov=ov,
        run=str(new),
        threads=_THREADS,
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    shards = new / "select" / "shards"
    assert (shards / "shard-00000.jsonl").exists() and not (shards / "shard-00001.jsonl").exists()
    done = (shards / "shard-00000.jsonl").stat().st_mtime_ns

    monkeypatch.setattr(stages, "SHARD_SIZE", 2)
    stages.run_stage("select", load_config(None, ov), new)
    assert (shards / "shard-00000.jsonl").stat().st_mtime_ns == done  # not redone
    log = (new / "select" / "log.txt").read_text()
    assert "1 already done" in log
    a, b = Store(tmp / "run" / "select"), Store(new / "select")
    assert a.producer == b.producer and a.image_ids() == b.image_ids()
    for i in a.image_ids():
        assert a.get(i).objects == b.get(i).objects


def test_each_session_logs_the_libraries_that_made_its_outputs(run):
    """Stages 1-2 with models log the installed versions of the packages whose code makes their
    outputs (read here independently from the distributions' metadata)."""
    from importlib import metadata

    tmp, _, _ = run
    for stage, names in (
        ("segment", ("groundingdino-py", "segment-anything", "nltk")),
        ("select", ("torch", "open_clip_torch")),
    ):
        lines = [
            x
            for x in (tmp / "run" / stage / "log.txt").read_text().splitlines()
            if "libraries:" in x
        ]
        assert len(lines) == 1
        for name in names:
            assert f"{name} {metadata.version(name)}" in lines[0]


def test_missing_weights_fail_before_any_work(tmp_path):
    ov = _overrides(tmp_path) + [f"segment.models.sam_weights={tmp_path / 'sam_vit_h_4b8939.pth'}"]
    with pytest.raises(stages.StageError, match=r"segment\.models\.sam_weights=.*sam_vit_h_4b8939"):
        stages.run_stage("select", load_config(None, ov), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing started
    assert not (tmp_path / "data").exists()


def test_stage_1_asks_nltk_where_spacy_finds_no_noun(tmp_path, nltk_data, capsys):
    """With spaCy nouns and a pipeline that tags nothing (a blank one), every expression goes to
    the NLTK chunker (the designed tagger: the shapes' names are nouns, so each has a phrase);
    without the fallback, every expression is without a noun."""
    spacy = pytest.importorskip("spacy")
    blank = tmp_path / "blank"
    spacy.blank("en").to_disk(blank)
    base = _overrides(tmp_path) + [
        "segment.models.nouns=spacy",
        f"segment.models.spacy_model={blank}",
        f"segment.models.nltk_data={nltk_data}",
    ]
    counts = {}
    for fallback in ("nltk", "none"):
        cfg = load_config(None, [*base, f"segment.models.noun_fallback={fallback}"])
        capsys.readouterr()
        stages.run_stage("segment", cfg, tmp_path / f"run-{fallback}")
        line = next(x for x in capsys.readouterr().out.splitlines() if "counts:" in x)
        counts[fallback] = ast.literal_eval(line.split("counts: ", 1)[1])
        producer = Store(tmp_path / f"run-{fallback}" / "segment").producer
        assert producer["nouns"] == f"spacy:{blank}:official" + (":nltk" * (fallback == "nltk"))
    refer = Refer.from_config(cfg.data)
    n = sum(len(r.sentences) for s in ("train", "val") for r in refer.split_refs(s))
    assert counts["nltk"]["nltk_fallback"] == n and counts["nltk"]["nltk_fallback_empty"] == 0
    assert "expression_without_noun" not in counts["nltk"]
    assert counts["none"]["expression_without_noun"] == n and "nltk_fallback" not in counts["none"]


def test_missing_nltk_data_fails_before_any_work(tmp_path, monkeypatch):
    """Stage 1 with spaCy nouns reads NLTK's data only for expressions without a spaCy noun,
    mid-stage: a missing data package is found before anything starts, naming the command."""
    nltk = pytest.importorskip("nltk")
    monkeypatch.setattr(nltk.data, "path", [])
    ov = _overrides(tmp_path) + [
        "segment.models.nouns=spacy",
        f"segment.models.nltk_data={tmp_path}",
    ]
    with pytest.raises(stages.StageError, match=r"'punkt_tab'.*nltk\.downloader"):
        stages.run_stage("select", load_config(None, ov), tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_detector_finds_nothing_is_counted(run, tmp_path, capsys):
    _, cfg, _ = run
    ov = _overrides(tmp_path) + ["segment.models.box_threshold=1.0"]
    stages.run_stage("segment", load_config(None, ov), tmp_path / "run")
    out = capsys.readouterr().out
    s1 = Store(tmp_path / "run" / "segment")
    n = len(s1)
    assert f"'image_without_detection': {n}" in out and f"'detector_retry': {n}" in out
    assert all(not r.candidates for r in s1)


@pytest.mark.parametrize(
    "args, setting",
    [
        (["--stage", "segment", "--set", "segment.backend=models"], "segment.models.clip_weights"),
        (["--stage", "select", "--set", "select.backend=models"], "select.models.clip_weights"),
    ],
    ids=["segment-models", "select-models"],
)
def test_cli_models_backend_without_weights_exits_2(tmp_path, capsys, args, setting):
    from sssc.cli import train_main

    assert train_main([*args, "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{setting} is empty" in err and "random" in err
    assert not (tmp_path / "run").exists()


# OpenAI's published CLIP checkpoints (the URLs of OpenAI's clip package): Stage 1 projects
# nouns with ViT-B/32, Stage 2 scores with ViT-L/14@336.
_CLIP_B32 = (
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
)
_CLIP_L14_336 = (
    "https://openaipublic.azureedge.net/clip/models/"
    "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt"
)


def test_cli_names_every_missing_file_at_once(tmp_path, capsys, monkeypatch):
    """A real-data run missing everything: one error lists each setting to fill, each with
    where its official file is (CLIP's per model), and nothing is created."""
    nltk = pytest.importorskip("nltk")
    monkeypatch.setattr(nltk.data, "path", [])
    from sssc.cli import train_main

    sets = [
        "segment.backend=models",
        "select.backend=models",
        "segment.models.nouns=spacy",
        "segment.models.spacy_model=sssc_no_such_spacy_model",
        "segment.models.noun_fallback=nltk",
        f"segment.models.nltk_data={tmp_path}",
        f"train.swin_weights={tmp_path / 'swin_base_patch4_window12_384_22k.pth'}",
        "train.bert_weights=",
        "train.random_init=false",
        f"data.root={tmp_path / 'data'}",
    ]
    args = ["--stage", "correct", "--run", str(tmp_path / "run")]
    assert train_main([*args, *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "sssc-train: 8 things are missing before --stage correct can start:"
    items = [x for x in lines[1:] if x.startswith("  - ")]
    assert len(items) == 8
    want = [
        ("segment.models.clip_weights is empty", _CLIP_B32),
        ("segment.models.gdino_weights is empty", "groundingdino_swint_ogc.pth"),
        ("segment.models.sam_weights is empty", "sam_vit_h_4b8939.pth"),
        ("segment.models.spacy_model='sssc_no_such_spacy_model'", "spacy download"),
        ("'punkt_tab'", "nltk.downloader"),
        ("select.models.clip_weights is empty", _CLIP_L14_336),
        ("train.swin_weights", "swin_base_patch4_window12_384_22k.pth does not exist"),
        ("train.bert_weights empty", "bert-base-uncased"),
    ]
    for item, (what, where) in zip(items, want, strict=True):
        assert what in item and where in item, (what, item)
    assert _CLIP_L14_336 not in items[0] and _CLIP_B32 not in items[5]
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_one_missing_file_keeps_one_line(tmp_path, capsys):
    from sssc.cli import train_main

    sets = ["select.backend=models", f"data.root={tmp_path / 'data'}"]
    args = ["--stage", "select", "--run", str(tmp_path / "run")]
    assert train_main([*args, *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sssc-train: select.models.clip_weights is empty")
    assert len(err.strip().splitlines()) == 1 and _CLIP_L14_336 in err


def test_official_detector_rules_run_end_to_end(tmp_path):
    """The official labelling (exact phrases) and retry with a random detector: most boxes name
    no class; they stay in the pool with label "" and no object may take them."""
    ov = _overrides(tmp_path) + [
        "segment.models.gdino_labels=exact",
        "segment.models.gdino_retry=official",
        "segment.models.query=most_likely",
        *synth_sets(4),
    ]
    cfg = load_config(None, ov)
    stages.run_stage("select", cfg, tmp_path / "run")
    s1 = Store(tmp_path / "run" / "segment", kind="S1")
    rules = ["comma", "exact", "official", "cls_token:counted", "sam_box:detector"]
    assert s1.producer["gdino_rules"] == rules
    for i in s1.image_ids():
        rec = s1.get(i)
        for c in rec.candidates:
            assert c.label in ("", *cfg.data.class_names)
            x, y, w, h = c.box  # the box's part in the image, though SAM may have had more
            assert 0 <= x <= x + w <= rec.width and 0 <= y <= y + h <= rec.height
        for o in rec.objects:
            assert all(rec.candidate(e).label in cfg.data.class_names for e in o.eligible)


def test_models_select_on_painted_pools(run, tmp_path):
    """Stage 2 with CLIP reads the pools painted (its loader's workers too): the S2 store names
    and scores the painted candidates, Stage 1 is reused."""
    tmp, cfg, _ = run
    shutil.copytree(tmp / "run" / "segment", tmp_path / "run" / "segment")
    ov = _overrides(tmp) + ["select.candidates=painted", "select.models.num_workers=1"]
    stamp = (tmp_path / "run" / "segment" / "store.json").stat().st_mtime_ns
    stages.run_stage("select", load_config(None, ov), tmp_path / "run")
    assert (tmp_path / "run" / "segment" / "store.json").stat().st_mtime_ns == stamp
    s1 = Store(tmp_path / "run" / "segment", kind="S1", pools="painted")
    s2 = Store(tmp_path / "run" / "select", kind="S2")
    assert s2.producer["segment"] == s1.labels_producer
    changed = 0
    for i in s1.image_ids():
        r1, r2, whole = s1.get(i), s2.get(i), s1.get(i, stored=True)
        for o1, o2 in zip(r1.objects, r2.objects, strict=True):
            assert list(o2.eligible) == list(o1.eligible) and len(o2.scores) == len(o1.eligible)
            if o1.eligible:
                big = [e for e in o1.eligible if r1.candidate(e).area >= cfg.select.models.min_area]
                pool = big or list(o1.eligible)
                assert o2.chosen == max(pool, key=lambda e: o2.scores[o1.eligible.index(e)])
            changed += [r1.candidate(e).rle for e in o1.eligible] != [
                whole.candidate(e).rle for e in whole.object(o1.ann_id).eligible
            ]
    assert changed > 0  # the random detector's boxes overlap: painting cut some


def test_stage_1_reads_images_turned_only_under_exif(tmp_path, monkeypatch, capsys):
    """``segment.models.image_orientation`` (README row 42): with ``stored`` GroundingDINO and
    SAM get the stored pixels of every image; with ``exif`` (official) an image with an EXIF
    orientation tag reaches both as ``cv2.imread`` reads it (the synthetic images are square, so
    every tag keeps the shape); the masks stay at the size ``instances.json`` gives."""
    cv2 = pytest.importorskip("cv2")
    import numpy as np
    from PIL import Image

    from sssc.data.synthetic import ensure_generated
    from sssc.segment import runner

    base = _overrides(tmp_path)
    ensure_generated(load_config(None, base).data)
    refer = Refer.from_config(load_config(None, base).data)
    ids = sorted({i for s in ("train", "val") for i in refer.split_image_ids(s)})  # Stage 1's
    tags = {ids[0]: 6, ids[1]: 3, ids[2]: 2, ids[3]: 8}
    for i, tag in tags.items():
        path = refer.image_path(i)
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        im = Image.fromarray(arr)
        exif = im.getexif()
        exif[0x0112] = tag
        im.save(path, exif=exif)
    current, seen = [None], {}
    call, det = runner.ModelsSegmenter.__call__, runner.GroundingDinoDetector.__call__
    sam = runner.SamSegmenter.__call__

    def on_image(self, image_id):
        current[0] = image_id
        return call(self, image_id)

    def on_detector(self, image, names):
        seen.setdefault(current[0], []).append(("detector", image.copy()))
        return det(self, image, names)

    def on_sam(self, image, boxes):
        seen.setdefault(current[0], []).append(("sam", image.copy()))
        return sam(self, image, boxes)

    monkeypatch.setattr(runner.ModelsSegmenter, "__call__", on_image)
    monkeypatch.setattr(runner.GroundingDinoDetector, "__call__", on_detector)
    monkeypatch.setattr(runner.SamSegmenter, "__call__", on_sam)
    for orientation in ("stored", "exif"):
        seen.clear()
        cfg = load_config(None, [*base, f"segment.models.image_orientation={orientation}"])
        capsys.readouterr()
        stages.run_stage("segment", cfg, tmp_path / f"run-{orientation}")
        line = next(x for x in capsys.readouterr().out.splitlines() if "counts:" in x)
        counts = ast.literal_eval(line.split("counts: ", 1)[1])
        assert set(seen) == set(ids) and all(v[0][0] == "detector" for v in seen.values())
        assert sum(len(v) == 2 for v in seen.values()) > len(ids) // 2  # SAM on the boxes
        for i, inputs in seen.items():
            path = str(refer.image_path(i))
            flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION * (orientation == "stored"))
            want = cv2.imread(path, flags)[..., ::-1]
            for _, image in inputs:
                np.testing.assert_array_equal(image, want)
            if i in tags:  # the test can fail: the tag changes what the models see
                turned = cv2.imread(path)[..., ::-1]
                assert np.array_equal(want, turned) == (orientation == "exif")
        assert counts["exif_orientation_tag"] == len(tags)
        s1 = Store(tmp_path / f"run-{orientation}" / "segment", kind="S1")
        rules = s1.producer["gdino_rules"]
        assert ("orientation:exif" in rules) == (orientation == "exif")
        for i in s1.image_ids():
            rec, info = s1.get(i), refer.images[i]
            assert all(c.decode().shape == (info.height, info.width) for c in rec.candidates)


def test_exif_refuses_images_turned_to_another_shape_before_any_work(tmp_path, monkeypatch):
    """Where a tag would turn an image to another shape (never on the square synthetic images,
    so the scan is replaced here; ``tests/test_image_orientation.py`` checks it on files), the
    stage stops before it writes anything."""
    from sssc.segment import runner

    first = []

    def turned(refer, ids, progress=False):
        first.append(list(ids))
        return [(first[0][0], 6)]

    monkeypatch.setattr(runner, "turned_images", turned)
    ov = _overrides(tmp_path)
    with pytest.raises(stages.StageError, match=r"image_orientation=exif: 1 of \d+ images turn"):
        stages.run_stage("segment", load_config(None, [*ov, "recipe=official"]), tmp_path / "run")
    assert not (tmp_path / "run" / "segment").exists()
    stages.run_stage("segment", load_config(None, ov), tmp_path / "run")  # stored: not scanned
    assert len(first) == 1 and len(first[0]) > 0


def test_blank_expressions_reach_stages_1_and_2_only_under_keep(tmp_path):
    """``data.empty_sentences`` (README row 44): the official Stages 1-2 query and score a ref's
    every ``sent``, a blank one included. With ``keep``, Stage 2 scores such an object's
    candidates against its blank expression too, so its scores differ from ``skip``'s; an
    object without one scores the same either way."""
    import pickle

    from tiny_data import TENTHS

    from sssc.data.synthetic import generate

    folder = generate(tmp_path / "gen", num_images=8, **TENTHS)
    ds = tmp_path / "data" / "refcoco"
    shutil.copytree(folder, ds)
    refs = pickle.loads((ds / "refs(synthetic).p").read_bytes())
    blanked = set()
    for r in refs[::3]:
        r["sentences"][0]["sent"] = ""
        r["sentences"][0]["tokens"] = []
        blanked.add(r["ann_id"])
    (ds / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    base = models_overrides(tmp_path / "models") + [
        f"data.root={tmp_path / 'data'}",
        "data.dataset=refcoco",
        "data.split_by=unc",
        f"data.image_dir={ds / 'images'}",
    ]
    scores = {}
    for mode in ("skip", "keep"):
        cfg = load_config(None, [*base, f"data.empty_sentences={mode}"])
        stages.run_stage("select", cfg, tmp_path / mode)
        s1, s2 = Store(tmp_path / mode / "segment"), Store(tmp_path / mode / "select")
        scores[mode] = {
            o.ann_id: list(o.scores)
            for i in s2.image_ids()
            for o in s2.get(i).objects
            if s1.get(i).object(o.ann_id).eligible
        }
    assert scores["skip"].keys() == scores["keep"].keys()
    same = {a for a in scores["skip"] if scores["skip"][a] == scores["keep"][a]}
    scored = set(scores["skip"])
    assert scored & blanked and scored - blanked
    assert same == scored - blanked


def test_a_reused_stage_needs_none_of_its_model_files(tmp_path, capsys):
    """Stage 1 ran where its models were; they are gone (another machine, say). Stage 2 and
    Stage 3 reuse its complete store, so they start without them; a target stage, or a
    store that is not complete, still asks for every one of them."""
    from sssc.cli import train_main

    ov = _overrides(tmp_path)[: -len(synth_sets(8))] + synth_sets(4)
    cfg = load_config(None, ov)
    run_dir = tmp_path / "run"
    stages.run_stage("segment", cfg, run_dir)
    models = tmp_path / "models"
    (models / "gdino_tiny.py").rename(models / "gdino_tiny.moved")
    (models / "tiny-bert").rename(models / "tiny-bert.moved")
    gone = ("segment.models.gdino_config", "segment.models.gdino_text_encoder")

    args = ["--run", str(run_dir), *[a for s in ov for a in ("--set", s)]]
    assert train_main(["--stage", "select", *args]) == 0
    assert store_complete(run_dir / "select") and "does not exist" not in capsys.readouterr().err
    stages._check_model_weights(cfg, "correct", run_dir)  # both stores are reused

    assert train_main(["--stage", "segment", *args]) == 2  # the target stage runs its models
    err = capsys.readouterr().err
    assert err.startswith("sssc-train: 2 things are missing before --stage segment can start:")
    assert all(g in err for g in gone)
    (run_dir / "segment" / "store.json").unlink()  # no longer complete: Stage 1 would run
    with pytest.raises(stages.StageError, match="2 things are missing") as e:
        stages._check_model_weights(cfg, "correct", run_dir)
    assert all(g in str(e.value) for g in gone)
