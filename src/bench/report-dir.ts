import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { BenchResult, RunResult } from "./bench.js";
import { lineChart, pngRenderer, type Series } from "./charts.js";
import { cdf } from "./metrics.js";
import { type ChartRef, jsonResult, markdownReport } from "./report.js";

/**
 * `--report DIR`: the Markdown report with its charts (SVG always, PNG when the
 * WebAssembly renderer loads) and the JSON result beside it.
 *
 * Charts: TTFT, TPOT and E2E latency (median solid, p99 dashed) and output
 * throughput against the load (concurrency or request rate), one line per
 * target; the TTFT CDF of every run.
 */

export interface NamedChart {
  name: string;
  title: string;
  svg: string;
}

function byTarget(runs: RunResult[]): Map<string, RunResult[]> {
  const m = new Map<string, RunResult[]>();
  for (const r of runs) {
    let l = m.get(r.target);
    if (!l) m.set(r.target, (l = []));
    l.push(r);
  }
  return m;
}

export function buildCharts(result: BenchResult): NamedChart[] {
  const runs = result.runs;
  const charts: NamedChart[] = [];
  const closed = runs.every((r) => r.shape.kind === "closed");
  const xLabel = closed ? "concurrency" : "request rate (req/s)";
  const targets = byTarget(runs.filter((r) => Number.isFinite(r.x)));
  const vsLoad = [...targets.values()].some((rs) => rs.length > 0);
  if (vsLoad) {
    const latency = (key: "ttft" | "tpot" | "e2el", title: string) => {
      const series: Series[] = [];
      let ti = 0;
      for (const [t, rs] of targets) {
        const pts = (stat: "median" | "p99") =>
          rs.map((r) => [r.x, r.metrics[key][stat]] as [number, number]).sort((a, b) => a[0] - b[0]);
        series.push({ name: `${t} median`, points: pts("median"), color: ti });
        series.push({ name: `${t} p99`, points: pts("p99"), color: ti, dashed: true });
        ti++;
      }
      charts.push({
        name: `${key}-vs-load`,
        title: `${title} vs ${xLabel}`,
        svg: lineChart({
          title: `${title} vs ${xLabel}`,
          xLabel,
          yLabel: `${title} (ms)`,
          series,
          legendColumns: 2,
        }),
      });
    };
    latency("ttft", "TTFT");
    latency("tpot", "TPOT");
    latency("e2el", "E2E latency");
    const tput: Series[] = [...targets].map(([t, rs]) => ({
      name: `${t} output tok/s`,
      points: rs
        .map((r) => [r.x, r.metrics.outputThroughput] as [number, number])
        .sort((a, b) => a[0] - b[0]),
    }));
    charts.push({
      name: "throughput-vs-load",
      title: `Output throughput vs ${xLabel}`,
      svg: lineChart({
        title: `Output throughput vs ${xLabel}`,
        xLabel,
        yLabel: "output tokens/s",
        series: tput,
      }),
    });
  }
  const cdfSeries: Series[] = runs.map((r) => {
    const ttfts = r.requests.filter((d) => d.ok && d.ttft_ms !== undefined).map((d) => d.ttft_ms!);
    // A step function: each request's TTFT raises the fraction by 1/n.
    const points: Array<[number, number]> = [];
    let prev = 0;
    for (const [x, y] of cdf(ttfts)) {
      points.push([x, prev], [x, y]);
      prev = y;
    }
    return { name: `${r.target} ${r.loadLabel}`, points, markers: false };
  });
  charts.push({
    name: "ttft-cdf",
    title: "TTFT CDF",
    svg: lineChart({
      title: "TTFT CDF",
      xLabel: "TTFT (ms)",
      yLabel: "fraction of requests",
      series: cdfSeries,
      xLog: false,
      yMax: 1,
    }),
  });
  return charts;
}

export interface ReportFiles {
  dir: string;
  markdown: string;
  json: string;
  charts: ChartRef[];
  /** Why there are no PNGs, or why their text is missing. */
  notes: string[];
}

export async function writeReport(
  dir: string,
  result: BenchResult,
  o: { font?: string; png?: boolean } = {},
): Promise<ReportFiles> {
  mkdirSync(dir, { recursive: true });
  const charts = buildCharts(result);
  const notes: string[] = [];
  const renderer = o.png === false ? { error: "PNG charts not asked for" } : await pngRenderer(o.font);
  if ("error" in renderer) notes.push(`Charts are SVG only: ${renderer.error}.`);
  else if (!renderer.font)
    notes.push(
      `PNG charts have no text: no TrueType font found${o.font ? ` at ${o.font}` : ""} (pass --font FILE.ttf); the SVGs are complete.`,
    );
  const refs: ChartRef[] = [];
  for (const c of charts) {
    const svg = `${c.name}.svg`;
    writeFileSync(join(dir, svg), c.svg);
    let png: string | undefined;
    if (!("error" in renderer)) {
      try {
        png = `${c.name}.png`;
        writeFileSync(join(dir, png), renderer.render(c.svg));
      } catch (err) {
        png = undefined;
        notes.push(`${c.name}.png could not be rendered: ${(err as Error).message}`);
      }
    }
    refs.push({ title: c.title, svg, png });
  }
  const markdown = join(dir, "report.md");
  writeFileSync(markdown, markdownReport(result, refs, notes));
  const json = join(dir, "result.json");
  writeFileSync(json, `${JSON.stringify(jsonResult(result, { detailed: true }), null, 2)}\n`);
  return { dir, markdown, json, charts: refs, notes };
}
