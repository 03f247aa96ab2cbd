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


def encode_jpeg(rgb: np.ndarray, quality: int = 85, full_colour: bool = False) -> bytes:
    """JPEG bytes of an RGB uint8 image; ``full_colour`` keeps colour at full resolution (4:4:4,
    for thin coloured detail such as heatmap overlays) instead of halving it (4:2:0)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if full_colour:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


SMALLER_JPEG_QUALITIES = (70, 55, 40, 30)  # tried in turn when a JPEG must fit a broker's packet limit


def jpeg_within(rgb: np.ndarray, room: int) -> bytes | None:
    """The best JPEG of an RGB image of at most ``room`` bytes: lower qualities first, then halving its
    size (not below 96 px wide); None when none fits."""
    while True:
        for quality in SMALLER_JPEG_QUALITIES:
            data = encode_jpeg(rgb, quality)
            if len(data) <= room:
                return data
        if rgb.shape[1] < 192:
            return None
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image (PNG, JPEG) as RGB uint8; ValueError if it is not one."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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
