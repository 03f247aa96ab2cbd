"""The labels of the ACE row of the explanation picture are drawn whole, wrapped to the panel."""

from __future__ import annotations

import cv2
import numpy as np

from daemon.explain.picture import LABEL_SCALE, TILE, label_lines, labelled


def test_a_long_counterfactual_label_is_wrapped_not_cut():
    label = "without c15, c3: a small red square left of a large blue triangle"
    lines = label_lines(label, TILE)
    assert len(lines) > 1 and " ".join(lines) == label
    for line in lines:
        assert cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)[0][0] <= TILE - 8


def test_panels_of_one_row_share_the_strip_height():
    panel = np.zeros((50, 50, 3), np.uint8)
    short, long = labelled(panel, "concepts", TILE, rows=3), labelled(panel, "a " * 40, TILE, rows=3)
    assert short.shape == long.shape and short.shape[1] == TILE
    assert short[:short.shape[0] - TILE].max() == 255  # the text is drawn in the strip
