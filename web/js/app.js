// The page: loads an exported model folder, decodes a song with the Web Audio API at the
// model's rate, tags it in a worker (js/worker.js) with the Python tagger's windows, and shows
// the whole-song genres, a timeline, the segments, and the tagger's JSON to download.
//
// State for scripts and tests: window.kmgc = {state, error, document, raw, maxStallMs} and
// <body data-state="starting|loading-model|ready|decoding|tagging|done|error">.

import { drawTimeline, colour } from "./chart.js";
import { meanProbabilities, resultDict, segmentDicts, taggerDocument } from "./result.js";
import { audacityLabels, segmentWindows } from "./segments.js";
import { storedSampleRate } from "./rate.js";
import { resampledLength } from "./resample.js";
import { paddingNote, windowSamples } from "./windows.js";

const $ = (id) => document.getElementById(id);
const kmgc = (window.kmgc = { state: "starting", error: null, document: null, raw: null, maxStallMs: 0,
                             stalls: [], phases: [] });

let model = null; // {name, meta, classNames, sampleRate, cropSamples, inputName}
let worker = null;
let busy = false;

function setState(state) {
  kmgc.phases.push([state, Math.round(performance.now())]);
  kmgc.state = state;
  document.body.dataset.state = state;
}

function showMessage(text, bad = true) {
  const el = $("message");
  el.textContent = text;
  el.className = bad ? "bad" : "";
  el.hidden = !text;
}

function fail(text) {
  kmgc.error = text;
  showMessage(text);
  $("progress-row").hidden = true;
  busy = false;
  setState("error");
  $("song-file").disabled = !model;
}

// The main thread's longest pause while busy: what a user would feel as a frozen tab.
let lastTick = performance.now();
setInterval(() => {
  const now = performance.now();
  if (busy) {
    kmgc.maxStallMs = Math.max(kmgc.maxStallMs, now - lastTick);
    if (now - lastTick > 250) kmgc.stalls.push([Math.round(lastTick), Math.round(now - lastTick)]);
  }
  lastTick = now;
}, 50);

// ------------------------------------------------------------------ model folder

/** Check the exporter's metadata (model.json); returns what the page needs. */
function checkMetadata(meta, where, labelsText) {
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) {
    throw new Error(`${where}: the model metadata must be a JSON object`);
  }
  let names = meta.class_names;
  if (names === undefined && labelsText !== null) {
    names = labelsText.split(/\r?\n/).map((s) => s.trim());
    while (names.length && !names[names.length - 1]) names.pop();
  }
  if (!Array.isArray(names) || !names.length || !names.every((n) => typeof n === "string" && n)) {
    throw new Error(`${where}: "class_names" must be a non-empty list of class names (or labels.txt beside it)`);
  }
  const dup = names.filter((n, i) => names.indexOf(n) !== i);
  if (dup.length) throw new Error(`${where}: duplicate class names ${JSON.stringify([...new Set(dup)])}`);
  for (const key of ["sample_rate", "crop_samples"]) {
    if (!Number.isInteger(meta[key]) || meta[key] <= 0) {
      throw new Error(`${where}: "${key}" must be a positive integer, got ${JSON.stringify(meta[key])}`);
    }
  }
  if (meta.sample_rate < 3000 || meta.sample_rate > 768000) {
    throw new Error(`${where}: sample rate ${meta.sample_rate} Hz is outside what Web Audio can resample to (3000-768000)`);
  }
  const inputName = (meta.input && typeof meta.input.name === "string" && meta.input.name) || "waveform";
  return { meta, classNames: names, sampleRate: meta.sample_rate, cropSamples: meta.crop_samples, inputName };
}

const NO_METADATA = "has no model.json, the exporter's metadata beside model.onnx (class_names, " +
  "sample_rate, crop_samples): the page needs the model's sample rate and window, and will not guess them. " +
  "Export the model with `python -m keras_mgc.export` (it writes onnx/model.onnx, model.json and labels.txt)";

async function fetchOrNull(url) {
  const response = await fetch(url, { cache: "no-cache" });
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  return response;
}

