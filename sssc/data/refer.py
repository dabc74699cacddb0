"""Reader for REFER datasets on disk: RefCOCO, RefCOCO+, RefCOCOg and the synthetic dataset.

Layout (the REFER API's)::

    <root>/<dataset>/instances.json        COCO: images, annotations (segmentations), categories
    <root>/<dataset>/refs(<split_by>).p    pickle: a list of refs (split_by: unc, umd, google, ...)
    <image_dir>/<file_name>                the images (COCO train2014 for the RefCOCO family)

A ref is one object (its COCO annotation ``ann_id``) with one or more sentences; in sssc an *object*
is a ref's ``ann_id`` and its sentences are that object's *expressions*.

Bad input is handled deliberately, never by a traceback from deep inside:

* A missing ``instances.json``, refs pickle or image folder, a malformed record, a ref that
  points at an unknown annotation or image, or an image file that is missing: :class:`DatasetError`
  naming the file or item. Missing images are an error rather than a skip because with the
  RefCOCO family they always mean a wrong ``image_dir`` or an incomplete download, and training
  on a silent subset would make results incomparable.
* A sentence without text (``sent`` empty, only spaces, or ``None``): skipped, counted in
  ``warnings["empty_sentence"]``; a ref left without sentences: skipped, counted in
  ``warnings["ref_without_sentences"]``. With ``empty_sentences: keep`` (``recipe: official``:
  the official datasets tokenize every ``sent`` string, an empty one as ``[CLS] [SEP]``) an empty
  or blank string is kept as it is, still counted in ``warnings["empty_sentence"]``, and only a
  ``None``, on which the official tokenizer fails, is skipped (``warnings["missing_sentence"]``).
  A ``sent_id`` used twice, or an id that is not an integer: :class:`DatasetError`.
* A referred annotation whose mask is empty (no polygon with 3 or more points, a polygon entirely
  outside the image, polygons that cover each other's every pixel under ``polygon_overlap:
  refer``, or an RLE with zero area): counted in ``warnings["empty_mask"]``. With ``empty_gt:
  keep`` (the default, the official code's: its REFER keeps every ref, and its evaluation scores
  such a ref's expressions with IoU 0, the prediction in oIoU's union) its refs are kept; with
  ``skip`` (sssc before 2026-12-07) they are left out everywhere. A polygon that is partly
  outside the image is clipped to it (rasterisation does that) and counted in
  ``warnings["polygon_clipped"]``.

``warning_examples[kind]`` keeps the first few offending items of each kind, for messages.
The refs pickle is read with a restricted unpickler: plain containers and scalars only.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "DatasetError",
    "ImageInfo",
    "Ref",
    "Refer",
    "Sentence",
    "load_refs_pickle",
    "pack_images",
]

# The splits in the order the papers list them; any other split name sorts after these.
_SPLIT_ORDER = ("train", "val", "test", "testA", "testB")
_MAX_EXAMPLES = 5
EMPTY_GT = ("keep", "skip")  # data.empty_gt: what becomes of a ref whose GT mask is empty
EMPTY_SENTENCES = ("skip", "keep")  # data.empty_sentences: of an expression whose sent is blank


class DatasetError(Exception):
    """A dataset on disk is missing or malformed; the message names the file or the item."""


@dataclass(frozen=True)
class Sentence:
    """One referring expression."""

    sent_id: int
    sent: str
    raw: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Ref:
    """One referred object (COCO annotation ``ann_id``) and its expressions."""

    ref_id: int
    ann_id: int
    image_id: int
    split: str
    category_id: int
    sentences: tuple[Sentence, ...]


class _FileRef(NamedTuple):
    """A ref as the refs file has it, kept by sssc or not (:meth:`Refer.file_image_refs`)."""

    split: str
    image_id: int
    ref_id: int
    sent_ids: tuple[int | None, ...]  # per expression in the file; None: empty, dropped


@dataclass(frozen=True)
class ImageInfo:
    image_id: int
    file_name: str
    height: int
    width: int


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and scalars only: every global lookup is refused.

    A pickle can only call code through a global it looks up (``find_class``); refusing all of them
    leaves dicts, lists, tuples, strings, bytes, numbers, booleans and None, which is all a REFER
    refs file holds.
    """

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refuses to load the global {module}.{name}: a refs file holds plain lists, dicts, "
            "strings and numbers only"
        )

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refuses persistent ids")


