"""Runs a researcher can trust: kill -9 anywhere, reruns with changed settings, one writer per run
folder, the NaN stop, and every bad input named (the README's catalogue, "When things go wrong")."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_data import TENTHS, synth_args

from sssc.cli import main, train_main
from sssc.config import config_to_dict, load_config
from sssc.correct import train as train_mod
from sssc.correct.train import TrainError, train_phase
from sssc.data.refer import DatasetError, Refer
from sssc.rundir import RunDirError, RunLock, config_diff

KILLER = Path(__file__).with_name("killer.py")
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sets(data: Path, **extra) -> list[str]:
    """A tiny run: 24 images, lavt-tiny at 32 px with its dropout and drop path ON."""
    sets = {
        "data.root": str(data),
        "data.synth.num_images": 24,
        "data.synth.val_images": 0,
        "data.synth.test_images": 0,
        "data.batch_expressions": 12,
        "train.image_size": 32,
        "train.bootstrap_epochs": 2,
        "train.correct_epochs": 2,
        "train.plus_epochs": "false",
        "train.sentences_per_object": 0,
        "train.checkpoint_every": 2,
        "train.eval_every": 1,
        "train.threads": 1,
        "train.bootstrap_threads": 1,
        "train.lr": "1e-3",
        "train.bert_dropout": "true",
    } | extra
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


# ------------------------------------------------------------------------ kill -9 at any moment


def _killer(spec: str, args: list[str], cwd: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run(
        [sys.executable, str(KILLER), spec, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if spec == "none" or p.returncode not in (-9, 0):
        assert p.returncode == 0, p.stderr[-3000:]
    return p.returncode


def _tensors_equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _tensors_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# Each step of the chain is one process killed at that point; the next resumes from what the
# previous left. Together: the dataset generator, Stage 1 between shards and in its evaluation,
# Stage 2 between shards and in its evaluation, bootstrap after a mid-epoch checkpoint, inside a
# checkpoint write (the temporary file written, not yet renamed), in an epoch's evaluation,
# correct in its matching, and between correct's metrics.json and its last checkpoint.
KILLS = [
    "sssc.data.synthetic:_draw_image:7",
    "sssc.store.store:_write_shard:2",
    "sssc.stages:evaluate_stage:1:before",
    "sssc.store.store:_write_shard:1",
    "sssc.stages:evaluate_stage:1:before",
    "sssc.correct.train:append_log:3",
    "torch:save:2",
    "sssc.correct.evaluate:evaluate_model:2:before",
    "sssc.correct.train:match_targets:3",
    "sssc.correct.train:atomic_write_text:1",
]


def test_kill_9_anywhere_then_rerun_equals_an_uninterrupted_run(tmp_path):
    ref, chain = tmp_path / "ref", tmp_path / "chain"
    ref.mkdir(), chain.mkdir()
    args = ["--stage", "correct", "--run", "run", *_sets(Path("data"))]
    _killer("none", args, ref)
    codes = [_killer(spec, args, chain) for spec in KILLS]
    assert codes == [-9] * len(KILLS)  # every point was reached, and killed there
    _killer("none", args, chain)  # the last rerun finishes

    a, b = ref / "run", chain / "run"
    for stage in ("segment", "select"):  # the stores, byte for byte
        for f in sorted((a / stage).rglob("*")):
            if f.is_file() and f.name not in ("log.txt", "config.yaml"):
                assert f.read_bytes() == (b / stage / f.relative_to(a / stage)).read_bytes(), f
        assert json.loads((b / stage / "metrics.json").read_text())  # S1 oracle kept (kill 3)
    for phase in ("bootstrap", "correct"):
        ma = json.loads((a / phase / "metrics.json").read_text())
        mb = json.loads((b / phase / "metrics.json").read_text())
        assert ma == mb
        ca = torch.load(a / phase / "checkpoint.pt", weights_only=True)
        cb = torch.load(b / phase / "checkpoint.pt", weights_only=True)
        for key in ("model", "optimizer", "scheduler", "epoch", "step", "global_step", "counts"):
            _tensors_equal(ca[key], cb[key], f"{phase}.{key}")
        la = [json.loads(x) for x in (a / phase / "log.jsonl").read_text().splitlines()]
        lb = [json.loads(x) for x in (b / phase / "log.jsonl").read_text().splitlines()]
        assert [r.get("loss", r.get("eval")) for r in la] == [
            r.get("loss", r.get("eval")) for r in lb
        ]
    assert (b / "data").exists() is False and sorted(
        p.name for p in (chain / "data").iterdir()
    ) == ["synthetic"]  # the killed generator's temporary folder was swept


# ----------------------------------------------------------------- reruns with other settings


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished tiny bootstrap run (Stages 1-2 and ZSBootstrap), copied by each test."""
    d = tmp_path_factory.mktemp("trust")
    sets = _sets(d / "data")
    assert train_main(["--stage", "bootstrap", "--run", str(d / "run"), *sets]) == 0
    return d, sets


def _copy(done_run, tmp_path):
    import shutil

    d, sets = done_run
    shutil.copytree(d / "run", tmp_path / "run")
    return tmp_path / "run", sets