async function loadModelFromUrl(base) {
  if (!base.endsWith("/")) base += "/";
  const metaResponse = await fetchOrNull(base + "model.json");
  if (!metaResponse) throw new Error(`The model folder ${base} ${NO_METADATA}.`);
  let meta;
  try {
    meta = await metaResponse.json();
  } catch (err) {
    throw new Error(`${base}model.json: not valid JSON (${err.message})`);
  }
  const labelsResponse = meta && meta.class_names === undefined ? await fetchOrNull(base + "labels.txt") : null;
  const checked = checkMetadata(meta, base + "model.json", labelsResponse ? await labelsResponse.text() : null);
  const modelResponse = await fetchOrNull(base + "model.onnx");
  if (!modelResponse) throw new Error(`The model folder ${base} has no model.onnx (the exporter's ONNX waveform model).`);
  return { ...checked, name: base + "model.onnx", bytes: await modelResponse.arrayBuffer() };
}

async function loadModelFromFiles(files) {
  // Prefer <folder>/onnx/model.onnx (an export folder), else any model.onnx.
  const byPath = new Map([...files].map((f) => [f.webkitRelativePath || f.name, f]));
  const candidates = [...byPath.keys()].filter((p) => p.endsWith("model.onnx")).sort((a, b) => a.length - b.length);
  if (!candidates.length) throw new Error("The chosen folder holds no model.onnx (the exporter's ONNX waveform model).");
  const onnxPath = candidates.find((p) => p.endsWith("onnx/model.onnx")) || candidates[0];
  const dir = onnxPath.slice(0, onnxPath.length - "model.onnx".length);
  const metaFile = byPath.get(dir + "model.json");
  if (!metaFile) throw new Error(`The model folder ${dir || "."} ${NO_METADATA}.`);
  let meta;
  try {
    meta = JSON.parse(await metaFile.text());
  } catch (err) {
    throw new Error(`${dir}model.json: not valid JSON (${err.message})`);
  }
  const labels = byPath.get(dir + "labels.txt");
  const checked = checkMetadata(meta, dir + "model.json", labels ? await labels.text() : null);
  return { ...checked, name: onnxPath, bytes: await byPath.get(onnxPath).arrayBuffer() };
}

function startWorker(loaded) {
  if (worker) worker.terminate();
  worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  return new Promise((resolve, reject) => {
    worker.onmessage = (event) => {
      if (event.data.type === "loaded") resolve();
      else if (event.data.type === "error") reject(new Error(`${loaded.name}: ONNX Runtime cannot run it (${event.data.message})`));
    };
    worker.onerror = (event) => reject(new Error(`the model worker failed to start (${event.message || "see the console"}); ` +
      "are the ONNX Runtime files in vendor/? Run `python -m keras_mgc.web --prepare`"));
    worker.postMessage({ type: "load", model: loaded.bytes, inputName: loaded.inputName }, [loaded.bytes]);
  });
}

async function useModel(load) {
  setState("loading-model");
  model = null;
  $("song-file").disabled = true;
  const status = $("model-status");
  status.className = "status";
  status.textContent = "Loading the model…";
  try {
    const loaded = await load();
    await startWorker(loaded);
    model = loaded;
    delete model.bytes;
    status.className = "status ok";
    status.textContent = `Model: ${model.name} · ${model.classNames.length} genres · ` +
      `${model.sampleRate} Hz · window ${(model.cropSamples / model.sampleRate).toFixed(2)} s`;
    $("song-file").disabled = false;
    showMessage("");
    setState("ready");
  } catch (err) {
    status.className = "status bad";
    status.textContent = err.message;
    fail(err.message);
  }
}

// ------------------------------------------------------------------ tagging

function readNumber(id, fallback) {
  const v = $(id).value.trim();
  return v === "" ? fallback : Number(v);
}

