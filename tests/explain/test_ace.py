"""ACE per frame: segments, patches, the concept bank, and the shipped bundle's bank on real frames."""

import base64

import numpy as np
import pytest

from convert.concepts import bottleneck_layer
from daemon.bundle import load_bundle
from daemon.captioner import DEFAULT_BUNDLE
from daemon.explain import ace, concept_bank, picture, segments
from daemon.explain.picture import LABEL_LINE_HEIGHT, TILE, label_lines, labelled
from daemon.imaging import decode_png, png_base64
from daemon.scenes import COLOURS, PLURALS, SHAPES, scene_at

HELD_OUT_SEED = 6161  # not the bank's discovery stream (5050) nor training (1)


def square_scene() -> tuple[np.ndarray, np.ndarray]:
    """A red square on a grey background and its mask."""
    image = np.full((224, 224, 3), 128, np.uint8)
    mask = np.zeros((224, 224), bool)
    mask[60:140, 80:160] = True
    image[mask] = (220, 30, 30)
    return image, mask


def test_segments_are_multi_resolution_without_duplicates_or_specks():
    image, square = square_scene()
    masks = segments.segment(image)
    assert masks.dtype == bool and masks.shape[1:] == (224, 224)
    assert (masks.reshape(len(masks), -1).mean(axis=1) >= segments.MIN_AREA).all()
    flat = masks.reshape(len(masks), -1).astype(np.int64)
    inter = flat @ flat.T
    union = flat.sum(1)[:, None] + flat.sum(1)[None, :] - inter
    jaccard = inter / union
    np.fill_diagonal(jaccard, 0)
    assert jaccard.max() <= segments.DEDUP_JACCARD
    # the coarsest level alone covers the image, and some segment lies on the square
    assert len(masks) > 15
    assert max((m & square).sum() / m.sum() for m in masks) > 0.95


def test_patch_is_the_segment_cropped_resized_and_filled_outside():
    image, square = square_scene()
    yy, xx = np.mgrid[:224, :224]
    disc = (yy - 100) ** 2 + (xx - 120) ** 2 < 30 ** 2
    patch = segments.extract_patch(image, disc, 96)
    assert patch.shape == (96, 96, 3) and patch.dtype == np.float32
    assert np.allclose(patch[0, 0], segments.FILL_VALUE)  # corner: outside the disc
    assert np.allclose(patch[48, 48], (220, 30, 30), atol=1)  # centre: the square's colour
    filled = segments.fill_regions(image, square)
    assert np.allclose(filled[square], segments.FILL_VALUE) and np.array_equal(filled[~square], image[~square])
    cover = segments.coverage(square, (7, 7))
    assert cover.shape == (7, 7) and cover.max() == 1.0 and cover.min() == 0.0


def test_random_area_matches_the_requested_area():
    image, _ = square_scene()
    fine = segments.segment(image, (80,), min_area=0.0)
    rng = np.random.default_rng(0)
    for area in (500, 3000, 12000):
        union = segments.random_area(fine, area, rng)
        assert abs(int(union.sum()) - area) < 0.5 * area


def small_bank(k=3, c=4) -> concept_bank.ConceptBank:
    """A hand-made bank: concept j sits at 10 * e_j with radius 2."""
    centres = np.zeros((k, c), np.float32)
    centres[np.arange(k), np.arange(k)] = 10
    thumbs = np.zeros((k, 5, segments.THUMB, segments.THUMB, 3), np.uint8)
    colour = np.array([["red"] * 4 + [concept_bank.BACKGROUND], ["red", "blue", "blue", "blue", "blue"], [concept_bank.BACKGROUND] * 5])
    shape = np.array([["circle"] * 5, ["square"] * 3 + ["cross"] * 2, [concept_bank.BACKGROUND] * 5])
    return concept_bank.ConceptBank(layer="activation_17", centres=centres, radius=np.full(k, 2.0, np.float32),
                           cavs=centres / 10, words=["a", "red"], tcav=np.full((k, 2), 0.5, np.float32),
                           tcav_p=np.full((k, 2), 0.5, np.float32), significant=np.zeros((k, 2), bool),
                           association=np.ones((k, 2), np.float32),
                           labels=["red circle", "blue (mixed shapes)", "background"], thumbnails=thumbs,
                           exemplar_colour=colour, exemplar_shape=shape, image_count=np.array([5, 4, 3]),
                           random_tcav=np.full(2, 0.5, np.float32), source="test")


