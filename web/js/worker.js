// Module worker: runs the ONNX waveform model with onnxruntime-web (WebAssembly, one thread)
// over the tagger's windows, off the page's thread, so the tab stays responsive on long files.
//
// Messages in:  {type: "load", model: ArrayBuffer, inputName}
//               {type: "tag", channels: Float32Array[], rate, sampleRate, w, h, batch}
//               (channels at `rate` Hz; mixed to mono, then resampled to the model's `sampleRate`)
// Messages out: {type: "loaded", inputNames, outputNames}
//               {type: "resampling", fraction}
//               {type: "progress", done, total, starts, probabilities}   (the new windows only)
//               {type: "done", n, starts, probabilities (Float32Array windows*classes), seconds}
//               {type: "error", message}

import * as ort from "../vendor/onnxruntime-web/ort.wasm.min.mjs";
import { resample } from "./resample.js";
import { fillWindow, windowStarts } from "./windows.js";

ort.env.wasm.numThreads = 1; // no SharedArrayBuffer needed, so no cross-origin isolation headers
ort.env.wasm.proxy = false; // this is already a worker
ort.env.wasm.wasmPaths = new URL("../vendor/onnxruntime-web/", import.meta.url).href;

let session = null;
let inputName = "waveform";
const OUTPUT = "probabilities";

function mixToMono(channels) {
  if (channels.length === 1) return channels[0];
  const n = channels[0].length;
  const mono = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (const c of channels) s += c[i];
    mono[i] = s / channels.length;
  }
  return mono;
}

async function load(msg) {
  inputName = msg.inputName || "waveform";
  session = await ort.InferenceSession.create(new Uint8Array(msg.model), {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  if (!session.inputNames.includes(inputName) || !session.outputNames.includes(OUTPUT)) {
    throw new Error(`the model takes ${JSON.stringify(session.inputNames)} and returns ` +
      `${JSON.stringify(session.outputNames)}; the exporter's contract is input "${inputName}" ` +
      `float32 [batch, samples] and output "${OUTPUT}" [batch, classes]`);
  }
  postMessage({ type: "loaded", inputNames: session.inputNames, outputNames: session.outputNames });
}

async function tag(msg) {
  const started = performance.now();
  let mono = mixToMono(msg.channels);
  msg.channels = null; // let the per-channel copies go
  if (msg.rate !== msg.sampleRate) {
    let last = 0;
    mono = resample(mono, msg.rate, msg.sampleRate, (fraction) => {
      const now = performance.now();
      if (now - last > 200) { last = now; postMessage({ type: "resampling", fraction }); }
    });
  }
  const { w, h } = msg;
  const batch = Math.max(1, msg.batch || 4);
  const starts = windowStarts(mono.length, w, h);
  const total = starts.length;
  let classes = 0;
  let all = null;
  for (let b = 0; b < total; b += batch) {
    const m = Math.min(batch, total - b);
    const data = new Float32Array(m * w);
    for (let j = 0; j < m; j++) fillWindow(mono, starts[b + j], w, data.subarray(j * w, (j + 1) * w));
    const out = await session.run({ [inputName]: new ort.Tensor("float32", data, [m, w]) }, [OUTPUT]);
    const p = out[OUTPUT];
    if (!classes) {
      classes = p.dims[1];
      all = new Float32Array(total * classes);
    }
    const values = p.data;
    for (let r = 0; r < m; r++) { // the tagger's check of the contract: finite, summing to 1
      let sum = 0;
      for (let k = 0; k < classes; k++) sum += values[r * classes + k];
      if (!Number.isFinite(sum)) throw new Error("the model returned non-finite probabilities");
      if (Math.abs(sum - 1) > 1e-3) {
        throw new Error(`output "${OUTPUT}" does not sum to 1 (sum ${sum.toPrecision(4)}): ` +
          "the exporter's contract is softmax probabilities, not logits");
      }
    }
    all.set(values, b * classes);
    for (const t of Object.values(out)) t.dispose?.();
    postMessage({ type: "progress", done: b + m, total, first: b, classes,
                  probabilities: values.slice(), starts: starts.slice(b, b + m) });
  }
  postMessage({ type: "done", n: mono.length, starts, classes, probabilities: all,
                seconds: (performance.now() - started) / 1000 }, [all.buffer]);
}

onmessage = async (event) => {
  const msg = event.data;
  try {
    if (msg.type === "load") await load(msg);
    else if (msg.type === "tag") await tag(msg);
  } catch (err) {
    postMessage({ type: "error", message: String(err && err.message ? err.message : err) });
  }
};
