"""`explaincam caption` and the shipped bundle's quality on scenes it never saw."""

import json
import subprocess
import sys

import numpy as np


from convert.model import load_captioner
from daemon.captioner import DEFAULT_BUNDLE, Captioner, resize_for_encoder
from daemon.scenes import scene_at

HELD_OUT_SEED = 90210  # training uses seed 1, calibration 4242, the converter's report 4343


def test_shipped_bundle_meets_the_caption_targets_on_unseen_scenes():
    """Issue figures: >= 95% exact match (int8, greedy) and >= 98% int8/float agreement."""
    captioner = Captioner.from_path(DEFAULT_BUNDLE)
    encoder = load_captioner(DEFAULT_BUNDLE / "captioner.keras").get_layer("encoder")
    n, exact, agree = 300, 0, 0
    scenes = [scene_at(HELD_OUT_SEED, i) for i in range(n)]
    images = np.stack([resize_for_encoder(s.image, captioner.input_size) for s in scenes]).astype("float32")
    float_feats = np.asarray(encoder.predict(images, batch_size=50, verbose=0))
    for scene, feats in zip(scenes, float_feats):
        int8 = captioner.caption(scene.image).caption
        float_caption = captioner.vocab.decode(captioner.decoder.greedy(feats, captioner.bundle.max_length).tokens)
        exact += int8 == scene.caption
        agree += int8 == float_caption
    assert exact / n >= 0.95, exact / n
    assert agree / n >= 0.98, agree / n


def test_caption_command_prints_json_lines_and_reports_bad_files(tmp_path):
    import cv2

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), cv2.cvtColor(scene_at(1234, 0).image, cv2.COLOR_RGB2BGR))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "caption", str(good), str(broken),
                           str(tmp_path / "missing.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 1
    expected = Captioner.from_path(DEFAULT_BUNDLE).caption(scene_at(1234, 0).image)
    assert lines[0]["file"] == str(good) and lines[0]["tokens"] == expected.tokens
    assert {"tokens", "encoder_ms", "decode_ms"} <= set(lines[0])
    assert "broken.jpg: not a readable image" in proc.stderr
    assert "missing.png: no such file" in proc.stderr


def test_caption_command_refuses_a_missing_bundle(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "caption", "x.png", "--bundle", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "manifest.json is missing" in proc.stderr


def test_main_process_modules_do_not_import_tensorflow():
    """The capture side (captioner, decoder, encoder, bundle, scenes, CLI) stays TF-free."""
    code = ("import sys, daemon.cli, daemon.captioner, daemon.decoder, daemon.encoder, daemon.bundle, "
            "daemon.vocab, daemon.scenes\n"
            "from daemon.captioner import Captioner, DEFAULT_BUNDLE\n"
            "import numpy as np\n"
            "Captioner.from_path(DEFAULT_BUNDLE).caption(np.zeros((224, 224, 3), np.uint8))\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
