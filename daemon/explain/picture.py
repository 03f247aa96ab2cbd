"""The explanation picture: per word the frame and one overlay per heatmap method, then the
rows of methods that draw their own (ACE's concept map, legend and counterfactual).

numpy + OpenCV only. The picture is what ``{prefix}/{camera}/explain/image`` carries and
the snapshot folder's ``explanation.png``.
"""

from __future__ import annotations

import cv2
import numpy as np

from daemon.explain.heatmap import to_uint8, upsample

TILE = 192  # side of one grid panel in pixels
LABEL_SCALE = 0.45
LABEL_LINE_HEIGHT = 18
GRID_LABEL_CHARS = 28  # a word panel's label is one line, cut to this many characters

# 20 distinct colours for the concept map; concept k gets PALETTE[k % 20].
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
], np.uint8)


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """RGB uint8 rendering of a 0..1 map with the JET colour map."""
    return cv2.cvtColor(cv2.applyColorMap(to_uint8(heatmap), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5,
            peak_xy: tuple[int, int] | None = None) -> np.ndarray:
    """The map's colours blended over an RGB uint8 image (map resized to it), peak marked."""
    h, w = image.shape[:2]
    colours = colourise(upsample(heatmap, (h, w)))
    out = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0)
    if peak_xy is not None:
        cv2.drawMarker(out, tuple(int(v) for v in peak_xy), (255, 255, 255), cv2.MARKER_CROSS, max(8, w // 16), 2)
    return out


def label_lines(label: str, tile: int) -> list[str]:
    """``label`` broken into lines that fit a panel ``tile`` pixels wide (a single overlong word is cut)."""
    def fits(text: str) -> bool:
        return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)[0][0] <= tile - 8

    lines: list[str] = []
    for word in label.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            while not fits(word) and len(word) > 1:
                word = word[:-1]
            lines.append(word)
    return lines or [""]


def labelled(panel: np.ndarray, label: str, tile: int, rows: int | None = None) -> np.ndarray:
    """A panel resized to ``tile`` with its label in a strip above it.

    Without ``rows`` the label is one line cut to ``GRID_LABEL_CHARS`` (the word panels);
    with it the whole label is wrapped to the panel in a strip of at least ``rows`` lines,
    so the panels of one row can share the strip height (ACE's row).
    """
    panel = cv2.resize(panel, (tile, tile), interpolation=cv2.INTER_AREA)
    lines = [label[:GRID_LABEL_CHARS]] if rows is None else label_lines(label, tile)
    strip = np.full((LABEL_LINE_HEIGHT * max(rows or 1, len(lines)) + 4, tile, 3), 32, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (4, LABEL_LINE_HEIGHT * (i + 1) - 3), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def grid(image: np.ndarray | None, rows: list[tuple[str, list[tuple[str, np.ndarray, tuple[int, int] | None]]]],
         tile: int = TILE) -> np.ndarray:
    """The explanation picture: one row per word, the frame then one overlay per method.

    ``rows`` is ``[(word label, [(method, 0..1 map, peak or None), ...]), ...]``. Without
    an image (a client that only has the heatmaps) the maps are drawn in colour alone.
    """
    if not rows:
        rows = [("(no words)", [])]
    columns = max(len(panels) for _, panels in rows) + 1
    blank = np.zeros((tile + LABEL_LINE_HEIGHT + 4, tile, 3), np.uint8)
    lines = []
    for word, panels in rows:
        if image is not None:
            cells = [labelled(image, word, tile)]
        else:
            cells = [labelled(np.zeros((tile, tile, 3), np.uint8), word, tile)]
        for method, heatmap, peak_xy in panels:
            if image is not None:
                drawn = overlay(image, heatmap, peak_xy=peak_xy)
            else:
                drawn = colourise(heatmap)
            cells.append(labelled(drawn, f"{word.split(' ', 1)[-1]} / {method}", tile))
        cells += [blank] * (columns - len(cells))
        lines.append(np.hstack(cells))
    return np.vstack(lines)


def draw_concept_map(image: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """RGB uint8: each concept's pixels tinted with its palette colour, boundaries drawn, the rest greyed."""
    image = np.asarray(image, np.uint8)
    colours = PALETTE[np.maximum(labels, 0) % len(PALETTE)]
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    out = np.where((labels >= 0)[..., None],
                   (alpha * colours + (1 - alpha) * image).astype(np.uint8), (grey * 0.5).astype(np.uint8))
    edges = cv2.morphologyEx(labels.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = 255
    return out


def legend(concepts: list[tuple[int, str]], tile: int) -> np.ndarray:
    """A tile listing each concept ``(id, label)`` of a concept map with its colour and label."""
    panel = np.full((tile, tile, 3), 24, np.uint8)
    step = max(12, min(18, tile // max(len(concepts), 1)))
    for row, (k, label) in enumerate(concepts[:tile // step]):
        y = 4 + row * step
        cv2.rectangle(panel, (4, y), (4 + step - 4, y + step - 4), PALETTE[k % len(PALETTE)].tolist(), -1)
        cv2.putText(panel, f"c{k} {label}"[:24], (step + 4, y + step - 6), cv2.FONT_HERSHEY_SIMPLEX,
                    0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def concept_row(concept_map: np.ndarray, concepts: list[tuple[int, str]], counterfactual: np.ndarray,
                counterfactual_label: str, tile: int = TILE) -> np.ndarray:
    """ACE's row of the picture: the drawn concept map, the legend of its ``(id, label)`` concepts,
    and the counterfactual frame under its label; the three labels share one strip height."""
    rows = len(label_lines(counterfactual_label, tile))
    return np.hstack([labelled(concept_map, "ACE concept map", tile, rows),
                      labelled(legend(concepts, tile), "concepts", tile, rows),
                      labelled(counterfactual, counterfactual_label, tile, rows)])
