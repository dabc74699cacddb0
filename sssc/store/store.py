"""Pseudo-label store: the candidate pools of Stage 1 (S1) and the choices of Stage 2 (S2).

Layout of a stage directory::

    <stage_dir>/store.json                 manifest: schema, kind, producer, shard size, image ids
    <stage_dir>/shards/shard-00000.jsonl   images 0..shard_size-1 of the ordered image ids
    <stage_dir>/shards/shard-00001.jsonl   ...

A shard is JSON Lines: one line per image, then one footer line ``{"__footer__": {"schema", "kind",
"producer", "shard", "count", "image_ids", "sha256"}}`` where ``sha256`` is the hash of every byte
before the footer. A shard without a footer, with a wrong hash or count, or made
by another producer is *invalid*: the reader raises :class:`StoreError` naming it, and the writer
reports it by name and redoes it. Shards are written to a temporary file in the same directory,
fsync'ed and renamed into place (``os.replace``), so a kill loses at most the shard in flight.

Why JSON Lines: one self-describing record per image that ``head``/``grep``/``jq`` read, appendable
while streaming, no dependency beyond the standard library, and the masks are COCO RLE strings that
are already compact (a few hundred bytes per mask). Parquet would buy column pruning, which
per-image records never need. Reading is lazy twice over: a shard's lines are parsed only when an
image is asked for, and a candidate's RLE stays a string until :meth:`Candidate.decode`.

Records (``kind`` S1)::

    {"image_id": 7, "height": 96, "width": 96,
     "candidates": [{"id": 0, "rle": {"size": [96, 96], "counts": "..."}, "box": [x, y, w, h],
                     "score": 0.83, "label": "circle"}, ...],
     "objects": [{"ann_id": 31, "eligible": [0, 2]}, ...]}

Records (``kind`` S2)::

    {"image_id": 7, "objects": [{"ann_id": 31, "chosen": 2, "candidates": [0, 2],
                                 "scores": [0.21, 0.64]}, ...]}

An S2 record names candidates of the S1 store of the same run, as Stage 2 read it
(``Store(pools=...)``: whole, or painted as the official code reads its pools back,
:mod:`sssc.store.pools`); :func:`chosen_masks` joins them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..data import masks as _masks
from ..rundir import atomic_file, atomic_write_text
from .pools import BACKGROUNDS, POOLS, paint_pools, painted_nonempty

__all__ = [
    "SCHEMA_VERSION",
    "Candidate",
    "ImageRecord",
    "ObjectLabels",
    "Store",
    "StoreError",
    "WriteReport",
    "check_join",
    "chosen_masks",
    "shard_name",
    "store_complete",
    "write_store",
]

SCHEMA_VERSION = 1
KINDS = ("S1", "S2")
_FOOTER = "__footer__"
_CACHED_SHARDS = 4


class StoreError(Exception):
    """A store that cannot be read or resumed; the message names the file and what to do."""


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.jsonl"


# --------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Candidate:
    """One candidate mask of an image's pool (S1). ``rle`` stays encoded until :meth:`decode`."""

    id: int
    rle: dict
    box: tuple[float, float, float, float]
    score: float
    label: str

    def decode(self) -> np.ndarray:
        """The mask, bool ``[H, W]`` at the image's original resolution."""
        return _masks.decode(self.rle)

    @property
    def area(self) -> int:
        return _masks.area(self.rle)


@dataclass(frozen=True)
class ObjectLabels:
    """Labels of one object (a ref's ``ann_id``).

    S1: ``eligible`` are the candidate ids it may take. S2: ``chosen`` is the selected candidate id
    (``None`` when it had no eligible candidate) and ``scores[i]`` the score of ``eligible[i]``.
    """

    ann_id: int
    eligible: tuple[int, ...]
    chosen: int | None = None
    scores: tuple[float, ...] = ()