@pytest.mark.parametrize(
    "change, named",
    [
        (["train.bootstrap_epochs=5"], ["train.bootstrap_epochs: 2 there, 5 now"]),
        (
            ["train.lr=0.01", "train.class_weights=[1,1]"],
            [
                "train.lr: 0.001 there, 0.01 now",
                "train.class_weights: [0.5, 1.5] there, [1.0, 1.0] now",
            ],
        ),
        (["select.simulate.p_correct=0.9"], ["select.simulate.p_correct: 0.6 there, 0.9 now"]),
        (
            ["data.batching=samples", "data.samples_gpus=2", "train.lr_horizon=loads"],
            [
                'data.batching: "images" there, "samples" now',
                "data.samples_gpus: 4 there, 2 now",  # inert there, not here: compared
                'train.lr_horizon: "steps" there, "loads" now',
            ],
        ),
    ],
)
def test_a_rerun_with_other_settings_is_refused_naming_the_keys(
    done_run, tmp_path, capsys, change, named
):
    run, sets = _copy(done_run, tmp_path)
    before = (run / "bootstrap" / "metrics.json").read_bytes()
    capsys.readouterr()
    extra = [x for c in change for x in ("--set", c)]
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets, *extra]) == 2
    cap = capsys.readouterr()
    for n in named:
        assert n in cap.err
    assert "--no-resume" in cap.err and "mIoU" not in cap.out  # no old table printed as new
    assert (run / "bootstrap" / "metrics.json").read_bytes() == before


def test_training_data_settings_do_not_redo_stages_1_2(done_run, tmp_path, capsys):
    """How Stage 3 batches its samples does not define the S1 and S2 stores."""
    run, sets = _copy(done_run, tmp_path)
    before = [(run / s / "store.json").read_bytes() for s in ("segment", "select")]
    change = ["data.batching=samples", "data.samples_gpus=2", "data.samples_images_per_load=3"]
    change += ["data.samples_order=official", "data.samples_draw=official"]
    change += ["data.samples_skip_first=false", "data.samples_workers=4"]
    extra = [x for c in change for x in ("--set", c)]
    assert train_main(["--stage", "select", "--run", str(run), *sets, *extra]) == 0
    assert "other settings" not in capsys.readouterr().err
    assert [(run / s / "store.json").read_bytes() for s in ("segment", "select")] == before


def test_settings_without_effect_do_not_refuse_a_resume(done_run, tmp_path, capsys):
    """Keys that cannot change this run's outputs (the samples packer's under images batching, the
    models backends' under simulated ones) are not compared: the phase is reused, not redone."""
    run, sets = _copy(done_run, tmp_path)
    stamp = (run / "bootstrap" / "checkpoint.pt").stat().st_mtime_ns
    change = [
        "data.samples_gpus=2",
        "data.samples_images_per_load=3",
        "data.samples_order=official",
        "data.samples_skip_first=false",
        "data.samples_draw=official",
        "data.samples_workers=4",
        "segment.models.box_threshold=0.5",
        "select.models.sigma=10",
    ]
    extra = [x for c in change for x in ("--set", c)]
    capsys.readouterr()
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets, *extra]) == 0
    assert "other settings" not in capsys.readouterr().err
    assert (run / "bootstrap" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_a_config_stored_before_a_key_existed(done_run, tmp_path, capsys):
    """A phase whose stored config predates ``train.lr_horizon`` and the samples packer's keys
    (an sssc before 2026-12-06) resumes under the behaviour it had: ``steps``, images batching."""
    run, sets = _copy(done_run, tmp_path)
    path = run / "bootstrap" / "config.yaml"
    stored = yaml.safe_load(path.read_text())
    del stored["train"]["lr_horizon"]
    del stored["data"]["samples_gpus"], stored["data"]["samples_images_per_load"]
    for key in ("samples_order", "samples_skip_first", "samples_draw", "samples_workers"):
        del stored["data"][key]
    path.write_text(yaml.safe_dump(stored, sort_keys=False))
    stamp = (run / "bootstrap" / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    for change, named in [
        ("train.lr_horizon=loads", 'train.lr_horizon: "steps" there, "loads" now'),
        ("data.batching=samples", "data.samples_gpus: (absent) there, 4 now"),
    ]:
        assert train_main(["--stage", "bootstrap", "--run", str(run), *sets, "--set", change]) == 2
        assert named in capsys.readouterr().err
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets]) == 0
    assert (run / "bootstrap" / "checkpoint.pt").stat().st_mtime_ns == stamp
    stored = yaml.safe_load(path.read_text())  # written again, whole, by the resumed run
    assert stored["train"]["lr_horizon"] == "steps" and stored["data"]["samples_gpus"] == 4


@pytest.mark.parametrize("batching, named", [("images", []), ("samples", ["data.samples_order"])])
def test_samples_order_counts_only_under_samples_batching(batching, named):
    """So do the skipped first load and the draw; the workers count only under the official
    draw (below)."""
    a, b = (
        config_to_dict(load_config(None, [f"data.batching={batching}", f"data.samples_order={o}"]))
        for o in ("sssc", "official")
    )
    assert [k for k, _, _ in config_diff(a, b, "bootstrap")] == named
    del a["data"]["samples_order"]  # a phase stored before the key existed: sssc's order
    assert [k for k, _, _ in config_diff(a, b, "bootstrap")] == named
    default = config_to_dict(load_config(None, [f"data.batching={batching}"]))
    assert not config_diff(a, default, "bootstrap")


@pytest.mark.parametrize(
    "weights, named",
    [
        ((0, 0), []),  # no IoU loss in either: the phases it would be added in do not count
        ((3, 3), ["train.iou_loss_phases"]),
        ((0, 3), ["train.iou_loss_phases", "train.iou_loss_weight"]),
    ],
)
def test_iou_loss_phases_count_only_beside_an_iou_loss(weights, named):
    a, b = (
        config_to_dict(
            load_config(None, [f"train.iou_loss_weight={w}", f"train.iou_loss_phases={p}"])
        )
        for w, p in zip(weights, ("[bootstrap]", "[correct]"), strict=True)
    )
    assert [k for k, _, _ in config_diff(a, b, "bootstrap")] == named


