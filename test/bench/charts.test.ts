import { describe, expect, it } from "vitest";
import { lineChart, niceTicks, pngRenderer } from "../../src/bench/charts.js";
import { histogramDelta, parsePrometheus } from "../../src/bench/server-metrics.js";

describe("charts", () => {
  it("nice ticks are round and cover the range", () => {
    expect(niceTicks(0, 100)).toEqual([0, 20, 40, 60, 80, 100]);
    expect(niceTicks(0, 1)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    const t = niceTicks(3, 1234);
    expect(t).toEqual([250, 500, 750, 1000]);
  });

  it("draws one line per series, escapes text, and renders to PNG", async () => {
    const svg = lineChart({
      title: "TTFT <vs> concurrency & more",
      xLabel: "concurrency",
      yLabel: "ms",
      series: [
        {
          name: "a median",
          points: [
            [1, 10],
            [2, 12],
            [4, 20],
            [8, 50],
          ],
        },
        {
          name: "a p99",
          points: [
            [1, 20],
            [2, 30],
            [4, 60],
            [8, Number.NaN],
          ],
          dashed: true,
        },
      ],
    });
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg.match(/<polyline/g)).toHaveLength(2);
    expect(svg).toContain("TTFT &lt;vs&gt; concurrency &amp; more");
    expect(svg).toContain('stroke-dasharray="6 4"');
    expect(svg).not.toContain("NaN");
    const r = await pngRenderer();
    if ("error" in r) throw new Error(r.error);
    const png = r.render(svg);
    expect([...png.slice(0, 4)]).toEqual([0x89, 0x50, 0x4e, 0x47]);
  });
});

describe("server metrics", () => {
  const before = `# HELP spindle_batch_size x
# TYPE spindle_batch_size histogram
spindle_batch_size_bucket{le="1"} 2
spindle_batch_size_bucket{le="2"} 3
spindle_batch_size_bucket{le="4"} 3
spindle_batch_size_bucket{le="+Inf"} 3
spindle_batch_size_sum 4
spindle_batch_size_count 3
spindle_request_success_total{finished_reason="length"} 5
spindle_num_preemptions_total 1
other_metric 7
`;
  const after = `spindle_batch_size_bucket{le="1"} 4
spindle_batch_size_bucket{le="2"} 6
spindle_batch_size_bucket{le="4"} 10
spindle_batch_size_bucket{le="+Inf"} 10
spindle_batch_size_sum 30
spindle_batch_size_count 10
spindle_request_success_total{finished_reason="length"} 9
spindle_num_preemptions_total 3
`;

  it("parses the Prometheus text and diffs a histogram into per-bucket counts", () => {
    const b = parsePrometheus(before, "spindle_");
    const a = parsePrometheus(after, "spindle_");
    expect(b.find((s) => s.name === "request_success_total")!.labels).toEqual({ finished_reason: "length" });
    expect(b.some((s) => s.name.includes("other"))).toBe(false);
    const h = histogramDelta(b, a, "batch_size")!;
    // During the run: 2 steps of size 1, 1 of size 2, 4 of size 3-4.
    expect(h.buckets.map((x) => [x.label, x.count])).toEqual([
      ["1", 2],
      ["2", 1],
      ["3-4", 4],
      [">4", 0],
    ]);
    expect(h.count).toBe(7);
    expect(h.mean).toBeCloseTo(26 / 7, 12);
  });
});
