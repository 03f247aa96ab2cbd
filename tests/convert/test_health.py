"""A bundle whose int8 encoder disagrees with its float one is flagged, in report.json and by evaluate."""

import json
import shutil

from convert.health import bundle_health, health
from daemon.bundle import load_bundle, write_manifest
from tests.conftest import SHIPPED_BUNDLE


def test_health_flags_a_random_encoder_and_passes_a_sound_one():
    random_encoder = health({"feature_cosine_mean": 0.69, "int8_float_agreement": 0.125})  # the figures
    assert random_encoder["status"] == "broken" and len(random_encoder["problems"]) == 2
    assert health({"feature_cosine_mean": 0.9995, "int8_float_agreement": 1.0})["status"] == "ok"


def test_evaluate_reports_the_bundle_verdict_and_its_own_agreement(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(SHIPPED_BUNDLE, bundle)
    assert bundle_health(load_bundle(bundle), 1.0)["status"] == "ok"  # no verdict stored: computed from the numbers
    assert bundle_health(load_bundle(bundle), 0.1)["status"] == "broken"  # this run's agreement
    report = json.loads((bundle / "report.json").read_text())
    report.update(feature_cosine_mean=0.69, int8_float_agreement=0.125)
    report["health"] = health(report)
    (bundle / "report.json").write_text(json.dumps(report))
    write_manifest(bundle, json.loads((bundle / "manifest.json").read_text()))
    verdict = bundle_health(load_bundle(bundle), 1.0)
    assert verdict["status"] == "broken" and "cosine 0.69" in verdict["problems"][0]
