// A small line chart drawn as SVG: no dependencies, nothing from a CDN.
//
//   const chart = lineChart(element, { unit: "ms", series: [{ name: "p50", color: "#4f46e5" }] });
//   chart.update([[1, 2, 3]]);   // one array of values per series, oldest first (null: a gap)
//
// The chart fills its element's width, keeps `height` pixels, and is drawn
// again when the element is resized.

const SVG = "http://www.w3.org/2000/svg";

function node(name, attributes = {}, parent = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (parent) parent.append(element);
  return element;
}

/** The y axis for values up to `value`: a round step (1, 2, 2.5 or 5 times a power of ten) and its top. */
export function axis(value, ticks = 4) {
  if (!(value > 0)) return { step: 0.25, max: 1 };
  const rough = value / ticks;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough);
  return { step, max: +(step * Math.max(1, Math.ceil(value / step - 1e-9))).toPrecision(12) };
}

/** A short label for a number: 1.2k, 35, 0.4. */
export function shortNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const size = Math.abs(value);
  if (size >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (size >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
  if (size >= 10 || size === 0) return String(Math.round(value));
  return String(+value.toFixed(size >= 1 ? 1 : 2));
}

/** Where each of `values` goes in a box of `width` x `height` up to `max` ({x, y}, or null: a gap). */
export function points(values, width, height, max, slots) {
  const step = slots > 1 ? width / (slots - 1) : 0;
  const offset = slots - values.length; // the newest value sits at the right edge
  return values.map((value, index) =>
    typeof value === "number" && !Number.isNaN(value)
      ? { x: (offset + index) * step, y: height - (Math.min(value, max) / max) * height }
      : null,
  );
}

/** The SVG path through `found` (from points()), broken at its gaps. */
export function linePath(found) {
  return found
    .map((point, index) => (point ? `${found[index - 1] ? "L" : "M"}${point.x.toFixed(1)},${point.y.toFixed(1)}` : ""))
    .join("");
}

/**
 * A line chart in `element`.  `options`: `series` ([{name, color, area}]),
 * `slots` (values across the width, default 60), `height` (px, default 180),
 * `unit` (after the axis labels), `label` (the chart's accessible name).
 */
export function lineChart(element, options) {
  const { series, slots = 60, height = 180, unit = "", label = "" } = options;
  const pad = { top: 10, right: 12, bottom: 22, left: 44 };
  const svg = node("svg", { class: "chart", role: "img", "aria-label": label, height });
  element.replaceChildren(svg);
  const legend = document.createElement("div");
  legend.className = "chart-legend";
  element.append(legend);
  let data = series.map(() => []);

  function draw() {
    const width = Math.max(element.clientWidth, 120);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.replaceChildren();
    const inner = { width: width - pad.left - pad.right, height: height - pad.top - pad.bottom };
    const highest = Math.max(0, ...data.flat().filter((value) => typeof value === "number"));
    const { step, max } = axis(highest);
    const plot = node("g", { transform: `translate(${pad.left},${pad.top})` }, svg);
    for (let value = 0; value <= max + step / 2; value += step) {
      const y = inner.height - (value / max) * inner.height;
      node("line", { class: "grid", x1: 0, x2: inner.width, y1: y, y2: y }, plot);
      const text = node("text", { class: "tick", x: -8, y: y + 4, "text-anchor": "end" }, plot);
      text.textContent = shortNumber(value) + (value + step > max + step / 2 && unit ? ` ${unit}` : "");
    }
    const seconds = node("text", { class: "tick", x: inner.width, y: inner.height + 16, "text-anchor": "end" }, plot);
    seconds.textContent = "now";
    const first = node("text", { class: "tick", x: 0, y: inner.height + 16 }, plot);
    first.textContent = `${slots} samples ago`;
    series.forEach((one, index) => {
      const found = points(data[index], inner.width, inner.height, max, slots);
      const path = linePath(found);
      if (!path) return;
      if (one.area) {
        const drawn = found.filter(Boolean);
        const area = `${path}L${drawn[drawn.length - 1].x},${inner.height}L${drawn[0].x},${inner.height}Z`;
        node("path", { class: "area", d: area, style: `fill: ${one.color}` }, plot);
      }
      node("path", { class: "line", d: path, style: `stroke: ${one.color}`, "data-series": one.name }, plot);
      found.forEach((point, at) => {
        // a point with no neighbour draws no line: a dot shows it
        if (point && !found[at - 1] && !found[at + 1]) node("circle", { class: "dot", cx: point.x, cy: point.y, r: 3, style: `fill: ${one.color}` }, plot);
      });
    });
    legend.replaceChildren(
      ...series.map((one, index) => {
        const item = document.createElement("span");
        const values = data[index].filter((value) => typeof value === "number");
        item.innerHTML = `<i style="background:${one.color}"></i>`;
        item.append(`${one.name} `);
        const value = document.createElement("b");
        value.textContent = values.length ? `${shortNumber(values[values.length - 1])}${unit ? " " + unit : ""}` : "–";
        item.append(value);
        return item;
      }),
    );
  }

  new ResizeObserver(() => draw()).observe(element);
  draw();
  return {
    /** New values: one array per series, oldest first; only the last `slots` are shown. */
    update(values) {
      data = values.map((list) => list.slice(-slots));
      draw();
    },
    element: svg,
  };
}
