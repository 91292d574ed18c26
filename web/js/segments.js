// Genre segments: the one algorithm of `python -m keras_mgc.tag --segments`
// (keras_mgc/segments.py holds its definition), in float64 like the Python one.
//
// 1. Raw segmentation: g = argmax P[0] from 0.0; at window i the top class c (ties: lowest
//    index) opens a new segment when c != g and P[i][c] - P[i][g] >= hysteresis, at
//    t = s_i + (W - H) / 2 clamped to [0, D]. The last segment ends at D.
// 2. Minimum length: while more than one segment and the shortest (ties: earliest) is shorter
//    than minSegment, merge it into the neighbour whose genre has the higher mean probability
//    over its windows (ties: the previous one); then join adjacent segments of one genre.
// 3. Each segment: start, end, genre, mean over its windows of P[:, genre].

export const DEFAULT_HYSTERESIS = 0.1;
export const DEFAULT_MIN_SEGMENT = 10.0;

function argmax(row) {
  let best = 0;
  for (let k = 1; k < row.length; k++) if (row[k] > row[best]) best = k;
  return best;
}

function meanOf(P, a, b, g) {
  let sum = 0;
  for (let i = a; i < b; i++) sum += P[i][g];
  return sum / (b - a);
}

/**
 * @param {number[][]} P per-window probabilities (windows x classes)
 * @param {number[]} starts window starts in seconds
 * @returns {{start:number,end:number,genre:string,probability:number,firstWindow:number,stopWindow:number}[]}
 */
export function segmentWindows(P, starts, window, hop, duration, classNames,
                               hysteresis = DEFAULT_HYSTERESIS, minSegment = DEFAULT_MIN_SEGMENT) {
  const n = P.length;
  if (n === 0) throw new Error("segments need at least one window");
  if (!(hysteresis >= 0)) throw new Error(`hysteresis must be a probability difference >= 0, got ${hysteresis}`);
  if (!(minSegment >= 0)) throw new Error(`min segment must be >= 0 seconds, got ${minSegment}`);
  const offset = (window - hop) / 2;
  // [start, end, genre, first window, stop window]
  let segs = [];
  let g = argmax(P[0]);
  let segStart = 0.0;
  let segFirst = 0;
  for (let i = 1; i < n; i++) {
    const c = argmax(P[i]);
    if (c !== g && P[i][c] - P[i][g] >= hysteresis) {
      const t = Math.min(Math.max(starts[i] + offset, 0.0), duration);
      segs.push([segStart, t, g, segFirst, i]);
      g = c; segStart = t; segFirst = i;
    }
  }
  segs.push([segStart, duration, g, segFirst, n]);

  while (segs.length > 1) {
    let k = 0;
    for (let j = 1; j < segs.length; j++) {
      if (segs[j][1] - segs[j][0] < segs[k][1] - segs[k][0]) k = j;
    }
    if (!(segs[k][1] - segs[k][0] < minSegment)) break;
    const [, , , a, b] = segs[k];
    let into;
    if (k === 0) into = 1;
    else if (k === segs.length - 1) into = k - 1;
    else into = meanOf(P, a, b, segs[k + 1][2]) > meanOf(P, a, b, segs[k - 1][2]) ? k + 1 : k - 1;
    const target = segs[into];
    target[0] = Math.min(target[0], segs[k][0]);
    target[1] = Math.max(target[1], segs[k][1]);
    target[3] = Math.min(target[3], a);
    target[4] = Math.max(target[4], b);
    segs.splice(k, 1);
    const joined = [segs[0]];
    for (const seg of segs.slice(1)) {
      const last = joined[joined.length - 1];
      if (seg[2] === last[2]) { last[1] = seg[1]; last[4] = seg[4]; } else joined.push(seg);
    }
    segs = joined;
  }
  return segs.map(([start, end, genre, a, z]) => ({
    start, end, genre: classNames[genre], probability: meanOf(P, a, z, genre), firstWindow: a, stopWindow: z,
  }));
}

/** Audacity label track: "start\tend\tgenre" with 6 decimals per line. */
export function audacityLabels(segments) {
  return segments.map((s) => `${s.start.toFixed(6)}\t${s.end.toFixed(6)}\t${s.genre}\n`).join("");
}