def test_bank_round_trip_assignment_and_purity(tmp_path):
    bank = small_bank()
    bank.save(tmp_path / "concepts.npz")
    loaded = concept_bank.ConceptBank.load(tmp_path / "concepts.npz")
    assert loaded.words == ["a", "red"] and loaded.labels == bank.labels and loaded.layer == "activation_17"
    assert loaded.n_segments == segments.N_SEGMENTS and loaded.fill == segments.FILL_VALUE
    assert np.array_equal(loaded.exemplar_colour, bank.exemplar_colour)
    points = np.array([[9.5, 0, 0, 0], [0, 0, 10, 1], [5, 5, 0, 0]], np.float32)
    assigned, ratio = loaded.assign(points)
    assert assigned.tolist() == [0, 2, -1]  # the last is too far from every centre
    assert ratio[0] < 1 and ratio[2] > 1
    purity = loaded.word_purity()
    assert purity["red"] == (0.8, 0) and purity["blue"] == (0.8, 1) and purity["circle"] == (1.0, 0)
    assert concept_bank.BACKGROUND not in purity
    assert loaded.exemplar_strip(1, 3).shape == (segments.THUMB, 3 * segments.THUMB, 3)


def test_relevance_adds_the_neighbouring_words_lift():
    lift = np.array([[1.0, 1.0], [4.0, 4.0], [2.0, 0.5]])  # words x concepts: both concepts fit word 1
    key = ace.relevance(lift, [1])
    assert key.shape == (1, 2) and key[0, 0] > key[0, 1]  # its neighbour (word 2) prefers concept 0
    assert np.allclose(ace.relevance(lift, [0], context=0.0), np.log(lift[[0]]))


def test_provenance_label_prefers_whole_objects_then_colour_then_shape():
    assert concept_bank.provenance_label(["red"] * 3 + ["blue"], ["circle"] * 4) == "red circle"
    assert concept_bank.provenance_label(["red"] * 4, ["circle", "cross", "square", "triangle"]) == "red (mixed shapes)"
    assert concept_bank.provenance_label(["red", "blue", "green", "red"], ["cross"] * 4) == "cross (mixed colours)"
    assert concept_bank.provenance_label([concept_bank.BACKGROUND] * 3 + ["red"], [concept_bank.BACKGROUND] * 3 + ["cross"]) == "background"
    assert concept_bank.provenance_label([""] * 3, [""] * 3) == ""


def test_concept_map_gives_each_pixel_its_best_fitting_concept():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :, :2] = True  # concept 1, far
    masks[1, :2, :] = True  # concept 2, near: wins the overlap
    masks[2, 3, 3] = True  # no concept
    labels = ace.concept_map((4, 4), masks, np.array([1, 2, -1]), np.array([0.9, 0.2, 3.0]))
    assert labels.tolist() == [[2, 2, 2, 2], [2, 2, 2, 2], [1, 1, -1, -1], [1, 1, -1, -1]]
    drawn = picture.draw_concept_map(np.zeros((4, 4, 3), np.uint8), labels)
    assert drawn.shape == (4, 4, 3) and drawn.dtype == np.uint8
    png = decode_png(base64.b64decode(png_base64(drawn)))
    assert np.array_equal(png, drawn)


# ------------------------------------------------------------ the shipped bundle, real TF

@pytest.fixture(scope="module")
def shipped():
    """(Explainer, ConceptBank, ConceptExplainer) of the shipped bundle on the TensorFlow backend."""
    from daemon.explain.explainer import Explainer

    explainer = Explainer(load_bundle(DEFAULT_BUNDLE), backend="tensorflow")
    concepts = explainer.resources("ace")
    return explainer, concepts.bank, concepts


def test_shipped_bank_has_a_pure_concept_for_every_colour_and_shape(shipped):
    """Done-when: each object colour or shape word has a concept whose exemplars are > 70% that kind of object."""
    explainer, bank, _ = shipped
    purity = bank.word_purity()
    report = {kind: round(purity.get(kind, (0.0, -1))[0], 2) for kind in (*COLOURS, *SHAPES)}
    print("purity per word:", report)
    assert all(share > 0.7 for share in report.values()), report
    assert bank.layer == bottleneck_layer(explainer.backend.captioner) == explainer.backend.bottleneck_layer
    assert set(COLOURS) | set(SHAPES) <= set(bank.words)
    assert bank.thumbnails.shape[2:] == (segments.THUMB, segments.THUMB, 3)


