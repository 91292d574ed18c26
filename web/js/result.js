// The tagger's JSON (`python -m keras_mgc.tag --json --timeline`), built from the page's numbers.

/** Python's round(x, digits) for the JSON (exact binary value, like Python). */
export function roundTo(x, digits) {
  return Number(x.toFixed(digits));
}

/** The k most probable classes of `p`, most probable first (ties: lowest index, like a stable argsort). */
export function topClasses(p, k, classNames) {
  const order = Array.from(p, (_, i) => i).sort((a, b) => (p[b] - p[a]) || (a - b));
  return order.slice(0, k).map((i) => [classNames[i], p[i]]);
}

/** Whole-song probabilities: the float64 mean of the window probabilities. */
export function meanProbabilities(windowProbabilities) {
  const classes = windowProbabilities[0].length;
  const sum = new Float64Array(classes);
  for (const row of windowProbabilities) for (let k = 0; k < classes; k++) sum[k] += row[k];
  return Array.from(sum, (s) => s / windowProbabilities.length);
}

function tops(pairs, digits) {
  return pairs.map(([label, p]) => ({ label, probability: roundTo(p, digits) }));
}

/**
 * One file's result (TagResult.as_dict(timeline=True)) plus "segments" (Segment.as_dict).
 * @param {object} r {file, classNames, sampleRate, n, starts (samples), windowProbabilities,
 *                    probabilities, topK, notes, seconds, segments}
 */
export function resultDict(r, digits = 6) {
  const out = {
    file: r.file,
    duration: roundTo(r.n / r.sampleRate, 3),
    windows: r.starts.length,
    top: tops(topClasses(r.probabilities, r.topK, r.classNames), digits),
    probabilities: Object.fromEntries(r.classNames.map((c, i) => [c, roundTo(r.probabilities[i], digits)])),
    notes: [...r.notes],
    seconds: roundTo(r.seconds, 3),
    error: null,
  };
  out.timeline = r.starts.map((s, i) => ({
    start: roundTo(s / r.sampleRate, 3),
    top: tops(topClasses(r.windowProbabilities[i], r.topK, r.classNames), digits),
  }));
  if (r.segments) out.segments = segmentDicts(r.segments, digits);
  return out;
}

/** Segments as Segment.as_dict writes them: times to 3 decimals, the probability to `digits`. */
export function segmentDicts(segments, digits = 6) {
  return segments.map((s) => ({
    start: roundTo(s.start, 3), end: roundTo(s.end, 3), genre: s.genre, probability: roundTo(s.probability, digits),
  }));
}

/** The whole document, as the tagger's `--json --timeline --segments` prints it for one file. */
export function taggerDocument({ model, classNames, sampleRate, w, h, topK, hysteresis, minSegment, result }) {
  return {
    model,
    class_names: [...classNames],
    sample_rate: sampleRate,
    window: roundTo(w / sampleRate, 6),
    hop: roundTo(h / sampleRate, 6),
    top_k: Math.min(topK, classNames.length),
    hysteresis,
    min_segment: minSegment,
    files: 1,
    failed: result.error ? 1 : 0,
    results: [result],
  };
}
