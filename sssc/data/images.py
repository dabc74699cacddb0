"""Reading an image file as 8-bit RGB, refusing what would be read wrong without a word.

* A PNG's chunks are checked against their CRC-32s before decoding: PIL decodes some damaged
  PNGs (a flipped byte in the compressed data) into garbage without an error.
* The whole file is decoded, so a truncated JPEG or PNG is an error, not a grey bottom half.
* Modes that ``convert("RGB")`` would clip (16-bit ``I;16``, 32-bit ``I`` and ``F``) are refused:
  a 16-bit PNG would come out all white.
* The pixels are read as stored, as COCO's annotations are drawn on them; an EXIF orientation tag
  is applied only when asked (``orientation="exif"``), as OpenCV's ``cv2.imread`` does, which the
  official Stage 1 reads its images with (``segment.models.image_orientation``, README row 42).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ORIENTATIONS",
    "ImageReadError",
    "check_png",
    "exif_orientation",
    "orient",
    "read_rgb",
    "turns_shape",
]

# ImageNet statistics, with which Swin (LAVT) and GroundingDINO normalise their inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How an image is read: as stored, or turned as its EXIF orientation tag says.
ORIENTATIONS = ("stored", "exif")
_ORIENTATION_TAG = 0x0112
_EIGHT_BIT = {"1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBX", "La", "RGBa"}


class ImageReadError(ValueError):
    """An image file that cannot be read as it is; the message names the file and why."""


def check_png(data: bytes, where: str = "PNG") -> None:
    """Check every chunk's CRC-32 and the IEND end of a PNG file's bytes.

    Raises:
        ImageReadError: a chunk fails its CRC, the file ends early, or has no IEND.
    """
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length + 4
        if end > len(data):
            raise ImageReadError(f"{where}: truncated PNG (chunk {kind!r} runs past the end)")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise ImageReadError(
                f"{where}: damaged PNG: chunk {kind.decode('latin-1')!r} at byte {pos} fails its "
                "CRC-32 check (flipped bytes on disk or in transfer); get the file again"
            )
        if kind == b"IEND":
            return
        pos = end
    raise ImageReadError(f"{where}: truncated PNG (no IEND chunk)")


def _tag(im) -> int:
    """The EXIF orientation tag of an open PIL image: 1 (none) to 8; 1 when absent or invalid.

    Read from the EXIF block only (a JPEG's APP1, a PNG's eXIf), as OpenCV reads it: PIL's
    ``getexif`` would also take an XMP ``tiff:Orientation``, which OpenCV ignores.
    """
    from PIL import Image

    raw = im.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        tag = int(exif.get(_ORIENTATION_TAG, 1))
    except (OSError, ValueError, TypeError, SyntaxError, struct.error):
        return 1  # an unreadable EXIF block turns nothing
    return tag if 1 <= tag <= 8 else 1


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of the image at ``path`` (1 to 8; 1 when it has none), read from
    its header only.

    Raises:
        ImageReadError: the file cannot be opened as an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _tag(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from None


def orient(arr: np.ndarray, tag: int) -> np.ndarray:
    """``arr`` (``[H, W, ...]``, stored pixels) as a viewer shows it under EXIF orientation
    ``tag``: 2 mirrored, 3 turned 180 degrees, 4 flipped, 5 transposed, 6 turned 90 degrees
    clockwise, 7 transversed, 8 turned 90 degrees anticlockwise; 1 (or any other value) as is."""
    if tag == 2:
        return arr[:, ::-1]
    if tag == 3:
        return arr[::-1, ::-1]
    if tag == 4:
        return arr[::-1]
    if tag == 5:
        return arr.swapaxes(0, 1)
    if tag == 6:
        return arr[::-1].swapaxes(0, 1)
    if tag == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if tag == 8:
        return arr[:, ::-1].swapaxes(0, 1)
    return arr


def turns_shape(tag: int, height: int, width: int) -> bool:
    """Whether EXIF orientation ``tag`` turns a ``height x width`` image to another shape (tags
    5 to 8, which swap its axes, on a non-square image)."""
    return tag >= 5 and height != width


def read_rgb(path: str | Path, orientation: str = "stored") -> np.ndarray:
    """The image at ``path`` as uint8 RGB ``[H, W, 3]``, fully decoded and checked.

    ``orientation``: ``stored`` (the pixels as stored) or ``exif`` (turned as the file's EXIF
    orientation tag says, as ``cv2.imread`` reads it; ``[W, H, 3]`` under tags 5 to 8).

    Raises:
        ImageReadError: unreadable, damaged or truncated file, or a mode that is not 8-bit.
        ValueError: an unknown ``orientation``.
    """
    from PIL import Image

    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read image ({e.strerror or e})") from None
    if data.startswith(_PNG_SIGNATURE):
        check_png(data, str(path))
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in _EIGHT_BIT:
                raise ImageReadError(
                    f"{path}: a {im.mode} image ({'16' if '16' in im.mode else '32'}-bit); sssc "
                    "reads 8-bit images and would clip it. Convert it to 8-bit RGB first"
                )
            im.load()  # decodes everything: a truncated file raises here
            arr = np.asarray(im.convert("RGB"))
            if orientation == "exif":
                arr = np.ascontiguousarray(orient(arr, _tag(im)))
            return arr
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise these
        raise ImageReadError(f"{path}: cannot decode image ({e})") from None
