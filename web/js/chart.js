// Timeline chart on a <canvas>: per-window probabilities stacked over time (one colour per
// class), segment boundaries as dashed lines with the segment's genre above. No library.

export const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                        "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

export function colour(k) {
  return PALETTE[k % PALETTE.length];
}

/**
 * @param {HTMLCanvasElement} canvas
 * @param {{starts:number[], windowProbabilities:number[][], window:number, hop:number,
 *          duration:number, classNames:string[], segments?:object[]}} data  (times in seconds)
 */
export function drawTimeline(canvas, data) {
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || 800;
  const cssHeight = canvas.clientHeight || 260;
  canvas.width = Math.round(cssWidth * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);
  const left = 40, right = 10, top = 22, bottom = 24;
  const width = cssWidth - left - right, height = cssHeight - top - bottom;
  const duration = Math.max(data.duration, data.window);
  const x = (t) => left + (t / duration) * width;
  const y = (p) => top + (1 - p) * height;

  // Each window is drawn over its hop-wide slot centred on the window's centre, so the
  // stacked bands line up with the segment boundaries (midpoints between window centres).
  // More windows than pixels (an hour is 3,600 windows): one column per pixel, the mean
  // of its windows, so drawing stays a few thousand rectangles however long the song.
  const P = data.windowProbabilities;
  const classes = P.length ? P[0].length : 0;
  const columns = [];
  if (P.length <= width) {
    for (let i = 0; i < P.length; i++) {
      const centre = data.starts[i] + data.window / 2;
      const t0 = i === 0 ? 0 : Math.max(0, centre - data.hop / 2);
      const t1 = i === P.length - 1 ? duration : Math.min(duration, centre + data.hop / 2);
      columns.push([x(t0), x(t1), P[i]]);
    }
  } else {
    const sums = Array.from({ length: Math.ceil(width) }, () => [new Float64Array(classes), 0]);
    for (let i = 0; i < P.length; i++) {
      const c = Math.min(sums.length - 1, Math.floor(((data.starts[i] + data.window / 2) / duration) * width));
      for (let k = 0; k < classes; k++) sums[c][0][k] += P[i][k];
      sums[c][1] += 1;
    }
    let previous = null;
    sums.forEach(([sum, count], c) => {
      const row = count ? Array.from(sum, (v) => v / count) : previous;
      if (row) columns.push([left + c, left + c + 1, row]);
      previous = row;
    });
  }
  for (const [x0, x1, row] of columns) {
    let acc = 0;
    for (let k = 0; k < row.length; k++) {
      ctx.fillStyle = colour(k);
      ctx.fillRect(x0, y(acc + row[k]), Math.max(1, x1 - x0), row[k] * height);
      acc += row[k];
    }
  }

  ctx.strokeStyle = "#333";
  ctx.lineWidth = 1;
  ctx.strokeRect(left, top, width, height);
  ctx.fillStyle = "#333";
  ctx.font = "11px sans-serif";
  ctx.textAlign = "right";
  for (const p of [0, 0.5, 1]) ctx.fillText(p.toFixed(1), left - 4, y(p) + 4);
  ctx.textAlign = "center";
  const step = niceStep(duration / 8);
  for (let t = 0; t <= duration + 1e-9; t += step) ctx.fillText(formatTime(t), x(t), top + height + 15);

  for (const seg of data.segments || []) {
    if (seg.start > 0) {
      ctx.setLineDash([5, 4]);
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(x(seg.start), top - 4);
      ctx.lineTo(x(seg.start), top + height);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.fillStyle = "#000";
    ctx.font = "bold 12px sans-serif";
    ctx.fillText(seg.genre, (x(seg.start) + x(seg.end)) / 2, top - 7);
  }
}

function niceStep(raw) {
  for (const s of [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]) if (s >= raw) return s;
  return 3600 * Math.ceil(raw / 3600);
}

export function formatTime(t) {
  const m = Math.floor(t / 60);
  const s = t - 60 * m;
  return m ? `${m}:${s.toFixed(0).padStart(2, "0")}` : `${s.toFixed(s < 10 && s % 1 ? 1 : 0)} s`;
}