def test_no_resume_redoes_the_stage_and_equals_a_fresh_run(done_run, tmp_path):
    run, sets = _copy(done_run, tmp_path)
    new = ["--set", "train.bootstrap_epochs=1"]
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets, *new, "--no-resume"]) == 0
    fresh = tmp_path / "fresh"
    assert train_main(["--stage", "bootstrap", "--run", str(fresh), *sets, *new]) == 0
    a = json.loads((run / "bootstrap" / "metrics.json").read_text())
    b = json.loads((fresh / "bootstrap" / "metrics.json").read_text())
    assert a == b and a["epochs"] == 1
    ckpt = torch.load(run / "bootstrap" / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["train"]["bootstrap_epochs"] == 1
    stored = load_config(run / "bootstrap" / "config.yaml", [])
    assert stored.train.bootstrap_epochs == 1
    # The same settings again: reused, not redone.
    stamp = (run / "bootstrap" / "checkpoint.pt").stat().st_mtime_ns
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets, *new]) == 0
    assert (run / "bootstrap" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_operational_settings_do_not_count(done_run, tmp_path):
    run, sets = _copy(done_run, tmp_path)
    ops = ["--set", "train.threads=2", "--set", "train.log_every=3", "--set", "device=cpu"]
    ops += ["--set", "train.bootstrap_threads=2"]
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets, *ops]) == 0


def test_every_stage_writes_its_config(done_run):
    d, _ = done_run
    for stage in ("segment", "select", "bootstrap"):
        cfg = load_config(d / "run" / stage / "config.yaml", [])
        assert cfg.data.synth.num_images == 24 and Path(cfg.data.root).is_absolute()


def test_stage1_metrics_lost_to_a_kill_are_evaluated_again(done_run, tmp_path, capsys):
    run, sets = _copy(done_run, tmp_path)
    (run / "segment" / "metrics.json").unlink()
    capsys.readouterr()
    assert train_main(["--stage", "select", "--run", str(run), *sets]) == 0
    out = capsys.readouterr().out
    assert (run / "segment" / "metrics.json").exists() and "S1 oracle (simulated)" in out


def test_an_empty_metrics_json_is_evaluated_again(done_run, tmp_path):
    run, sets = _copy(done_run, tmp_path)
    want = json.loads((run / "bootstrap" / "metrics.json").read_text())
    (run / "bootstrap" / "metrics.json").write_text("")
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets]) == 0
    assert json.loads((run / "bootstrap" / "metrics.json").read_text()) == want


# -------------------------------------------------------------------------------- one writer


