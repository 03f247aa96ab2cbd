"""The snapshot folder: ``latest.jpg`` (caption drawn on it), ``latest.json`` and ``index.html``.

``index.html`` is a static page (any web server, or Home Assistant's ``www`` folder, can
serve the folder): it fetches ``latest.json`` and the explain service's
``explanation.json`` every few seconds and swaps images only once they have loaded, so it
refreshes without flicker. It shows the latest caption (with a warning when the frame is
out of distribution) and the latest explanation: the explained frame
(``explanation.jpg``), the words of its caption and, for the chosen word and method, the
heatmap coloured and laid over the frame in the browser.

Every file is written atomically (``daemon.files``), so a reader never sees a torn file,
even across a power cut.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from daemon.files import remove_stale_temporaries, write_atomically

FONT = cv2.FONT_HERSHEY_SIMPLEX


def _wrap(text: str, width_px: int, scale: float, thickness: int) -> list[str]:
    """Split text into lines no wider than ``width_px`` in the Hershey font."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and cv2.getTextSize(candidate, FONT, scale, thickness)[0][0] > width_px:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines


def draw_caption(rgb: np.ndarray, caption: str, width: int = 640) -> np.ndarray:
    """The frame scaled to ``width`` with the caption in a dark band below it (RGB uint8)."""
    h, w = rgb.shape[:2]
    height = max(1, round(h * width / w))
    interpolation = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    image = cv2.resize(rgb, (width, height), interpolation=interpolation)
    scale = max(0.45, width / 1000)
    thickness = 1 if width < 900 else 2
    margin = max(6, width // 80)
    lines = _wrap(caption or "(no caption)", width - 2 * margin, scale, thickness)
    line_h = cv2.getTextSize("Ag", FONT, scale, thickness)[0][1] + margin
    band = np.full((line_h * len(lines) + margin, width, 3), 24, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (margin, (i + 1) * line_h), FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.vstack([image, band])


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


SMALLER_JPEG_QUALITIES = (70, 55, 40, 30)  # tried in turn when a JPEG must fit a broker's packet limit


def jpeg_within(rgb: np.ndarray, room: int) -> bytes | None:
    """The best JPEG of an RGB image of at most ``room`` bytes: lower qualities first, then halving its
    size (not below 96 px wide); None when none fits."""
    while True:
        for quality in SMALLER_JPEG_QUALITIES:
            data = encode_jpeg(rgb, quality)
            if len(data) <= room:
                return data
        if rgb.shape[1] < 192:
            return None
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image (PNG, JPEG) as RGB uint8; ValueError if it is not one."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


PAGE_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>explaincam: __CAMERA__</title>
<style>
body{font-family:sans-serif;background:#111;color:#eee;margin:1em}
.panes{display:flex;flex-wrap:wrap;gap:2em} .panes section{flex:1 1 420px;max-width:640px}
a{color:#8cf} a:visited{color:#c9f} img{max-width:100%;display:block}
.meta{color:#bbb;font-size:90%} .caption{font-size:130%}
.warning{background:#5a3a00;color:#ffd27a;padding:.4em .6em;border-radius:4px}
.stack{position:relative;width:100%}
.stack img{width:100%} .stack #overlay{position:absolute;left:0;top:0;height:100%}
button{background:#222;color:#eee;border:1px solid #555;border-radius:4px;padding:.3em .6em;margin:.15em;cursor:pointer}
button[aria-pressed=true]{background:#8cf;color:#111;border-color:#8cf}
</style></head>
<body><h1>__CAMERA__</h1>
<main class="panes"><section id="latest"><h2>Latest caption</h2>
<img id="latest-image" alt="the latest captioned frame">
<p class="caption" id="caption">waiting for the first caption ...</p>
<p class="warning" id="unfamiliar" hidden></p>
<p class="meta" id="caption-meta"></p></section>
<section id="explanation"><h2>Latest explanation</h2>
<p id="no-explanation">No explanation yet: ask for one with <code>explaincam request</code> or the Home Assistant
button "Explain latest frame".</p>
<div id="explained" hidden>
<p class="caption" id="explained-caption"></p>
<div id="words" role="group" aria-label="words"></div>
<div id="methods" role="group" aria-label="methods"></div>
<div class="stack"><img id="explained-frame" alt="the explained frame"><img id="overlay" alt=""></div>
<p class="meta" id="explanation-meta"></p></div></section></main>
<p class="meta"><a href="latest.json">latest.json</a> · <a href="explanation.json">explanation.json</a> ·
<a href="explanation.png">explanation.png</a> (every word and method)</p>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const $ = (id) => document.getElementById(id);
let captionFrame = null, explanationKey = null, explanation = null, chosenWord = 0, chosenMethod = null;
const when = (ts) => ts ? new Date(ts * 1000).toLocaleString() : "?";

async function fetchJson(name) {
  const reply = await fetch(name + "?t=" + Date.now(), {cache: "no-store"});
  if (!reply.ok) return null;
  return reply.json();
}

// Load an image off-screen and swap it in once it has loaded: no flicker.
function swapImage(img, src) {
  return new Promise((resolve) => {
    const next = new Image();
    next.onload = () => { img.src = next.src; resolve(true); };
    next.onerror = () => resolve(false);
    next.src = src;
  });
}

// Colour a grey heatmap (0..255) with a blue-green-yellow-red ramp whose opacity grows with the value.
function colourHeatmap(dataUrl) {
  return new Promise((resolve, reject) => {
    const grey = new Image();
    grey.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = grey.naturalWidth; canvas.height = grey.naturalHeight;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(grey, 0, 0);
      const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const d = pixels.data;
      for (let i = 0; i < d.length; i += 4) {
        const v = d[i] / 255;
        d[i] = Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - 3))));
        d[i + 1] = Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - 2))));
        d[i + 2] = Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - 1))));
        d[i + 3] = Math.round(200 * v);
      }
      ctx.putImageData(pixels, 0, 0);
      resolve(canvas.toDataURL("image/png"));
    };
    grey.onerror = reject;
    grey.src = dataUrl;
  });
}

