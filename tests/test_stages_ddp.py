"""Stages 1-2 under torchrun: every rank writes its share of the shards into one store, which
equals a one-process run's byte for byte; a rank killed mid-stage resumes where it stopped."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from ddp import join, spawn
from tiny_data import synth_sets

from sssc.config import load_config

SHARD = 2  # images per shard, so that 10 images make 5 shards to split between 2 ranks


def _sets(tmp: Path, models: bool) -> list[str]:
    sets = [f"data.root={tmp / 'data'}", *synth_sets(12)]
    if models:
        from tiny_models import models_overrides

        sets += models_overrides(tmp / "models")
    return sets


def _worker(rank, world, port, tmp, sets, run, kill_rank, kill_after):
    join(rank, world, port)
    import sssc.stages as stages
    import sssc.store.store as store

    if any(x.startswith("select.backend=models") for x in sets):
        from tiny_models import register_tiny_clip

        register_tiny_clip(Path(tmp) / "models")  # in this process; the files are the parent's

    stages.SHARD_SIZE = SHARD
    if rank == kill_rank:
        real, n = store._write_shard, [0]

        def killed(*a, **k):
            out = real(*a, **k)
            n[0] += 1
            if n[0] == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # as a kill -9 of this rank
            return out

        store._write_shard = killed
    stages.run_stage("select", load_config(None, sets), Path(tmp) / run)


def _spawn(tmp, sets, run, kill_rank=-1, kill_after=0):
    spawn(_worker, (str(tmp), sets, run, kill_rank, kill_after))


def _files(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.name not in ("log.txt", "config.yaml")
    }


@pytest.mark.parametrize("models", [False, True], ids=["simulated", "tiny-models"])
def test_two_ranks_write_one_store_equal_to_one_process(tmp_path, monkeypatch, models):
    if models:
        for mod in ("groundingdino", "segment_anything", "open_clip"):
            pytest.importorskip(mod)
    import sssc.stages as stages

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setattr(stages, "SHARD_SIZE", SHARD)
        sets = _sets(tmp_path, models)  # the tiny models' files are written once, here
        stages.run_stage("select", load_config(None, sets), tmp_path / "one")
    finally:
        torch.set_num_threads(n)
    one = {s: _files(tmp_path / "one" / s) for s in ("segment", "select")}
    assert len([k for k in one["segment"] if k.startswith("shards/")]) >= 4

    # Rank 1 is killed after its first Stage 1 shard; torchrun (here: spawn) ends the job.
    with pytest.raises(torch.multiprocessing.ProcessExitedException) as e:
        _spawn(tmp_path, sets, "ddp", kill_rank=1, kill_after=1)
    assert (e.value.error_index, e.value.signal_name) == (1, "SIGKILL"), str(e.value)
    shards = tmp_path / "ddp" / "segment" / "shards"
    survived = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.jsonl")}
    assert "shard-00001.jsonl" in survived  # rank 1's first shard (shard k goes to rank k % 2)
    _spawn(tmp_path, sets, "ddp")  # the rerun: both ranks resume
    for name, stamp in survived.items():  # nothing finished was redone
        assert (shards / name).stat().st_mtime_ns == stamp, name
    for s in ("segment", "select"):
        assert _files(tmp_path / "ddp" / s) == one[s], s  # byte for byte, metrics.json too
    log = (tmp_path / "ddp" / "segment" / "log.txt").read_text()
    assert "[rank 1/2]" in log and "[rank 0/2]" in log
