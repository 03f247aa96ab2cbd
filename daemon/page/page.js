// The snapshot page's script (daemon/page/page.js, copied into the snapshot folder beside index.html).
// It fetches latest.json, explanation.json and timeline/index.json every data-refresh-ms milliseconds and swaps images only
// once they have loaded, so the page refreshes without flicker.
"use strict";
const REFRESH_MS = Number(document.currentScript.dataset.refreshMs);
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

function modelOf(entry) {
  return entry.model === "int8" ? "the int8 model that published the caption (no gradients)"
                                : "the model's float32 twin (gradients)";
}

function buttons(container, labels, chosen, choose, titles = []) {
  container.replaceChildren(...labels.map((label, i) => {
    const button = document.createElement("button");
    button.textContent = label;
    if (titles[i]) button.title = titles[i];
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
  const entries = words[chosenWord];
  buttons($("methods"), methods, methods.indexOf(chosenMethod),
          (i) => { chosenMethod = methods[i]; showOverlay(); },
          methods.map((m) => m + " explains " + modelOf(entries[m])));
  $("method-model").textContent = chosenMethod ? chosenMethod + " explains " + modelOf(entries[chosenMethod]) : "";
  const overlay = $("overlay");
  if (chosenMethod) {
    await swapImage(overlay, await colourHeatmap("data:image/png;base64," +
                                                 words[chosenWord][chosenMethod].heatmap));
    overlay.alt = chosenMethod + " of \u201c" + words[chosenWord].word + "\u201d";
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

// The timeline: the newest events (timeline/index.json, written by the daemon's history), each with its
// thumbnail, time, length, caption and familiarity; an explained event shows its kept explanation laid
// over the thumbnail, a word at a time.
let timelineKey = null;

async function showTimeline() {
  const index = await fetchJson("timeline/index.json");
  const key = index && JSON.stringify(index.events.map((e) => [e.event_id, e.end, e.explanation, e.explained]));
  if (!index || key === timelineKey) return;
  timelineKey = key;
  $("timeline").hidden = !index.events.length;
  $("timeline-events").replaceChildren(...index.events.map(timelineEntry));
}

function timelineEntry(event) {
  const item = document.createElement("li");
  item.className = "event";
  item.dataset.eventId = event.event_id;
  const stack = document.createElement("div");
  stack.className = "stack thumb";
  const thumb = document.createElement("img");
  thumb.className = "thumbnail";
  thumb.alt = "event " + event.event_id;
  if (event.thumbnail) thumb.src = "timeline/" + event.thumbnail;
  const overlay = document.createElement("img");
  overlay.className = "overlay";
  overlay.alt = "";
  overlay.hidden = true;
  stack.append(thumb, overlay);
  const text = document.createElement("div");
  const caption = document.createElement("p");
  caption.className = "caption";
  caption.textContent = event.caption;
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = when(event.start) + " · " + Math.max(0, event.end - event.start).toFixed(0) + " s · " +
      event.frames + " frames" + (event.familiarity == null ? "" : " · familiarity " +
      Number(event.familiarity).toFixed(2));
  text.append(caption, meta);
  if (event.out_of_distribution) {
    const warning = document.createElement("p");
    warning.className = "warning";
    warning.textContent = "unfamiliar scene: the caption is probably wrong";
    text.append(warning);
  }
  if (event.explanation) {
    const words = document.createElement("div");
    words.className = "event-words";
    words.setAttribute("role", "group");
    text.append(words);
    showEventExplanation(event, overlay, words);
  }
  item.append(stack, text);
  return item;
}

async function showEventExplanation(event, overlay, container) {
  const record = await fetchJson("timeline/" + event.explanation);
  if (!record || !record.words || !record.words.length) return;
  const show = async (i) => {
    const word = record.words[i], method = methodsOf(word)[0];
    buttons(container, record.words.map((w) => w.word), i, show);
    if (!method) { overlay.hidden = true; return; }
    await swapImage(overlay, await colourHeatmap("data:image/png;base64," + word[method].heatmap));
    overlay.alt = method + " of \u201c" + word.word + "\u201d";
    overlay.hidden = false;
  };
  await show(0);
}

async function refresh() {
  try { await showCaption(); } catch (e) { /* the next round tries again */ }
  try { await showExplanation(); } catch (e) { }
  try { await showTimeline(); } catch (e) { }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