def test_a_second_run_into_a_busy_folder_is_refused(done_run, tmp_path, capsys):
    run, sets = _copy(done_run, tmp_path)
    with RunLock(run):
        assert train_main(["--stage", "bootstrap", "--run", str(run), *sets]) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "in use by another sssc run" in err
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets]) == 0


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    code = (
        "import os, signal, sys; from sssc.rundir import RunLock; "
        f"l = RunLock({str(tmp_path)!r}).__enter__(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert p.returncode == -9
    held = json.loads((tmp_path / ".sssc.lock").read_text())
    msgs = []
    with RunLock(tmp_path, log=msgs.append):
        pass
    assert msgs and f"left by pid {held['pid']} (no longer running)" in msgs[0]


def test_run_pointing_at_a_file_is_named(tmp_path, capsys):
    f = tmp_path / "run.txt"
    f.write_text("x")
    assert train_main(["--stage", "segment", "--run", str(f), *_sets(tmp_path / "data")]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the NaN stop


def _diverging_optimizer(at_step: int):
    """build_optimizer whose ``at_step``-th step makes the weights huge (a diverging update)."""
    real = train_mod.build_optimizer

    def build(model, t):
        opt = real(model, t)
        n = [0]

        def diverge(optimizer, args, kwargs):
            n[0] += 1
            if n[0] == at_step:
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(1e30)

        opt.register_step_post_hook(diverge)
        return opt

    return build


def test_nan_stop_keeps_the_checkpoint_from_before_the_divergence(done_run, tmp_path, monkeypatch):
    run, sets = _copy(done_run, tmp_path)
    cfg = load_config(None, [s for s in sets if s != "--set"] + ["train.checkpoint_every=1"])
    import shutil

    shutil.rmtree(run / "bootstrap")
    monkeypatch.setattr(train_mod, "build_optimizer", _diverging_optimizer(3))
    with pytest.raises(TrainError, match="loss is nan at epoch 1, step 3") as e:
        train_phase("bootstrap", cfg, run)
    # Step 3's update diverged and step 3's checkpoint holds it; the one of step 2 is kept.
    assert "epoch 1, step 2" in str(e.value) and "train.lr=0.0001" in str(e.value)
    ckpt = torch.load(run / "bootstrap" / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(v.abs().max() < 1e6 for v in ckpt["model"].values() if v.is_floating_point())
    assert (run / "bootstrap" / "checkpoint.diverged.pt").exists()
    monkeypatch.undo()
    # Resume with a lower lr: allowed after the stop, and it runs to the end.
    lower = load_config(None, [s for s in sets if s != "--set"] + ["train.lr=1e-4"])
    m = train_phase("bootstrap", lower, run)
    assert np.isfinite(m["mIoU"])
    log = [json.loads(x) for x in (run / "bootstrap" / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log if "lr" in r]
    assert lrs[1] > 5e-4 and lrs[2] < 1.1e-4  # step 3 on is at the new lr
    assert not (run / "bootstrap" / "stopped.json").exists()
    # A later rerun with yet another lr is refused again: the stop was resumed from.
    again = load_config(None, [s for s in sets if s != "--set"] + ["train.lr=1e-5"])
    with pytest.raises(TrainError, match="train.lr"):
        train_phase("bootstrap", again, run)


def test_the_new_lr_survives_a_second_resume_before_any_checkpoint(done_run, tmp_path, monkeypatch):
    """After the NaN stop, a resume with a lower lr is stopped before it writes a checkpoint;
    the rerun (same lower lr, so config.yaml already agrees) must still run at the lower lr,
    not at the one the kept checkpoint's optimizer holds."""
    run, sets = _copy(done_run, tmp_path)
    plain = [s for s in sets if s != "--set"]
    import shutil

    shutil.rmtree(run / "bootstrap")
    monkeypatch.setattr(train_mod, "build_optimizer", _diverging_optimizer(3))
    with pytest.raises(TrainError, match="loss is nan"):
        train_phase("bootstrap", load_config(None, [*plain, "train.checkpoint_every=1"]), run)
    monkeypatch.undo()
    lower = load_config(None, [*plain, "train.lr=1e-4", "train.checkpoint_every=0"])

    def stop(gstep):
        raise KeyboardInterrupt  # as a Ctrl-C after the first resumed step

    with pytest.raises(KeyboardInterrupt):
        train_phase("bootstrap", lower, run, on_step=stop)
    assert torch.load(run / "bootstrap" / "checkpoint.pt", weights_only=True)["global_step"] == 2
    train_phase("bootstrap", lower, run)
    log = [json.loads(x) for x in (run / "bootstrap" / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log if "lr" in r]
    assert lrs[1] > 5e-4 and max(lrs[2:]) < 1.1e-4


def test_nan_stop_before_any_checkpoint_says_so(done_run, tmp_path, monkeypatch):
    run, sets = _copy(done_run, tmp_path)
    import shutil

    shutil.rmtree(run / "bootstrap")
    cfg = load_config(None, [s for s in sets if s != "--set"] + ["train.checkpoint_every=0"])
    monkeypatch.setattr(train_mod, "build_optimizer", _diverging_optimizer(1))
    with pytest.raises(TrainError, match="No checkpoint from before the divergence"):
        train_phase("bootstrap", cfg, run)
    assert not (run / "bootstrap" / "checkpoint.pt").exists()


# ---------------------------------------------------------------------------- files damaged


def test_a_damaged_checkpoint_is_named_on_resume_and_on_predict(done_run, tmp_path, capsys):
    run, sets = _copy(done_run, tmp_path)
    path = run / "bootstrap" / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    capsys.readouterr()
    argv = ["predict", "--checkpoint", str(path), "--image", str(img), "--text", "the red circle"]
    assert main([*argv, "--out", str(tmp_path / "o.png")]) == 2
    assert "checkpoint.pt: damaged checkpoint" in capsys.readouterr().err
    (run / "bootstrap" / "metrics.json").unlink()  # so that the rerun must read the checkpoint
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt: damaged checkpoint" in err and "--no-resume" in err


def test_a_corrupt_log_line_is_named_and_a_torn_last_line_dropped(done_run, tmp_path, capsys):
    from sssc.correct.trainutil import read_log

    run, _ = _copy(done_run, tmp_path)
    log = run / "bootstrap" / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + '\n{"phase": "boot')  # a kill mid-write
    assert len(read_log(log)) == len(lines)
    log.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"log.jsonl, line 2: not a log record"):
        read_log(log)


def test_store_manifest_without_a_key_is_named(done_run, tmp_path, capsys):
    run, sets = _copy(done_run, tmp_path)
    m = json.loads((run / "select" / "store.json").read_text())
    del m["producer"]
    (run / "select" / "store.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--stage", "select"]) == 2
    assert "store.json: store manifest without producer" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bad data


def _tiny_dataset(tmp_path, edit=None):
    from sssc.data.synthetic import generate

    folder = generate(tmp_path, num_images=6, **TENTHS)
    if edit is not None:
        refs = pickle.loads((folder / "refs(synthetic).p").read_bytes())
        coco = json.loads((folder / "instances.json").read_text())
        edit(refs, coco)
        (folder / "refs(synthetic).p").write_bytes(pickle.dumps(refs, protocol=2))
        (folder / "instances.json").write_text(json.dumps(coco))
    return folder


def _open(tmp_path):
    return Refer(tmp_path, "synthetic", "synthetic", tmp_path / "synthetic" / "images")


def test_empty_and_none_sentences_are_skipped_and_counted(tmp_path):
    def edit(refs, coco):
        refs[0]["sentences"][0]["sent"] = refs[0]["sentences"][0]["raw"] = ""
        refs[1]["sentences"][0]["sent"] = None
        refs[1]["sentences"][0]["raw"] = None

    _tiny_dataset(tmp_path, edit)
    refer = _open(tmp_path)
    assert refer.warnings["empty_sentence"] == 2 and refer.skipped("empty_sentence")
    texts = [s.raw for r in refer.refs.values() for s in r.sentences]
    assert "" not in texts and "None" not in texts


def test_empty_sentences_keep_tokenizes_them_as_the_official_datasets_do(tmp_path):
    """``data.empty_sentences: keep`` (``recipe: official``, README row 44): the official
    datasets tokenize every ``sent`` string, a blank one as ``[CLS] [SEP]``, and score it; a
    ``None`` fails their tokenizer, so it stays skipped (counted apart)."""
    from sssc.correct.data import ImageSet
    from sssc.correct.tokenizer import SPECIAL_TOKENS, build_tokenizer

    def edit(refs, coco):
        refs[0]["sentences"][0]["sent"] = refs[0]["sentences"][0]["raw"] = ""
        refs[0]["sentences"][0]["tokens"] = []
        refs[0]["sentences"][1]["sent"] = "  "
        refs[1]["sentences"][0]["sent"] = None
        refs[1]["sentences"][0]["raw"] = None

    folder = _tiny_dataset(tmp_path, edit)
    refs = pickle.loads((folder / "refs(synthetic).p").read_bytes())
    keep = Refer(tmp_path, "synthetic", "synthetic", folder / "images", empty_sentences="keep")
    assert keep.warnings["empty_sentence"] == 2 and keep.warnings["missing_sentence"] == 1
    assert not keep.skipped("empty_sentence") and keep.skipped("missing_sentence")
    kept = {s.sent_id: s for r in keep.refs.values() for s in r.sentences}
    blank = [refs[0]["sentences"][k]["sent_id"] for k in (0, 1)]
    assert [kept[i].sent for i in blank] == ["", "  "] and kept[blank[0]].tokens == ()
    assert refs[1]["sentences"][0]["sent_id"] not in kept
    skip = _open(tmp_path)
    assert not set(blank) & {s.sent_id for r in skip.refs.values() for s in r.sentences}
    tok = build_tokenizer("lavt-tiny", vocab_words=["circle"])
    image_id = keep.refs[refs[0]["ref_id"]].image_id
    split = keep.refs[refs[0]["ref_id"]].split
    item = ImageSet(keep, split, 16)[image_id]
    texts = [item["sents"][item["sent_ids"].index(i)] for i in blank]
    assert texts == ["", "  "]
    ids, mask = tok(texts)
    cls, sep = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")
    assert ids[:, :2].tolist() == [[cls, sep]] * 2 and mask.sum(1).tolist() == [2, 2]
    with pytest.raises(ValueError, match="empty_sentences"):
        Refer(tmp_path, "synthetic", "synthetic", folder / "images", empty_sentences="drop")


def test_a_duplicate_sent_id_is_an_error(tmp_path):
    def edit(refs, coco):
        refs[1]["sentences"][0]["sent_id"] = refs[0]["sentences"][0]["sent_id"]

    _tiny_dataset(tmp_path, edit)
    with pytest.raises(DatasetError, match=r"sent_id \d+ is also in ref 0"):
        _open(tmp_path)


@pytest.mark.parametrize("bad", ["seven", "7", 7.5, None])
def test_a_non_integer_annotation_id_is_named(tmp_path, bad):
    def edit(refs, coco):
        coco["annotations"][0]["id"] = bad

    _tiny_dataset(tmp_path, edit)
    with pytest.raises(DatasetError, match=r"annotations\[0\]: id .* is not an integer"):
        _open(tmp_path)


def test_a_16_bit_png_is_refused_not_read_as_white(tmp_path):
    from PIL import Image

    folder = _tiny_dataset(tmp_path)
    path = sorted((folder / "images").glob("*.png"))[0]
    gray = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(path)
    assert Image.open(path).mode == "I;16"
    assert np.asarray(Image.open(path).convert("RGB")).min() == 255  # what PIL alone gives
    with pytest.raises(DatasetError, match=r"I;16 image \(16-bit\)"):
        _open(tmp_path).load_image(1)


def test_data_check_decodes_every_image_and_checks_png_crcs(tmp_path, capsys):
    from PIL import Image

    folder = _tiny_dataset(tmp_path)
    path = sorted((folder / "images").glob("*.png"))[0]
    data = bytearray(path.read_bytes())
    good = bytes(data)
    # Find a flip inside the compressed data that PIL decodes without an error (into garbage).
    idat = bytes(data).find(b"IDAT")
    import io

    silent = None
    for off in range(idat + 4, len(data) - 16):
        c = bytearray(good)
        c[off] ^= 0x01
        try:
            with Image.open(io.BytesIO(bytes(c))) as im:
                im.load()
            silent = c
            break
        except Exception:
            continue
    assert silent is not None
    path.write_bytes(bytes(silent))
    args = ["data", "check", "--root", str(tmp_path), "--dataset", "synthetic"]
    args += ["--split-by", "synthetic"]
    capsys.readouterr()
    assert main(args) == 2
    assert "fails its CRC-32 check" in capsys.readouterr().err
    assert main([*args, "--headers-only"]) == 0  # the header alone cannot see it
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert main(args) == 2
    assert "truncated PNG" in capsys.readouterr().err


def test_a_nan_in_a_prediction_is_an_error_not_a_zero(tmp_path):
    from sssc.eval.metrics import evaluate_masks

    _tiny_dataset(tmp_path)
    refer = _open(tmp_path)

    def predict(sent_id):
        ref = next(r for r in refer.refs.values() for s in r.sentences if s.sent_id == sent_id)
        p = refer.gt_mask(ref.ann_id).astype(np.float32)
        p[0, 0] = np.nan
        return p

    split = refer.splits()[0]
    with pytest.raises(ValueError, match=r"sent_id \d+ .* non-finite"):
        evaluate_masks(refer, split, predict)


# -------------------------------------------------------------------------- launch and paths


def test_torchrun_passes_run_dir_through(tmp_path):
    from torch.distributed.run import get_args_parser

    from sssc.cli import _train_parser

    script = ["x.py", "--stage", "correct", "--run-dir", "runs/ddp", "--set", "a=b", "--no-resume"]
    got = get_args_parser().parse_args(["--nproc-per-node", "2", *script])
    args = _train_parser().parse_args(got.training_script_args)
    assert (args.stage, args.run, args.set, args.resume) == ("correct", "runs/ddp", ["a=b"], False)
    with pytest.raises(SystemExit):  # the bare --run is torchrun's --run-path abbreviation
        get_args_parser().parse_args(["--nproc-per-node", "2", "x.py", "--run", "r"])


def test_data_root_elsewhere_works_and_viz_never_writes_data(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    run = tmp_path / "run"
    sets = ["--set", f"data.root={elsewhere}", *synth_args(12)]
    assert train_main(["--stage", "select", "--run", str(run), *sets]) == 0
    other = tmp_path / "cwd"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["viz", "--run", str(run), "--first", "1", "--out", str(tmp_path / "v")]) == 0
    assert list(other.iterdir()) == []  # no ./data generated
    assert main(["eval", "--run", str(run), "--stage", "select"]) == 0
    assert list(other.iterdir()) == []


def test_random_init_must_be_asked_for(tmp_path, capsys):
    args = ["--stage", "bootstrap", "--run", str(tmp_path / "run"), *_sets(tmp_path / "data")]
    assert train_main([*args, "--set", "train.random_init=false"]) == 2
    err = capsys.readouterr().err
    # The embedded default ships its Swin (sssc:lavt-tiny-shapes); its BERT is the random one.
    assert "train.bert_weights empty" in err and "random_init" in err
    assert "swin_weights" not in err.split("empty")[0]
    assert not (tmp_path / "run").exists()  # refused before Stages 1-2 started


def test_reading_a_run_does_not_need_its_lock(done_run, tmp_path):
    run, _ = _copy(done_run, tmp_path)
    with RunLock(run):
        assert main(["eval", "--run", str(run), "--stage", "select"]) == 0
    with pytest.raises(RunDirError):
        with RunLock(run), RunLock(run):
            pass


def test_a_malicious_checkpoint_is_refused_on_resume(done_run, tmp_path, capsys):
    import zipfile

    run, sets = _copy(done_run, tmp_path)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = run / "bootstrap" / "checkpoint.pt"
    torch.save({"phase": "bootstrap", "model": {}, "x": Evil()}, path)
    assert zipfile.is_zipfile(path)
    (run / "bootstrap" / "metrics.json").unlink()
    capsys.readouterr()
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "system" in err and "weights_only=False" not in err
    assert not marker.exists()


# ------------------------------------------------------------- train.parallel_phases


def _zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_parallel_phases_equal_sequential_and_die_with_a_killed_parent(tmp_path):
    """+epochs beside correct: the same models as one after the other; a kill -9 of the parent
    takes the child with it, and the rerun resumes both phases to the same end."""
    seq, par, chain = tmp_path / "seq", tmp_path / "par", tmp_path / "chain"
    for d in (seq, par, chain):
        d.mkdir()
    args = ["--stage", "correct", "--run", "run"]
    on = _sets(Path("data"), **{"train.plus_epochs": "true", "train.correct_epochs": 3})
    _killer("none", [*args, *on, "--set", "train.parallel_phases=false"], seq)
    _killer("none", [*args, *on, "--set", "train.parallel_phases=true"], par)
    assert (par / "run" / "plus_epochs" / "console.log").read_text().count("plus_epochs epoch") == 3
    assert not (seq / "run" / "plus_epochs" / "console.log").exists()
    for phase in ("correct", "plus_epochs"):
        a = torch.load(seq / "run" / phase / "checkpoint.pt", weights_only=True)
        b = torch.load(par / "run" / phase / "checkpoint.pt", weights_only=True)
        for key in ("model", "optimizer", "global_step"):
            _tensors_equal(a[key], b[key], f"{phase}.{key}")
        ma = json.loads((seq / "run" / phase / "metrics.json").read_text())
        assert ma == json.loads((par / "run" / phase / "metrics.json").read_text())

    # Kill the parent in correct's second matching step, while +epochs trains beside it.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    spec = "sssc.correct.train:match_targets:4"
    p = subprocess.run(
        [sys.executable, str(KILLER), spec, *args, *on, "--set", "train.parallel_phases=true"],
        cwd=chain,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == -9, p.stderr[-3000:]
    child = int(p.stdout.split("training beside correct in process ")[1].split(";")[0])
    deadline = time.monotonic() + 20
    while not _zombie_or_gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _zombie_or_gone(child), f"the +epochs process {child} outlived its killed parent"
    # ... and it died then: an orphan would have trained on to the end and written its metrics.
    assert not (chain / "run" / "plus_epochs" / "metrics.json").exists()
    _killer("none", [*args, *on, "--set", "train.parallel_phases=true"], chain)
    for phase in ("correct", "plus_epochs"):
        a = torch.load(seq / "run" / phase / "checkpoint.pt", weights_only=True)
        b = torch.load(chain / "run" / phase / "checkpoint.pt", weights_only=True)
        _tensors_equal(a["model"], b["model"], f"{phase}.model")


def test_a_full_disk_while_checkpointing_is_named_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch
):
    from sssc.correct.trainutil import CheckpointWriteError, load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.arange(4.0)}})
    real_save = torch.save

    def full_disk(obj, f):  # half a file, then the error torch gives on a full disk
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise RuntimeError("[enforce fail at inline_container.cc] basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(4)}}, keep_previous=True)
    msg = str(e.value)
    assert str(path) in msg and "MiB free" in msg and "previous checkpoint.pt is intact" in msg
    assert "iostream error" in msg and "run the same command again" in msg
    monkeypatch.setattr(torch, "save", real_save)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporaries left


def test_a_full_disk_in_training_exits_2_with_the_message(done_run, tmp_path, monkeypatch, capsys):
    import shutil

    run, sets = _copy(done_run, tmp_path)
    shutil.rmtree(run / "bootstrap")
    real_save, calls = torch.save, []

    def second_save_fails(obj, f):
        calls.append(f)
        if len(calls) == 2:
            raise RuntimeError("basic_ios::clear: iostream error")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", second_save_fails)
    capsys.readouterr()
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets]) == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "checkpoint.pt" in err and "MiB free" in err
    assert "run the same command again" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert train_main(["--stage", "bootstrap", "--run", str(run), *sets]) == 0  # resumes


