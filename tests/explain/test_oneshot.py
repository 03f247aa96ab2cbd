"""``explaincam explain IMAGE``: the int8 caption explained in-process with the float model."""

from __future__ import annotations

import argparse
import json

import cv2

from daemon.explain import oneshot
from daemon.imaging import decode_png
from daemon.scenes import scene_at
from tests.conftest import SHIPPED_BUNDLE



def run(argv):
    parser = argparse.ArgumentParser()
    oneshot.configure(parser)
    return oneshot.main(parser.parse_args(argv))


def test_explain_an_image_file(tmp_path, capsys):
    scene = scene_at(8383, 0)
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert run([str(image), "--bundle", str(SHIPPED_BUNDLE), "--methods", "gradcam", "integrated_gradients",
                "--ig-steps", "4", "--words", "0,1", "--out", str(out), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "ok" and answer["caption"] == scene.caption  # the shipped model gets scenes right
    assert [w["index"] for w in answer["words"]] == [0, 1]
    assert {"encoder_ms", "gradcam_ms", "integrated_gradients_ms"} <= set(answer["timings_ms"])
    assert len(list(out.glob("0*_*.png"))) == 4
    assert decode_png((out / "grid.png").read_bytes()).ndim == 3


def test_bad_inputs_are_refused(tmp_path, capsys):
    assert run([str(tmp_path / "missing.png"), "--bundle", str(SHIPPED_BUNDLE)]) == 2
    assert "no such file" in capsys.readouterr().err
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene_at(8383, 1).image)
    assert run([str(image), "--bundle", str(SHIPPED_BUNDLE), "--words", "99"]) == 2
    assert "out of range" in capsys.readouterr().err
