"""Reading a user's photo as the small square image the model reads, within fixed limits.

Used by app.py for every image that reaches the model: uploaded files and inline
base64 `data:` images alike. The limits bound what one request can cost before anything
is decoded at full size: the file's bytes, its format (only the formats named in
FORMAT_NAMES are opened, so no Ghostscript or other rarely used decoder ever runs), and
its pixel count, read from the header. Every refusal is a UserError whose message says
what is wrong with the file.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

# Pillow's names, and how the page names them.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
FORMAT_NAMES = "JPEG, PNG, GIF, WebP, BMP, TIFF or AVIF"
MAX_FILE_BYTES = 20_000_000  # also Gradio's upload limit (launch(max_file_size=) in bytes)
# Gradio keeps each session's last inputs in memory (app.STATE_SESSIONS of them), an inline
# image's base64 among them: at 20 MB each, a burst of them held 1.8 GB; at 2 MB, 180 MB.
MAX_INLINE_BYTES = 2_000_000
MIN_SIDE = 8
# Decoding cost is what bounds memory: a JPEG is decoded at 1/2 to 1/8 scale (draft
# mode), so a photo of any camera is cheap; other formats are decoded in full and are
# refused above this many pixels (25 MP: 100 MB as RGBA).
MAX_DECODED_PIXELS = 25_000_000
# A JPEG's own size is bounded too: at 1/8 scale 400 MP still decodes to 6 MP, while a
# few-kilobyte file that claims 60000x60000 pixels is a decompression bomb.
MAX_JPEG_PIXELS = 400_000_000
# A progressive JPEG is different: libjpeg holds all its coefficients at full size whatever
# the draft scale, and each scan is one more pass over them. So its pixels are held to
# MAX_DECODED_PIXELS and its scans counted (encoders write about 10; a crafted file
# repeats them by the hundred to make every request take minutes).
MAX_JPEG_SCANS = 40
# A phone's multi-picture file (MPO) is a JPEG with more pictures after the first.
JPEG_FORMATS = ("JPEG", "MPO")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF orientation -> how to turn the stored pixels upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What a malformed file makes Pillow's decoders raise.
DAMAGED = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, ZeroDivisionError)

NO_IMAGE = "No image: upload a photo or pick one of the examples first."
UNSUPPORTED = f"Unsupported format: this app reads {FORMAT_NAMES} images, and that file is none of these."
TOO_MANY_PIXELS = "The image has too many pixels to decode safely; save it smaller."
EXPIRED = "This picture has expired (the server keeps uploads for a while only); upload it again."


class UserError(ValueError):
    """A problem with what the user sent; the message is for them."""


def rules(size: int) -> str:
    """How an image is read, in words for the page (Markdown)."""
    return (
        f"Any photo works: it is **center-cropped to a square and resized to {size}x{size}** "
        f"(bicubic, antialiased), the size the model was trained on; it is turned upright "
        f"(EXIF), transparency becomes white, an animation gives its first frame and "
        f"16-bit grayscale is scaled to 8 bits. {FORMAT_NAMES} files up to "
        f"{MAX_FILE_BYTES // 1_000_000} MB; JPEGs up to {MAX_JPEG_PIXELS // 1_000_000} "
        f"megapixels (decoded at reduced scale), other formats up to "
        f"{MAX_DECODED_PIXELS // 1_000_000}; at least {MIN_SIDE}x{MIN_SIDE} pixels."
    )


def read_data_url(url: str) -> BinaryIO:
    """The bytes of an inline `data:[type];base64,...` image, held to MAX_INLINE_BYTES
    before they are decoded from base64 (and never decoded as an image here)."""
    header, comma, body = url.partition(",")
    if not comma or ";base64" not in header:
        raise UserError("An inline image must be a base64 `data:` URL (data:image/png;base64,...).")
    if len(body) > (MAX_INLINE_BYTES + 2) // 3 * 4:
        raise UserError(
            f"The inline image is about {len(body) * 3 // 4 / 1e6:.1f} MB; inline "
            f"images up to {MAX_INLINE_BYTES // 1_000_000} MB are accepted: upload "
            f"bigger ones as files (up to {MAX_FILE_BYTES // 1_000_000} MB)."
        )
    try:
        return io.BytesIO(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError):
        raise UserError("The inline image is not valid base64.") from None


def _check_bytes(source: str | os.PathLike | BinaryIO) -> None:
    """Refuse an empty file, or one over the upload limit that reached here another way."""
    if hasattr(source, "seek"):
        size = source.seek(0, os.SEEK_END)
        source.seek(0)
    else:
        size = os.stat(source).st_size
    if size == 0:
        raise UserError("The image file is empty (0 bytes): upload it again.")
    if size > MAX_FILE_BYTES:
        raise UserError(
            f"The image file is {size / 1e6:.1f} MB; images up to {MAX_FILE_BYTES // 1_000_000} MB are accepted."
        )


def _open(source: str | os.PathLike | BinaryIO) -> Image.Image:
    """Open (headers only) one of FORMATS, or say why not."""
    try:
        return Image.open(source, formats=FORMATS)
    except UnidentifiedImageError:
        raise UserError(UNSUPPORTED) from None
    except Image.DecompressionBombError:
        # Pillow's guard counts full-size pixels, but a JPEG is decoded at reduced scale:
        # open it without the guard and let MAX_JPEG_PIXELS judge it.
        if hasattr(source, "seek"):
            source.seek(0)
        image = JpegImagePlugin.JpegImageFile(source) if _is_jpeg(source) else None
        if image is None or image.width * image.height > MAX_JPEG_PIXELS:
            raise UserError(TOO_MANY_PIXELS) from None
        return image


def _is_jpeg(source: str | os.PathLike | BinaryIO) -> bool:
    if hasattr(source, "read"):
        start = source.read(3)
        source.seek(0)
    else:
        with open(source, "rb") as file:
            start = file.read(3)
    return start == b"\xff\xd8\xff"


def _check_size(image: Image.Image, size: int) -> None:
    """Refuse too small or too big before anything is decoded; JPEGs get draft mode."""
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise UserError(
            f"The image is {width}x{height} pixels; it needs at least {MIN_SIDE}x{MIN_SIDE} to show anything."
        )
    if image.format in JPEG_FORMATS:
        if width * height > MAX_JPEG_PIXELS:
            raise UserError(TOO_MANY_PIXELS)
        if image.info.get("progressive"):
            _check_progressive(image, width * height)
        # Decode at the smallest 1/2^k scale that is still 4x the target size.
        image.draft(None, (4 * size, 4 * size))
    if image.width * image.height > MAX_DECODED_PIXELS:
        raise UserError(
            f"The image is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than "
            f"the {MAX_DECODED_PIXELS // 1_000_000} megapixels this app decodes; save it smaller "
            "or as a JPEG."
        )


def _check_progressive(image: Image.Image, pixels: int) -> None:
    if pixels > MAX_DECODED_PIXELS:
        raise UserError(
            f"The image is a progressive JPEG of {pixels / 1e6:.0f} megapixels; progressive "
            f"JPEGs are decoded at full size, so this app reads them up to "
            f"{MAX_DECODED_PIXELS // 1_000_000} megapixels: save it smaller or as a baseline JPEG."
        )
    position = image.fp.tell()
    image.fp.seek(0)
    # Inside the compressed data a 0xFF byte is always followed by 0x00, so each FF DA is
    # a start-of-scan marker.
    scans = image.fp.read(MAX_FILE_BYTES + 1).count(b"\xff\xda")
    image.fp.seek(position)
    if scans > MAX_JPEG_SCANS:
        raise UserError(
            f"The JPEG has {scans} progressive scans, more than the "
            f"{MAX_JPEG_SCANS} this app decodes; save it again as a baseline JPEG."
        )


def _square(image: Image.Image, size: int) -> Image.Image:
    """The decoded image -> its center square at size x size, upright, 8-bit RGB on white.

    The crop and resize come first, so that the full-size image is converted at most once;
    the center square is the same whichever way EXIF says to turn the picture."""
    orientation = image.getexif().get(0x0112, 1)
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if image.mode in SIXTEEN_BIT_MODES:
        small = _wide_gray_to_eight_bits(image, size)
    else:
        mode = "RGBA" if transparent else ("L" if image.mode in ("1", "L") else "RGB")
        small = ImageOps.fit(
            image.convert(mode) if image.mode != mode else image, (size, size), Image.Resampling.BICUBIC
        )
    if orientation in UPRIGHT:
        small = small.transpose(UPRIGHT[orientation])
    if small.mode in ("RGBA", "LA"):
        return Image.alpha_composite(Image.new("RGBA", small.size, "white"), small.convert("RGBA")).convert("RGB")
    return small.convert("RGB")


def _wide_gray_to_eight_bits(image: Image.Image, size: int) -> Image.Image:
    """16- or 32-bit grayscale -> its center square at size x size, 8-bit "L" (or "LA"
    with its transparent level as alpha). 16-bit values scale by 255/65535 (Pillow's own
    conversion clips at 255 instead); a 32-bit image whose values fit in 8 bits keeps them."""
    wide = image.convert("I")
    divisor = 257 if image.mode != "I" or wide.getextrema()[1] > 255 else 1
    small = ImageOps.fit(wide, (size, size), Image.Resampling.BICUBIC)
    levels = np.asarray(small, dtype=np.float64) / divisor
    gray = Image.fromarray(levels.round().clip(0, 255).astype(np.uint8))
    if "transparency" not in image.info:
        return gray
    opaque = (np.asarray(wide) != image.info["transparency"]).astype(np.uint8) * 255
    alpha = ImageOps.fit(Image.fromarray(opaque), (size, size), Image.Resampling.BICUBIC)
    return Image.merge("LA", (gray, alpha))


def load_photo(source: str | os.PathLike | BinaryIO | None, size: int) -> torch.Tensor:
    """A photo (a path or an open binary file) as the uint8 (3, size, size) image the
    model reads; a UserError says what is wrong with it otherwise."""
    if source is None:
        raise UserError(NO_IMAGE)
    try:
        _check_bytes(source)
        with _open(source) as image:
            _check_size(image, size)
            image.load()
            square = _square(image, size)
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(TOO_MANY_PIXELS) from None
    except FileNotFoundError:  # the server deletes uploads and pictures after a while
        raise UserError(EXPIRED) from None
    except DAMAGED as err:
        # A decoder's own words help (a ValueError, say), a file system's would only name
        # a path on the server.
        detail = "" if isinstance(err, OSError) else f": {err}"
        raise UserError(
            f"The image file is damaged or incomplete (for example a truncated download) and cannot be decoded{detail}."
        ) from None
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1)
