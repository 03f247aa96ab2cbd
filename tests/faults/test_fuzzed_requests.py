"""Fuzzed explain requests against the real daemon: each is answered with an error or dropped with a log line.

Payloads come from hypothesis strategies (derandomized, a fixed number of examples):
random bytes, deeply nested JSON, huge strings, wrong types, NaN/Infinity and unicode.
None of them is a valid request, so each must be answered ``error`` with a code of the
contract (never ``internal``, never silence), the ``id`` echoed when the payload had a
readable one, and the daemon must keep captioning without starting an explainer.
Response Topics are fuzzed too: an answer that cannot be sent where the request asked is
dropped with a log line, and nothing else is disturbed.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.explain.requests import ERROR_CODES, MAX_ID_LENGTH
from daemon.explain_settings import METHODS
from tests.conftest import CAPTION, RESPONSE, START_TIMEOUT, daemon_config, wait_until
from tests.faults.probes import NODELAY, Requester, figures, live_captions

PAYLOADS = 2000
TOPICS = 150
MAX_REQUEST_BYTES = 16384  # the config default, stated here so the sizes below straddle it
ANSWER_TIMEOUT = 10.0
FIELDS = ("id", "frame", "methods", "words")
KNOWN_METHODS = list(METHODS)
RESPONSE_KEYS = {"id", "status", "frame_id", "caption", "float_caption", "words", "timings_ms", "error"}
FUZZ = settings(max_examples=PAYLOADS, derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=list(HealthCheck))

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.text(min_size=1, max_size=MAX_ID_LENGTH)


def valid_field(name: str, value) -> bool:
    """Whether ``value`` is an acceptable value of request field ``name`` (the contract, not the daemon's code)."""
    def strict_int(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if name == "id":
        return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH
    if name == "frame":
        return value == "latest" or strict_int(value)
    if name == "methods":  # null: the configured default methods
        return value is None or isinstance(value, list) and 0 < len(value) == len(set(map(str, value))) and all(
            isinstance(m, str) and m in KNOWN_METHODS for m in value)
    return value == "all" or (isinstance(value, list) and all(strict_int(i) for i in value))


def acceptable(value) -> bool:
    """Whether a decoded payload could be a valid request (such payloads are not fuzz)."""
    return (isinstance(value, dict) and "id" in value and set(value) <= set(FIELDS)
            and all(valid_field(k, v) for k, v in value.items()))


def echoable_id(value):
    """The id the answer must echo for a decoded top-level object, else None."""
    if isinstance(value, dict) and isinstance(value.get("id"), str) and 0 < len(value["id"]) <= MAX_ID_LENGTH:
        return value["id"]
    return None


def _decoded(payload: bytes):
    """The payload as the daemon's JSON parser would read it, or None if it reads no value."""
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def encoded(value, ascii_only: bool = True) -> bytes:
    """JSON text of ``value`` (NaN and Infinity as Python writes them; lone surrogates kept as bytes)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def as_case(kind: str, value, ascii_only: bool = True):
    """(kind, payload bytes, id to be echoed or None) of a JSON value."""
    payload = encoded(value, ascii_only)
    return kind, payload, echoable_id(_decoded(payload)) if len(payload) <= MAX_REQUEST_BYTES else None


@st.composite
def random_bytes(draw):
    """Arbitrary bytes, sometimes after a JSON-looking prefix."""
    prefix = draw(st.sampled_from([b"", b"{", b'{"id": "rb", ', b"[", b'"']))
    return "random_bytes", prefix + draw(st.binary(max_size=2048)), None


@st.composite
def deep_json(draw):
    """Arrays or objects nested up to 20,000 levels, alone or as the value of a field."""
    depth = draw(st.integers(1, 20_000))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"k":', "}]")]))
    core = "1" if opening.endswith(":") else '"x"'
    nested = opening * depth + core + closing * depth
    field = draw(st.sampled_from([None, *FIELDS]))
    if field is None:
        return "deep_json", nested.encode(), None
    request_id = draw(st.sampled_from(["deep", None]))
    head = f'{{"id": "{request_id}", ' if request_id and field != "id" else "{"
    payload = f'{head}"{field}": {nested}}}'.encode()
    # the id leads the payload: read from the object, or from the raw bytes when the parser gives up
    return "deep_json", payload, request_id if field != "id" else None


@st.composite
def huge_strings(draw):
    """Strings of up to 100,000 characters as a field, a key or the whole payload."""
    size = draw(st.integers(MAX_ID_LENGTH + 1, 100_000))
    chunk = draw(st.text(min_size=1, max_size=3))
    text = chunk * (size // len(chunk) + 1)
    where = draw(st.sampled_from(["id", "frame", "methods", "words", "pad", "key", "raw"]))
    if where == "raw":
        return "huge_strings", text.encode("utf-8", "surrogatepass"), None
    if where == "id":
        value = {"id": text}
    elif where == "key":
        value = {"id": "huge-key", text: 1}
    elif where == "methods":
        value = {"id": "huge-method", "methods": [text]}
    else:
        value = {"id": "huge-pad", where: text}
    kind, payload, expected = as_case("huge_strings", value)
    if where != "id":
        expected = value["id"]  # read from the object, or from the raw bytes of a too-large request
    return kind, payload, expected


@st.composite
def wrong_types(draw):
    """A well-formed request with one field of a wrong type or value."""
    request = {"id": draw(st.text(min_size=1, max_size=12)), "frame": "latest", "methods": ["gradcam"], "words": [0]}
    field = draw(st.sampled_from(FIELDS))
    request[field] = draw(json_values.filter(lambda v: not valid_field(field, v)))
    if draw(st.booleans()):
        del request[draw(st.sampled_from([f for f in FIELDS if f != field]))]
    return as_case("wrong_types", request)


@st.composite
def special_floats(draw):
    """NaN, Infinity and huge or tiny numbers in any field, or alone."""
    number = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324])
                  | st.floats(allow_nan=True, allow_infinity=True))
    field = draw(st.sampled_from([None, *FIELDS]))
    if field is None:
        return as_case("nan", number)
    value = {"id": "nan", field: number if field != "words" else [number]}
    return as_case("nan", value)


@st.composite
def unicode_text(draw):
    """Unicode everywhere: ids, method names, keys, other encodings, lone surrogates."""
    shape = draw(st.sampled_from(["method", "key", "frame", "surrogate", "encoding", "text"]))
    text = draw(st.text(min_size=1, max_size=40))
    if shape == "method":
        return as_case("unicode", {"id": draw(ids), "methods": [text if text not in KNOWN_METHODS else text + "?"]},
                       draw(st.booleans()))
    if shape == "key":
        return as_case("unicode", {"id": draw(ids), (text if text not in FIELDS else text + "?"): text},
                       draw(st.booleans()))
    if shape == "frame":
        return as_case("unicode", {"id": draw(ids), "frame": text if text != "latest" else "làtest"},
                       draw(st.booleans()))
    if shape == "surrogate":  # a lone surrogate, escaped (readable) or raw (not UTF-8)
        request_id = text + draw(st.characters(categories=("Cs",)))
        return as_case("unicode", {"id": request_id, "methods": ["x"]}, draw(st.booleans()))
    if shape == "encoding":
        codec = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"]))
        body = json.dumps({"id": text, "methods": ["é"]}, ensure_ascii=False)
        return "unicode", body.encode(codec, "replace"), None
    return "unicode", text.encode("utf-8", "surrogatepass"), None


@st.composite
def any_json(draw):
    """Any JSON value that is not an acceptable request."""
    value = draw(json_values.filter(lambda v: not acceptable(v)))
    return as_case("any_json", value, draw(st.booleans()))


cases = st.one_of(random_bytes(), deep_json(), huge_strings(), wrong_types(), special_floats(),
                  unicode_text(), any_json())


def fast_round_trips(mosquitto) -> None:
    """Restart the broker with TCP_NODELAY, so thousands of request/answer round trips take seconds."""
    mosquitto.extra_config = NODELAY
    mosquitto.restart()


def test_fuzzed_requests_are_each_answered_with_an_error(tmp_path, mosquitto, collect, daemon_process):
    fast_round_trips(mosquitto)
    daemon = daemon_process(daemon_config(tmp_path, mosquitto.port, explain={"max_request_bytes": MAX_REQUEST_BYTES}))
    watcher = collect(mosquitto.port, CAPTION)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    requester = Requester(mosquitto.port)
    kinds, codes, latencies = Counter(), Counter(), []
    sent = [0]
    started = time.monotonic()

    @FUZZ
    @given(cases)
    def each_answered(case):
        kind, payload, expected_id = case
        assert not acceptable(_decoded(payload)), "the generator made a valid request"
        sent[0] += 1
        kinds[kind] += 1
        correlation = f"fuzz-{sent[0]}".encode()
        t0 = time.monotonic()
        requester.send(payload, correlation)
        answer = requester.wait_reply(correlation, ANSWER_TIMEOUT)
        assert daemon.process.poll() is None, f"the daemon died on {payload[:200]!r}"
        assert answer is not None, f"no answer to {kind} payload {payload[:200]!r}"
        latencies.append(time.monotonic() - t0)
        assert set(answer) == RESPONSE_KEYS, answer
        assert answer["status"] == "error", answer
        code = answer["error"]["code"]
        codes[code] += 1
        assert code in ERROR_CODES and code not in ("busy", "internal"), (kind, payload[:200], answer["error"])
        assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
        if expected_id is not None:
            assert answer["id"] == expected_id, (payload[:200], answer)

    try:
        each_answered()
    finally:
        requester.close()
    elapsed = time.monotonic() - started
    since = time.monotonic()
    wait_until(lambda: len(live_captions(watcher, since)) >= 3, 10, message="captions after the fuzzing")
    latencies.sort()
    figures("fuzzed_requests", payloads=sent[0], seconds=round(elapsed, 1),
            p50_ms=round(latencies[len(latencies) // 2] * 1e3, 1), max_ms=round(latencies[-1] * 1e3, 1),
            kinds=dict(kinds), codes=dict(codes))
    assert sent[0] >= PAYLOADS
    assert len(kinds) == 7 and min(kinds.values()) >= PAYLOADS // 20, kinds
    assert daemon.process.poll() is None
    assert "explainer process started" not in daemon.log(), "a fuzzed payload was accepted"
    assert "Traceback" not in daemon.log()


# Response Topics as a broker lets them through: Mosquitto disconnects a client whose strings hold
# control characters, surrogates or non-characters, and topics starting with $ are the broker's own.
topics = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=30).map(
    lambda text: text.replace("$", "x"))


def test_fuzzed_response_topics_are_answered_there_or_dropped_with_a_log_line(tmp_path, mosquitto, collect,
                                                                              daemon_process):
    fast_round_trips(mosquitto)
    daemon = daemon_process(daemon_config(tmp_path, mosquitto.port))
    watcher = collect(mosquitto.port, CAPTION, RESPONSE)
    watcher.wait_for(CAPTION, lambda m: not m.retain, timeout=START_TIMEOUT)
    requester = Requester(mosquitto.port)
    outcome = Counter()

    @settings(FUZZ, max_examples=TOPICS)
    @given(topics)
    def each_topic(topic):
        n = sum(outcome.values()) + 1
        request_id = f"topic-{n}"
        correlation = request_id.encode()
        wildcard = "+" in topic or "#" in topic
        if topic and not wildcard:
            requester.subscribe(topic)
        requester.send({"id": request_id, "words": [99]}, correlation, response_topic=topic)
        if not topic:  # an empty Response Topic is no Response Topic: the default topic gets it
            outcome["default"] += 1
            watcher.wait_for(RESPONSE, lambda m: m.json()["id"] == request_id, timeout=ANSWER_TIMEOUT)
        elif wildcard:
            outcome["dropped"] += 1
            wait_until(lambda: any(repr(request_id) in line and "dropped" in line
                                   for line in daemon.log().splitlines()), ANSWER_TIMEOUT,
                       message=f"a log line saying the answer to {request_id} was dropped")
        else:
            outcome["answered"] += 1
            found = requester.wait_other(lambda t, p: t == topic and json.loads(p)["id"] == request_id,
                                         ANSWER_TIMEOUT)
            assert found is not None, f"no answer on Response Topic {topic!r}"
            requester.client.unsubscribe(topic)
        assert daemon.process.poll() is None

    try:
        each_topic()
    finally:
        requester.close()
    since = time.monotonic()
    wait_until(lambda: len(live_captions(watcher, since)) >= 3, 10, message="captions after the topic fuzzing")
    figures("fuzzed_response_topics", **outcome)
    assert sum(outcome.values()) >= TOPICS and outcome["dropped"] and outcome["answered"], outcome
    assert "Traceback" not in daemon.log()
