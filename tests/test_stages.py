"""End to end: sssc-train --stage segment/select on a small synthetic dataset, resume, sssc eval."""

import json

import pytest
from tiny_data import synth_args

from sssc.cli import main, train_main
from sssc.config import load_config
from sssc.data.refer import Refer

KEYS = [
    "split",
    "mIoU",
    "oIoU",
    *(f"prec@{t}" for t in (0.5, 0.6, 0.7, 0.8, 0.9)),
    "PointM",
    "PointIt",
    "producer",
    "num_expressions",
    "warnings",
]


@pytest.fixture()
def sets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    return [
        "--set",
        f"data.root={root}",
        "--set",
        f"data.image_dir={root}/synthetic/images",
        *synth_args(60),
    ]


def _stats(run):
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for stage in ("segment", "select")
        for p in (run / stage / "shards").iterdir()
    }


def test_select_runs_segment_first_then_resumes(tmp_path, sets, capsys):
    run = tmp_path / "run"
    assert train_main(["--stage", "select", "--run", str(run), *sets]) == 0
    out = capsys.readouterr().out
    assert "running --stage segment first" in out
    assert "S1 oracle (simulated)" in out and "S+S (simulated)" in out

    cfg = load_config(None, [s for s in sets if s != "--set"])
    refer = Refer.from_config(cfg.data)
    n_expr = sum(len(r.sentences) for r in refer.split_refs("val"))
    m = {}
    for stage in ("segment", "select"):
        d = run / stage
        assert (d / "config.yaml").is_file() and (d / "log.txt").is_file()
        m[stage] = json.loads((d / "metrics.json").read_text())
        assert all(k in m[stage] for k in KEYS), set(KEYS) - set(m[stage])
        assert m[stage]["split"] == "val" and m[stage]["num_expressions"] == n_expr
        assert m[stage]["producer"]["name"] == "simulated"
        for k in KEYS[1:10]:
            assert 0.0 <= m[stage][k] <= 100.0
    assert m["select"]["producer"]["segment"] == m["segment"]["producer"]
    assert m["select"]["producer"]["p_correct"] == 0.6
    # The oracle takes the best eligible candidate, S2 one of them: never better per expression.
    for k in ("mIoU", *(f"prec@{t}" for t in (0.5, 0.6, 0.7, 0.8, 0.9))):
        assert m["segment"][k] >= m["select"][k], k
    assert m["segment"]["mIoU"] > m["select"]["mIoU"]

    before = _stats(run)
    assert train_main(["--stage", "select", "--run", str(run), *sets]) == 0
    out = capsys.readouterr().out
    assert "running --stage segment first" not in out and "0 shard(s) written" in out
    assert _stats(run) == before
    assert json.loads((run / "select" / "metrics.json").read_text()) == m["select"]

    # sssc eval scores the same store to the same numbers, and at another resolution too.
    assert main(["eval", "--run", str(run), "--stage", "select"]) == 0
    assert json.loads((run / "select" / "eval_val.json").read_text()) == m["select"]
    assert (
        main(
            [
                "eval",
                "--run",
                str(run),
                "--stage",
                "segment",
                "--split",
                "train",
                "--set",
                "eval.resolution=original",
                "--out",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["split"] == "train" and t["resolution"] == "original"


def test_corrupt_segment_shard_is_redone(tmp_path, sets, capsys):
    run = tmp_path / "run"
    assert train_main(["--stage", "segment", "--run", str(run), *sets]) == 0
    shard = run / "segment" / "shards" / "shard-00000.jsonl"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 3])
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--stage", "segment"]) == 2
    assert "shard-00000.jsonl" in capsys.readouterr().err
    assert train_main(["--stage", "select", "--run", str(run), *sets]) == 0
    out = capsys.readouterr().out
    assert "running --stage segment first" in out and "shard-00000.jsonl" in out
    assert shard.read_bytes() == good


def test_eval_names_the_store_it_lacks(tmp_path, sets, capsys):
    """sssc eval names the missing store it was asked for, and the command that makes it;
    a Stage 2 store whose Stage 1 store is gone names that one."""
    run = tmp_path / "run"
    assert main(["eval", "--run", str(run), "--stage", "select"]) == 2
    assert capsys.readouterr().err == f"sssc eval: --run {run}: no such run folder\n"
    assert train_main(["--stage", "segment", "--run", str(run), *sets]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--stage", "select"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'select'}: no Stage 2 store here (missing store.json)" in err
    assert f"`sssc-train --stage select --run {run}` makes it" in err
    assert train_main(["--stage", "select", "--run", str(run), *sets]) == 0
    (run / "segment" / "store.json").unlink()
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--stage", "select"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'segment'}: no pseudo-label store here (missing store.json)" in err


def test_changed_settings_do_not_reuse_a_store(tmp_path, sets, capsys):
    run = tmp_path / "run"
    assert train_main(["--stage", "segment", "--run", str(run), *sets]) == 0
    capsys.readouterr()
    rc = train_main(
        ["--stage", "segment", "--run", str(run), *sets, "--set", "segment.simulate.p_drop=0.5"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "was made with other settings: segment.simulate.p_drop: 0.1 there, 0.5 now" in err
    assert "--no-resume" in err
    before = (run / "segment" / "store.json").read_bytes()
    args = ["--stage", "segment", "--run", str(run), *sets, "--set", "segment.simulate.p_drop=0.5"]
    assert train_main([*args, "--no-resume"]) == 0
    assert (run / "segment" / "store.json").read_bytes() != before  # the new producer
    assert train_main(args) == 0  # now made with these settings: reused


def test_stage3_with_an_unknown_model_is_a_clear_error(tmp_path, sets, capsys):
    args = ["--stage", "bootstrap", "--run", str(tmp_path / "run"), *sets]
    assert train_main([*args, "--set", "train.model=no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "--stage bootstrap" in err and "no-such-model: model config not found" in err


@pytest.mark.parametrize("how, code", [("SIGINT", 130), ("SIGTERM", 143), ("twice", 130)])
def test_a_stopped_run_exits_128_plus_the_signal_with_its_message(
    tmp_path, monkeypatch, capsys, how, code
):
    """A graceful stop (its state saved) and a second Ctrl-C: the shell's codes, one line each,
    no traceback."""
    import signal

    from sssc import stages
    from sssc.rundir import Interrupted

    def stop(*a):
        if how == "twice":
            raise KeyboardInterrupt
        raise Interrupted(
            f"bootstrap: stopped by {how} at step 3 of epoch 1/2", signal.Signals[how]
        )

    monkeypatch.setattr(stages, "run_stage", stop)
    assert train_main(["--stage", "bootstrap", "--run", str(tmp_path / "run")]) == code
    err = capsys.readouterr().err
    if how == "twice":
        assert err.startswith("sssc-train: stopped at once (Ctrl-C); the same command resumes")
    else:
        assert err == f"sssc-train: bootstrap: stopped by {how} at step 3 of epoch 1/2\n"
