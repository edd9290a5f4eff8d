import { authHeaders, joinUrl } from "./client.js";

/**
 * The server's own view of a run, for targets that export engine metrics:
 * Spindle (`spindle_*`, vLLM's names under another prefix) and vLLM (`vllm:*`).
 * Scraped before and after each run (the Prometheus text: it has histogram
 * buckets), polled during it for peaks (KV-cache usage, running and waiting
 * requests; Spindle's `/metrics?format=json`), and reduced to what changed during the
 * run: batch-size distribution, prefix-cache hit rate, preemptions, engine
 * steps, the server-side mean latencies (queue wait, TTFT, ITL, E2E).
 */

export type ServerKind = "spindle" | "vllm";

export interface PromSample {
  /** Name without the server's prefix ("batch_size_bucket"). */
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface ServerSnapshot {
  /** performance.now() of the scrape. */
  at: number;
  samples: PromSample[];
}

const PREFIX: Record<ServerKind, string> = { spindle: "spindle_", vllm: "vllm:" };

/** Parses Prometheus text exposition; keeps samples whose name has `prefix` (stripped). */
export function parsePrometheus(text: string, prefix = ""): PromSample[] {
  const out: PromSample[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const full = m[1]!;
    if (!full.startsWith(prefix)) continue;
    const labels: Record<string, string> = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      for (let l = re.exec(m[3]); l; l = re.exec(m[3]))
        labels[l[1]!] = l[2]!.replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
    }
    const v = m[4]!;
    const value = v === "+Inf" ? Infinity : v === "-Inf" ? -Infinity : Number(v);
    out.push({ name: full.slice(prefix.length), labels, value });
  }
  return out;
}

/** Which engine metrics a /metrics text exports, if any. */
export function detectKind(text: string): ServerKind | undefined {
  if (/^spindle_/m.test(text)) return "spindle";
  if (/^vllm:/m.test(text)) return "vllm";
  return undefined;
}

/** Sum of a metric's samples over all label sets (with `where` labels matching). */
export function sumOf(
  s: readonly PromSample[],
  name: string,
  where: Record<string, string> = {},
): number | undefined {
  let found = false;
  let total = 0;
  for (const x of s) {
    if (x.name !== name) continue;
    if (Object.entries(where).some(([k, v]) => x.labels[k] !== v)) continue;
    found = true;
    total += x.value;
  }
  return found ? total : undefined;
}

function firstOf(s: readonly PromSample[], names: string[]): number | undefined {
  for (const n of names) {
    const v = sumOf(s, n);
    if (v !== undefined) return v;
  }
  return undefined;
}

export interface BucketCount {
  /** Upper bound (Infinity for +Inf). */
  le: number;
  /** "1", "3-4", ">512": integer ranges for integer bounds. */
  label: string;
  /** Observations in this bucket during the run (not cumulative). */
  count: number;
}

/** Per-bucket (non-cumulative) counts of a histogram's change between two scrapes. */
export function histogramDelta(before: readonly PromSample[], after: readonly PromSample[], name: string) {
  const cum = (s: readonly PromSample[]) => {
    const m = new Map<number, number>();
    for (const x of s)
      if (x.name === `${name}_bucket` && x.labels.le !== undefined) {
        const le = x.labels.le === "+Inf" ? Infinity : Number(x.labels.le);
        m.set(le, (m.get(le) ?? 0) + x.value);
      }
    return m;
  };
  const a = cum(after);
  if (a.size === 0) return undefined;
  const b = cum(before);
  const les = [...a.keys()].sort((x, y) => x - y);
  const buckets: BucketCount[] = [];
  let prevCum = 0;
  let prevLe = Number.NEGATIVE_INFINITY;
  for (const le of les) {
    const c = (a.get(le) ?? 0) - (b.get(le) ?? 0);
    const ints = Number.isInteger(le) && (prevLe === Number.NEGATIVE_INFINITY || Number.isInteger(prevLe));
    let label: string;
    if (le === Infinity) label = `>${prevLe}`;
    else if (ints && (prevLe === Number.NEGATIVE_INFINITY || prevLe + 1 === le)) label = `${le}`;
    else if (ints) label = `${prevLe + 1}-${le}`;
    else label = `≤${le}`;
    buckets.push({ le, label, count: Math.max(0, c - prevCum) });
    prevCum = Math.max(prevCum, c);
    prevLe = le;
  }
  const count = (sumOf(after, `${name}_count`) ?? 0) - (sumOf(before, `${name}_count`) ?? 0);
  const sum = (sumOf(after, `${name}_sum`) ?? 0) - (sumOf(before, `${name}_sum`) ?? 0);
  return { buckets, count, sum, mean: count > 0 ? sum / count : null };
}

