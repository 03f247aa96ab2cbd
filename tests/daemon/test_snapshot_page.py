"""The snapshot page in a real browser: headless Chromium loads index.html from a folder the daemon wrote.

The daemon runs against a real Mosquitto, a real explain request makes the explanation,
``python -m http.server`` serves the folder on loopback, and a probe page beside it reads
what a person would see from the page's DOM: the caption, the words of the explained
caption, and images that loaded (``naturalWidth`` > 0).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import paho.mqtt.publish as publish

from tests.conftest import REQUEST, START_TIMEOUT, daemon_config, wait_until

EXPLAIN_TIMEOUT = 180  # backend load + explanation, niced, on a busy box
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]

# Opens the page in a frame of the same origin and, once its images are in, writes what it shows into #seen.
PROBE = """<!doctype html><html><body><pre id="seen">waiting</pre>
<iframe id="page" src="snapshot/index.html" width="1000" height="1400"></iframe>
<script>
function look() {
  const d = document.getElementById("page").contentDocument;
  const img = (id) => { const e = d && d.getElementById(id); return e ? e.naturalWidth : -1; };
  const text = (id) => { const e = d && d.getElementById(id); return e ? e.textContent : null; };
  const seen = {caption: text("caption"), caption_meta: text("caption-meta"),
    unfamiliar_hidden: d && d.getElementById("unfamiliar").hidden,
    latest_width: img("latest-image"), frame_width: img("explained-frame"), overlay_width: img("overlay"),
    explained_caption: text("explained-caption"), explanation_meta: text("explanation-meta"),
    words: d ? [...d.querySelectorAll("#words button")].map((b) => b.textContent) : [],
    methods: d ? [...d.querySelectorAll("#methods button")].map((b) => b.textContent) : [],
    method_titles: d ? [...d.querySelectorAll("#methods button")].map((b) => b.title) : [],
    method_model: text("method-model"),
    overlay_alt: d && d.getElementById("overlay").alt};
  document.getElementById("seen").textContent = JSON.stringify(seen);
  if (seen.overlay_width > 0 && seen.latest_width > 0) return;
  setTimeout(look, 200);
}
setTimeout(look, 200);
</script></body></html>
"""


class _SeenParser(HTMLParser):
    """Takes the text of ``<pre id="seen">`` out of a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.inside, self.text = False, ""

    def handle_starttag(self, tag, attrs):
        self.inside = self.inside or ("id", "seen") in attrs

    def handle_endtag(self, tag):
        if tag == "pre":
            self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.text += data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def what_chromium_sees(url: str, profile: Path) -> dict:
    """Load the probe in headless Chromium (virtual time: fetches and timers run), return what it saw."""
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    parser = _SeenParser()
    parser.feed(dom)
    assert parser.text and parser.text != "waiting", f"the probe saw nothing:\n{dom[:2000]}"
    return json.loads(parser.text)


def served_and_seen(www: Path, probe: str, profile: Path) -> dict:
    """Write ``probe`` as www/probe.html, serve www with ``python -m http.server`` on loopback and return
    what the probe saw in headless Chromium."""
    (www / "probe.html").write_text(probe)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(www)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(port), 10, message="the http server")
        return what_chromium_sees(f"http://127.0.0.1:{port}/probe.html", profile)
    finally:
        server.terminate()
        server.wait(5)


def test_the_page_shows_caption_words_and_a_loaded_explanation_in_chromium(mosquitto, daemon_process, tmp_path):
    assert CHROMIUM is not None, "chromium is not installed (tests/run.sh installs it)"
    www = tmp_path / "www"
    config = daemon_config(www, mosquitto.port, caption={"rate": 2},
                           explain={"idle_exit_s": 120, "threads": 1})
    daemon = daemon_process(config)
    snapshot = Path(config["snapshot"]["dir"])
    wait_until(lambda: (snapshot / "latest.json").is_file(), START_TIMEOUT, message="latest.json")
    publish.single(REQUEST, json.dumps({"id": "page-1", "frame": "latest", "methods": ["gradcam", "occlusion"]}),
                   hostname="127.0.0.1", port=mosquitto.port, qos=1)
    wait_until(lambda: (snapshot / "explanation.json").is_file(), EXPLAIN_TIMEOUT, message="explanation.json")
    explanation = json.loads((snapshot / "explanation.json").read_text())
    assert explanation["status"] == "ok" and (snapshot / "explanation.jpg").is_file()
    daemon.stop()  # the folder as the daemon left it: the page must show exactly its latest.json
    latest = json.loads((snapshot / "latest.json").read_text())
    seen = served_and_seen(www, PROBE, tmp_path / "chromium-profile")
    print("FIGURES page:", json.dumps(seen))
    assert seen["latest_width"] > 0, "latest.jpg did not load"
    assert seen["caption"] == latest["caption"]
    assert "familiarity" in seen["caption_meta"] and seen["unfamiliar_hidden"]  # generated scenes are familiar
    assert seen["explained_caption"] == explanation["caption"]
    assert seen["words"] == [w["word"] for w in explanation["words"]] == explanation["caption"].split()
    assert seen["methods"] == ["gradcam", "occlusion"]
    # which model each method explains: the float32 twin (gradients) or the int8 model that captions
    assert seen["method_model"] == "gradcam explains the model's float32 twin (gradients)"
    assert seen["method_titles"] == ["gradcam explains the model's float32 twin (gradients)",
                                     "occlusion explains the int8 model that published the caption (no gradients)"]
    assert seen["frame_width"] == 224 and seen["overlay_width"] == 224
    assert f"frame {explanation['frame_id']}" in seen["explanation_meta"] and "made" in seen["explanation_meta"]
    assert seen["overlay_alt"] == f"gradcam of \u201c{explanation['words'][0]['word']}\u201d"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
