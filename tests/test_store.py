"""Pseudo-label store: round trip, laziness, validation, resume, and survival of a SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sssc.data import masks
from sssc.kernels.testing import blob_masks
from sssc.store import Store, StoreError, s1_record, s2_record, store, write_store

PRODUCER = {"name": "test", "p": 0.5}


def make_s1(image_id: int) -> dict:
    """A deterministic S1 record: 3 blobs per image, two objects."""
    ms = blob_masks(3, 24, 20, seed=image_id)
    cands = [
        {
            "rle": masks.encode(m),
            "box": masks.bbox(masks.encode(m)),
            "score": 0.5 + 0.1 * i,
            "label": "circle" if i < 2 else "square",
        }
        for i, m in enumerate(ms)
    ]
    return s1_record(image_id, 24, 20, cands, [(1000 + image_id, [0, 1]), (2000 + image_id, [2])])


def test_roundtrip_and_lookup(tmp_path):
    ids = list(range(10))
    rep = write_store(tmp_path, "S1", PRODUCER, ids, make_s1, shard_size=4, log=lambda m: None)
    assert rep.written == [0, 1, 2] and rep.num_shards == 3
    st = Store(tmp_path, kind="S1", producer=PRODUCER)
    assert len(st) == 10 and st.image_ids() == ids
    for rec in st:
        ref = blob_masks(3, 24, 20, seed=rec.image_id)
        assert [c.id for c in rec.candidates] == [0, 1, 2]
        for c, m in zip(rec.candidates, ref, strict=True):
            np.testing.assert_array_equal(c.decode(), m)
            assert c.area == m.sum()
        assert rec.object(1000 + rec.image_id).eligible == (0, 1)
        assert rec.object(2000 + rec.image_id).eligible == (2,)
    assert st.get(7).candidate(2).label == "square"
    with pytest.raises(KeyError):
        st.get(99)


def test_s2_roundtrip_and_join(tmp_path):
    write_store(tmp_path / "s1", "S1", PRODUCER, [3, 5], make_s1, log=lambda m: None)
    write_store(
        tmp_path / "s2",
        "S2",
        PRODUCER,
        [3, 5],
        lambda i: s2_record(i, [(1000 + i, 1, [0, 1], [0.2, 0.7]), (2000 + i, None, [], [])]),
        log=lambda m: None,
    )
    s1, s2 = Store(tmp_path / "s1"), Store(tmp_path / "s2", kind="S2")
    o = s2.get(5).object(1005)
    assert o.chosen == 1 and o.eligible == (0, 1) and o.scores == (0.2, 0.7)
    got = store.chosen_masks(s1, s2, 5)
    np.testing.assert_array_equal(got[1005], blob_masks(3, 24, 20, seed=5)[1])
    assert got[2005] is None


def test_reading_decodes_no_mask_until_asked(tmp_path, monkeypatch):
    write_store(tmp_path, "S1", PRODUCER, range(1000), make_s1, shard_size=1000, log=lambda m: None)
    calls = []
    real = masks.decode
    monkeypatch.setattr(masks, "decode", lambda rle: calls.append(1) or real(rle))
    st = Store(tmp_path)
    n = sum(len(r.candidates) + len(r.objects) for r in st)
    assert n == 5000 and calls == []
    st.get(999).candidates[0].decode()
    assert len(calls) == 1


def test_manifest_mismatch_is_a_clear_error(tmp_path):
    write_store(tmp_path, "S1", PRODUCER, range(3), make_s1, log=lambda m: None)
    with pytest.raises(StoreError, match="producer"):
        write_store(tmp_path, "S1", {"name": "other"}, range(3), make_s1, log=lambda m: None)
    with pytest.raises(StoreError, match="expected"):
        Store(tmp_path, producer={"name": "other"})
    m = json.loads((tmp_path / "store.json").read_text())
    m["schema"] = 99
    (tmp_path / "store.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="schema 99"):
        Store(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "drop_footer"])
def test_damaged_shard_is_detected_and_redone(tmp_path, damage):
    write_store(tmp_path, "S1", PRODUCER, range(9), make_s1, shard_size=4, log=lambda m: None)
    shards = tmp_path / "shards"
    good = (shards / "shard-00001.jsonl").read_bytes()
    other = shards / "shard-00000.jsonl"
    other_stat = other.stat()
    data = bytearray(good)
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_byte":
        i = data.index(b'"score":') + 9
        data[i] = ord("9") if data[i] != ord("9") else ord("8")
    else:
        data = data[: data.rstrip(b"\n").rfind(b"\n") + 1]
    (shards / "shard-00001.jsonl").write_bytes(bytes(data))

    st = Store(tmp_path)
    with pytest.raises(StoreError, match="shard-00001.jsonl"):
        list(st)
    assert [name for name, _ in st.verify()] == ["shard-00001.jsonl"]

    logged = []
    rep = write_store(tmp_path, "S1", PRODUCER, range(9), make_s1, shard_size=4, log=logged.append)
    assert rep.written == [1] and rep.skipped == [0, 2]
    assert [n for n, _ in rep.redone] == ["shard-00001.jsonl"]
    assert "shard-00001.jsonl" in logged[0]
    assert (shards / "shard-00001.jsonl").read_bytes() == good
    assert other.stat().st_mtime_ns == other_stat.st_mtime_ns
    assert other.stat().st_ino == other_stat.st_ino
    assert len(list(Store(tmp_path))) == 9


_WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from test_store import make_s1, PRODUCER
    from sssc.store import write_store

    signal_file, kill_at = {signal!r}, {kill_at!r}

    def make(i):
        if kill_at is not None and i == kill_at:
            open(signal_file, "w").close()  # shard 0 is done; now hang inside shard 1
            time.sleep(120)
        return make_s1(i)

    write_store({out!r}, "S1", PRODUCER, range(10), make, shard_size=4, log=lambda m: None)
    """
)


