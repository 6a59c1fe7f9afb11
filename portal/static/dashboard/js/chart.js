// Charts drawn as SVG, each with a text alternative (the same figures as a table), so a
// screen reader or a keyboard user gets what the picture shows.

import { h, svg } from "./dom.js";

// The drawing's own units: narrower on a phone, so its labels stay legible when it is scaled
// to the screen.
const WIDTH = window.matchMedia("(max-width: 640px)").matches ? 400 : 720;
const HEIGHT = 220;
const PAD = { top: 12, right: 12, bottom: 28, left: 64 };

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

// Columns over time: `points` are {label, value, text} (text: the value as the user reads it).
// `axis(value)` formats the y axis.
export function columnChart({ title, points, axis, seriesIndex = 0 }) {
  const max = niceMax(Math.max(0, ...points.map((p) => p.value)));
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const step = points.length ? innerW / points.length : innerW;
  const barW = Math.max(1, Math.min(28, step * 0.7));
  const ticks = [0, 0.5, 1].map((f) => f * max);
  const labelEvery = Math.max(1, Math.ceil(points.length / 10));
  const picture = svg(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-label": title,
      preserveAspectRatio: "xMidYMid meet",
    },
    svg("title", {}, title),
    ticks.map((t) => {
      const y = PAD.top + innerH - (t / max) * innerH;
      return svg(
        "g",
        {},
        svg("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y }),
        svg("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, axis(t))
      );
    }),
    points.map((p, i) => {
      const height = (p.value / max) * innerH;
      const x = PAD.left + i * step + (step - barW) / 2;
      return svg(
        "g",
        {},
        svg(
          "rect",
          {
            class: `series-${seriesIndex}`,
            x,
            y: PAD.top + innerH - height,
            width: barW,
            height: Math.max(0, height),
          },
          svg("title", {}, `${p.label}: ${p.text}`)
        ),
        i % labelEvery === 0
          ? svg(
              "text",
              { x: x + barW / 2, y: HEIGHT - 8, "text-anchor": "middle" },
              p.label
            )
          : null
      );
    })
  );
  return h(
    "figure",
    { class: "chart-figure" },
    picture,
    h(
      "details",
      {},
      h("summary", {}, "Show as a table"),
      h(
        "table",
        {},
        h("caption", {}, title),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Period"), h("th", { scope: "col", class: "num" }, "Value"))),
        h(
          "tbody",
          {},
          points.map((p) => h("tr", {}, h("th", { scope: "row" }, p.label), h("td", { class: "num" }, p.text)))
        )
      )
    )
  );
}

// Horizontal bars for a breakdown: `rows` are {label, value in [0, 1] or null, text}.
export function barList({ title, rows }) {
  const rowH = 26;
  const labelW = 200;
  const barMax = WIDTH - labelW - 90;
  const height = rows.length * rowH + 4;
  return svg(
    "svg",
    { class: "chart", viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": title },
    svg("title", {}, title),
    rows.map((r, i) => {
      const y = i * rowH + 4;
      const width = r.value === null || r.value === undefined ? 0 : Math.max(0, Math.min(1, r.value)) * barMax;
      return svg(
        "g",
        {},
        svg("text", { x: labelW - 8, y: y + 15, "text-anchor": "end" }, r.label),
        svg("rect", { class: "bar-track", x: labelW, y, width: barMax, height: rowH - 8 }),
        svg("rect", { class: "series-0", x: labelW, y, width, height: rowH - 8 }),
        svg("text", { x: labelW + barMax + 6, y: y + 14 }, r.text)
      );
    })
  );
}
