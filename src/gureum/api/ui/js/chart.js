// A small line chart on a canvas: the console's graphs without a charting library.

export function drawLines(canvas, series, { unit = (v) => String(v), max = null } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300, height = canvas.clientHeight || 130;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const points = series.flatMap((s) => s.points.filter((p) => p[1] !== null));
  const left = 56, bottom = 18, top = 8;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#5b6577";
  if (!points.length) {
    ctx.fillText("no figures yet", left, height / 2);
    return;
  }
  const t0 = Math.min(...points.map((p) => p[0])), t1 = Math.max(...points.map((p) => p[0]));
  const top1 = max ?? Math.max(1e-9, ...points.map((p) => p[1])) * 1.1;
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (width - left - 6);
  const y = (v) => top + (1 - v / top1) * (height - top - bottom);
  ctx.strokeStyle = "#e3e7ee";
  for (const f of [0, 0.5, 1]) {
    ctx.beginPath(); ctx.moveTo(left, y(top1 * f)); ctx.lineTo(width - 6, y(top1 * f)); ctx.stroke();
    ctx.fillText(unit(top1 * f), 2, y(top1 * f) + 4);
  }
  ctx.fillText(new Date(t0 * 1000).toLocaleTimeString(), left, height - 4);
  const last = new Date(t1 * 1000).toLocaleTimeString();
  ctx.fillText(last, width - 6 - ctx.measureText(last).width, height - 4);
  series.forEach((s, i) => {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    let pen = false;
    for (const [t, v] of s.points) {
      if (v === null) { pen = false; continue; }
      if (pen) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
      pen = true;
    }
    ctx.stroke();
    ctx.fillStyle = s.color;
    ctx.fillText(s.label, left + 8 + i * 90, top + 10);
  });
}
