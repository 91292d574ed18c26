// The Python tagger's windows (keras_mgc/windows.py: window_starts, Windower), sample for sample.
//
// - Window `w` samples (default: the model's training crop), starts every `h` samples from 0.
// - Tail: when the regular windows do not reach the end, one more window aligned to the end
//   (start = n - w), so every sample is covered: 1 + ceil((n - w) / h) windows for n >= w.
// - A song shorter than one window is looped (repeated from its start) up to one window,
//   like NumPy's np.resize, and the result says so in a note.

/** Python's round(): halves go to the even integer (round(44320.5) == 44320). */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
}

/** Window and hop in samples, as Tagger._window_samples computes them. */
export function windowSamples(sampleRate, cropSamples, windowSeconds, hopSeconds) {
  for (const [name, v] of [["window", windowSeconds], ["hop", hopSeconds]]) {
    if (v !== null && v !== undefined && !(Number.isFinite(v) && v > 0)) {
      throw new Error(`${name} must be a positive number of seconds, got ${v}`);
    }
  }
  let w = cropSamples;
  if (windowSeconds !== null && windowSeconds !== undefined) {
    if (windowSeconds < 0.1) throw new Error(`window must be at least 0.1 s, got ${windowSeconds}`);
    w = roundHalfEven(windowSeconds * sampleRate);
  }
  const h = Math.max(1, roundHalfEven(hopSeconds * sampleRate));
  return { w, h };
}

/** Start samples of the windows over `n` samples (keras_mgc.windows.window_starts). */
export function windowStarts(n, w, h) {
  if (n <= w) return [0];
  const starts = [];
  for (let s = 0; s <= n - w; s += h) starts.push(s);
  if (starts[starts.length - 1] + w < n) starts.push(n - w);
  return starts;
}

/** Copy the window at `start` into `out` (length w); a song shorter than w is looped. */
export function fillWindow(mono, start, w, out) {
  if (mono.length >= w) {
    out.set(mono.subarray(start, start + w));
    return;
  }
  for (let i = 0; i < w; i += mono.length) out.set(mono.subarray(0, Math.min(mono.length, w - i)), i);
}

/** The tagger's note for a song shorter than one window (null when it is not). */
export function paddingNote(n, w, sampleRate) {
  if (n >= w) return null;
  return `padded: ${((w - n) / sampleRate).toFixed(2)} s shorter than one ` +
    `${(w / sampleRate).toFixed(2)} s window (looped to fill it)`;
}