async function decode(file) {
  const bytes = await file.arrayBuffer();
  // Decoded at the file's own rate (read from its header) so that the browser does not
  // resample: the worker resamples like the Python tagger (js/resample.js). Chromium's
  // resampler, used when an OfflineAudioContext at another rate decodes, moved the
  // probabilities 7x more. Unknown containers fall back to it, and the result says so.
  const stored = storedSampleRate(bytes);
  const own = stored && stored >= 3000 && stored <= 768000 ? stored : null;
  const rate = own || model.sampleRate;
  const ctx = new OfflineAudioContext(1, 1, rate);
  let audio;
  try {
    audio = await ctx.decodeAudioData(bytes);
  } catch (err) {
    throw new Error(`${file.name}: this browser cannot decode it (${err && err.message ? err.message : err}). ` +
      "Try a common format (WAV, MP3, FLAC, Ogg/Opus, AAC/M4A) or convert it first.");
  }
  if (!audio.length) throw new Error(`${file.name}: no audio samples could be decoded`);
  // Copied out in slices with pauses between them: copying an hour of stereo in one go
  // held the page's thread for over a second.
  setState("copying");
  const channels = [];
  const slice = 1 << 21;
  for (let c = 0; c < audio.numberOfChannels; c++) {
    const data = new Float32Array(audio.length);
    for (let at = 0; at < audio.length; at += slice) {
      audio.copyFromChannel(data.subarray(at, Math.min(at + slice, audio.length)), c, at);
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    channels.push(data);
  }
  const note = own ? null : "the file's sample rate is not in a header this page reads (WAV, MP3, FLAC, Ogg): " +
    "resampled by the browser, whose resampler is not the tagger's";
  return { channels, rate, note };
}

function runWorker(channels, rate, w, h, onProgress) {
  return new Promise((resolve, reject) => {
    worker.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === "progress") onProgress(msg);
      else if (msg.type === "resampling") {
        $("progress").max = 1;
        $("progress").value = msg.fraction;
        $("progress-text").textContent = `Resampling ${rate} Hz to ${model.sampleRate} Hz…`;
      }
      else if (msg.type === "done") resolve(msg);
      else if (msg.type === "error") reject(new Error(`the model failed on this song: ${msg.message}`));
    };
    worker.postMessage({ type: "tag", channels, rate, sampleRate: model.sampleRate, w, h, batch: 4 },
      channels.map((c) => c.buffer));
  });
}

async function tagFile(file) {
  if (!model || busy) return;
  busy = true;
  kmgc.error = null;
  kmgc.document = null;
  kmgc.maxStallMs = 0;
  kmgc.stalls = [];
  kmgc.phases = [];
  showMessage("");
  $("result").hidden = true;
  $("song-name").textContent = file.name;
  $("song-facts").textContent = "";
  for (const id of ["top-list", "notes", "legend"]) $(id).replaceChildren();
  $("segments").tBodies[0].replaceChildren();
  const started = performance.now();
  const topK = Math.min(Math.max(1, Math.round(readNumber("top-k", 3))), model.classNames.length);
  let w, h;
  try {
    ({ w, h } = windowSamples(model.sampleRate, model.cropSamples, readNumber("window", null), readNumber("hop", 1.0)));
  } catch (err) {
    fail(err.message);
    return;
  }
  const hysteresis = readNumber("hysteresis", 0.1);
  const minSegment = readNumber("min-segment", 10);
  $("progress-row").hidden = false;
  $("progress").removeAttribute("value");
  $("progress-text").textContent = `Decoding ${file.name}…`;
  setState("decoding");
  try {
    const { channels, rate, note } = await decode(file);
    const n = resampledLength(channels[0].length, rate, model.sampleRate);
    setState("tagging");
    const rows = [];
    const starts = [];
    let lastDraw = 0;
    let drawCost = 0;
    const done = await runWorker(channels, rate, w, h, (msg) => {
      $("progress").max = msg.total;
      $("progress").value = msg.done;
      $("progress-text").textContent = `${msg.done} / ${msg.total} windows`;
      for (let j = 0; j < msg.starts.length; j++) {
        rows.push(Array.from(msg.probabilities.subarray(j * msg.classes, (j + 1) * msg.classes)));
        starts.push(msg.starts[j]);
      }
      const now = performance.now();
      if (now - lastDraw > Math.max(500, 20 * drawCost)) { // a live chart for long songs
        $("result").hidden = false;
        drawTimeline($("timeline"), { starts: starts.map((s) => s / model.sampleRate), windowProbabilities: rows,
          window: w / model.sampleRate, hop: h / model.sampleRate, duration: n / model.sampleRate,
          classNames: model.classNames });
        lastDraw = performance.now();
        drawCost = lastDraw - now;
      }
    });
    setState("summing");
    const windowProbabilities = [];
    for (let i = 0; i < done.starts.length; i++) {
      windowProbabilities.push(Array.from(done.probabilities.subarray(i * done.classes, (i + 1) * done.classes)));
    }
    if (done.classes !== model.classNames.length) {
      throw new Error(`the model returns ${done.classes} probabilities but model.json names ${model.classNames.length} classes`);
    }
    const probabilities = meanProbabilities(windowProbabilities);
    const startsSeconds = done.starts.map((s) => s / model.sampleRate);
    const segments = segmentWindows(windowProbabilities, startsSeconds, w / model.sampleRate, h / model.sampleRate,
      n / model.sampleRate, model.classNames, hysteresis, minSegment);
    if (done.n !== n) throw new Error(`internal: ${done.n} samples resampled, ${n} expected`);
    const notes = [note, paddingNote(n, w, model.sampleRate)].filter(Boolean);
    const result = resultDict({ file: file.name, classNames: model.classNames, sampleRate: model.sampleRate, n,
      starts: done.starts, windowProbabilities, probabilities, topK, notes,
      seconds: (performance.now() - started) / 1000, segments });
    const doc = taggerDocument({ model: model.name, classNames: model.classNames, sampleRate: model.sampleRate,
      w, h, topK, hysteresis, minSegment, result });
    kmgc.raw = { probabilities, windowProbabilities, starts: startsSeconds, segments, samples: n, fileName: file.name,
                 window: w / model.sampleRate, hop: h / model.sampleRate };
    kmgc.document = doc;
    setState("drawing");
    render(file.name, doc, result, { starts: startsSeconds, windowProbabilities, window: w / model.sampleRate,
      hop: h / model.sampleRate, duration: n / model.sampleRate, classNames: model.classNames, segments });
    $("progress-row").hidden = true;
    busy = false;
    setState("done");
  } catch (err) {
    fail(err.message.startsWith(file.name) ? err.message : `${file.name}: ${err.message}`);
  }
}

