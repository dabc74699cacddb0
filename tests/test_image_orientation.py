"""EXIF orientation (README row 42, ``segment.models.image_orientation``).

The official Stage 1 reads its images with ``cv2.imread``, which turns an image as its EXIF
orientation tag says; its Stage 2, training and evaluation read the stored pixels with PIL. sssc
reads the stored pixels everywhere unless ``image_orientation: exif``, which turns Stage 1's
input as OpenCV does. The reference is OpenCV itself, reading the same files.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from sssc.data import DatasetError
from sssc.data.images import ImageReadError, exif_orientation, orient, read_rgb

# A non-square image whose quadrants differ, in flat blocks (JPEG keeps them to within a level).
_H, _W = 40, 64


def _pattern(h: int = _H, w: int = _W) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[h // 2 :, w * 5 // 8 :] = (0, 255, 0)
    a[h // 8 : h // 4, w * 3 // 4 : w * 15 // 16] = (0, 0, 255)
    return a


def _save(path, arr: np.ndarray, tag: int | None) -> None:
    im = Image.fromarray(arr)
    kw = {"quality": 100} if path.suffix == ".jpg" else {}
    if tag is not None:
        exif = im.getexif()
        exif[0x0112] = tag
        kw["exif"] = exif
    im.save(path, **kw)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize("tag", range(1, 9))
def test_exif_orientation_reads_as_opencv(tmp_path, fmt, tag):
    """``orientation="exif"`` gives what ``cv2.imread`` gives (the official Stage 1's reader);
    ``stored`` what it gives told to ignore the tag, which is also PIL's plain decode."""
    path = tmp_path / f"o{tag}.{fmt}"
    _save(path, _pattern(), tag)
    assert exif_orientation(path) == tag
    turned = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]
    got = read_rgb(path, "exif")
    assert got.shape == turned.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, turned)
    np.testing.assert_array_equal(read_rgb(path), stored)
    with Image.open(path) as im:
        np.testing.assert_array_equal(read_rgb(path), np.asarray(im.convert("RGB")))
    assert turned.shape[:2] == ((_W, _H) if tag >= 5 else (_H, _W))
    if tag != 1:  # the test can fail: the turn changes the pixels
        assert got.shape != stored.shape or not np.array_equal(got, stored)


@pytest.mark.parametrize("tag", range(1, 9))
def test_orient_is_the_exif_definition(tag):
    """Each tag by its definition, on index arrays: where the stored pixel (r, c) of an
    ``h x w`` image goes in the view (``(row, col)`` of the turned image)."""
    h, w = 3, 5
    a = np.arange(h * w).reshape(h, w)
    where = {
        1: lambda r, c: (r, c),
        2: lambda r, c: (r, w - 1 - c),  # mirrored
        3: lambda r, c: (h - 1 - r, w - 1 - c),  # 180 degrees
        4: lambda r, c: (h - 1 - r, c),  # flipped
        5: lambda r, c: (c, r),  # transposed
        6: lambda r, c: (c, h - 1 - r),  # 90 degrees clockwise
        7: lambda r, c: (w - 1 - c, h - 1 - r),  # transversed
        8: lambda r, c: (w - 1 - c, r),  # 90 degrees anticlockwise
    }[tag]
    out = orient(a, tag)
    want = np.full((w, h) if tag >= 5 else (h, w), -1)
    for r in range(h):
        for c in range(w):
            want[where(r, c)] = a[r, c]
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("tag", [0, 9, 65535])
def test_invalid_tag_turns_nothing_as_in_opencv(tmp_path, tag):
    path = tmp_path / "bad.jpg"
    _save(path, _pattern(), tag)
    assert exif_orientation(path) == 1
    np.testing.assert_array_equal(read_rgb(path, "exif"), cv2.imread(str(path))[..., ::-1])


