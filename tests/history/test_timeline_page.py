"""The snapshot page's timeline in headless Chromium, from a folder the real daemon wrote: the newest
events with their thumbnails, captions, times and familiarity, unfamiliar ones marked, and an
explained event's kept explanation laid over its thumbnail."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
from skimage import data as skimage_data

from daemon.scenes import scene_at
from tests.conftest import START_TIMEOUT, daemon_config, wait_until
from tests.daemon.test_snapshot_page import CHROMIUM, served_and_seen

# Opens the page in a frame of the same origin and, once the timeline's images are in, writes what it shows.
PROBE = """<!doctype html><html><body><pre id="seen">waiting</pre>
<iframe id="page" src="snapshot/index.html" width="1000" height="3000"></iframe>
<script>
function look() {
  const d = document.getElementById("page").contentDocument;
  const events = d ? [...d.querySelectorAll("#timeline-events li.event")].map((li) => ({
    event_id: Number(li.dataset.eventId),
    caption: li.querySelector(".caption").textContent,
    meta: li.querySelector(".meta").textContent,
    unfamiliar: !!li.querySelector(".warning"),
    thumbnail_width: li.querySelector("img.thumbnail").naturalWidth,
    overlay_width: li.querySelector("img.overlay").hidden ? 0 : li.querySelector("img.overlay").naturalWidth,
    overlay_alt: li.querySelector("img.overlay").alt,
    words: [...li.querySelectorAll(".event-words button")].map((b) => b.textContent)})) : [];
  const seen = {hidden: d && d.getElementById("timeline").hidden, events};
  document.getElementById("seen").textContent = JSON.stringify(seen);
  const explained = events.filter((e) => e.words.length);
  if (events.length && events.every((e) => e.thumbnail_width > 0) && explained.length &&
      explained.every((e) => e.overlay_width > 0)) return;
  setTimeout(look, 200);
}
setTimeout(look, 200);
</script></body></html>
"""


def test_the_timeline_shows_events_thumbnails_and_kept_explanations_in_chromium(mosquitto, daemon_process,
                                                                                 tmp_path):
    assert CHROMIUM is not None, "chromium is not installed (tests/run.sh installs it)"
    www = tmp_path / "www"
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for n, rgb in enumerate([scene_at(47, 0).image, scene_at(47, 1).image, skimage_data.coffee()]):
        cv2.imwrite(str(pictures / f"{n}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    config = daemon_config(www, mosquitto.port, caption={"rate": 0},
                           camera={"name": "testcam", "source": {"type": "images", "path": str(pictures), "fps": 2}},
                           history={"explain": ["gradcam"], "max_events_per_hour": 100000})
    daemon = daemon_process(config)
    index_file = Path(config["snapshot"]["dir"]) / "timeline" / "index.json"

    def explained_timeline():
        try:
            index = json.loads(index_file.read_text())
        except (OSError, ValueError):
            return None
        events = index["events"]
        return index if len(events) >= 4 and sum(bool(e["explanation"]) for e in events) >= 2 else None
    wait_until(explained_timeline, START_TIMEOUT + 120, interval=0.5, message="a timeline with explained events")
    daemon.stop()  # the folder as the daemon left it
    index = json.loads(index_file.read_text())
    seen = served_and_seen(www, PROBE, tmp_path / "chromium-profile")
    print("FIGURES timeline_page:", json.dumps({"events": len(seen["events"]),
                                                "explained": sum(bool(e["words"]) for e in seen["events"])}))
    assert seen["hidden"] is False
    assert [e["event_id"] for e in seen["events"]] == [e["event_id"] for e in index["events"]]
    files = sorted(p.name for p in index_file.parent.iterdir())
    for shown, event in zip(seen["events"], index["events"]):
        assert shown["caption"] == event["caption"] and shown["thumbnail_width"] == 128
        assert f"{event['frames']} frames" in shown["meta"] and "familiarity" in shown["meta"]
        assert shown["unfamiliar"] == event["out_of_distribution"]
        if event["explanation"]:
            kept = json.loads((index_file.parent / event["explanation"]).read_text())
            assert shown["words"] == [w["word"] for w in kept["words"]] == event["caption"].split()
            assert shown["overlay_width"] == 224 and shown["overlay_alt"] == f"gradcam of \u201c{shown['words'][0]}\u201d"
        else:
            assert shown["words"] == [] and shown["overlay_width"] == 0
    assert any(e["unfamiliar"] for e in seen["events"]), "the photo's events are marked unfamiliar"
    named = {n for e in index["events"] for n in (e["thumbnail"], e["explanation"]) if n}
    assert set(files) == named | {"index.json"}, "files of events that left the timeline remain"
