/**
 * Serving-benchmark metrics: pure functions over what the client saw of each
 * request, defined exactly as vLLM's `bench serve` defines them.
 *
 * - TTFT: send → first streamed token chunk.
 * - E2E latency (E2EL): send → end of the stream.
 * - TPOT: (E2EL − TTFT) / (output tokens − 1), per request; requests with one
 *   output token have no TPOT and are left out.
 * - ITL: every gap between two consecutive token chunks of a request, all
 *   requests' gaps pooled.
 * - Throughputs: completed requests, output tokens, input + output tokens, each
 *   over the run's duration (first send → last request end).
 * - Goodput: completed requests meeting every SLO, per second.
 *
 * Only completed requests count in latencies and throughputs, as in vLLM.
 * Percentiles use linear interpolation between closest ranks (numpy's default
 * `np.percentile`, which vLLM uses): rank = p/100 · (n − 1).
 */

/** What one request looked like from the client, times in ms relative to the run's start. */
export interface RequestRecord {
  /** Completed normally (a stream that ended with [DONE] or its end, HTTP 200, no error event). */
  ok: boolean;
  /** Why it failed (HTTP status and message, network error, cut off at the end of the run). */
  error?: string;
  /** When it was sent, ms since the run started. */
  sentAt: number;
  /** First token chunk, ms after sentAt; undefined when none arrived. */
  ttftMs?: number;
  /** End of the stream, ms after sentAt. */
  e2eMs?: number;
  /** Gaps between consecutive token chunks, ms. */
  itlMs: number[];
  outputTokens: number;
  promptTokens: number;
  /** Tenant label (several API keys). */
  tenant?: string;
  /** Request class (priority workload: "high" / "low"). */
  klass?: string;
  /** Time spent queued in the server, when the server reports it. */
  queueWaitMs?: number;
  /** Ended by the run's end (time bound, Ctrl-C) rather than by the server. */
  cutOff?: boolean;
}

export interface Stats {
  count: number;
  mean: number;
  median: number;
  std: number;
  p90: number;
  p99: number;
  min: number;
  max: number;
}

export interface Slo {
  ttftMs?: number;
  tpotMs?: number;
  e2elMs?: number;
}

/** numpy-style percentile (linear interpolation) of already sorted data; NaN for no data. */
export function percentileSorted(sorted: readonly number[], p: number): number {
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  if (p <= 0) return sorted[0]!;
  if (p >= 100) return sorted[n - 1]!;
  const rank = (p / 100) * (n - 1);
  const lo = Math.floor(rank);
  const hi = Math.min(n - 1, lo + 1);
  const f = rank - lo;
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * f;
}

export function percentile(data: readonly number[], p: number): number {
  return percentileSorted(
    [...data].sort((a, b) => a - b),
    p,
  );
}

export function mean(data: readonly number[]): number {
  if (data.length === 0) return Number.NaN;
  let s = 0;
  for (const x of data) s += x;
  return s / data.length;
}

/** Population standard deviation (numpy's default, ddof = 0). */
export function std(data: readonly number[]): number {
  if (data.length === 0) return Number.NaN;
  const m = mean(data);
  let s = 0;
  for (const x of data) s += (x - m) * (x - m);
  return Math.sqrt(s / data.length);
}

/** Mean, median, std, p90, p99, min, max; all NaN (count 0) for no data. */
export function stats(data: readonly number[]): Stats {
  const sorted = [...data].sort((a, b) => a - b);
  return {
    count: sorted.length,
    mean: mean(sorted),
    median: percentileSorted(sorted, 50),
    std: std(sorted),
    p90: percentileSorted(sorted, 90),
    p99: percentileSorted(sorted, 99),
    min: sorted.length ? sorted[0]! : Number.NaN,
    max: sorted.length ? sorted[sorted.length - 1]! : Number.NaN,
  };
}

/** TPOT of one request, or undefined when it has fewer than two output tokens. */
export function tpotOf(r: RequestRecord): number | undefined {
  if (r.ttftMs === undefined || r.e2eMs === undefined || r.outputTokens < 2) return undefined;
  return (r.e2eMs - r.ttftMs) / (r.outputTokens - 1);
}

/** Whether a completed request meets every given SLO (a request without TPOT meets the TPOT SLO). */
export function meetsSlo(r: RequestRecord, slo: Slo): boolean {
  if (!r.ok) return false;
  if (slo.ttftMs !== undefined && !(r.ttftMs !== undefined && r.ttftMs <= slo.ttftMs)) return false;
  if (slo.e2elMs !== undefined && !(r.e2eMs !== undefined && r.e2eMs <= slo.e2elMs)) return false;
  if (slo.tpotMs !== undefined) {
    const t = tpotOf(r);
    if (t !== undefined && t > slo.tpotMs) return false;
  }
  return true;
}

/**
 * Jain's fairness index (Σx)² / (n · Σx²): 1 when all shares are equal, 1/n when one takes
 * everything. 1 for an empty or all-zero list (nobody was treated worse than anyone else).
 */
export function jainIndex(xs: readonly number[]): number {
  if (xs.length === 0) return 1;
  let s = 0;
  let s2 = 0;
  for (const x of xs) {
    s += x;
    s2 += x * x;
  }
  return s2 === 0 ? 1 : (s * s) / (xs.length * s2);
}

