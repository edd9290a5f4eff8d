import { describe, expect, it } from "vitest";
import { lineChart, niceTicks, pngRenderer } from "../../src/bench/charts.js";

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