def load_refs_pickle(path: str | Path) -> list[dict]:
    """Load a REFER ``refs(<split_by>).p`` with a restricted unpickler.

    The published files were written by Python 2 (protocol 2); their byte strings are decoded as
    ASCII first and, when that fails, as latin-1 (what Python 2's ``str`` held).

    Args:
        path: the pickle file.

    Returns:
        The list of ref dicts, as stored.

    Raises:
        DatasetError: the file is missing, is not a pickle, needs anything beyond plain containers
            and scalars (e.g. a class or a function: possibly malicious), or is not a list of dicts.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read refs file: {e.strerror or e}") from None
    refs = None
    for encoding in ("ASCII", "latin1"):
        try:
            refs = _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
            break
        except UnicodeDecodeError:
            continue  # a Python 2 byte string that is not ASCII: retry as latin-1
        except pickle.UnpicklingError as e:
            raise DatasetError(f"{path}: unsafe or invalid refs pickle: {e}") from None
        except Exception as e:  # truncated or garbage input raises many types (EOFError, ...)
            raise DatasetError(
                f"{path}: not a readable refs pickle ({type(e).__name__}: {e})"
            ) from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


def default_image_dir(root: str | Path, dataset: str) -> Path:
    """``<root>/<dataset>/images`` when it exists, else REFER's ``<root>/images/mscoco/...``."""
    own = Path(root) / dataset / "images"
    return own if own.is_dir() else Path(root) / "images" / "mscoco" / "images" / "train2014"