def test_samples_workers_count_only_under_the_official_draw():
    def diff(*sets):
        a, b = (
            config_to_dict(
                load_config(None, ["data.batching=samples", *x, f"data.samples_workers={w}"])
            )
            for x, w in ((sets, 8), (sets, 4))
        )
        return [k for k, _, _ in config_diff(a, b, "bootstrap")]

    assert diff() == []
    assert diff("data.samples_draw=official") == ["data.samples_workers"]
    a = config_to_dict(load_config(None, ["data.batching=samples"]))
    for key in ("samples_skip_first", "samples_draw"):
        del a["data"][key]  # stored before the keys existed: the first load was trained on
    b = config_to_dict(load_config(None, ["data.batching=samples"]))
    assert [k for k, _, _ in config_diff(a, b, "bootstrap")] == ["data.samples_skip_first"]


@pytest.mark.parametrize("backend, named", [("simulated", []), ("models", ["composite"])])
def test_stage_2_stored_before_the_composite_key_scored_the_fast_prompts(backend, named):
    """A Stage 2 stored before ``select.models.composite`` existed ran the fast prompts: under
    the models backend it differs from today's exact default; under the simulated one it is
    inert."""
    new = config_to_dict(load_config(None, [f"select.backend={backend}"]))
    old = json.loads(json.dumps(new))
    del old["select"]["models"]["composite"]
    diff = config_diff(old, new, "select")
    assert [k.rpartition(".")[2] for k, _, _ in diff] == named
    if named:
        assert diff[0][1:] == ("fast", "exact")
    same = json.loads(json.dumps(new))
    same["select"]["models"]["composite"] = "fast"
    assert [k for k, _, _ in config_diff(old, same, "select")] == []


