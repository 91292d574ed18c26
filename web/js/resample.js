// Band-limited resampling close to the Python tagger's soxr "HQ", for the worker.
//
// Chromium's own resampler (decodeAudioData at another rate) moved the whole-song
// probabilities by up to 1.8e-3 against keras_mgc.tag; a linear-phase Kaiser-windowed sinc
// with soxr HQ's band edges (pass band to 0.913 of the output's Nyquist, stop band from
// 1.0: the cutoff halfway, 0.9565) and 64 output samples each side moved them by at most
// 2.4e-4 on the same MP3s (BUILD_NOTES.md "Browser page"). Output sample j is the input at
// time j * from / to (no delay), and there are floor(n * to / from + 1/2) of them, as soxr.

export const PASSBAND = 0.9565; // cutoff, as a fraction of the lower rate's Nyquist frequency
export const HALF_WIDTH = 64; // taps each side, in samples of the lower rate
export const BETA = 12; // Kaiser window: about 120 dB of stop-band attenuation

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function besselI0(x) {
  let sum = 1, term = 1;
  for (let k = 1; k < 64; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  return sum;
}

/** Number of output samples for `n` input samples (soxr's count). */
export function resampledLength(n, from, to) {
  const g = gcd(from, to);
  const up = to / g, down = from / g;
  return Math.floor((2 * n * up + down) / (2 * down));
}

/**
 * Resample mono `x` from `from` Hz to `to` Hz (integers). `onProgress(fraction)` is called
 * now and then (long songs take seconds).
 */
export function resample(x, from, to, onProgress = null) {
  if (from === to) return x;
  const g = gcd(from, to);
  const up = to / g, down = from / g; // output j sits at input time j * down / up
  const scale = Math.min(1, to / from);
  const fc = (PASSBAND * scale) / 2; // cycles per input sample
  const hw = HALF_WIDTH / scale; // half width in input samples
  const W = Math.ceil(hw);
  const taps = 2 * W;
  // one row of taps per phase (fractional position rem / up), each normalised to unit gain
  const table = new Float64Array(up * taps);
  const i0beta = besselI0(BETA);
  for (let rem = 0; rem < up; rem++) {
    const frac = rem / up;
    let sum = 0;
    for (let i = 0; i < taps; i++) {
      const tau = frac - (i - W + 1); // input sample base + (i - W + 1)
      const u = tau / hw;
      let h = 0;
      if (Math.abs(u) <= 1) {
        const arg = 2 * fc * tau;
        const sinc = arg === 0 ? 1 : Math.sin(Math.PI * arg) / (Math.PI * arg);
        h = 2 * fc * sinc * (besselI0(BETA * Math.sqrt(1 - u * u)) / i0beta);
      }
      table[rem * taps + i] = h;
      sum += h;
    }
    for (let i = 0; i < taps; i++) table[rem * taps + i] /= sum;
  }
  const n = x.length;
  const outLength = resampledLength(n, from, to);
  const y = new Float32Array(outLength);
  let base = 0, rem = 0;
  const report = Math.max(1, Math.floor(outLength / 50));
  for (let j = 0; j < outLength; j++) {
    const row = rem * taps;
    const first = base - W + 1;
    let acc = 0;
    if (first >= 0 && first + taps <= n) {
      for (let i = 0; i < taps; i++) acc += x[first + i] * table[row + i];
    } else {
      for (let i = 0; i < taps; i++) {
        const k = first + i;
        if (k >= 0 && k < n) acc += x[k] * table[row + i];
      }
    }
    y[j] = acc;
    rem += down;
    while (rem >= up) { rem -= up; base++; }
    if (onProgress && j % report === 0) onProgress(j / outLength);
  }
  return y;
}