class Refer:
    """A REFER dataset: images → objects (refs) → expressions, with GT masks for evaluation.

    Attributes:
        images: every image of ``instances.json`` by id.
        categories: category id → name.
        refs: the usable refs by ``ref_id`` (skipped ones are counted in ``warnings``).
        warnings: counts of deliberate skips, by kind (see the module docstring).
        warning_examples: the first few items of each kind of skip.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split_by: str,
        image_dir: str | Path,
        polygon_overlap: str = "refer",
        empty_gt: str = "keep",
        empty_sentences: str = "skip",
    ):
        if polygon_overlap not in ("refer", "union"):
            raise ValueError(f"polygon_overlap must be 'refer' or 'union', got {polygon_overlap!r}")
        if empty_gt not in EMPTY_GT:
            raise ValueError(f"empty_gt must be one of {EMPTY_GT}, got {empty_gt!r}")
        if empty_sentences not in EMPTY_SENTENCES:
            raise ValueError(
                f"empty_sentences must be one of {EMPTY_SENTENCES}, got {empty_sentences!r}"
            )
        self.polygon_overlap, self.empty_gt = polygon_overlap, empty_gt
        self.empty_sentences = empty_sentences
        self.root = Path(root)
        self.dataset = dataset
        self.split_by = split_by
        self.image_dir = Path(image_dir)
        self.instances_path = self.root / dataset / "instances.json"
        self.refs_path = self.root / dataset / f"refs({split_by}).p"
        self.warnings: collections.Counter = collections.Counter()
        self.warning_examples: dict[str, list[str]] = collections.defaultdict(list)
        self._poly_rles: dict[int, dict] = {}  # polygons rasterised once per annotation

        for p, what in ((self.root / dataset, "dataset folder"), (self.instances_path, "file")):
            if not p.exists():
                raise DatasetError(f"{p}: {what} not found (see the README, section Datasets)")
        if not self.refs_path.is_file():
            have = sorted(q.name for q in (self.root / dataset).glob("refs(*).p"))
            raise DatasetError(
                f"{self.refs_path}: refs file not found; split_by={split_by!r} picks it "
                f"(present: {', '.join(have) or 'none'})"
            )
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found (data.image_dir)")

        self._load_instances()
        self._load_refs(load_refs_pickle(self.refs_path))
        self._check_images()
        self._index()

    @classmethod
    def from_config(cls, data_cfg: Any, generate: bool = True) -> Refer:
        """Open the dataset a :class:`sssc.config.DataConfig` names.

        For ``dataset: synthetic`` the dataset is generated first when it is missing (see
        :func:`sssc.data.synthetic.ensure_generated`), unless ``generate`` is false (readers
        such as ``sssc viz``, which never write data). An empty ``data.image_dir`` means
        ``<root>/<dataset>/images``.
        """
        if data_cfg.dataset == "synthetic" and generate:
            from .synthetic import ensure_generated

            ensure_generated(data_cfg)
        elif data_cfg.dataset == "synthetic" and not (Path(data_cfg.root) / "synthetic").exists():
            raise DatasetError(
                f"{Path(data_cfg.root) / 'synthetic'}: synthetic dataset not found (this command "
                "reads data and never generates it); run it where sssc-train ran, or pass "
                "--set data.root=<the folder holding synthetic/>"
            )
        image_dir = data_cfg.image_dir or default_image_dir(data_cfg.root, data_cfg.dataset)
        return cls(
            data_cfg.root,
            data_cfg.dataset,
            data_cfg.split_by,
            image_dir,
            data_cfg.polygon_overlap,
            data_cfg.empty_gt,
            data_cfg.empty_sentences,
        )

    def skipped(self, kind: str) -> bool:
        """Whether the counted items of ``warnings[kind]`` were left out (``False``: counted and
        kept, e.g. a clipped polygon, or an empty GT mask under ``empty_gt: keep``)."""
        if kind == "empty_mask":
            return self.empty_gt == "skip"
        if kind == "empty_sentence":
            return self.empty_sentences == "skip"
        return kind != "polygon_clipped"

    # -- loading ---------------------------------------------------------------------------------

    def _warn(self, kind: str, item: str) -> None:
        self.warnings[kind] += 1
        if len(self.warning_examples[kind]) < _MAX_EXAMPLES:
            self.warning_examples[kind].append(item)

    def _load_instances(self) -> None:
        path = self.instances_path
        try:
            with open(path, encoding="utf-8") as f:
                coco = json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: not a readable COCO JSON file: {e}") from None
        if not isinstance(coco, dict) or not all(
            isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")
        ):
            raise DatasetError(
                f"{path}: expected a COCO object with lists 'images', "
                "'annotations' and 'categories'"
            )
        self.images: dict[int, ImageInfo] = {}
        for i, im in enumerate(coco["images"]):
            try:
                info = ImageInfo(
                    _int(im["id"]), str(im["file_name"]), _int(im["height"]), _int(im["width"])
                )
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"{path}: images[{i}] is malformed ({e!r})") from None
            if info.height <= 0 or info.width <= 0:
                raise DatasetError(
                    f"{path}: image {info.image_id} has size {info.height}x{info.width}"
                )
            self.images[info.image_id] = info
        self.categories: dict[int, str] = {}
        for i, c in enumerate(coco["categories"]):
            try:
                self.categories[int(c["id"])] = str(c["name"])
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"{path}: categories[{i}] is malformed ({e!r})") from None
        self._anns: dict[int, dict] = {}
        self._image_anns: dict[int, list[int]] = {}
        for i, a in enumerate(coco["annotations"]):
            if not isinstance(a, dict) or not all(
                k in a for k in ("id", "image_id", "category_id", "segmentation")
            ):
                raise DatasetError(
                    f"{path}: annotations[{i}] lacks one of id, image_id, category_id, segmentation"
                )
            try:
                ann_id, image_id = _int(a["id"]), _int(a["image_id"])
                _int(a["category_id"])
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{path}: annotations[{i}]: {e}") from None
            if ann_id in self._anns:
                raise DatasetError(f"{path}: annotations[{i}]: id {ann_id} appears twice")
            self._anns[ann_id] = a
            self._image_anns.setdefault(image_id, []).append(ann_id)

    def _load_refs(self, raw_refs: list[dict]) -> None:
        path = self.refs_path
        self.refs: dict[int, Ref] = {}
        # Every ref in file order, kept or not, as the official loader sees it (REFER's image
        # list, each image's refs, each ref's expressions: None where sssc drops an empty one).
        self._file_refs: list[_FileRef] = []
        self._file_pos: dict[int, int] = {}  # ref id -> its place in the file
        seen_sent: dict[int, int] = {}
        for i, r in enumerate(raw_refs):
            rid = r.get("ref_id", f"#{i}")
            item = f"{path}: ref {rid}"
            try:
                ref_id, ann_id, image_id = _int(r["ref_id"]), _int(r["ann_id"]), _int(r["image_id"])
                split, category_id = str(r["split"]), _int(r["category_id"])
                raw_sents = r.get("sentences") or []
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(
                    f"{item} is malformed ({e!r}); a ref needs ref_id, ann_id, "
                    "image_id, split, category_id, sentences"
                ) from None
            if ann_id not in self._anns:
                raise DatasetError(
                    f"{item} points at annotation {ann_id}, which is not in {self.instances_path}"
                )
            if image_id not in self.images:
                raise DatasetError(
                    f"{item} points at image {image_id}, which is not in {self.instances_path}"
                )
            ann_image = int(self._anns[ann_id]["image_id"])
            if ann_image != image_id:
                raise DatasetError(
                    f"{item} says image {image_id} but its annotation {ann_id} "
                    f"belongs to image {ann_image}"
                )
            if ref_id in self._file_pos:
                raise DatasetError(f"{item} appears twice")
            self._file_pos[ref_id] = i
            if not raw_sents:
                self._file_refs.append(_FileRef(split, image_id, ref_id, ()))
                self._warn("ref_without_sentences", f"ref {ref_id}")
                continue
            sentences = []
            for j, raw in enumerate(raw_sents):
                keep = self.empty_sentences == "keep"
                sent = _sentence(raw, f"{item}, sentences[{j}]", keep)
                if sent is None:  # under keep, only a None sent
                    kind = "missing_sentence" if keep else "empty_sentence"
                    self._warn(kind, f"ref {ref_id}, sentences[{j}]")
                    sentences.append(None)
                    continue
                if not sent.sent.strip():  # kept as it is
                    self._warn("empty_sentence", f"ref {ref_id}, sentences[{j}]")
                if sent.sent_id in seen_sent:
                    raise DatasetError(
                        f"{item}: sent_id {sent.sent_id} is also in ref {seen_sent[sent.sent_id]}; "
                        "every expression needs its own sent_id (results are keyed by it)"
                    )
                seen_sent[sent.sent_id] = ref_id
                sentences.append(sent)
            ids = tuple(None if x is None else x.sent_id for x in sentences)
            self._file_refs.append(_FileRef(split, image_id, ref_id, ids))
            sentences = [x for x in sentences if x is not None]
            if not sentences:
                self._warn("ref_without_sentences", f"ref {ref_id}")
                continue
            sentences = tuple(sentences)
            if not self._mask_ok(ann_id):
                continue
            self.refs[ref_id] = Ref(ref_id, ann_id, image_id, split, category_id, sentences)

    def _mask_ok(self, ann_id: int) -> bool:
        """Whether the annotation's refs are kept: counts empty and clipped masks, and leaves
        out an empty one under ``empty_gt: skip``."""
        ann = self._anns[ann_id]
        info = self.images[int(ann["image_id"])]
        segm = ann["segmentation"]
        item = f"annotation {ann_id}"
        if isinstance(segm, list):
            polys = _polygons(segm, f"{self.instances_path}: {item}")
            if not polys:
                self._warn("empty_mask", f"{item} (no polygon with 3 or more points)")
                return self.empty_gt == "keep"
            allp = np.concatenate(polys).reshape(-1, 2)
            if (
                (allp < 0).any()
                or (allp[:, 0] > info.width).any()
                or (allp[:, 1] > info.height).any()
            ):
                self._warn("polygon_clipped", f"{item} (polygon outside the image)")
        rle = self._rle(ann_id)
        if int(mask_utils.area(rle)) == 0:
            overlap = ""
            if isinstance(segm, list) and self.polygon_overlap == "refer" and len(segm) > 1:
                overlap = ", or its polygons cover each other's every pixel"
            self._warn("empty_mask", f"{item} (mask has no pixel inside the image{overlap})")
            return self.empty_gt == "keep"
        return True

    def _check_images(self) -> None:
        # One directory listing instead of a stat per image: RefCOCO references ~20k images.
        present = set(os.listdir(self.image_dir))
        needed = sorted({r.image_id for r in self.refs.values()})
        missing = [
            self.images[i].file_name for i in needed if self.images[i].file_name not in present
        ]
        if missing:
            raise DatasetError(
                f"{self.image_dir / missing[0]}: image not found ({len(missing)} of {len(needed)} "
                "referenced images are missing from data.image_dir; is it the right folder?)"
            )

    def _index(self) -> None:
        self._file_by_image: dict[int, list[_FileRef]] | None = None  # built when first asked
        self._runs: dict[str, dict[int, int]] = {}  # split -> ref id -> its Stage 1 run
        self._by_split: dict[str, list[Ref]] = collections.defaultdict(list)
        self._by_image: dict[int, list[Ref]] = collections.defaultdict(list)
        for ref in sorted(self.refs.values(), key=lambda r: r.ref_id):
            self._by_split[ref.split].append(ref)
            self._by_image[ref.image_id].append(ref)

    # -- queries ---------------------------------------------------------------------------------

    def splits(self) -> list[str]:
        """The splits that have refs, in the usual order (train, val, test, testA, testB, ...)."""
        rank = {s: i for i, s in enumerate(_SPLIT_ORDER)}
        return sorted(self._by_split, key=lambda s: (rank.get(s, len(rank)), s))

    def split_refs(self, split: str) -> list[Ref]:
        """The refs of a split, by ascending ``ref_id``."""
        self._check_split(split)
        return list(self._by_split[split])

    def split_image_ids(self, split: str) -> list[int]:
        """The images that have refs in ``split``, sorted."""
        self._check_split(split)
        return sorted({r.image_id for r in self._by_split[split]})

    def refer_image_ids(self, split: str) -> list[int]:
        """The split's images in the order the official S+S+C training set lists them: REFER's
        ``getImgIds(getRefIds(split=split))``, i.e. ``list(set(...))`` of the image ids of every
        ref of ``split`` in the file, in file order (refs sssc skips included, as REFER keeps
        them). Python's set order of ints depends only on the values and the insertion order
        (no hash randomization), so this order is the same in every run of this interpreter; it
        is ascending only where the ids are small (the synthetic dataset's), not for COCO's."""
        self._check_split(split)
        in_file_order = [r.image_id for r in self._file_refs if r.split == split]
        return list(set(in_file_order))

    def file_image_refs(
        self, image_id: int, split: str
    ) -> list[tuple[int, tuple[int | None, ...]]]:
        """An image's refs of ``split`` as the official training set reads them (REFER's
        ``imgToRefs``: the refs file's order, refs sssc skips included), each as ``(ref_id,
        sent_ids)``: one entry per expression in the file, ``None`` for one sssc drops (empty).
        A ref sssc keeps is ``refs[ref_id]``."""
        if self._file_by_image is None:
            self._file_by_image = collections.defaultdict(list)
            for r in self._file_refs:
                self._file_by_image[r.image_id].append(r)
        return [(r.ref_id, r.sent_ids) for r in self._file_by_image[image_id] if r.split == split]

    def file_refs(self, split: str) -> list[tuple[int, tuple[int | None, ...]]]:
        """Every ref of ``split`` in the refs file's order (REFER's ``getRefIds(split=...)``,
        refs sssc skips included), each as ``(ref_id, sent_ids)`` (``None`` for an expression
        sssc drops, an empty one)."""
        self._check_split(split)
        return [(r.ref_id, r.sent_ids) for r in self._file_refs if r.split == split]

    def file_runs(self, image_id: int, split: str) -> list[list[Ref]]:
        """An image's refs of ``split`` as the official Stage 1 groups them: its driver walks the
        split's refs in file order (refs sssc skips included) and processes each run of
        consecutive refs of one image as one image. So an image whose refs are not contiguous in
        the file comes in several runs, each with its own refs (in file order); usually one."""
        self._check_split(split)
        runs = self._runs.get(split)
        if runs is None:
            runs, k, last = {}, -1, None
            for r in self._file_refs:
                if r.split != split:
                    continue
                if r.image_id != last:
                    k, last = k + 1, r.image_id
                runs[r.ref_id] = k
            self._runs[split] = runs
        out: dict[int, list[Ref]] = {}
        for r in self.image_refs(image_id, split, order="file"):
            out.setdefault(runs[r.ref_id], []).append(r)
        return [out[k] for k in sorted(out)]

    def image_refs(
        self, image_id: int, split: str | None = None, order: str = "ref_id"
    ) -> list[Ref]:
        """The refs of one image (optionally only those of ``split``), by ascending ``ref_id``
        (``order="ref_id"``), or in the refs file's order (``"file"``: REFER's ``imgToRefs``)."""
        refs = [r for r in self._by_image.get(image_id, []) if split is None or r.split == split]
        if order == "file":
            return sorted(refs, key=lambda r: self._file_pos[r.ref_id])
        if order != "ref_id":
            raise ValueError(f"order must be 'ref_id' or 'file', got {order!r}")
        return refs

    def annotation(self, ann_id: int) -> dict:
        """The COCO annotation dict (segmentation, bbox, area, category_id, ...)."""
        try:
            return self._anns[ann_id]
        except KeyError:
            raise DatasetError(f"{self.instances_path}: no annotation {ann_id}") from None

    def image_annotations(self, image_id: int) -> list[int]:
        """Every annotation id of the image, referred or not, ascending (S1 needs all instances)."""
        return sorted(self._image_anns.get(image_id, []))

    def gt_mask(self, ann_id: int) -> np.ndarray:
        """The annotation's mask, bool ``[H, W]`` at the image's original resolution.

        An annotation of several polygons follows ``data.polygon_overlap``: ``refer`` (REFER's
        ``getMask`` sums the polygons and LAVT keeps the pixels equal to 1, so where polygons
        overlap it is background) or ``union``.
        """
        return mask_utils.decode(self._rle(ann_id)).astype(bool)

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.images[image_id].file_name

    def load_image(self, image_id: int, orientation: str = "stored") -> np.ndarray:
        """The image as uint8 RGB ``[H, W, 3]``, fully decoded and checked
        (:func:`sssc.data.images.read_rgb`); ``orientation="exif"`` turns it as its EXIF
        orientation tag says, which must keep the size ``instances.json`` gives."""
        from .images import ImageReadError, read_rgb

        path = self.image_path(image_id)
        try:
            arr = read_rgb(path, orientation)
        except ImageReadError as e:
            raise DatasetError(str(e)) from None
        info = self.images[image_id]
        if arr.shape[:2] != (info.height, info.width):
            turned = " turned by its EXIF orientation tag" if orientation == "exif" else ""
            raise DatasetError(
                f"{path}: image is {arr.shape[0]}x{arr.shape[1]}{turned}, but "
                f"{self.instances_path} says {info.height}x{info.width}"
            )
        return arr

    def _rle(self, ann_id: int) -> dict:
        ann = self.annotation(ann_id)
        info = self.images[int(ann["image_id"])]
        h, w = info.height, info.width
        segm = ann["segmentation"]
        where = f"{self.instances_path}: annotation {ann_id}"
        if isinstance(segm, list) and ann_id in self._poly_rles:
            return self._poly_rles[ann_id]
        try:
            if isinstance(segm, list):  # polygons: a list of [x0, y0, x1, y1, ...]
                self._poly_rles[ann_id] = rle = self._rle_of_polygons(segm, h, w, where)
                return rle
            if isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed
                return mask_utils.frPyObjects(segm, h, w)
            if isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
                if list(segm.get("size", [])) != [h, w]:
                    raise DatasetError(
                        f"{where}: RLE size {segm.get('size')} differs from the image's {[h, w]}"
                    )
                counts = segm["counts"]
                return {
                    "size": [h, w],
                    "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
                }
        except DatasetError:
            raise
        except Exception as e:  # pycocotools raises bare Exceptions on bad input
            raise DatasetError(f"{where}: cannot decode segmentation ({e})") from None
        raise DatasetError(f"{where}: segmentation is neither polygons nor RLE")

    def _rle_of_polygons(self, segm: list, h: int, w: int, where: str) -> dict:
        polys = _polygons(segm, where)
        if not polys:
            return mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]
        rles = mask_utils.frPyObjects([p.tolist() for p in polys], h, w)
        if self.polygon_overlap == "refer" and len(rles) > 1:
            merged = mask_utils.merge(rles)
            if int(mask_utils.area(rles).sum()) == int(mask_utils.area(merged)):
                return merged  # no pixel covered twice: the sum is the union
            count = mask_utils.decode(rles).sum(axis=2)
            return mask_utils.encode(np.asfortranarray((count == 1).astype(np.uint8)))
        return mask_utils.merge(rles)

    def _check_split(self, split: str) -> None:
        if split not in self._by_split:
            raise DatasetError(
                f"{self.refs_path}: no refs in split {split!r}; splits: "
                f"{', '.join(self.splits()) or 'none'}"
            )


def _sentence(s: Any, item: str, keep_empty: bool = False) -> Sentence | None:
    """A sentence record; ``None`` for one without text (a ``None`` ``sent``, or an empty or
    blank one unless ``keep_empty``)."""
    try:
        sent_id = _int(s["sent_id"])
        sent = s["sent"]
        if sent is None or (isinstance(sent, str) and not sent.strip() and not keep_empty):
            return None
        if not isinstance(sent, str):
            raise TypeError(f"sent is a {type(sent).__name__}, not text")
        raw = s.get("raw")
        raw = raw if isinstance(raw, str) and raw.strip() else sent
        tokens = s.get("tokens")
        return Sentence(
            sent_id=sent_id,
            sent=sent,
            raw=raw,
            tokens=tuple(str(t) for t in tokens) if tokens else tuple(sent.split()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatasetError(
            f"{item} is malformed ({e!r}); a sentence needs sent_id and sent"
        ) from None


def _int(v: Any) -> int:
    """An id: an int (or an integral float/numpy scalar); text such as ``"7"`` or ``"x"`` is not."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating)):
        raise TypeError(f"id {v!r} is not an integer")
    if float(v) != int(v):
        raise ValueError(f"id {v!r} is not an integer")
    return int(v)


