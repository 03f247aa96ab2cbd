"""Is a bundle sound? The verdict on its int8 encoder against its float one.

``explaincam convert`` stores ``health`` in report.json; ``explaincam evaluate`` re-checks it
with its own run's agreement (``bundle_health``). A bundle whose int8 features point
elsewhere than the float ones (mean cosine below HEALTH_MIN_COSINE) or whose int8 captions
mostly differ from the float ones (agreement below HEALTH_MIN_AGREEMENT) is ``broken``: a
random or wrong encoder gives cosine ~0.7, agreement ~0.1; a sound one 0.95+ and 0.5+.
"""

from __future__ import annotations

import json

HEALTH_MIN_COSINE = 0.9  # mean int8/float feature cosine below this: the int8 encoder is broken
HEALTH_MIN_AGREEMENT = 0.25  # int8/float greedy caption agreement below this: broken


def health(report: dict) -> dict:
    """The bundle's health verdict from its measured int8/float cosine and agreement."""
    problems = []
    if report["feature_cosine_mean"] < HEALTH_MIN_COSINE:
        problems.append(f"int8/float feature cosine {report['feature_cosine_mean']} < {HEALTH_MIN_COSINE}")
    if report["int8_float_agreement"] < HEALTH_MIN_AGREEMENT:
        problems.append(f"int8/float caption agreement {report['int8_float_agreement']} < {HEALTH_MIN_AGREEMENT}")
    return {"status": "broken" if problems else "ok", "problems": problems,
            "thresholds": {"feature_cosine_mean": HEALTH_MIN_COSINE, "int8_float_agreement": HEALTH_MIN_AGREEMENT}}


def bundle_health(bundle, agreement: float | None) -> dict:
    """The converter's health verdict (report.json), with this evaluation's int8/float agreement checked too."""
    verdict = {"status": "unknown", "problems": [], "thresholds": {}}
    if bundle.has("report"):
        try:
            stored = json.loads(bundle.file("report").read_text())
            verdict = stored.get("health") or health(stored)
        except (OSError, ValueError, KeyError):
            pass
    verdict = json.loads(json.dumps(verdict))  # a copy
    if agreement is not None and agreement < HEALTH_MIN_AGREEMENT:
        verdict["problems"].append(f"int8/float caption agreement on this set {agreement} < {HEALTH_MIN_AGREEMENT}")
        verdict["status"] = "broken"
    return verdict
