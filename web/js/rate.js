// The sample rate a file is stored at, read from its header (WAV, MP3, FLAC, Ogg Vorbis/Opus),
// so the page can decode it without the browser resampling and resample it itself like the
// Python tagger (js/resample.js). null when the container is not one of these.

const MP3_RATES = { 3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000] };

function ascii(bytes, at, length) {
  return String.fromCharCode(...bytes.subarray(at, at + length));
}

/** @param {ArrayBuffer} buffer the file's bytes  @returns {number|null} */
export function storedSampleRate(buffer) {
  const b = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (b.length < 12) return null;
  if ((ascii(b, 0, 4) === "RIFF" || ascii(b, 0, 4) === "RF64") && ascii(b, 8, 4) === "WAVE") {
    for (let at = 12; at + 16 <= b.length;) {
      const size = view.getUint32(at + 4, true);
      if (ascii(b, at, 4) === "fmt ") return view.getUint32(at + 12, true) || null;
      at += 8 + size + (size % 2);
    }
    return null;
  }
  if (ascii(b, 0, 4) === "fLaC" && b.length >= 42) {
    // STREAMINFO: sample rate is the 20 bits after min/max block and frame sizes
    return ((b[18] << 12) | (b[19] << 4) | (b[20] >> 4)) || null;
  }
  if (ascii(b, 0, 4) === "OggS" && b.length >= 28 + 16) {
    const segments = b[26];
    const packet = 27 + segments;
    if (ascii(b, packet + 1, 6) === "vorbis") return view.getUint32(packet + 12, true) || null;
    if (ascii(b, packet, 8) === "OpusHead") return 48000; // Opus always decodes at 48 kHz
    return null;
  }
  let at = 0;
  if (ascii(b, 0, 3) === "ID3" && b.length >= 10) {
    at = 10 + (((b[6] & 0x7f) << 21) | ((b[7] & 0x7f) << 14) | ((b[8] & 0x7f) << 7) | (b[9] & 0x7f));
  }
  // MPEG audio: the first frame header, confirmed by the next frame's sync
  for (const end = Math.min(b.length - 4, at + 65536); at < end; at++) {
    if (b[at] !== 0xff || (b[at + 1] & 0xe0) !== 0xe0) continue;
    const version = (b[at + 1] >> 3) & 3, layer = (b[at + 1] >> 1) & 3;
    const bitrateIndex = b[at + 2] >> 4, rateIndex = (b[at + 2] >> 2) & 3, padding = (b[at + 2] >> 1) & 1;
    if (version === 1 || layer !== 1 || rateIndex === 3 || bitrateIndex === 0 || bitrateIndex === 15) continue;
    const rate = MP3_RATES[version][rateIndex];
    const kbps = version === 3
      ? [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320][bitrateIndex]
      : [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160][bitrateIndex];
    const length = Math.floor(((version === 3 ? 144 : 72) * kbps * 1000) / rate) + padding;
    const next = at + length;
    if (next + 1 < b.length && (b[next] !== 0xff || (b[next + 1] & 0xe0) !== 0xe0)) continue;
    return rate;
  }
  return null;
}