def test_ace_explains_every_word_of_a_frame(shipped):
    explainer, bank, concept_explainer = shipped
    scene = scene_at(HELD_OUT_SEED, 1)
    tokens = explainer.vocab.encode(scene.caption)
    result = concept_explainer.explain(scene.image, tokens)
    block = result.to_json(bank)

    concept_map = decode_png(base64.b64decode(block["concept_map"]))
    assert concept_map.shape == (224, 224, 3)
    ids = [c["id"] for c in block["concepts"]]
    assert ids == result.present and len(ids) >= 2
    for c in block["concepts"]:
        assert c["label"] == bank.labels[c["id"]] and 0 < c["area"] <= 1
        strip = decode_png(base64.b64decode(c["exemplars"]))
        assert strip.shape == (segments.THUMB, concept_bank.EXEMPLARS_SHOWN * segments.THUMB, 3)
    assert [w["index"] for w in block["words"]] == list(range(len(tokens)))
    assert [w["word"] for w in block["words"]] == scene.caption.split()
    for w in block["words"]:  # ranked by relevance, then tcav; the removal drop plays no part
        keys = [(r["relevance"], r["tcav"]) for r in w["ranking"]]
        assert sorted(r["concept"] for r in w["ranking"]) == sorted(ids) and keys == sorted(keys, reverse=True)
        assert all(r["association"] > 0 and np.isfinite(r["removal_drop"]) for r in w["ranking"])
    removed = block["counterfactual"]["removed_concepts"]
    assert len(removed) == 1 and removed[0] in ids
    assert set(block["counterfactual"]["caption"].split()) <= set(explainer.vocab.words)
    row = ace.picture_row(result, bank, TILE)  # concept map, legend, counterfactual, each under its label
    assert row.shape[1] == 3 * TILE and row[-TILE:].any()
    # the counterfactual's label (its caption) is drawn whole: a strip line with text for each of its lines
    removed = ", ".join(f"c{k}" for k in result.removed) or "nothing"
    lines = label_lines(f"without {removed}: {result.counterfactual_caption}", TILE)
    strip = row[:-TILE, 2 * TILE:]
    assert strip.shape[0] >= LABEL_LINE_HEIGHT * len(lines)
    for i in range(len(lines)):
        assert (strip[i * LABEL_LINE_HEIGHT:(i + 1) * LABEL_LINE_HEIGHT] > 200).any(), f"line {i} is empty"
    assert result.timings_ms["ace_assign_ms"] > 0


def test_removing_the_top_concept_of_object_words_beats_random_segments(shipped):
    """The evaluate metric's per-word test on a few unseen scenes (the full figure is evaluate's)."""
    explainer, _, concept_explainer = shipped
    object_words = set(COLOURS) | set(SHAPES) | set(PLURALS.values())
    wins = []
    for i in range(2, 5):
        scene = scene_at(HELD_OUT_SEED, i)
        tokens = explainer.vocab.encode(scene.caption)
        words = scene.caption.split()
        indices = sorted({t for o in scene.objects for t in o.token_indices if words[t] in object_words})
        result = concept_explainer.explain(scene.image, tokens, indices, counterfactual=False)
        wins += concept_explainer.removal_wins(result, tokens, list(range(len(indices))))
    assert np.mean(wins) >= 0.75, wins


def test_a_frame_without_concepts_still_answers(shipped):
    explainer, bank, concept_explainer = shipped
    far = concept_bank.ConceptBank(**{**bank.__dict__, "radius": np.zeros_like(bank.radius)})  # nothing is near enough
    result = ace.ConceptExplainer(explainer, far).explain(scene_at(HELD_OUT_SEED, 0).image, [1, 2], [0])
    block = result.to_json(far)
    assert block["concepts"] == [] and block["words"][0]["ranking"] == []
    assert block["counterfactual"] == {"removed_concepts": [], "caption": ""}
    assert concept_explainer.removal_wins(result, [1, 2], [0]) == [False]