export interface RunMetrics {
  /** Requests sent (completed + failed). */
  sent: number;
  completed: number;
  failed: number;
  /** Failure reason → count. */
  errors: Record<string, number>;
  durationS: number;
  totalInputTokens: number;
  totalOutputTokens: number;
  requestThroughput: number;
  outputThroughput: number;
  totalTokenThroughput: number;
  /** Completed requests meeting every SLO, per second; undefined without SLOs. */
  requestGoodput?: number;
  ttft: Stats;
  tpot: Stats;
  itl: Stats;
  e2el: Stats;
  /** Requests cut off by the run's end before they got a first token. */
  starved: number;
}

/** Normalizes an error message into a short reason for counting. */
function reasonOf(r: RequestRecord): string {
  return r.error ?? "unknown error";
}

/** All run-level metrics of a list of requests over a run of `durationS` seconds. */
export function computeMetrics(records: readonly RequestRecord[], durationS: number, slo?: Slo): RunMetrics {
  const done = records.filter((r) => r.ok);
  const errors: Record<string, number> = {};
  for (const r of records) if (!r.ok) errors[reasonOf(r)] = (errors[reasonOf(r)] ?? 0) + 1;
  const ttfts: number[] = [];
  const tpots: number[] = [];
  const itls: number[] = [];
  const e2els: number[] = [];
  let inTok = 0;
  let outTok = 0;
  for (const r of done) {
    if (r.ttftMs !== undefined) ttfts.push(r.ttftMs);
    const t = tpotOf(r);
    if (t !== undefined) tpots.push(t);
    for (const g of r.itlMs) itls.push(g);
    if (r.e2eMs !== undefined) e2els.push(r.e2eMs);
    inTok += r.promptTokens;
    outTok += r.outputTokens;
  }
  const per = (x: number) => (durationS > 0 ? x / durationS : 0);
  const hasSlo =
    slo !== undefined && (slo.ttftMs !== undefined || slo.tpotMs !== undefined || slo.e2elMs !== undefined);
  return {
    sent: records.length,
    completed: done.length,
    failed: records.length - done.length,
    errors,
    durationS,
    totalInputTokens: inTok,
    totalOutputTokens: outTok,
    requestThroughput: per(done.length),
    outputThroughput: per(outTok),
    totalTokenThroughput: per(inTok + outTok),
    requestGoodput: hasSlo ? per(done.filter((r) => meetsSlo(r, slo)).length) : undefined,
    ttft: stats(ttfts),
    tpot: stats(tpots),
    itl: stats(itls),
    e2el: stats(e2els),
    starved: records.filter(isStarved).length,
  };
}

/** Duration of a run: from its start (0) to the end of the request that ended last, in seconds. */
export function runDurationS(records: readonly RequestRecord[], fallbackMs = 0): number {
  let end = 0;
  for (const r of records) end = Math.max(end, r.sentAt + (r.e2eMs ?? 0));
  return Math.max(end, fallbackMs) / 1000;
}

export interface GroupMetrics {
  sent: number;
  completed: number;
  failed: number;
  outputTokens: number;
  /** Output tokens of completed requests per second of the run. */
  outputThroughput: number;
  requestThroughput: number;
  /** TTFT of every request that got a first token (completed or not). */
  ttft: Stats;
  /** TPOT of the completed requests with more than one output token. */
  tpot: Stats;
  /** Queue wait as reported by the server; TTFT where the server does not report it. */
  queueWait: Stats;
  /** Whether queueWait came from the server for every request counted in it. */
  queueWaitFromServer: boolean;
  /** Requests cut off by the run's end before they got a first token. */
  starved: number;
}

/** A request the run's end cut off before it got its first token. */
export function isStarved(r: RequestRecord): boolean {
  return r.cutOff === true && r.ttftMs === undefined;
}

/** Per-group (class or tenant) metrics: TTFT, queue wait, throughput, starvation. */
export function groupMetrics(
  records: readonly RequestRecord[],
  key: (r: RequestRecord) => string | undefined,
  durationS: number,
): Record<string, GroupMetrics> {
  const groups = new Map<string, RequestRecord[]>();
  for (const r of records) {
    const k = key(r);
    if (k === undefined) continue;
    let g = groups.get(k);
    if (!g) groups.set(k, (g = []));
    g.push(r);
  }
  const out: Record<string, GroupMetrics> = {};
  for (const [k, rs] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
    const done = rs.filter((r) => r.ok);
    const withFirst = rs.filter((r) => r.ttftMs !== undefined);
    const waits = withFirst.map((r) => r.queueWaitMs ?? r.ttftMs!);
    const outTok = done.reduce((s, r) => s + r.outputTokens, 0);
    out[k] = {
      sent: rs.length,
      completed: done.length,
      failed: rs.length - done.length,
      outputTokens: outTok,
      outputThroughput: durationS > 0 ? outTok / durationS : 0,
      requestThroughput: durationS > 0 ? done.length / durationS : 0,
      ttft: stats(withFirst.map((r) => r.ttftMs!)),
      tpot: stats(done.map(tpotOf).filter((t): t is number => t !== undefined)),
      queueWait: stats(waits),
      queueWaitFromServer: withFirst.length > 0 && withFirst.every((r) => r.queueWaitMs !== undefined),
      starved: rs.filter(isStarved).length,
    };
  }
  return out;
}

/** An empirical CDF: sorted values with cumulative fractions (i+1)/n. */
export function cdf(data: readonly number[]): Array<[number, number]> {
  const s = [...data].sort((a, b) => a - b);
  return s.map((x, i) => [x, (i + 1) / s.length]);
}
