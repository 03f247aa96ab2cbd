"""The explain request contract: every bad request gets its own error code, the id is echoed."""

import json

import pytest

from daemon.explain.requests import (ERROR_CODES, ErrorResponse, ExplainRequest, check_words, fitted_response,
                                     parse_words, response, validate_request)
from daemon.explain_settings import METHODS

MAX = 16384
DEFAULTS = ["gradcam", "saliency"]


def validate(payload):
    return validate_request(payload if isinstance(payload, bytes) else json.dumps(payload).encode(), MAX, DEFAULTS)


def test_a_full_request_and_the_defaults():
    request = validate({"id": "r1", "frame": 17, "methods": ["gradcampp", "integrated_gradients"], "words": [0, 2]})
    assert isinstance(request, ExplainRequest)
    assert (request.id, request.frame, request.methods, request.words) == ("r1", 17, ["gradcampp", "integrated_gradients"], [0, 2])
    minimal = validate({"id": "r2"})
    assert (minimal.frame, minimal.methods, minimal.words) == ("latest", DEFAULTS, "all")


@pytest.mark.parametrize("payload, code, needle", [
    (b'{"id": "x1", "frame": ', "bad_json", "JSON"),
    (b'\xff\xfe{"id": "x1"}', "bad_json", "UTF-8"),
    ({"id": "x1", "methods": ["gradcam", "lime"]}, "unknown_method", "lime"),
    ({"id": "x1", "colour": "red"}, "bad_request", "unexpected field 'colour'"),
    ({"id": "x1", "frame": "17"}, "bad_request", "frame"),
    ({"id": "x1", "frame": True}, "bad_request", "frame"),
    ({"id": "x1", "words": "some"}, "bad_request", "words"),
    ({"id": "x1", "words": [0, "1"]}, "bad_request", "words"),
    ({"id": "x1", "methods": "gradcam"}, "bad_request", "methods"),
    ({"id": "x1", "methods": []}, "bad_request", "methods"),
    ({"id": "x1", "methods": ["gradcam", "gradcam"]}, "bad_request", "twice"),
    ({"frame": "latest"}, "bad_request", "missing field 'id'"),
    ({"id": ""}, "bad_request", "id"),
    ({"id": "x" * 129}, "bad_request", "id"),
    ([1, 2], "bad_request", "JSON object"),
])
def test_each_bad_request_gets_its_code_and_a_message(payload, code, needle):
    answer = validate(payload)
    assert isinstance(answer, ErrorResponse)
    assert answer.code == code and answer.code in ERROR_CODES
    assert needle in answer.message
    body = answer.payload()
    assert body["status"] == "error" and body["error"] == {"code": code, "message": answer.message}


def test_the_id_is_echoed_when_it_can_be_recovered():
    assert validate({"id": "keep-me", "extra": 1}).id == "keep-me"
    assert validate(b'{"id": "broken-json", "frame": }').id == "broken-json"
    assert validate({"id": 42, "frame": 1}).id == 42  # wrong type: still echoed, as sent
    assert validate(b"not json at all").id is None
    big = b'{"id": "huge", "pad": "' + b"x" * MAX + b'"}'
    answer = validate(big)
    assert (answer.code, answer.id) == ("too_large", "huge")
    assert str(MAX) in answer.message


def test_word_indices_are_checked_against_the_published_caption():
    words = ["a", "red", "circle"]
    assert check_words(validate({"id": "w"}), words) == [0, 1, 2]
    assert check_words(validate({"id": "w", "words": [2, 0]}), words) == [2, 0]
    for bad in ([3], [-1]):
        answer = check_words(validate({"id": "w", "words": bad}), words, 7, "a red circle")
        assert answer.code == "bad_word_index" and str(bad[0]) in answer.message
        assert answer.payload()["frame_id"] == 7 and answer.payload()["caption"] == "a red circle"
    assert check_words(validate({"id": "w", "words": [1, 1]}), words).code == "bad_request"


def test_busy_has_its_own_status_and_every_response_has_every_key():
    busy = ErrorResponse("b", "busy", "queue full").payload()
    assert busy["status"] == "busy" and busy["error"]["code"] == "busy"
    keys = {"id", "status", "frame_id", "caption", "float_caption", "words", "timings_ms", "error"}
    assert set(busy) == keys == set(response("x", "ok"))


def test_every_registered_method_is_accepted_and_words_parse():
    assert validate({"id": "m", "methods": list(METHODS)}).methods == list(METHODS)
    assert parse_words("all") == "all" and parse_words("0,2") == [0, 2]
    with pytest.raises(ValueError):
        parse_words("first")


def test_an_answer_too_large_for_the_broker_loses_its_heatmaps_then_becomes_an_error():
    heat = "A" * 5000  # a base64 heatmap
    full = response("r9", "ok", frame_id=7, caption="a red circle", float_caption="a red circle",
                    words=[{"index": i, "word": w, "gradcam": {"heatmap": heat, "peak": [1, 2]},
                            "saliency": {"heatmap": heat, "peak": None}}
                           for i, w in enumerate(["a", "red", "circle"])],
                    timings_ms={"total_ms": 5})
    full["ace"] = {"concept_map": heat * 4}
    slim = json.loads(fitted_response(full, 2000, "cam/explain/image"))
    assert (slim["id"], slim["status"], slim["caption"]) == ("r9", "ok", "a red circle")
    assert slim["words"][1]["gradcam"] == {"peak": [1, 2]} and "ace" not in slim
    assert slim["omitted"]["heatmaps"] and "cam/explain/image" in slim["omitted"]["picture"]
    error = json.loads(fitted_response(full, 500, "cam/explain/image"))
    assert (error["id"], error["status"], error["error"]["code"]) == ("r9", "error", "response_too_large")
    assert "500 bytes" in error["error"]["message"] and error["error"]["code"] in ERROR_CODES
    assert fitted_response(full, 50, "cam/explain/image") is None
