"""Image encoding and decoding, the one place that does it: PNG, JPEG, base64 text, image files.

Every image in the daemon is RGB uint8 (or a grey (H, W) uint8 map); OpenCV's BGR order
stays inside this module. Heatmaps (0..1 maps) become grey PNGs in
``daemon.explain.heatmap``, built on these functions.
"""

from __future__ import annotations

import base64
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def to_rgb(image: np.ndarray) -> np.ndarray:
    """RGB uint8 from an OpenCV BGR, BGRA or grey image."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a grey (H, W) or RGB (H, W, 3) uint8 image."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """Grey or RGB uint8 image of PNG bytes; raise ValueError if they are not an image."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a decodable PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def to_base64(data: bytes) -> str:
    """Base64 text of bytes (how JSON payloads carry images)."""
    return base64.b64encode(data).decode("ascii")


def from_base64(text: str) -> bytes:
    """The bytes of base64 text; raise ValueError (binascii.Error) on anything but the base64 alphabet."""
    return base64.b64decode(text, validate=True)


def png_base64(image: np.ndarray) -> str:
    """Base64 text of the PNG of a grey or RGB uint8 image."""
    return to_base64(encode_png(image))


def png_from_base64(text: str) -> np.ndarray:
    """The grey or RGB uint8 image of base64 PNG text; ValueError if it is not one."""
    return decode_png(from_base64(text))


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8; raise ValueError with the reason if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


REDUCED_JPEG_READS = ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
                      (8, cv2.IMREAD_REDUCED_COLOR_8))


def read_image(path: Path, max_pixels: int) -> tuple[np.ndarray | None, str]:
    """An image file as OpenCV BGR(A)/grey, at most ``max_pixels`` large; ``(None, why)`` when it
    cannot be read. The size comes from the header (Pillow reads no pixels for it); a JPEG
    over the limit is decoded at 1/2, 1/4 or 1/8 size (cheap: the decoder skips detail)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as header:
                width, height, kind = header.width, header.height, header.format
    except (OSError, Image.DecompressionBombError, ValueError):
        return None, "missing or not a readable image"
    flag = cv2.IMREAD_COLOR
    if width * height > max_pixels:
        fits = [flag for factor, flag in REDUCED_JPEG_READS if width * height <= max_pixels * factor * factor]
        if kind != "JPEG" or not fits:
            return None, (f"{width}x{height} is larger than camera.source.max_pixels ({max_pixels} pixels)"
                          + ("" if kind == "JPEG" else "; only JPEG files are read at a reduced size"))
        flag = fits[0]
    image = cv2.imread(str(path), flag)
    return (image, "") if image is not None else (None, "missing or not a readable image")
