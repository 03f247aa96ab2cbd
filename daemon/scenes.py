"""Generated captioned scenes: simple shapes on textured backgrounds, with ground truth.

Every scene is drawn from its own random stream ``default_rng([seed, index])``, so a scene
depends only on (seed, index), never on how many were drawn before it. Each object records
the caption words that name it and its outline polygon, so explanations can be scored
against where the object really is.

This module uses only numpy and OpenCV: the capture process draws the ``scenes`` camera
source with it. Writing scene folders (``explaincam scenes``) is ``convert.scenes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

IMAGE_SIZE = 224
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 50),
    "blue": (40, 70, 215),
    "yellow": (235, 210, 30),
    "purple": (140, 50, 185),
}
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COUNT_WORDS = {2: "two", 3: "three"}
SIZES = ("small", "medium", "large")  # single objects are small or large; objects in pairs and groups medium
RELATIONS = ("left of", "above")


@dataclass
class SceneObject:
    """One drawn object: what it is, which caption words name it and its outline."""

    colour: str
    shape: str
    size: str
    center: tuple[float, float]
    radius: float
    polygon: list[list[int]]
    token_indices: list[int] = field(default_factory=list)

    def words(self, caption: str) -> list[str]:
        """The caption words that name this object."""
        tokens = caption.split()
        return [tokens[i] for i in self.token_indices]

    def to_json(self, caption: str) -> dict:
        """The object's ground-truth record for captions.jsonl."""
        return {
            "words": self.words(caption),
            "token_indices": self.token_indices,
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "center": [round(self.center[0], 1), round(self.center[1], 1)],
            "polygon": self.polygon,
        }


@dataclass
class Scene:
    """A generated image, its caption and the objects in it."""

    image: np.ndarray  # HxWx3 uint8, RGB
    caption: str
    objects: list[SceneObject]

    def mask(self, token_index: int) -> np.ndarray:
        """Boolean mask of every object that the caption word at ``token_index`` names."""
        return objects_mask(self.objects, token_index, self.image.shape[:2])

    def foreground(self, cell: int = 1) -> np.ndarray:
        """Boolean mask of all objects; with ``cell`` > 1, per cell x cell block: any object pixel."""
        mask = np.zeros(self.image.shape[:2], np.uint8)
        for obj in self.objects:
            cv2.fillPoly(mask, [np.asarray(obj.polygon, np.int32)], 1)
        return block_any(mask.astype(bool), cell)


def block_any(mask: np.ndarray, cell: int) -> np.ndarray:
    """Downsample a boolean (..., H, W) mask by ``cell``: a block is True if any pixel is."""
    h, w = mask.shape[-2] // cell, mask.shape[-1] // cell
    blocks = mask[..., :h * cell, :w * cell].reshape(*mask.shape[:-2], h, cell, w, cell)
    return blocks.any(axis=(-3, -1))


def objects_mask(objects: list, token_index: int, shape: tuple[int, int]) -> np.ndarray:
    """Union mask of the objects (SceneObject or their JSON records) named by one word."""
    mask = np.zeros(shape, np.uint8)
    for obj in objects:
        indices = obj["token_indices"] if isinstance(obj, dict) else obj.token_indices
        polygon = obj["polygon"] if isinstance(obj, dict) else obj.polygon
        if token_index in indices:
            cv2.fillPoly(mask, [np.asarray(polygon, np.int32)], 1)
    return mask.astype(bool)


def shape_polygon(shape: str, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Outline of a shape as an (N, 2) int32 polygon."""
    cx, cy = center
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        pts = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)
    elif shape == "square":
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)
    elif shape == "triangle":
        t = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        r = radius * 1.15
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t) + radius * 0.2], 1)
    elif shape == "cross":
        a, b = radius, radius * 0.36
        base = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
                         (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)])
        c, s = np.cos(angle), np.sin(angle)
        pts = base @ np.array([[c, s], [-s, c]]) + (cx, cy)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.round(pts).astype(np.int32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A desaturated, textured, unevenly lit background (float32, 0..255)."""
    grey = rng.uniform(70, 190)
    tint = rng.normal(0, 12, 3)
    img = np.full((size, size, 3), grey, np.float32) + tint
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(4)
    if kind == 0:  # stripes
        freq, phase, theta = rng.uniform(4, 14), rng.uniform(0, 6.3), rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        img += (wave * rng.uniform(6, 18))[..., None]
    elif kind == 1:  # blotches: upsampled low-resolution noise
        low = rng.normal(0, 1, (7, 7)).astype(np.float32)
        img += (cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 20))[..., None]
    elif kind == 2:  # checker
        n = rng.integers(4, 12)
        check = ((np.floor(xx * n) + np.floor(yy * n)) % 2) * 2 - 1
        img += (check * rng.uniform(5, 14))[..., None]
    # kind 3: plain, only noise and lighting
    gx, gy = rng.normal(0, 0.35, 2)
    img *= (1.0 + gx * (xx - 0.5) + gy * (yy - 0.5))[..., None]
    return img