export interface PollSample {
  /** ms since the run's start. */
  tMs: number;
  kvUsage?: number;
  running?: number;
  waiting?: number;
}

export interface ServerRunMetrics {
  kind: ServerKind;
  /** Engine steps that ran a batch, and the distribution of their batch sizes (sequences per step). */
  batchSize?: { steps: number; mean: number | null; buckets: BucketCount[] };
  /** Tokens per engine step. */
  iterationTokens?: { steps: number; mean: number | null };
  /**
   * Prefix cache over the run: prompt tokens looked up (queries) and found (hits: the prefill
   * tokens saved), and, where the server counts them (Spindle), the lookups that found something.
   */
  prefixCache?: { queries: number; hits: number; hitRate: number | null; hitRequests?: number };
  preemptions?: number;
  /** Speculative decoding over the run (vLLM's spec_decode counters), when the server drafts. */
  specDecode?: { drafts: number; draftTokens: number; acceptedTokens: number };
  kvUsage: { peak: number | null; end: number | null };
  peakRunning: number | null;
  peakWaiting: number | null;
  /** Finished requests by reason, as the server counted them. */
  finished?: Record<string, number>;
  rejected?: Record<string, number>;
  /** Server-side means over the run, ms. */
  serverMeanMs: { queue?: number; ttft?: number; itl?: number; tpot?: number; e2e?: number };
  polls: PollSample[];
}

function byLabel(before: readonly PromSample[], after: readonly PromSample[], name: string, label: string) {
  const out: Record<string, number> = {};
  for (const x of after)
    if (x.name === name && x.labels[label] !== undefined) {
      const k = x.labels[label]!;
      const b = sumOf(before, name, { [label]: k }) ?? 0;
      if (x.value - b > 0) out[k] = (out[k] ?? 0) + x.value - b;
    }
  return out;
}

/** What changed on the server between two scrapes, with the peaks seen while polling. */
export function diffServer(
  kind: ServerKind,
  before: ServerSnapshot,
  after: ServerSnapshot,
  polls: PollSample[],
): ServerRunMetrics {
  const b = before.samples;
  const a = after.samples;
  const delta = (names: string[]) => {
    const x = firstOf(a, names);
    return x === undefined ? undefined : x - (firstOf(b, names) ?? 0);
  };
  const hist = (name: string) => histogramDelta(b, a, name);
  const bs = hist("batch_size");
  const it = hist("iteration_tokens_total");
  const queries = delta(["prefix_cache_queries_total", "prefix_cache_queries"]);
  const hits = delta(["prefix_cache_hits_total", "prefix_cache_hits"]);
  const hitRequests = delta(["prefix_cache_hit_requests_total"]);
  const drafts = delta(["spec_decode_num_drafts_total", "spec_decode_num_drafts"]);
  const draftTokens = delta(["spec_decode_num_draft_tokens_total", "spec_decode_num_draft_tokens"]);
  const acceptedTokens = delta(["spec_decode_num_accepted_tokens_total", "spec_decode_num_accepted_tokens"]);
  const kvNames = ["kv_cache_usage_perc", "gpu_cache_usage_perc"];
  const kvEnd = firstOf(a, kvNames);
  const kvs = polls.map((p) => p.kvUsage).filter((x): x is number => x !== undefined);
  if (kvEnd !== undefined) kvs.push(kvEnd);
  const peak = (xs: Array<number | undefined>) => {
    const v = xs.filter((x): x is number => x !== undefined);
    return v.length ? Math.max(...v) : null;
  };
  const meanMs = (name: string) => {
    const h = hist(name);
    return h?.mean === null || h === undefined ? undefined : h.mean * 1000;
  };
  return {
    kind,
    batchSize: bs ? { steps: bs.count, mean: bs.mean, buckets: bs.buckets } : undefined,
    iterationTokens: it ? { steps: it.count, mean: it.mean } : undefined,
    prefixCache:
      queries !== undefined && hits !== undefined
        ? {
            queries,
            hits,
            hitRate: queries > 0 ? hits / queries : null,
            ...(hitRequests !== undefined ? { hitRequests } : {}),
          }
        : undefined,
    preemptions: delta(["num_preemptions_total", "num_preemptions"]),
    ...(drafts && draftTokens !== undefined && acceptedTokens !== undefined
      ? { specDecode: { drafts, draftTokens, acceptedTokens } }
      : {}),
    kvUsage: { peak: kvs.length ? Math.max(...kvs) : null, end: kvEnd ?? null },
    peakRunning: peak([...polls.map((p) => p.running), firstOf(a, ["num_requests_running"])]),
    peakWaiting: peak([...polls.map((p) => p.waiting), firstOf(a, ["num_requests_waiting"])]),
    finished: byLabel(b, a, "request_success_total", "finished_reason"),
    rejected: byLabel(b, a, "rejected_requests_total", "reason"),
    serverMeanMs: {
      queue: meanMs("request_queue_time_seconds"),
      ttft: meanMs("time_to_first_token_seconds"),
      itl: meanMs("inter_token_latency_seconds"),
      tpot: meanMs("request_time_per_output_token_seconds"),
      e2e: meanMs("e2e_request_latency_seconds"),
    },
    polls,
  };
}