@pytest.mark.parametrize(
    "backend, nouns, named",
    [
        ("simulated", "spacy", []),
        ("models", "spacy", ["gdino_cls_token", "noun_fallback", "sam_box"]),
        ("models", "rules", ["gdino_cls_token", "sam_box"]),
    ],
)
def test_stage_1_stored_before_the_detector_keys_dropped_cls_and_clamped(backend, nouns, named):
    """A Stage 1 stored before ``segment.models.gdino_cls_token``, ``sam_box`` and
    ``noun_fallback`` existed read phrases without [CLS], prompted SAM with clamped boxes and
    asked no NLTK chunker: under the models backend that differs from today's official defaults
    (the fallback only where spaCy finds the nouns), and with the old values set it resumes; its
    producer then names the detector rules and the nouns as it did."""
    from sssc.segment.runner import segment_producer

    args = [f"segment.backend={backend}", f"segment.models.nouns={nouns}"]
    new = config_to_dict(load_config(None, args))
    old = json.loads(json.dumps(new))
    # sam_calls (per_image), image_grouping (image) and image_orientation (stored): today's
    # defaults, what sssc always did
    for key in (
        "gdino_cls_token",
        "sam_box",
        "sam_calls",
        "image_grouping",
        "image_orientation",
        "noun_fallback",
        "nltk_data",
    ):
        del old["segment"]["models"][key]
    diff = config_diff(old, new, "segment")
    assert sorted(k.rpartition(".")[2] for k, _, _ in diff) == named
    assert {k.rpartition(".")[2]: (a, b) for k, a, b in diff} == {
        k: v
        for k, v in {
            "gdino_cls_token": ("ignored", "counted"),
            "sam_box": ("clamped", "detector"),
            "noun_fallback": ("none", "nltk"),
        }.items()
        if k in named
    }
    before = [
        "segment.models.gdino_cls_token=ignored",
        "segment.models.sam_box=clamped",
        "segment.models.noun_fallback=none",
    ]
    same = config_to_dict(load_config(None, [*args, *before]))
    assert config_diff(old, same, "segment") == []
    turned = config_to_dict(
        load_config(None, [*args, *before, "segment.models.image_orientation=exif"])
    )
    assert [(k, a, b) for k, a, b in config_diff(old, turned, "segment")] == (
        [("segment.models.image_orientation", "stored", "exif")] if backend == "models" else []
    )
    m = load_config(None, before).segment.models
    producer = segment_producer(m, ["circle"], {})
    assert producer["gdino_rules"] == ["comma", "exact", "official"]
    assert producer["nouns"] == "spacy:en_core_web_md:official"
    m = load_config(None, ["segment.models.nltk_data=/x"]).segment.models
    assert segment_producer(m, ["circle"], {})["nouns"] == "spacy:en_core_web_md:official:nltk"
    m = load_config(None, [*before, "segment.models.image_orientation=exif"]).segment.models
    rules = ["comma", "exact", "official", "orientation:exif"]
    assert segment_producer(m, ["circle"], {})["gdino_rules"] == rules