@dataclass
class ImageRecord:
    """One image's record, parsed from its JSON line; candidates are built on first access."""

    image_id: int
    height: int | None
    width: int | None
    _raw_candidates: list = field(default_factory=list, repr=False)
    _raw_objects: list = field(default_factory=list, repr=False)

    @cached_property
    def candidates(self) -> list[Candidate]:
        return [
            Candidate(int(c["id"]), c["rle"], tuple(c["box"]), float(c["score"]), str(c["label"]))
            for c in self._raw_candidates
        ]

    @cached_property
    def objects(self) -> list[ObjectLabels]:
        out = []
        for o in self._raw_objects:
            if "chosen" in o:  # S2
                out.append(
                    ObjectLabels(
                        int(o["ann_id"]),
                        tuple(o["candidates"]),
                        None if o["chosen"] is None else int(o["chosen"]),
                        tuple(float(s) for s in o["scores"]),
                    )
                )
            else:
                out.append(ObjectLabels(int(o["ann_id"]), tuple(o["eligible"])))
        return out

    def candidate(self, cand_id: int) -> Candidate:
        """The candidate with id ``cand_id`` (ids are positions in the pool)."""
        c = self.candidates[cand_id]
        if c.id != cand_id:  # writers number candidates 0..C-1; anything else is a bug upstream
            raise StoreError(f"image {self.image_id}: candidate ids are not 0..C-1")
        return c

    def object(self, ann_id: int) -> ObjectLabels:
        for o in self.objects:
            if o.ann_id == ann_id:
                return o
        raise KeyError(f"image {self.image_id} has no object ann_id={ann_id}")

    @classmethod
    def _from_json(cls, d: dict) -> ImageRecord:
        return cls(
            int(d["image_id"]),
            d.get("height"),
            d.get("width"),
            d.get("candidates", []),
            d.get("objects", []),
        )


def s1_record(
    image_id: int,
    height: int,
    width: int,
    candidates: Sequence[dict],
    objects: Sequence[tuple[int, Sequence[int]]],
) -> dict:
    """Build an S1 line; ``candidates`` are dicts with ``rle, box, score, label`` (ids assigned)."""
    return {
        "image_id": int(image_id),
        "height": int(height),
        "width": int(width),
        "candidates": [
            {
                "id": i,
                "rle": {"size": list(c["rle"]["size"]), "counts": _str(c["rle"]["counts"])},
                "box": [round(float(v), 2) for v in c["box"]],
                "score": round(float(c["score"]), 6),
                "label": str(c["label"]),
            }
            for i, c in enumerate(candidates)
        ],
        "objects": [{"ann_id": int(a), "eligible": [int(e) for e in el]} for a, el in objects],
    }


def s2_record(
    image_id: int, objects: Sequence[tuple[int, int | None, Sequence[int], Sequence[float]]]
) -> dict:
    """Build an S2 line from ``(ann_id, chosen, candidate_ids, scores)`` per object."""
    return {
        "image_id": int(image_id),
        "objects": [
            {
                "ann_id": int(a),
                "chosen": None if ch is None else int(ch),
                "candidates": [int(c) for c in cands],
                "scores": [round(float(s), 6) for s in scores],
            }
            for a, ch, cands, scores in objects
        ],
    }


def _str(counts) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)


# ---------------------------------------------------------------------------------- shard files


def _dumps(obj) -> str:
    # Sorted keys and no spaces: the same record always gives the same bytes, so reruns are
    # byte-identical and the checksum means something.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class _Shard:
    """A validated shard: raw lines kept as bytes, parsed one image at a time."""

    def __init__(self, path: Path, lines: list[bytes], footer: dict):
        self.path, self.lines, self.footer = path, lines, footer

    def __len__(self) -> int:
        return len(self.lines)

    def record(self, i: int) -> ImageRecord:
        rec = ImageRecord._from_json(json.loads(self.lines[i]))
        if rec.image_id != int(self.footer["image_ids"][i]):
            raise StoreError(
                f"{self.path}: line {i + 1} holds image {rec.image_id}, the footer "
                f"says {self.footer['image_ids'][i]}; rerun the stage to redo it"
            )
        return rec

    def image_ids(self) -> list[int]:
        # From the (checksummed) footer: no line is parsed to know what a shard holds.
        return [int(i) for i in self.footer["image_ids"]]


