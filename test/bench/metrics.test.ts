import { describe, expect, it } from "vitest";
import { arrivalOffsetsMs, gamma } from "../../src/bench/arrivals.js";
import {
  cdf,
  computeMetrics,
  groupMetrics,
  jainIndex,
  meetsSlo,
  percentile,
  type RequestRecord,
  runDurationS,
  stats,
  tpotOf,
} from "../../src/bench/metrics.js";
import { center, flatMetrics, runTable } from "../../src/bench/report.js";
import { Rng } from "../../src/sampling/rng.js";

/** A completed request whose token chunks arrived at these times (ms after it was sent). */
function timeline(sentAt: number, chunkTimes: number[], extra: Partial<RequestRecord> = {}): RequestRecord {
  const itl = chunkTimes.slice(1).map((t, i) => t - chunkTimes[i]!);
  return {
    ok: true,
    sentAt,
    ttftMs: chunkTimes[0],
    e2eMs: chunkTimes[chunkTimes.length - 1],
    itlMs: itl,
    outputTokens: chunkTimes.length,
    promptTokens: 10,
    ...extra,
  };
}

describe("percentiles (linear interpolation, numpy's default)", () => {
  it("matches np.percentile on known data", () => {
    const d = [1, 2, 3, 4];
    // np.percentile([1,2,3,4], [0,25,50,90,99,100]) = [1, 1.75, 2.5, 3.7, 3.97, 4]
    expect(percentile(d, 0)).toBe(1);
    expect(percentile(d, 25)).toBeCloseTo(1.75, 12);
    expect(percentile(d, 50)).toBeCloseTo(2.5, 12);
    expect(percentile(d, 90)).toBeCloseTo(3.7, 12);
    expect(percentile(d, 99)).toBeCloseTo(3.97, 12);
    expect(percentile(d, 100)).toBe(4);
    // Order of the input does not matter.
    expect(percentile([4, 1, 3, 2], 90)).toBeCloseTo(3.7, 12);
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([], 50)).toBeNaN();
  });

  it("stats: mean, median, population std, ordered percentiles", () => {
    const data = Array.from({ length: 101 }, (_, i) => i); // 0..100
    const s = stats(data);
    expect(s.count).toBe(101);
    expect(s.mean).toBe(50);
    expect(s.median).toBe(50);
    expect(s.p90).toBeCloseTo(90, 12);
    expect(s.p99).toBeCloseTo(99, 12);
    expect(s.min).toBe(0);
    expect(s.max).toBe(100);
    // np.std([2,4,4,4,5,5,7,9]) = 2
    expect(stats([2, 4, 4, 4, 5, 5, 7, 9]).std).toBeCloseTo(2, 12);
    const rng = new Rng(3);
    const random = Array.from({ length: 500 }, () => rng.next() * 100);
    const r = stats(random);
    expect(r.min).toBeLessThanOrEqual(r.median);
    expect(r.median).toBeLessThanOrEqual(r.p90);
    expect(r.p90).toBeLessThanOrEqual(r.p99);
    expect(r.p99).toBeLessThanOrEqual(r.max);
  });
});