@pytest.mark.parametrize("batching, named", [("images", False), ("samples", True)])
def test_a_run_stored_before_the_target_check_judged_at_the_stored_size(batching, named):
    """``data.samples_target_check`` is new: a stored training phase without it judged targets
    unresized (``stored``), which differs from today's official default under ``samples``
    batching and is inert under ``images``."""
    new = config_to_dict(load_config(None, [f"data.batching={batching}"]))
    old = json.loads(json.dumps(new))
    del old["data"]["samples_target_check"]
    diff = config_diff(old, new, "bootstrap")
    assert diff == ([("data.samples_target_check", "stored", "resized")] if named else [])
    for stage in ("segment", "select"):  # training data never defines Stages 1-2
        assert config_diff(old, new, stage) == []


def test_a_phase_stored_before_the_epoch_seed_seeded_once():
    """``train.epoch_seed`` is new: a training phase stored without it seeded torch once, which
    is today's default (-1); the official reseeding (100) is a change, named."""
    new = config_to_dict(load_config(None, []))
    old = json.loads(json.dumps(new))
    del old["train"]["epoch_seed"]
    assert config_diff(old, new, "correct") == []
    official = config_to_dict(load_config(None, ["train.epoch_seed=100"]))
    assert config_diff(old, official, "correct") == [("train.epoch_seed", -1, 100)]
    for stage in ("segment", "select"):
        assert config_diff(old, official, stage) == []


