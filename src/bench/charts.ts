import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";

/**
 * Line charts as hand-written SVG (no browser, no plotting library), and PNG
 * renderings of them through resvg compiled to WebAssembly
 * (`@resvg/resvg-wasm`: no platform binaries). The WebAssembly renderer has
 * no system fonts, so text needs a TrueType font file: `--font`, or the first
 * of a few usual system paths; without one the PNG is drawn without text and
 * the caller is told.
 */

export interface Series {
  name: string;
  points: Array<[number, number]>;
  /** Dashed line (e.g. p99 next to a solid median). */
  dashed?: boolean;
  /** Index into the palette; default the series' index. */
  color?: number;
  /** Draw markers at the points (default true for up to 40 points). */
  markers?: boolean;
}

export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Log-2 x axis (concurrency sweeps). Default: when x spans 8× or more and is positive. */
  xLog?: boolean;
  /** Y axis from 0. Default true. */
  yFromZero?: boolean;
  /** Y axis upper bound (e.g. 1 for a CDF). */
  yMax?: number;
  width?: number;
  height?: number;
  /** Legend entries per row (default 3). */
  legendColumns?: number;
}

export const PALETTE = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
];

export function escapeXml(s: string): string {
  return s.replace(
    /[<>&"']/g,
    (c) => `&${{ "<": "lt", ">": "gt", "&": "amp", '"': "quot", "'": "apos" }[c]};`,
  );
}

/** Round tick values (1, 2, 5 × 10^k) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) {
    const d = lo === 0 ? 1 : Math.abs(lo) * 0.5;
    return niceTicks(lo - d, hi + d, target);
  }
  const raw = (hi - lo) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => raw <= s) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    out.push(Number(v.toPrecision(12)));
  return out;
}

/** Short tick label: 1500 → "1.5k", 0.25 → "0.25". */
export function formatTick(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  return String(Number(v.toPrecision(4)));
}

const FONT = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif";

export function lineChart(o: LineChartOptions): string {
  const W = o.width ?? 720;
  const H = o.height ?? 420;
  const m = { left: 70, right: 20, top: 40, bottom: 56 };
  const cols = Math.max(1, o.legendColumns ?? 3);
  const legendRows = Math.ceil(o.series.length / cols);
  m.bottom += legendRows * 18;
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const pts = o.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  let xLo = xs.length ? Math.min(...xs) : 0;
  let xHi = xs.length ? Math.max(...xs) : 1;
  const xLog = o.xLog ?? (xLo > 0 && xHi / xLo >= 8);
  let yLo = (o.yFromZero ?? true) ? Math.min(0, ...ys) : ys.length ? Math.min(...ys) : 0;
  let yHi = o.yMax ?? (ys.length ? Math.max(...ys) : 1);
  if (!(yHi > yLo)) yHi = yLo + 1;
  let xTicks: number[];
  if (xLog) {
    const a = Math.floor(Math.log2(xLo));
    const b = Math.ceil(Math.log2(xHi));
    xTicks = Array.from({ length: b - a + 1 }, (_, i) => 2 ** (a + i));
    xLo = 2 ** a;
    xHi = 2 ** b;
    if (xHi === xLo) xHi = xLo * 2;
  } else {
    if (xHi === xLo) {
      xLo -= 1;
      xHi += 1;
    }
    xTicks = niceTicks(xLo, xHi);
    xLo = Math.min(xLo, xTicks[0]!);
    xHi = Math.max(xHi, xTicks[xTicks.length - 1]!);
  }
  const yTicks = niceTicks(yLo, yHi);
  if (o.yMax === undefined) yHi = Math.max(yHi, yTicks[yTicks.length - 1]!);
  yLo = Math.min(yLo, yTicks[0]!);
  const px = (x: number) =>
    m.left +
    (xLog ? (Math.log2(x) - Math.log2(xLo)) / (Math.log2(xHi) - Math.log2(xLo)) : (x - xLo) / (xHi - xLo)) *
      pw;
  const py = (y: number) => m.top + ph - ((y - yLo) / (yHi - yLo)) * ph;
  const f = (v: number) => v.toFixed(1);

  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="${FONT}" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(o.title)}</text>`,
  );
  for (const t of yTicks) {
    if (t < yLo - 1e-12 || t > yHi + 1e-12) continue;
    parts.push(
      `<line x1="${m.left}" y1="${f(py(t))}" x2="${m.left + pw}" y2="${f(py(t))}" stroke="#e0e0e0"/>`,
      `<text x="${m.left - 6}" y="${f(py(t) + 4)}" text-anchor="end" fill="#333">${formatTick(t)}</text>`,
    );
  }
  for (const t of xTicks) {
    parts.push(
      `<line x1="${f(px(t))}" y1="${m.top}" x2="${f(px(t))}" y2="${m.top + ph}" stroke="#f0f0f0"/>`,
      `<text x="${f(px(t))}" y="${m.top + ph + 16}" text-anchor="middle" fill="#333">${formatTick(t)}</text>`,
    );
  }
  parts.push(
    `<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`,
    `<text x="${m.left + pw / 2}" y="${m.top + ph + 36}" text-anchor="middle">${escapeXml(o.xLabel)}</text>`,
    `<text transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${escapeXml(o.yLabel)}</text>`,
  );
  o.series.forEach((s, i) => {
    const color = PALETTE[(s.color ?? i) % PALETTE.length]!;
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!xLog || x > 0));
    if (p.length === 0) return;
    const dash = s.dashed ? ` stroke-dasharray="6 4"` : "";
    parts.push(
      `<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${p.map(([x, y]) => `${f(px(x))},${f(py(y))}`).join(" ")}"/>`,
    );
    if (s.markers ?? p.length <= 40)
      for (const [x, y] of p) parts.push(`<circle cx="${f(px(x))}" cy="${f(py(y))}" r="3" fill="${color}"/>`);
  });
  o.series.forEach((s, i) => {
    const color = PALETTE[(s.color ?? i) % PALETTE.length]!;
    const col = i % cols;
    const row = Math.floor(i / cols);
    const x = m.left + col * (pw / cols);
    const y = H - legendRows * 18 + row * 18 - 6;
    const dash = s.dashed ? ` stroke-dasharray="6 4"` : "";
    parts.push(
      `<line x1="${f(x)}" y1="${y}" x2="${f(x + 22)}" y2="${y}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${f(x + 28)}" y="${y + 4}">${escapeXml(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

const FONT_CANDIDATES = [
  "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
  "/usr/share/fonts/dejavu/DejaVuSans.ttf",
  "/usr/share/fonts/TTF/DejaVuSans.ttf",
  "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
  "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
  "/Library/Fonts/Arial.ttf",
  "/System/Library/Fonts/Supplemental/Arial.ttf",
  "C:\\Windows\\Fonts\\arial.ttf",
];

/** A TrueType font for PNG text: the given path, else the first usual system font found. */
export function findFont(explicit?: string): string | undefined {
  if (explicit) return existsSync(explicit) ? explicit : undefined;
  return FONT_CANDIDATES.find((p) => existsSync(p));
}

type ResvgModule = typeof import("@resvg/resvg-wasm");
let resvg: Promise<ResvgModule> | undefined;

/** Loads and initializes the WebAssembly renderer once per process. */
async function loadResvg(): Promise<ResvgModule> {
  resvg ??= (async () => {
    const mod = await import("@resvg/resvg-wasm");
    const require = createRequire(import.meta.url);
    const wasm = readFileSync(require.resolve("@resvg/resvg-wasm/index_bg.wasm"));
    await mod.initWasm(wasm);
    return mod;
  })();
  return resvg;
}

export interface PngRenderer {
  render(svg: string): Uint8Array;
  /** The font used for text, or undefined (text not drawn). */
  font: string | undefined;
}

/** A PNG renderer, or an error message saying why there is none. */
export async function pngRenderer(fontPath?: string): Promise<PngRenderer | { error: string }> {
  let mod: ResvgModule;
  try {
    mod = await loadResvg();
  } catch (err) {
    resvg = undefined;
    return { error: `the PNG renderer (@resvg/resvg-wasm) could not be loaded: ${(err as Error).message}` };
  }
  const font = findFont(fontPath);
  const fontBuffers = font ? [new Uint8Array(readFileSync(font))] : [];
  return {
    font,
    render(svg: string): Uint8Array {
      const r = new mod.Resvg(svg, {
        fitTo: { mode: "zoom", value: 2 },
        background: "#ffffff",
        font: { fontBuffers, defaultFontFamily: font ? undefined : "sans-serif" },
      });
      try {
        const img = r.render();
        const png = img.asPng();
        img.free();
        return png;
      } finally {
        r.free();
      }
    },
  };
}