describe("request metrics from token timelines", () => {
  it("TTFT, TPOT, ITL and E2E of hand-made timelines", () => {
    // A: first token at 100 ms, then tokens at 120, 150, 160 → TPOT (160-100)/3 = 20, ITL 20, 30, 10.
    const a = timeline(0, [100, 120, 150, 160]);
    // B: one token only: no TPOT, no ITL.
    const b = timeline(50, [200]);
    // C: first token at 300, one more at 340 → TPOT 40, ITL 40.
    const c = timeline(100, [300, 340]);
    expect(tpotOf(a)).toBeCloseTo(20, 12);
    expect(tpotOf(b)).toBeUndefined();
    expect(tpotOf(c)).toBeCloseTo(40, 12);

    const m = computeMetrics([a, b, c], 1);
    expect(m.completed).toBe(3);
    expect(m.failed).toBe(0);
    expect(m.ttft.mean).toBeCloseTo(200, 12);
    expect(m.ttft.median).toBe(200);
    expect(m.tpot.count).toBe(2); // the single-token request is left out
    expect(m.tpot.mean).toBeCloseTo(30, 12);
    expect(m.itl.count).toBe(4);
    expect(m.itl.mean).toBeCloseTo(25, 12);
    expect(m.itl.median).toBeCloseTo(25, 12);
    expect(m.e2el.mean).toBeCloseTo((160 + 200 + 340) / 3, 12);
  });

  it("TPOT uses the output token count (usage), not the chunk count", () => {
    // 3 chunks but the server's usage says 5 tokens: TPOT = (180 - 100) / 4.
    const r = timeline(0, [100, 140, 180], { outputTokens: 5 });
    expect(tpotOf(r)).toBeCloseTo(20, 12);
  });

  it("throughput = tokens or requests over the duration; failures excluded and counted by reason", () => {
    const ok1 = timeline(0, [100, 200, 300], { promptTokens: 20 });
    const ok2 = timeline(500, [600, 700, 800, 1500], { promptTokens: 30 });
    const bad = {
      ok: false,
      error: "HTTP 503 queue_full",
      sentAt: 10,
      itlMs: [],
      outputTokens: 0,
      promptTokens: 99,
    };
    const bad2 = { ...bad, sentAt: 20 };
    const cut: RequestRecord = {
      ok: false,
      error: "cut off",
      sentAt: 30,
      itlMs: [],
      outputTokens: 0,
      promptTokens: 5,
      cutOff: true,
    };
    const recs = [ok1, ok2, bad, bad2, cut];
    const duration = runDurationS(recs);
    expect(duration).toBeCloseTo(2.0, 12); // ok2 ends at 500 + 1500 ms
    const m = computeMetrics(recs, duration);
    expect(m.sent).toBe(5);
    expect(m.completed + m.failed).toBe(m.sent);
    expect(m.errors).toEqual({ "HTTP 503 queue_full": 2, "cut off": 1 });
    expect(m.totalOutputTokens).toBe(7);
    expect(m.totalInputTokens).toBe(50);
    expect(m.outputThroughput).toBeCloseTo(7 / 2, 12);
    expect(m.totalTokenThroughput).toBeCloseTo(57 / 2, 12);
    expect(m.requestThroughput).toBeCloseTo(1, 12);
    expect(m.starved).toBe(1);
    expect(m.requestGoodput).toBeUndefined();
  });

  it("goodput counts completed requests meeting every SLO", () => {
    const fast = timeline(0, [50, 60, 70]); // ttft 50, tpot 10
    const slowFirst = timeline(0, [500, 510, 520]); // ttft 500, tpot 10
    const slowTokens = timeline(0, [50, 150, 250]); // ttft 50, tpot 100
    const single = timeline(0, [80]); // no TPOT: meets a TPOT SLO
    const failed: RequestRecord = {
      ok: false,
      error: "x",
      sentAt: 0,
      itlMs: [],
      outputTokens: 0,
      promptTokens: 1,
    };
    const slo = { ttftMs: 100, tpotMs: 50 };
    expect(meetsSlo(fast, slo)).toBe(true);
    expect(meetsSlo(slowFirst, slo)).toBe(false);
    expect(meetsSlo(slowTokens, slo)).toBe(false);
    expect(meetsSlo(single, slo)).toBe(true);
    expect(meetsSlo(failed, slo)).toBe(false);
    const m = computeMetrics([fast, slowFirst, slowTokens, single, failed], 2, slo);
    expect(m.requestGoodput).toBeCloseTo(2 / 2, 12);
    expect(computeMetrics([fast], 2, { e2elMs: 60 }).requestGoodput).toBe(0);
  });

  it("Jain's index: 1 for equal shares, 1/n when one takes all", () => {
    expect(jainIndex([5, 5, 5, 5])).toBeCloseTo(1, 12);
    expect(jainIndex([10, 0, 0, 0])).toBeCloseTo(1 / 4, 12);
    expect(jainIndex([3, 0])).toBeCloseTo(1 / 2, 12);
    // (1+2+3)^2 / (3 · 14) = 36/42
    expect(jainIndex([1, 2, 3])).toBeCloseTo(36 / 42, 12);
    expect(jainIndex([])).toBe(1);
  });

  it("per-group metrics: throughput, TTFT, queue wait (server's, else TTFT), starvation", () => {
    const recs: RequestRecord[] = [
      timeline(0, [100, 200], { klass: "high", queueWaitMs: 5 }),
      timeline(0, [300, 400], { klass: "high", queueWaitMs: 7 }),
      timeline(0, [1000, 1100, 1200], { klass: "low" }),
      {
        ok: false,
        error: "cut",
        sentAt: 0,
        itlMs: [],
        outputTokens: 0,
        promptTokens: 1,
        klass: "low",
        cutOff: true,
      },
    ];
    const g = groupMetrics(recs, (r) => r.klass, 2);
    expect(Object.keys(g)).toEqual(["high", "low"]);
    expect(g.high!.outputTokens).toBe(4);
    expect(g.high!.outputThroughput).toBeCloseTo(2, 12);
    expect(g.high!.ttft.median).toBe(200);
    expect(g.high!.queueWait.mean).toBe(6);
    expect(g.high!.queueWaitFromServer).toBe(true);
    expect(g.low!.queueWait.mean).toBe(1000);
    expect(g.low!.queueWaitFromServer).toBe(false);
    expect(g.low!.starved).toBe(1);
    expect(g.low!.sent).toBe(2);
  });

  it("CDF is sorted and ends at 1", () => {
    expect(cdf([3, 1, 2])).toEqual([
      [1, 1 / 3],
      [2, 2 / 3],
      [3, 1],
    ]);
  });
});