def test_ace_is_a_method_of_the_one_answer_pipeline(shipped):
    """ACE beside a heatmap method: its block in the response, its row in the one encoded picture."""
    from daemon.explain.explainer import answer

    explainer, bank, _ = shipped
    scene = scene_at(HELD_OUT_SEED, 1)
    tokens = explainer.vocab.encode(scene.caption)
    payload, png = answer(explainer, scene.image, tokens, [0, 1], ["gradcam", "ace"], "p1", frame_id=7)
    assert payload["id"] == "p1" and payload["status"] == "ok" and payload["frame_id"] == 7
    assert [w["index"] for w in payload["ace"]["words"]] == [0, 1]
    assert [set(w) for w in payload["words"]] == [{"index", "word", "gradcam"}] * 2
    assert {"gradcam_ms", "ace_ms", "ace_tcav_ms", "float_caption_ms", "render_ms"} <= set(payload["timings_ms"])
    picture = decode_png(png)
    word_row = labelled(np.zeros((8, 8, 3), np.uint8), "a", TILE).shape[0]  # a panel under its label
    ace_height = picture.shape[0] - 2 * word_row  # two word rows (frame, gradcam), then the ACE row
    assert picture.shape[1:] == (3 * TILE, 3) and ace_height >= TILE + LABEL_LINE_HEIGHT
    assert picture[-TILE:, :TILE].any()  # the concept map under the word rows


def test_a_bank_of_another_layer_is_refused_with_its_layer_named(shipped):
    explainer, bank, _ = shipped
    other = concept_bank.ConceptBank(**{**bank.__dict__, "layer": "expanded_conv_3"})
    with pytest.raises(ValueError, match="expanded_conv_3.*explaincam concepts"):
        ace.ConceptExplainer(explainer, other)


def test_ace_is_a_known_method_of_requests():
    from daemon.explain.requests import ExplainRequest, validate_request

    request = validate_request(b'{"id": "a1", "methods": ["ace", "gradcam"]}', 4096)
    assert isinstance(request, ExplainRequest) and request.methods == ["ace", "gradcam"]


def test_ace_over_mqtt_end_to_end(mosquitto, collect, daemon_process, tmp_path):
    """``explaincam run`` with the shipped bundle; an MQTT 5 request for ACE gets the concept block."""
    import json
    from pathlib import Path

    from daemon.explain.service import picture_jpeg
    from tests.conftest import daemon_config
    from tests.explain.test_mqtt_explain import (CAPTION, EXPLAIN_TIMEOUT, FAST, IMAGE, START_TIMEOUT,
                                                 Requester)

    config = daemon_config(tmp_path, mosquitto.port, explain=FAST)
    daemon = daemon_process(config)
    watcher = collect(mosquitto.port, CAPTION, IMAGE)
    watcher.wait_for(CAPTION, timeout=START_TIMEOUT)
    requester = Requester(mosquitto.port, "test/replies/ace")
    try:
        requester.send({"id": "ace-1", "frame": "latest", "methods": ["ace"]}, b"ace-corr")
        answer = json.loads(requester.reply_for(b"ace-corr", EXPLAIN_TIMEOUT).payload)
    finally:
        requester.close()
    assert answer["id"] == "ace-1" and answer["status"] == "ok", answer.get("error")
    words = answer["caption"].split()
    block = answer["ace"]
    assert decode_png(base64.b64decode(block["concept_map"])).shape == (224, 224, 3)
    ids = {c["id"] for c in block["concepts"]}
    assert ids and all(decode_png(base64.b64decode(c["exemplars"])).ndim == 3 for c in block["concepts"])
    assert [(w["index"], w["word"]) for w in block["words"]] == list(enumerate(words))
    assert all({r["concept"] for r in w["ranking"]} == ids for w in block["words"])
    assert set(block["counterfactual"]["removed_concepts"]) <= ids
    assert isinstance(block["counterfactual"]["caption"], str)
    assert {"ace_ms", "ace_assign_ms", "render_ms", "total_ms"} <= set(answer["timings_ms"])
    assert [w["index"] for w in answer["words"]] == list(range(len(words)))  # no heatmaps asked for
    snapshot = Path(config["snapshot"]["dir"])
    assert json.loads((snapshot / "explanation.json").read_text())["ace"] == block
    picture = decode_png((snapshot / "explanation.png").read_bytes())
    assert picture.shape[1] >= 3 * TILE  # the ACE row: concept map, legend, counterfactual
    # the picture published on the image topic (after the start's placeholder) is the folder's, as JPEG
    published = picture_jpeg((snapshot / "explanation.png").read_bytes())[0]
    watcher.wait_for(IMAGE, lambda m: m.payload == published, timeout=10)
    assert daemon.process.poll() is None
