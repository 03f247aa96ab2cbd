"""Frames reach the encoder resized the way the bundle's model was trained: ``nearest`` is
pixel-exact with PIL's ``Image.resize(NEAREST)`` (the seed's Keras ``load_img``)."""

import numpy as np
import pytest
from PIL import Image

from daemon.captioner import resize_for_encoder

SOURCES = [(480, 640), (333, 517), (1080, 1920), (100, 37), (481, 479), (7, 13), (375, 500)]
TARGETS = [480, 224, 299, 96, 17, 1000]


@pytest.mark.parametrize("height,width", SOURCES)
def test_nearest_equals_pil_nearest(height, width):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for size in TARGETS:
        pil = np.asarray(Image.fromarray(image).resize((size, size), Image.NEAREST))
        np.testing.assert_array_equal(resize_for_encoder(image, size, "nearest"), pil)