async function showCaption() {
  const record = await fetchJson("latest.json");
  if (!record || record.frame_id === captionFrame) return;
  if (await swapImage($("latest-image"), "latest.jpg?" + record.frame_id)) captionFrame = record.frame_id;
  $("caption").textContent = record.caption || "(no caption)";
  const familiar = record.out_of_distribution === undefined ? "" :
      " · familiarity " + Number(record.familiarity).toFixed(2);
  $("caption-meta").textContent = "frame " + record.frame_id + " · " + when(record.ts) + " · model " +
      record.model + familiar + (record.ground_truth ? " · ground truth: " + record.ground_truth : "");
  $("unfamiliar").hidden = !record.out_of_distribution;
  $("unfamiliar").textContent = "This scene is unlike anything the model was made for (familiarity " +
      Number(record.familiarity).toFixed(2) + "): the caption is probably wrong.";
}

function methodsOf(word) {
  return Object.keys(word).filter((k) => word[k] && typeof word[k] === "object" && word[k].heatmap);
}

function buttons(container, labels, chosen, choose) {
  container.replaceChildren(...labels.map((label, i) => {
    const button = document.createElement("button");
    button.textContent = label;
    button.setAttribute("aria-pressed", String(i === chosen));
    button.onclick = () => choose(i);
    return button;
  }));
}

async function showOverlay() {
  const words = explanation.words;
  chosenWord = Math.min(chosenWord, words.length - 1);
  const methods = methodsOf(words[chosenWord]);
  if (!methods.includes(chosenMethod)) chosenMethod = methods[0] || null;
  buttons($("words"), words.map((w) => w.word), chosenWord, (i) => { chosenWord = i; showOverlay(); });
  buttons($("methods"), methods, methods.indexOf(chosenMethod),
          (i) => { chosenMethod = methods[i]; showOverlay(); });
  const overlay = $("overlay");
  if (chosenMethod) {
    await swapImage(overlay, await colourHeatmap("data:image/png;base64," +
                                                 words[chosenWord][chosenMethod].heatmap));
    overlay.alt = chosenMethod + " of \\u201c" + words[chosenWord].word + "\\u201d";
  }
  overlay.hidden = !chosenMethod;
}

async function showExplanation() {
  const record = await fetchJson("explanation.json");
  if (!record || record.status !== "ok" || !record.words || !record.words.length) return;
  const key = record.id + "/" + record.frame_id + "/" + record.ts;
  if (key === explanationKey) return;
  if (!await swapImage($("explained-frame"), "explanation.jpg?" + encodeURIComponent(key))) return;
  explanationKey = key;
  explanation = record;
  $("no-explanation").hidden = true;
  $("explained").hidden = false;
  $("explained-caption").textContent = record.caption;
  $("explanation-meta").textContent = "frame " + record.frame_id + " · made " + when(record.ts) +
      " · request " + record.id + (record.float_caption && record.float_caption !== record.caption ?
      " · the full-precision model says: " + record.float_caption : "");
  await showOverlay();
}

async function refresh() {
  try { await showCaption(); } catch (e) { /* the next round tries again */ }
  try { await showExplanation(); } catch (e) { }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
</script>
</body></html>
"""


class SnapshotWriter:
    """Writes latest.jpg and latest.json into a folder, at most every ``min_interval_s``, and the page once."""

    def __init__(self, folder: str | os.PathLike, camera: str, min_interval_s: float = 0.0, clock=time.monotonic):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        self.camera = camera
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_write = float("-inf")
        self._page_written = False

    def due(self) -> bool:
        """Whether enough time has passed since the last write."""
        return self._clock() - self._last_write >= self.min_interval_s

    def write(self, jpeg: bytes, caption_message: dict) -> None:
        """Write latest.jpg and latest.json for one caption message (as published on MQTT); index.html once."""
        self._last_write = self._clock()
        write_atomically(self.folder / "latest.jpg", jpeg)
        record = dict(caption_message, image="latest.jpg")
        write_atomically(self.folder / "latest.json", (json.dumps(record, indent=2) + "\n").encode())
        if not self._page_written:
            refresh_ms = round(1000 * min(10.0, max(1.0, self.min_interval_s)))
            page = PAGE_TEMPLATE.replace("__CAMERA__", html.escape(self.camera)).replace("__REFRESH_MS__", str(refresh_ms))
            write_atomically(self.folder / "index.html", page.encode())
            self._page_written = True
