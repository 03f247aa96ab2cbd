"""Generated scenes: deterministic per seed, captions consistent with the drawn objects."""

import json

import cv2
import numpy as np

from convert.scenes import read_scenes
from daemon.cli import main as cli
from daemon.scenes import COLOURS, objects_mask, scene_at, scene_vocabulary


def test_scene_is_deterministic_per_seed_and_index():
    a, b = scene_at(5, 17), scene_at(5, 17)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert not np.array_equal(scene_at(6, 17).image, a.image)


def test_scene_shape_and_vocabulary():
    vocab = set(scene_vocabulary())
    kinds = set()
    for i in range(200):
        s = scene_at(3, i)
        assert s.image.shape == (224, 224, 3) and s.image.dtype == np.uint8
        assert 1 <= len(s.objects) <= 3
        words = s.caption.split()
        assert set(words) <= vocab, s.caption
        kinds.add(len(s.objects))
        for obj in s.objects:
            named = [words[i] for i in obj.token_indices]
            assert obj.colour in named
            assert any(w.startswith(obj.shape[:4]) for w in named)
    assert kinds == {1, 2, 3}


def test_object_masks_cover_the_objects_colour():
    """The mask of a colour word sits on pixels of that colour (the ground truth is right)."""
    for i in range(40):
        s = scene_at(11, i)
        for obj in s.objects:
            mask = s.mask(obj.token_indices[0] if len(s.objects) > 1 else obj.token_indices[1])
            assert mask.sum() > 200
            inside = s.image[mask].astype(float).mean(0)
            target = np.array(COLOURS[obj.colour], float)
            outside = s.image[~mask].astype(float).mean(0)
            assert np.linalg.norm(inside - target) < np.linalg.norm(outside - target)


def test_spatial_relation_matches_positions():
    seen = 0
    for i in range(300):
        s = scene_at(21, i)
        words = s.caption.split()
        if "left" in words or "above" in words:
            first, second = s.objects
            if "left" in words:
                assert first.center[0] < second.center[0]
            else:
                assert first.center[1] < second.center[1]
            seen += 1
    assert seen > 50


def test_scenes_command_writes_pngs_and_jsonl(tmp_path):
    assert cli(["scenes", "--count", "5", "--seed", "9", "--out", str(tmp_path)]) == 0
    records = read_scenes(tmp_path)
    assert len(records) == 5
    for rec in records:
        img = cv2.imread(rec["path"])
        assert img.shape == (224, 224, 3)
        assert rec["caption"] == scene_at(9, rec["index"]).caption
        for obj in rec["objects"]:
            assert obj["words"] and obj["polygon"]
            assert objects_mask([obj], obj["token_indices"][0], (224, 224)).any()
    line = json.loads((tmp_path / "captions.jsonl").read_text().splitlines()[0])
    assert {"file", "caption", "objects"} <= set(line)
