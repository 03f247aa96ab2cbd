"""Caption scores are pycocoevalcap's, against every reference caption of an image.

METEOR and the PTB tokenizer need Java; tests/run.sh installs a headless one, so they run here."""

import pytest

from convert.captionscore import coco_scores

REFERENCES = {
    "dog.jpg": ["a brown dog runs across the green grass", "a dog is running on a lawn in the park"],
    "bench.jpg": ["two people are sitting on a wooden bench", "a man and a woman sit on a park bench together"],
}


def test_a_caption_equal_to_any_reference_scores_full_marks():
    second = {name: refs[1] for name, refs in REFERENCES.items()}
    scores = coco_scores(REFERENCES, second)
    assert scores["bleu1"] == pytest.approx(1.0, abs=1e-3)
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-3)  # scored against both references, not the first only
    assert scores["rouge_l"] == pytest.approx(1.0, abs=1e-3)
    assert "spice" in scores["notes"]  # skipped offline, and said so
    assert scores["notes"]["tokenizer"] == "PTB (Java)" and "meteor" not in scores["notes"]
    assert scores["meteor"] == pytest.approx(1.0, abs=0.01)
    worse = coco_scores(REFERENCES, {"dog.jpg": "a cat sleeps on a sofa", "bench.jpg": "a red car on the road"})
    for key in ("bleu1", "bleu4", "rouge_l", "cider", "meteor"):
        assert worse[key] < scores[key]