def _run_writer(out: Path, signal_file: Path, kill_at):
    code = _WRITER.format(
        tests=str(Path(__file__).parent), signal=str(signal_file), kill_at=kill_at, out=str(out)
    )
    return subprocess.Popen([sys.executable, "-c", code])


def test_survives_sigkill_mid_write(tmp_path):
    out, sig = tmp_path / "killed", tmp_path / "signal"
    proc = _run_writer(out, sig, kill_at=6)  # image 6 is the 3rd image of shard 1
    try:
        deadline = time.monotonic() + 120
        while not sig.exists():
            assert proc.poll() is None, "writer exited before reaching the kill point"
            assert time.monotonic() < deadline, "writer never reached the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    shards = out / "shards"
    assert sorted(p.name for p in shards.glob("shard-*.jsonl")) == ["shard-00000.jsonl"]
    assert len(list(shards.glob(".shard-00001.jsonl.tmp-*"))) == 1  # killed mid-write of shard 1
    before = (shards / "shard-00000.jsonl").stat()

    rep = write_store(out, "S1", PRODUCER, range(10), make_s1, shard_size=4, log=lambda m: None)
    assert rep.skipped == [0] and rep.written == [1, 2]
    after = (shards / "shard-00000.jsonl").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(shards.glob(".shard-*"))  # the killed writer's temp file is gone

    clean = tmp_path / "clean"
    write_store(clean, "S1", PRODUCER, range(10), make_s1, shard_size=4, log=lambda m: None)
    for name in ["store.json"] + [f"shards/shard-0000{k}.jsonl" for k in range(3)]:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def test_ranks_split_shards(tmp_path):
    for rank in (0, 1):
        rep = write_store(
            tmp_path,
            "S1",
            PRODUCER,
            range(10),
            make_s1,
            shard_size=3,
            rank=rank,
            world_size=2,
            log=lambda m: None,
        )
        assert rep.written == list(range(rank, 4, 2))
    assert store.store_complete(tmp_path)
    assert Store(tmp_path).image_ids() == list(range(10))