function render(fileName, doc, result, chart) {
  $("result").hidden = false;
  $("song-name").textContent = fileName;
  $("song-facts").textContent = `${result.duration.toFixed(2)} s · ${result.windows} window${result.windows === 1 ? "" : "s"} ` +
    `of ${doc.window.toFixed(2)} s every ${doc.hop.toFixed(2)} s · ${result.seconds.toFixed(1)} s to tag`;
  const list = $("top-list");
  list.replaceChildren(...result.top.map(({ label, probability }) => {
    const li = document.createElement("li");
    li.textContent = `${label} ${probability.toFixed(3)}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(probability * 300)}px`;
    bar.style.background = colour(model.classNames.indexOf(label));
    li.append(bar);
    return li;
  }));
  $("notes").replaceChildren(...result.notes.map((note) => {
    const li = document.createElement("li");
    li.textContent = `note: ${note}`;
    return li;
  }));
  drawTimeline($("timeline"), chart);
  $("legend").replaceChildren(...model.classNames.map((name, k) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour(k);
    span.append(swatch, name);
    return span;
  }));
  $("segments").tBodies[0].replaceChildren(...result.segments.map((s) => {
    const tr = document.createElement("tr");
    for (const text of [s.start.toFixed(2), s.end.toFixed(2), s.genre, s.probability.toFixed(3)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
  const stem = fileName.replace(/\.[^.]*$/, "") || "song";
  setDownload($("download-json"), JSON.stringify(doc, null, 2) + "\n", "application/json", `${stem}.genres.json`);
  setDownload($("download-labels"), audacityLabels(chart.segments), "text/plain", `${stem}.labels.txt`);
}

function setDownload(anchor, text, type, name) {
  if (anchor.href.startsWith("blob:")) URL.revokeObjectURL(anchor.href);
  anchor.href = URL.createObjectURL(new Blob([text], { type }));
  anchor.download = name;
}

/** New hysteresis or minimum length: the segments again, from the same windows (no model run). */
function resegment() {
  if (busy || kmgc.state !== "done" || !kmgc.raw) return;
  const raw = kmgc.raw, doc = kmgc.document, result = doc.results[0];
  let segments;
  const hysteresis = readNumber("hysteresis", 0.1);
  const minSegment = readNumber("min-segment", 10);
  try {
    segments = segmentWindows(raw.windowProbabilities, raw.starts, raw.window, raw.hop, raw.samples / model.sampleRate,
      model.classNames, hysteresis, minSegment);
  } catch (err) {
    showMessage(err.message);
    return;
  }
  showMessage("");
  raw.segments = segments;
  result.segments = segmentDicts(segments);
  doc.hysteresis = hysteresis;
  doc.min_segment = minSegment;
  render(raw.fileName, doc, result, { starts: raw.starts, windowProbabilities: raw.windowProbabilities,
    window: raw.window, hop: raw.hop, duration: raw.samples / model.sampleRate, classNames: model.classNames, segments });
}

// ------------------------------------------------------------------ wiring

for (const id of ["hysteresis", "min-segment"]) $(id).addEventListener("change", resegment);

$("song-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) tagFile(file);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) tagFile(file);
});
$("model-folder").addEventListener("change", (event) => {
  const files = event.target.files;
  if (files.length) useModel(() => loadModelFromFiles(files));
});

const params = new URLSearchParams(location.search);
useModel(() => loadModelFromUrl(params.get("model") || "model/"));
