"""Reading an image file as 8-bit RGB, refusing what would be read wrong without a word.

* A PNG's chunks are checked against their CRC-32s before decoding: PIL decodes some damaged
  PNGs (a flipped byte in the compressed data) into garbage without an error.
* The whole file is decoded, so a truncated JPEG or PNG is an error, not a grey bottom half.
* Modes that ``convert("RGB")`` would clip (16-bit ``I;16``, 32-bit ``I`` and ``F``) are refused:
  a 16-bit PNG would come out all white.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageReadError", "check_png", "read_rgb"]

# ImageNet statistics, with which Swin (LAVT) and GroundingDINO normalise their inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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


def read_rgb(path: str | Path) -> np.ndarray:
    """The image at ``path`` as uint8 RGB ``[H, W, 3]``, fully decoded and checked.

    Raises:
        ImageReadError: unreadable, damaged or truncated file, or a mode that is not 8-bit.
    """
    from PIL import Image

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
            return np.asarray(im.convert("RGB"))
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise these
        raise ImageReadError(f"{path}: cannot decode image ({e})") from None