def test_a_correct_phase_stored_before_candidates_at_told_them_apart_as_stored():
    """``train.candidates_at`` is new: a correct phase stored without it told S1 candidates apart
    as stored (``stored``), which differs from today's official default; the phases trained on
    S2 never read it."""
    new = config_to_dict(load_config(None, []))
    old = json.loads(json.dumps(new))
    del old["train"]["candidates_at"]
    assert config_diff(old, new, "correct") == [("train.candidates_at", "stored", "image_size")]
    for stage in ("segment", "select", "bootstrap", "plus_epochs"):
        assert config_diff(old, new, stage) == []
    same = config_to_dict(load_config(None, ["train.candidates_at=stored"]))
    assert config_diff(old, same, "correct") == []


def test_a_run_stored_before_empty_gt_skipped_those_refs_and_text_field_is_training_only():
    """``data.empty_gt`` is new: every stage stored without it left out the refs whose GT mask is
    empty (``skip``), which differs from today's official default (``keep``) and is named, and
    with the old value set it resumes. ``data.text_field`` (its default now ``sent``) defines the
    training phases only: Stages 1-2 read REFER's ``sent`` whatever it says."""
    new = config_to_dict(load_config(None, []))
    old = json.loads(json.dumps(new))
    del old["data"]["empty_gt"]
    old["data"]["text_field"] = "raw"
    for stage in ("segment", "select"):
        assert config_diff(old, new, stage) == [("data.empty_gt", "skip", "keep")]
    for stage in ("bootstrap", "correct"):
        assert config_diff(old, new, stage) == [
            ("data.empty_gt", "skip", "keep"),
            ("data.text_field", "raw", "sent"),
        ]
    same = config_to_dict(load_config(None, ["data.empty_gt=skip", "data.text_field=raw"]))
    for stage in ("segment", "select", "bootstrap", "correct"):
        assert config_diff(old, same, stage) == []


def test_ctrl_c_stops_both_parallel_phases_with_checkpoints_and_the_rerun_ends_the_same(tmp_path):
    """Ctrl-C (SIGINT to the process group) in correct's third step, while +epochs trains
    beside it: correct saves after that step, the +epochs process stops too (after its step,
    or at once if the signal came before it could save), sssc-train waits for it and exits 130
    naming the checkpoint; the same command then ends with the uninterrupted run's models."""
    ref, sig = tmp_path / "ref", tmp_path / "sig"
    for d in (ref, sig):
        d.mkdir()
    args = ["--stage", "correct", "--run", "run"]
    on = _sets(Path("data"), **{"train.plus_epochs": "true", "train.parallel_phases": "true"})
    _killer("none", [*args, *on], ref)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    spec = "sssc.correct.train:match_targets:3:after:SIGINT"
    p = subprocess.run(
        [sys.executable, str(KILLER), spec, *args, *on],
        cwd=sig,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # the group that the Ctrl-C reaches: not pytest's
    )
    assert p.returncode == 130, p.stderr[-3000:]
    ckpt_path = sig / "run" / "correct" / "checkpoint.pt"
    said = "sssc-train: correct: stopped by SIGINT at step 3 of epoch 1/2, its state saved in "
    assert f"{said}run/correct/checkpoint.pt; the same command resumes it" in p.stderr
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert (ckpt["global_step"], ckpt["done"]) == (3, False)  # checkpoint_every 2: the stop's own
    child = int(p.stdout.split("training beside correct in process ")[1].split(";")[0])
    assert _zombie_or_gone(child), "sssc-train returned before the +epochs process ended"
    assert not (sig / "run" / "plus_epochs" / "metrics.json").exists()
    _killer("none", [*args, *on], sig)
    for phase in ("bootstrap", "correct", "plus_epochs"):
        a = torch.load(ref / "run" / phase / "checkpoint.pt", weights_only=True)
        b = torch.load(sig / "run" / phase / "checkpoint.pt", weights_only=True)
        _tensors_equal(a["model"], b["model"], f"{phase}.model")
        ma = json.loads((ref / "run" / phase / "metrics.json").read_text())
        assert ma == json.loads((sig / "run" / phase / "metrics.json").read_text())


def _crashing_child(log: str, run: str) -> None:
    import sssc.correct.train as train

    def boom(*a, **k):
        raise RuntimeError("boom in the phase")

    train.train_phase = boom
    from sssc import stages

    stages._phase_child("plus_epochs", None, run, log, os.getppid())


def test_an_unexpected_error_in_the_phase_process_leaves_its_traceback_in_the_log(tmp_path):
    """Not "lost sys.stderr": the traceback is written while the log is still open."""
    import multiprocessing

    log = tmp_path / "console.log"
    proc = multiprocessing.get_context("spawn").Process(
        target=_crashing_child, args=(str(log), str(tmp_path))
    )
    proc.start()
    proc.join(120)
    assert proc.exitcode == 1
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: boom in the phase" in text
    assert "lost sys.stderr" not in text