def test_xmp_orientation_is_not_an_exif_tag(tmp_path):
    """An XMP ``tiff:Orientation`` without EXIF: PIL's ``getexif`` reports it, OpenCV turns
    nothing, and neither does sssc."""
    path = tmp_path / "xmp.jpg"
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    Image.fromarray(_pattern()).save(path, xmp=xmp, quality=100)
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 6
    ref = cv2.imread(str(path))[..., ::-1]
    assert ref.shape[:2] == (_H, _W)
    assert exif_orientation(path) == 1
    np.testing.assert_array_equal(read_rgb(path, "exif"), ref)


def test_bad_arguments_and_files(tmp_path):
    path = tmp_path / "a.png"
    _save(path, _pattern(), 6)
    with pytest.raises(ValueError, match="orientation must be one of"):
        read_rgb(path, "turned")
    with pytest.raises(ImageReadError, match="cannot read image"):
        exif_orientation(tmp_path / "missing.png")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        exif_orientation(tmp_path / "junk.jpg")


def _tag_fixture_images(root, tags: dict[int, int]) -> None:
    """Rewrite the fixture's images (``test_refer.write_fixture``) with EXIF orientation tags,
    pixels unchanged."""
    for iid, tag in tags.items():
        path = root / "images" / f"COCO_train2014_{iid:012d}.png"
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        _save(path, arr, tag)


def test_load_image_turns_only_when_asked(tmp_path):
    """``Refer.load_image`` reads stored pixels; ``exif`` turns them, and a turn to another shape
    than ``instances.json``'s is an error naming the file."""
    from test_refer import SIZES, _open, write_fixture

    write_fixture(tmp_path)
    _tag_fixture_images(tmp_path, {1: 3, 2: 6})
    refer = _open(tmp_path)
    for iid in (1, 2):
        path = refer.image_path(iid)
        stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        np.testing.assert_array_equal(refer.load_image(iid), stored[..., ::-1])
    turned = cv2.imread(str(refer.image_path(1)))[..., ::-1]
    np.testing.assert_array_equal(refer.load_image(1, "exif"), turned)
    assert refer.load_image(1, "exif").shape[:2] == SIZES[1]
    with pytest.raises(DatasetError, match=r"000000000002\.png: image is 47x33 turned by its EXIF"):
        refer.load_image(2, "exif")


def test_turned_images_are_those_whose_shape_changes(tmp_path):
    """Tags 5-8 on a non-square image change its shape; 2-4 never do."""
    from test_refer import _open, write_fixture

    from sssc.segment.runner import turned_images
    from sssc.stages import StageError, _check_turned, _Ranks

    write_fixture(tmp_path)
    _tag_fixture_images(tmp_path, {1: 3, 2: 6, 3: 8, 4: 4})
    refer = _open(tmp_path)
    ids = sorted(refer.images)
    assert turned_images(refer, ids) == [(2, 6), (3, 8)]
    assert turned_images(refer, [1, 4]) == []
    with pytest.raises(StageError, match=r"2 of 4 images turn to another shape.*image 2 \("):
        _check_turned(refer, ids, _Ranks())
    _check_turned(refer, [1, 4], _Ranks())  # shapes kept: nothing to refuse


def test_data_check_names_tagged_images(tmp_path, capsys):
    from test_refer import write_fixture

    from sssc.cli import main

    write_fixture(tmp_path)
    args = ["data", "check", "--root", str(tmp_path), "--dataset", "refcoco", "--split-by", "unc"]
    args += ["--image-dir", str(tmp_path / "images")]
    assert main(args) == 0
    assert "EXIF orientation" not in capsys.readouterr().out
    _tag_fixture_images(tmp_path, {1: 3, 2: 6, 4: 1})
    for extra in ([], ["--headers-only"]):
        assert main([*args, *extra]) == 0
        out = capsys.readouterr().out
        assert "EXIF orientation: 2 images carry a tag other than 1, 1 of them" in out
        assert "COCO_train2014_000000000001.png (tag 3)" in out and "row 42" in out