def _check_shard(path: Path, expect: dict) -> tuple[_Shard | None, str]:
    """Read and validate one shard file. Returns ``(shard, "")`` or ``(None, reason)``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e})"
    if not data.endswith(b"\n"):
        return None, "truncated (no final newline)"
    body_end = data.rfind(b"\n", 0, len(data) - 1) + 1
    try:
        footer = json.loads(data[body_end:])[_FOOTER]
    except (ValueError, KeyError, TypeError):
        return None, "truncated or corrupt (no valid footer line)"
    body = data[:body_end]
    if hashlib.sha256(body).hexdigest() != footer.get("sha256"):
        return None, "corrupt (checksum mismatch)"
    lines = body.splitlines()
    ids = footer.get("image_ids")
    if len(lines) != footer.get("count") or not isinstance(ids, list) or len(ids) != len(lines):
        return None, f"corrupt (footer says {footer.get('count')} images, file has {len(lines)})"
    for key in ("schema", "kind", "producer", "shard"):
        if footer.get(key) != expect[key]:
            return None, (f"made with {key}={footer.get(key)!r}, the store expects {expect[key]!r}")
    return _Shard(path, lines, footer), ""


def _write_shard(path: Path, lines: Iterator[str], footer: dict, image_ids: list[int]) -> int:
    """Stream lines to a temporary file beside ``path``, fsync, rename. Returns the line count."""
    h, n = hashlib.sha256(), 0
    with atomic_file(path, "wb") as f:
        for line in lines:
            b = line.encode() + b"\n"
            h.update(b)
            f.write(b)
            n += 1
        stamp = {**footer, "count": n, "image_ids": image_ids, "sha256": h.hexdigest()}
        f.write((_dumps({_FOOTER: stamp}) + "\n").encode())
    return n


# ---------------------------------------------------------------------------------------- writer


@dataclass
class WriteReport:
    """What :func:`write_store` did: shard indices written, skipped (already valid) and redone."""

    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    redone: list[tuple[str, str]] = field(default_factory=list)  # (shard name, why)
    num_shards: int = 0


def write_store(
    stage_dir: str | os.PathLike,
    kind: str,
    producer: dict,
    image_ids: Sequence[int],
    make_record: Callable[[int], dict],
    shard_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    fresh: bool = False,
) -> WriteReport:
    """Write (or resume) a store: one record per image id, in shards of ``shard_size`` images.

    A rerun with the same manifest skips every valid shard; an invalid one (truncated, corrupt, from
    another producer) is logged by name and redone. A manifest that disagrees (another producer,
    schema, shard size or image list) is an error: the store belongs to another run.

    Args:
        stage_dir: the stage's directory (created if missing).
        kind: ``"S1"`` or ``"S2"``.
        producer: JSON-serializable description of what made the labels; stored and checked.
        image_ids: the images, in the order that defines the shards (callers pass them sorted).
        make_record: ``image_id -> dict`` (see :func:`s1_record`, :func:`s2_record`).
        shard_size: images per shard.
        rank, world_size: shard ``k`` is written by rank ``k % world_size`` (split by image).
        progress: called with the number of images finished or skipped, for a progress bar.
        log: where messages about skipped and redone shards go.
        fresh: start over: the manifest and every shard are written anew, whatever is there.

    Returns:
        A :class:`WriteReport`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    stage_dir = Path(stage_dir)
    shard_dir = stage_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    ids = [int(i) for i in image_ids]
    num_shards = (len(ids) + shard_size - 1) // shard_size
    manifest = {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "producer": _normalize(producer),
        "shard_size": shard_size,
        "num_images": len(ids),
        "num_shards": num_shards,
        "image_ids": ids,
    }
    mpath = stage_dir / "store.json"
    if fresh:
        if rank == 0:
            atomic_write_text(mpath, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    elif mpath.exists():
        old = _read_manifest(mpath)
        diff = [k for k in manifest if old.get(k) != manifest[k]]
        if diff:
            shown = [k for k in diff if k != "image_ids"]  # a long list helps nobody
            raise StoreError(
                f"{mpath} belongs to another run: {', '.join(diff)} differ "
                f"(stored {', '.join(f'{k}={old.get(k)!r}' for k in shown)}; "
                f"now {', '.join(f'{k}={manifest[k]!r}' for k in shown)}). "
                "Use another --run directory, or delete this stage directory to redo it."
            )
    elif rank == 0:
        atomic_write_text(mpath, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for stale in shard_dir.glob(".shard-*.tmp-*"):  # left by a killed writer
        if world_size == 1:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    report = WriteReport(num_shards=num_shards)
    for k in range(rank, num_shards, world_size):
        chunk = ids[k * shard_size : (k + 1) * shard_size]
        path = shard_dir / shard_name(k)
        expect = {
            "schema": SCHEMA_VERSION,
            "kind": kind,
            "producer": manifest["producer"],
            "shard": k,
        }
        if path.exists() and not fresh:
            shard, why = _check_shard(path, expect)
            if shard is not None and shard.image_ids() == chunk:
                report.skipped.append(k)
                if progress:
                    progress(len(chunk))
                continue
            why = why or "holds other images than the manifest says"
            log(f"store: {path} is {why}; redoing it")
            report.redone.append((path.name, why))

        def lines(chunk=chunk):
            for image_id in chunk:
                rec = make_record(image_id)
                if int(rec["image_id"]) != image_id:
                    raise StoreError(f"make_record({image_id}) returned image {rec['image_id']}")
                yield _dumps(rec)
                if progress:
                    progress(1)

        _write_shard(path, lines(), expect, chunk)
        report.written.append(k)
    return report


def _normalize(obj):
    """Round-trip through JSON so stored and in-memory producers compare equal (tuples → lists)."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _read_manifest(mpath: Path) -> dict:
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(
            f"{mpath}: unreadable store manifest ({e}); delete the stage directory "
            "and rerun the stage"
        ) from e
    if not isinstance(m, dict):
        raise StoreError(f"{mpath}: not a store manifest (a JSON object); rerun the stage")
    if m.get("schema") != SCHEMA_VERSION:
        raise StoreError(
            f"{mpath}: store schema {m.get('schema')!r}, this sssc reads schema "
            f"{SCHEMA_VERSION}; rerun the stage into a new --run directory"
        )
    keys = ("kind", "producer", "shard_size", "num_images", "num_shards", "image_ids")
    missing = [k for k in keys if k not in m]
    if missing:
        raise StoreError(
            f"{mpath}: store manifest without {', '.join(missing)}; rerun the stage with "
            "--no-resume to write it again"
        )
    return m


def store_complete(stage_dir: str | os.PathLike) -> bool:
    """Whether ``stage_dir`` holds a manifest and every shard file it lists (not validated)."""
    stage_dir = Path(stage_dir)
    mpath = stage_dir / "store.json"
    if not mpath.exists():
        return False
    try:
        m = _read_manifest(mpath)
    except StoreError:
        return False
    return all((stage_dir / "shards" / shard_name(k)).exists() for k in range(m["num_shards"]))


# ---------------------------------------------------------------------------------------- reader


class Store:
    """Read a finished store lazily. Every shard is validated when first touched.

    Args:
        stage_dir: the stage directory holding ``store.json`` and ``shards/``.
        kind: if given, the store must be of this kind.
        producer: if given, the stored producer must equal it.
        pools: how an S1 store's records are read: ``whole`` (as stored) or ``painted`` (as the
            official code reads its pools back; :func:`sssc.store.pools.paint_pools`).
        background: with ``painted``, the region each object's label map loses to the
            background: ``minimum`` (Stage 2's reader) or ``largest`` (Stage 3's).
    """

    def __init__(
        self,
        stage_dir: str | os.PathLike,
        kind: str | None = None,
        producer: dict | None = None,
        pools: str = "whole",
        background: str = "minimum",
    ):
        self.dir = Path(stage_dir)
        mpath = self.dir / "store.json"
        if not mpath.exists():
            raise StoreError(f"{self.dir}: no pseudo-label store here (missing {mpath.name})")
        self.manifest = _read_manifest(mpath)
        self.kind: str = self.manifest["kind"]
        self.producer: dict = self.manifest["producer"]
        if kind is not None and self.kind != kind:
            raise StoreError(f"{mpath}: a store of kind {self.kind}, expected {kind}")
        if producer is not None and self.producer != _normalize(producer):
            raise StoreError(
                f"{mpath}: made by producer {self.producer!r}, expected {_normalize(producer)!r}"
            )
        if pools not in POOLS or background not in BACKGROUNDS:
            raise ValueError(
                f"pools must be one of {POOLS} and background one of {BACKGROUNDS}, "
                f"got {pools!r} and {background!r}"
            )
        if pools != "whole" and self.kind != "S1":
            raise StoreError(f"{mpath}: pools={pools!r} reads an S1 store, this one is {self.kind}")
        self.pools, self.background = pools, background
        self._painted: dict[int, ImageRecord] = {}  # the last few painted records
        self.num_shards: int = self.manifest["num_shards"]
        self._shards: dict[int, _Shard] = {}
        self._index: dict[int, int] | None = None

    @property
    def labels_producer(self) -> dict:
        """The producer of the labels as read: with ``"pools"`` when they are not the stored
        ones (a producer downstream records this, so its output is never mixed with another)."""
        if self.pools == "whole":
            return self.producer
        return {**self.producer, "pools": self.pools, "background": self.background}

    def _read(self, rec: ImageRecord) -> ImageRecord:
        if self.pools == "whole":
            return rec
        if rec.image_id not in self._painted:  # readers ask for one image per object in a row
            while len(self._painted) >= _CACHED_SHARDS:
                self._painted.pop(next(iter(self._painted)))
            self._painted[rec.image_id] = paint_pools(rec, self.background)
        return self._painted[rec.image_id]

    def __len__(self) -> int:
        return int(self.manifest["num_images"])

    def shard(self, k: int) -> _Shard:
        """Shard ``k``, read and validated on first use (a few recent shards stay cached)."""
        if k in self._shards:
            self._shards[k] = self._shards.pop(k)  # most recently used last
            return self._shards[k]
        path = self.dir / "shards" / shard_name(k)
        expect = {
            "schema": SCHEMA_VERSION,
            "kind": self.kind,
            "producer": self.producer,
            "shard": k,
        }
        shard, why = _check_shard(path, expect)
        if shard is None:
            raise StoreError(f"{path} is {why}; rerun the stage to redo it")
        lo = k * self.manifest["shard_size"]
        if shard.image_ids() != self.manifest["image_ids"][lo : lo + len(shard)]:
            raise StoreError(
                f"{path} holds other images than {self.dir / 'store.json'} lists; "
                "rerun the stage to redo it"
            )
        self._shards[k] = shard
        while len(self._shards) > _CACHED_SHARDS:  # bounded memory on RefCOCO-sized stores
            self._shards.pop(next(iter(self._shards)))
        return shard

    def verify(self) -> list[tuple[str, str]]:
        """Check every shard; returns ``(shard name, reason)`` for each invalid one."""
        bad = []
        for k in range(self.num_shards):
            try:
                self.shard(k)
            except StoreError as e:
                bad.append((shard_name(k), str(e)))
        return bad

    def __iter__(self) -> Iterator[ImageRecord]:
        for k in range(self.num_shards):
            s = self.shard(k)
            for i in range(len(s)):
                yield self._read(s.record(i))

    def image_ids(self) -> list[int]:
        """The store's images in shard order (from the manifest; no shard is read)."""
        return [int(i) for i in self.manifest["image_ids"]]

    def __contains__(self, image_id: int) -> bool:
        return self._position(image_id) is not None

    def _position(self, image_id: int) -> int | None:
        if self._index is None:
            self._index = {int(i): p for p, i in enumerate(self.manifest["image_ids"])}
        return self._index.get(int(image_id))

    def get(self, image_id: int, stored: bool = False) -> ImageRecord:
        """The record of one image (reads and validates its shard only), read as ``pools`` says
        or, with ``stored``, as it is stored (the same objects, no painting)."""
        p = self._position(image_id)
        if p is None:
            raise KeyError(f"{self.dir}: image {image_id} is not in the store")
        size = self.manifest["shard_size"]
        rec = self.shard(p // size).record(p % size)
        return rec if stored else self._read(rec)

    def objects_with_candidates(self, image_id: int) -> set[int]:
        """The objects (ann ids) of an S1 image with at least one candidate as ``pools`` reads
        them; for ``painted`` from the candidates' areas, without painting the image
        (:func:`sssc.store.pools.painted_nonempty`)."""
        if self.pools == "whole":
            return {o.ann_id for o in self.get(image_id).objects if o.eligible}
        return painted_nonempty(self.get(image_id, stored=True))


def check_join(s1: Store, s2: Store) -> None:
    """Refuse to join an S2 store to S1 records read otherwise than Stage 2 read them (its
    producer records them as ``segment``): its candidate ids would name other masks."""
    seg = s2.producer.get("segment")
    if seg is None or seg == s1.labels_producer:
        return
    seg = dict(seg)
    pools = seg.pop("pools", "whole")
    seg.pop("background", None)
    if seg != s1.producer:
        raise StoreError(
            f"{s2.dir} was made from another S1 store than {s1.dir} (producer {seg!r}, not "
            f"{s1.producer!r}); rerun Stage 2"
        )
    raise StoreError(
        f"{s2.dir}: its choices name the candidates of {s1.dir} read with "
        f"pools={pools!r}, not pools={s1.pools!r} (background="
        f"{s1.background!r}); open the S1 store as Stage 2 read it (select.candidates), or "
        "rerun Stage 2"
    )


def chosen_masks(s1: Store, s2: Store, image_id: int) -> dict[int, np.ndarray | None]:
    """The S2 choice of every object of one image as a decoded mask (``None`` when none).

    Raises:
        StoreError: ``s1`` is not read as Stage 2 read it (:func:`check_join`).
    """
    check_join(s1, s2)
    pool = s1.get(image_id)
    return {
        o.ann_id: None if o.chosen is None else pool.candidate(o.chosen).decode()
        for o in s2.get(image_id).objects
    }