describe("arrivals", () => {
  it("gamma gaps have mean 1/rate for any burstiness; Poisson at burstiness 1", () => {
    for (const b of [0.5, 1, 4]) {
      const off = arrivalOffsetsMs(new Rng(11), 4001, 10, b);
      expect(off[0]).toBe(0);
      const meanGap = off[off.length - 1]! / (off.length - 1);
      expect(meanGap).toBeGreaterThan(90);
      expect(meanGap).toBeLessThan(110);
    }
    // Gamma(k) has variance k: burstier arrivals (k < 1) spread more.
    const rng = new Rng(5);
    const xs = Array.from({ length: 20000 }, () => gamma(rng, 3));
    const m = xs.reduce((a, x) => a + x, 0) / xs.length;
    const v = xs.reduce((a, x) => a + (x - m) ** 2, 0) / xs.length;
    expect(m).toBeCloseTo(3, 1);
    expect(v).toBeGreaterThan(2.7);
    expect(v).toBeLessThan(3.3);
    expect(arrivalOffsetsMs(new Rng(1), 5, Infinity)).toEqual([0, 0, 0, 0, 0]);
  });
});

describe("result table", () => {
  it("has vLLM's layout and keys", () => {
    expect(center(" Serving Benchmark Result ", 50, "=")).toBe(
      "============ Serving Benchmark Result ============",
    );
    expect(center("Time to First Token", 50, "-")).toBe("---------------Time to First Token----------------");
    const recs = [timeline(0, [100, 120, 150, 160]), timeline(0, [90, 100])];
    const m = computeMetrics(recs, runDurationS(recs));
    const text = runTable({
      target: "base",
      shape: { kind: "closed", concurrency: 2 },
      loadLabel: "concurrency 2",
      x: 2,
      metrics: m,
      notSent: 0,
      timedOut: false,
      interrupted: false,
      requests: [],
    });
    for (const line of [
      "============ Serving Benchmark Result ============",
      "Successful requests:                     2",
      "Benchmark duration (s):                  0.16",
      "Request throughput (req/s):              12.50",
      "Output token throughput (tok/s):         37.50",
      "Total Token throughput (tok/s):          162.50",
      "---------------Time to First Token----------------",
      "Mean TTFT (ms):                          95.00",
      "Median TTFT (ms):                        95.00",
      "P90 TTFT (ms):                           99.00",
      "P99 TTFT (ms):                           99.90",
      "-----Time per Output Token (excl. 1st token)------",
      "---------------Inter-token Latency----------------",
      "----------------End-to-end Latency----------------",
      "Mean E2EL (ms):                          130.00",
      "==================================================",
    ])
      expect(text).toContain(line);
    const flat = flatMetrics(m);
    expect(flat.mean_ttft_ms).toBe(95);
    expect(flat.completed).toBe(2);
    expect(flat.request_goodput).toBeNull();
  });
});