def _place(rng: np.random.Generator, radii: list[float], relation: str | None, size: int) -> list[tuple[float, float]] | None:
    """Centres for objects of the given radii, apart and (for two) in the given relation."""
    margin = 6
    for _ in range(200):
        centres = [(rng.uniform(r + margin, size - r - margin), rng.uniform(r + margin, size - r - margin)) for r in radii]
        ok = all(
            np.hypot(a[0] - b[0], a[1] - b[1]) > ra + rb + 10
            for i, (a, ra) in enumerate(zip(centres, radii))
            for b, rb in zip(centres[i + 1:], radii[i + 1:])
        )
        if not ok:
            continue
        if relation is not None:
            (x0, y0), (x1, y1) = centres
            dx, dy = x1 - x0, y1 - y0
            if relation == "left of" and not (dx > 1.8 * abs(dy) and dx > radii[0] + radii[1] + 10):
                continue
            if relation == "above" and not (dy > 1.8 * abs(dx) and dy > radii[0] + radii[1] + 10):
                continue
        return centres
    return None


def generate_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
    """Draw one scene: one object, two in a spatial relation, or two or three alike."""
    while True:
        kind = rng.choice(["single", "relation", "count2", "count3"], p=[0.3, 0.4, 0.15, 0.15])
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        if kind == "single":
            big = bool(rng.integers(2))
            radius = rng.uniform(44, 62) if big else rng.uniform(18, 28)
            radii, specs = [radius], [(colour, shape, "large" if big else "small")]
            relation = None
        elif kind == "relation":
            other = (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
            if other == (colour, shape):
                continue
            radii = list(rng.uniform(24, 36, 2))
            specs = [(colour, shape, "medium"), (*other, "medium")]
            relation = str(rng.choice(RELATIONS))
        else:
            n = 2 if kind == "count2" else 3
            radii = list(rng.uniform(20, 30, n))
            specs = [(colour, shape, "medium")] * n
            relation = None
        centres = _place(rng, radii, relation, size)
        if centres is not None:
            break

    img = _background(rng, size)
    objects = []
    for (c, s, sz), centre, r in zip(specs, centres, radii):
        poly = shape_polygon(s, centre, r, rng.uniform(-0.35, 0.35))
        rgb = np.clip(np.array(COLOURS[c], np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 10, 3), 0, 255)
        cv2.fillPoly(img, [poly], rgb.tolist(), lineType=cv2.LINE_AA)
        objects.append(SceneObject(c, s, sz, (float(centre[0]), float(centre[1])), float(r), poly.tolist()))

    img *= rng.uniform(0.75, 1.2)  # global lighting
    img += rng.normal(0, rng.uniform(2, 9), img.shape)  # sensor noise
    image = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)

    if kind == "single":
        o = objects[0]
        caption = f"a {o.size} {o.colour} {o.shape}"
        o.token_indices = [1, 2, 3]
    elif kind == "relation":
        a, b = objects
        rel = relation.split()
        caption = f"a {a.colour} {a.shape} {relation} a {b.colour} {b.shape}"
        a.token_indices = [1, 2]
        b.token_indices = [4 + len(rel), 5 + len(rel)]
    else:
        caption = f"{COUNT_WORDS[len(objects)]} {colour} {PLURALS[shape]}"
        for o in objects:
            o.token_indices = [0, 1, 2]
    return Scene(image, caption, objects)


def scene_at(seed: int, index: int) -> Scene:
    """The scene number ``index`` of the stream for ``seed``."""
    return generate_scene(np.random.default_rng([seed, index]))


def scene_vocabulary() -> list[str]:
    """Every word a generated caption can use, in a fixed order."""
    words = ["a", "two", "three", "small", "large", "left", "of", "above"]
    words += list(COLOURS) + list(SHAPES) + [PLURALS[s] for s in SHAPES]
    return words