def _polygons(segm: list, where: str) -> list[np.ndarray]:
    """The polygons with 3 or more points, as float64 arrays; malformed ones are an error."""
    out = []
    for k, poly in enumerate(segm):
        try:
            p = np.asarray(poly, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: polygon {k} is not a list of numbers") from None
        if p.size % 2 or not np.isfinite(p).all():
            raise DatasetError(
                f"{where}: polygon {k} has an odd number of coordinates or a non-finite one"
            )
        if p.size >= 6:  # fewer than 3 points enclose nothing
            out.append(p)
    return out


def pack_images(
    refer: Refer,
    split: str,
    budget: int = 60,
    shuffle: bool = False,
    seed: int = 0,
    per_object: int = 0,
) -> list[list[int]]:
    """Pack whole images into batches of at most ``budget`` expressions.

    Images are taken in ascending id order (or a permutation drawn from ``seed`` when ``shuffle``)
    and appended to the current batch while it stays within the budget; an image with more
    expressions than the budget forms a batch on its own. Every image of the split appears in
    exactly one batch.

    Args:
        refer: the dataset.
        split: which split's images.
        budget: the most expressions per batch (the paper uses 60).
        shuffle: draw the image order from ``seed`` instead of ascending ids.
        seed: the permutation's seed.
        per_object: the expressions of each object a batch will actually hold (training keeps
            ``train.sentences_per_object`` of them per epoch); 0 counts them all.

    Returns:
        Image ids per batch.
    """
    if budget < 1:
        raise ValueError(f"pack_images: budget must be at least 1, got {budget}")
    if per_object < 0:
        raise ValueError(f"pack_images: per_object must be >= 0, got {per_object}")
    ids = refer.split_image_ids(split)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(ids))
        ids = [ids[i] for i in order]
    batches: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for image_id in ids:
        n = sum(
            min(len(r.sentences), per_object) if per_object > 0 else len(r.sentences)
            for r in refer.image_refs(image_id, split)
        )
        if cur and used + n > budget:
            batches.append(cur)
            cur, used = [], 0
        cur.append(image_id)
        used += n
    if cur:
        batches.append(cur)
    return batches