/** Scrapes and polls one target's /metrics. */
export class ServerMetricsClient {
  private constructor(
    readonly baseUrl: string,
    readonly kind: ServerKind,
    private readonly apiKey: string | undefined,
  ) {}

  /** A client when the target exports engine metrics, else undefined. */
  static async detect(baseUrl: string, apiKey?: string): Promise<ServerMetricsClient | undefined> {
    try {
      const r = await fetch(joinUrl(baseUrl, "/metrics"), {
        headers: authHeaders(apiKey),
        signal: AbortSignal.timeout(10_000),
      });
      if (!r.ok) return undefined;
      const kind = detectKind(await r.text());
      return kind ? new ServerMetricsClient(baseUrl, kind, apiKey) : undefined;
    } catch {
      return undefined;
    }
  }

  private async text(): Promise<string> {
    const r = await fetch(joinUrl(this.baseUrl, "/metrics"), {
      headers: authHeaders(this.apiKey),
      signal: AbortSignal.timeout(10_000),
    });
    if (!r.ok) throw new Error(`GET /metrics: HTTP ${r.status}`);
    return r.text();
  }

  private async json(): Promise<Record<string, unknown> | undefined> {
    if (this.kind !== "spindle") return undefined;
    try {
      const r = await fetch(joinUrl(this.baseUrl, "/metrics?format=json"), {
        headers: authHeaders(this.apiKey),
        signal: AbortSignal.timeout(10_000),
      });
      if (!r.ok) return undefined;
      const j = (await r.json()) as unknown;
      return j && typeof j === "object" && !Array.isArray(j) ? (j as Record<string, unknown>) : undefined;
    } catch {
      return undefined;
    }
  }

  /** The Prometheus text: it has the histograms' buckets (the JSON form has only their count and sum). */
  async scrape(): Promise<ServerSnapshot> {
    const text = await this.text();
    return { at: performance.now(), samples: parsePrometheus(text, PREFIX[this.kind]) };
  }

  /** One poll: KV usage and queue depths (Spindle's JSON form; the text form elsewhere). */
  async poll(t0: number): Promise<PollSample> {
    const tMs = performance.now() - t0;
    const j = await this.json();
    const num = (x: unknown) => (typeof x === "number" ? x : undefined);
    if (j) {
      return {
        tMs,
        kvUsage: num(j.kv_cache_usage_perc),
        running: num(j.num_requests_running),
        waiting: num(j.num_requests_waiting),
      };
    }
    const s = parsePrometheus(await this.text(), PREFIX[this.kind]);
    return {
      tMs,
      kvUsage: firstOf(s, ["kv_cache_usage_perc", "gpu_cache_usage_perc"]),
      running: firstOf(s, ["num_requests_running"]),
      waiting: firstOf(s, ["num_requests_waiting"]),
    };
  }

  /** Polls every `intervalMs` until the returned stop() is called; stop() resolves with the samples. */
  startPolling(t0: number, intervalMs: number): () => Promise<PollSample[]> {
    const samples: PollSample[] = [];
    let stopped = false;
    let inFlight: Promise<void> | undefined;
    const tick = () => {
      if (stopped || inFlight) return;
      inFlight = this.poll(t0)
        .then((s) => void samples.push(s))
        .catch(() => {})
        .finally(() => {
          inFlight = undefined;
        });
    };
    tick();
    const timer = setInterval(tick, intervalMs);
    return async () => {
      stopped = true;
      clearInterval(timer);
      await inFlight;
      return samples;
    };
  }
}
