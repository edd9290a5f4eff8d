import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { StepInfo } from "../engine/engine-protocol.js";
import type { SpecStats } from "../engine/speculation.js";
import type { RequestRecord } from "./generation.js";

/**
 * Prometheus metrics, named like vLLM's (`vllm:x` → `spindle_x`) so its dashboards port by
 * renaming the prefix. Every instance has its own Registry: several servers in one process
 * (tests) never share or collide. Request metrics come from the engine's FinishInfo
 * (timestamps of every transition, in the worker's clock — only differences are used);
 * engine metrics from the StepInfo the worker sends with every step.
 *
 * Request counts are per engine request, i.e. per choice (a request with n = 3 is three):
 *  - `request_success_total{finished_reason}`: every engine request once it ended, by its finish
 *    reason — "abort" whatever aborted it (the client, a timeout, a shutdown, a sibling choice that
 *    could not start), including one whose reader stopped before the finish arrived.
 *  - `client_aborts_total`: the subset of those with finish reason "abort" whose client had gone away
 *    (its connection closed before the response was complete). A client leaving after its request
 *    finished (stop, length) is not an abort. So client_aborts_total ≤ the "abort" count, equal
 *    when no timeout or shutdown aborted anything.
 */

/** vLLM's TTFT buckets, 1 ms … 2560 s. */
export const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640,
  2560,
];
/** vLLM's inter-token / time-per-output-token buckets, plus three below 10 ms (small models on CPU are fast). */
export const TOKEN_LATENCY_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20,
  40, 80,
];
/** vLLM's request-latency buckets (e2e, queue, prefill, decode), plus some below 300 ms. */
export const REQUEST_LATENCY_BUCKETS = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120,
  240, 480, 960, 1920, 7680,
];
/** vLLM's build_1_2_5_buckets, up to 100k tokens (the model's length is not known when metrics are made). */
export const TOKEN_COUNT_BUCKETS = oneTwoFive(100_000);
/** vLLM's iteration_tokens_total buckets. */
export const ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];
export const BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

function oneTwoFive(max: number): number[] {
  const out: number[] = [];
  for (let exp = 1; ; exp *= 10) {
    for (const m of [1, 2, 5]) {
      if (m * exp > max) return out;
      out.push(m * exp);
    }
  }
}

export const METRIC_PREFIX = "spindle_";

export interface HistogramSummary {
  count: number;
  sum: number;
  /** sum / count; null before the first observation. */
  mean: number | null;
}

/** A prom-client histogram that also keeps its count and sum readable without a scrape. */
class Hist {
  readonly prom: Histogram;
  count = 0;
  sum = 0;
  constructor(registry: Registry, name: string, help: string, buckets: number[]) {
    this.prom = new Histogram({ name: METRIC_PREFIX + name, help, buckets, registers: [registry] });
  }
  observe(v: number | undefined): void {
    if (v === undefined || !Number.isFinite(v) || v < 0) return;
    this.prom.observe(v);
    this.count++;
    this.sum += v;
  }
  summary(): HistogramSummary {
    return { count: this.count, sum: this.sum, mean: this.count > 0 ? this.sum / this.count : null };
  }
}

/** A cumulative engine number turned into counter increments; a drop (the engine was rebuilt) restarts it. */
class Diff {
  private last = 0;
  delta(now: number): number {
    const d = now >= this.last ? now - this.last : now;
    this.last = now;
    return d;
  }
}

export interface MetricsOptions {
  /** Collect process CPU, memory, event loop, GC metrics (prom-client's defaults). Default true. */
  processMetrics?: boolean;
  /** The served model id, put on every sample as `model_name` (vLLM's label, which dashboards filter on). */
  modelName?: string;
}

/** The JSON form of the metrics (GET /metrics?format=json): keys are the metric names without the prefix. */
export interface MetricsSnapshot {
  num_requests_running: number;
  num_requests_waiting: number;
  kv_cache_usage_perc: number;
  prompt_tokens_total: number;
  generation_tokens_total: number;
  request_success_total: Record<string, number>;
  num_preemptions_total: number;
  jump_forward_tokens_total: number;
  /** Speculative decoding's totals (vLLM's spec_decode_* counters); zeros when it is off. */
  spec_decode: {
    num_drafts: number;
    num_draft_tokens: number;
    num_accepted_tokens: number;
    num_accepted_tokens_per_pos: number[];
  };
  prefix_cache_queries_total: number;
  prefix_cache_hits_total: number;
  /** Requests (prefix-cache lookups) that found at least one cached block. */
  prefix_cache_hit_requests_total: number;
  /** hits / queries, null before any query. */
  prefix_cache_hit_rate: number | null;
  rejected_requests_total: Record<string, number>;
  client_aborts_total: number;
  engine_steps_total: number;
  time_to_first_token_seconds: HistogramSummary;
  inter_token_latency_seconds: HistogramSummary;
  request_time_per_output_token_seconds: HistogramSummary;
  e2e_request_latency_seconds: HistogramSummary;
  request_queue_time_seconds: HistogramSummary;
  request_prefill_time_seconds: HistogramSummary;
  request_decode_time_seconds: HistogramSummary;
  request_prompt_tokens: HistogramSummary;
  request_generation_tokens: HistogramSummary;
  iteration_tokens_total: HistogramSummary;
  batch_size: HistogramSummary;
  process: {
    cpu_user_seconds: number;
    cpu_system_seconds: number;
    resident_memory_bytes: number;
    heap_used_bytes: number;
    uptime_seconds: number;
  };
}

export class Metrics {
  readonly registry = new Registry();

  private readonly running: Gauge;
  private readonly waiting: Gauge;
  private readonly kvUsage: Gauge;
  private readonly promptTokensC: Counter;
  private readonly generationTokensC: Counter;
  private readonly success: Counter<"finished_reason">;
  private readonly preemptionsC: Counter;
  private readonly jumpForwardC: Counter;
  private readonly specDraftsC: Counter;
  private readonly specDraftTokensC: Counter;
  private readonly specAcceptedC: Counter;
  private readonly specPerPosC: Counter;
  private readonly specDiff = {
    drafts: new Diff(),
    draftTokens: new Diff(),
    accepted: new Diff(),
    perPos: [] as Diff[],
  };
  private readonly spec: MetricsSnapshot["spec_decode"] = {
    num_drafts: 0,
    num_draft_tokens: 0,
    num_accepted_tokens: 0,
    num_accepted_tokens_per_pos: [],
  };
  private readonly prefixQueriesC: Counter;
  private readonly prefixHitsC: Counter;
  private readonly prefixHitRequestsC: Counter;
  private readonly rejectedC: Counter<"reason">;
  private readonly clientAbortsC: Counter;

  private readonly ttft: Hist;
  private readonly itl: Hist;
  private readonly tpot: Hist;
  private readonly e2e: Hist;
  private readonly queue: Hist;
  private readonly prefill: Hist;
  private readonly decode: Hist;
  private readonly promptLen: Hist;
  private readonly genLen: Hist;
  private readonly iterTokens: Hist;
  private readonly batchSize: Hist;

  private readonly preemptDiff = new Diff();
  private readonly queriesDiff = new Diff();
  private readonly hitsDiff = new Diff();
  private readonly hitRequestsDiff = new Diff();

  // Readable values (tests, the JSON snapshot, the engine log line).
  promptTokens = 0;
  generationTokens = 0;
  clientAborts = 0;
  preemptions = 0;
  /** Tokens accepted without sampling because a grammar forced them (jump-forward). */
  jumpForwardTokens = 0;
  prefixQueries = 0;
  prefixHits = 0;
  prefixHitRequests = 0;
  /** Engine steps seen, and the tokens they computed: prefill (prompt) and decode. */
  steps = 0;
  stepPrefillTokens = 0;
  stepDecodeTokens = 0;
  /** Current engine state, from the latest step. */
  numRunning = 0;
  numWaiting = 0;
  kvCacheUsage = 0;
  readonly finishedByReason: Record<string, number> = {};
  readonly rejectedByReason: Record<string, number> = {};

  constructor(opts: MetricsOptions = {}) {
    const r = this.registry;
    if (opts.modelName !== undefined) r.setDefaultLabels({ model_name: opts.modelName });
    const p = METRIC_PREFIX;
    const gauge = (name: string, help: string) => new Gauge({ name: p + name, help, registers: [r] });
    const counter = (name: string, help: string) => new Counter({ name: p + name, help, registers: [r] });
    this.running = gauge("num_requests_running", "Number of requests in model execution batches.");
    this.waiting = gauge("num_requests_waiting", "Number of requests waiting to be processed.");
    this.kvUsage = gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
    this.promptTokensC = counter("prompt_tokens_total", "Number of prefill tokens processed.");
    this.generationTokensC = counter("generation_tokens_total", "Number of generation tokens processed.");
    this.success = new Counter({
      name: `${p}request_success_total`,
      help: "Count of finished requests (one per choice), by finish reason (stop, length, abort, error).",
      labelNames: ["finished_reason"],
      registers: [r],
    });
    this.preemptionsC = counter("num_preemptions_total", "Cumulative number of preemptions from the engine.");
    this.jumpForwardC = counter(
      "jump_forward_tokens_total",
      "Tokens of structured outputs accepted without sampling because the grammar forced them (jump-forward).",
    );
    this.specDraftsC = counter(
      "spec_decode_num_drafts_total",
      "Speculative decoding: drafts verified (vLLM's spec_decode_num_drafts).",
    );
    this.specDraftTokensC = counter(
      "spec_decode_num_draft_tokens_total",
      "Speculative decoding: draft tokens verified (vLLM's spec_decode_num_draft_tokens).",
    );
    this.specAcceptedC = counter(
      "spec_decode_num_accepted_tokens_total",
      "Speculative decoding: draft tokens accepted (vLLM's spec_decode_num_accepted_tokens).",
    );
    this.specPerPosC = new Counter({
      name: `${p}spec_decode_num_accepted_tokens_per_pos_total`,
      help: "Speculative decoding: draft tokens accepted, by position in the draft (0 = first).",
      labelNames: ["position"],
      registers: [r],
    });
    this.prefixQueriesC = counter(
      "prefix_cache_queries_total",
      "Prefix cache queries, in terms of number of queried tokens.",
    );
    this.prefixHitsC = counter(
      "prefix_cache_hits_total",
      "Prefix cache hits, in terms of number of cached tokens.",
    );
    this.prefixHitRequestsC = counter(
      "prefix_cache_hit_requests_total",
      "Prefix cache lookups (one per request scheduled, again after a preemption) that found at least one cached block.",
    );
    this.rejectedC = new Counter({
      name: `${p}rejected_requests_total`,
      help: "Requests refused before reaching the engine, by reason (queue_full, rate_limited, loading, draining, …).",
      labelNames: ["reason"],
      registers: [r],
    });
    this.clientAbortsC = counter(
      "client_aborts_total",
      "Requests (one per choice) that finished with reason abort because the client disconnected.",
    );
    this.ttft = new Hist(
      r,
      "time_to_first_token_seconds",
      "Histogram of time to first token in seconds.",
      TTFT_BUCKETS,
    );
    this.itl = new Hist(
      r,
      "inter_token_latency_seconds",
      "Histogram of inter-token latency in seconds.",
      TOKEN_LATENCY_BUCKETS,
    );
    this.tpot = new Hist(
      r,
      "request_time_per_output_token_seconds",
      "Histogram of time_per_output_token_seconds per request.",
      TOKEN_LATENCY_BUCKETS,
    );
    this.e2e = new Hist(
      r,
      "e2e_request_latency_seconds",
      "Histogram of e2e request latency in seconds.",
      REQUEST_LATENCY_BUCKETS,
    );
    this.queue = new Hist(
      r,
      "request_queue_time_seconds",
      "Histogram of time spent in WAITING phase for request.",
      REQUEST_LATENCY_BUCKETS,
    );
    this.prefill = new Hist(
      r,
      "request_prefill_time_seconds",
      "Histogram of time spent in PREFILL phase for request.",
      REQUEST_LATENCY_BUCKETS,
    );
    this.decode = new Hist(
      r,
      "request_decode_time_seconds",
      "Histogram of time spent in DECODE phase for request.",
      REQUEST_LATENCY_BUCKETS,
    );
    this.promptLen = new Hist(
      r,
      "request_prompt_tokens",
      "Number of prefill tokens processed.",
      TOKEN_COUNT_BUCKETS,
    );
    this.genLen = new Hist(
      r,
      "request_generation_tokens",
      "Number of generation tokens processed.",
      TOKEN_COUNT_BUCKETS,
    );
    this.iterTokens = new Hist(
      r,
      "iteration_tokens_total",
      "Histogram of number of tokens per engine step.",
      ITERATION_TOKEN_BUCKETS,
    );
    this.batchSize = new Hist(
      r,
      "batch_size",
      "Histogram of number of sequences per engine step.",
      BATCH_SIZE_BUCKETS,
    );
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: r, prefix: p });
  }

  /** A request ended (any reason): its tokens, its latencies. */
  onFinish(rec: RequestRecord): void {
    const f = rec.finish;
    const t = f.times;
    const sec = (a: number | undefined, b: number | undefined) =>
      a === undefined || b === undefined ? undefined : (b - a) / 1000;
    // Prompt tokens count once their prefill is done (the request produced a token), as in vLLM.
    if (t.firstToken !== undefined) {
      this.promptTokensC.inc(f.promptTokens);
      this.promptTokens += f.promptTokens;
    }
    this.generationTokensC.inc(f.completionTokens);
    this.generationTokens += f.completionTokens;
    this.success.inc({ finished_reason: f.reason });
    this.finishedByReason[f.reason] = (this.finishedByReason[f.reason] ?? 0) + 1;

    this.ttft.observe(sec(t.arrival, t.firstToken));
    const tt = f.tokenTimes;
    for (let i = 1; i < tt.length; i++) this.itl.observe((tt[i]! - tt[i - 1]!) / 1000);
    // Sampled tokens (an end-of-generation token is sampled but not counted in completionTokens).
    const sampled = Math.max(tt.length, f.completionTokens);
    if (sampled > 1 && t.firstToken !== undefined && t.lastToken !== undefined) {
      this.tpot.observe((t.lastToken - t.firstToken) / 1000 / (sampled - 1));
    }
    this.e2e.observe(sec(t.arrival, t.finished));
    this.queue.observe(sec(t.arrival, t.firstScheduled));
    this.prefill.observe(sec(t.firstScheduled, t.firstToken));
    this.decode.observe(sec(t.firstToken, t.lastToken));
    this.promptLen.observe(f.promptTokens);
    this.genLen.observe(f.completionTokens);
  }

  /** A request refused before it reached the engine. */
  onReject(reason: string, _endpoint: string): void {
    this.rejectedC.inc({ reason });
    this.rejectedByReason[reason] = (this.rejectedByReason[reason] ?? 0) + 1;
  }

  /** A request finished with reason "abort" and its client was gone (counted with its onFinish). */
  onAbortedByClient(_endpoint: string): void {
    this.clientAbortsC.inc();
    this.clientAborts++;
  }

  /** The queue of a backend without an engine (llamacpp, openai): requests waiting for a slot and holding one. */
  onQueue(q: { waiting: number; running: number }): void {
    this.numRunning = q.running;
    this.numWaiting = q.waiting;
    this.running.set(q.running);
    this.waiting.set(q.waiting);
  }

  /** One engine step: current state, and the engine's cumulative counters turned into increments. */
  onStep(s: StepInfo): void {
    this.numRunning = s.running;
    this.numWaiting = s.waiting;
    this.kvCacheUsage = s.kvUsage;
    this.running.set(s.running);
    this.waiting.set(s.waiting);
    this.kvUsage.set(s.kvUsage);
    const pre = this.preemptDiff.delta(s.totalPreemptions);
    const q = this.queriesDiff.delta(s.prefix.queries);
    const h = this.hitsDiff.delta(s.prefix.hits);
    const hr = this.hitRequestsDiff.delta(s.prefix.hitRequests);
    if (pre > 0) this.preemptionsC.inc(pre);
    if (s.forcedTokens > 0) {
      this.jumpForwardC.inc(s.forcedTokens);
      this.jumpForwardTokens += s.forcedTokens;
    }
    if (s.spec) this.onSpec(s.spec);
    if (q > 0) this.prefixQueriesC.inc(q);
    if (h > 0) this.prefixHitsC.inc(h);
    if (hr > 0) this.prefixHitRequestsC.inc(hr);
    this.preemptions += pre;
    this.prefixQueries += q;
    this.prefixHits += h;
    this.prefixHitRequests += hr;
    if (s.batchSize > 0) {
      const tokens = s.prefillTokens + s.decodeTokens;
      this.steps++;
      this.stepPrefillTokens += s.prefillTokens;
      this.stepDecodeTokens += s.decodeTokens;
      this.iterTokens.observe(tokens);
      this.batchSize.observe(s.batchSize);
    }
  }

  /** Speculative decoding's cumulative counters, as increments. */
  private onSpec(s: SpecStats): void {
    const d = this.specDiff;
    const drafts = d.drafts.delta(s.drafts);
    const draftTokens = d.draftTokens.delta(s.draftTokens);
    const accepted = d.accepted.delta(s.acceptedTokens);
    if (drafts > 0) this.specDraftsC.inc(drafts);
    if (draftTokens > 0) this.specDraftTokensC.inc(draftTokens);
    if (accepted > 0) this.specAcceptedC.inc(accepted);
    this.spec.num_drafts += drafts;
    this.spec.num_draft_tokens += draftTokens;
    this.spec.num_accepted_tokens += accepted;
    s.acceptedPerPosition.forEach((n, pos) => {
      d.perPos[pos] ??= new Diff();
      const inc = d.perPos[pos]!.delta(n);
      if (inc > 0) this.specPerPosC.inc({ position: String(pos) }, inc);
      this.spec.num_accepted_tokens_per_pos[pos] = (this.spec.num_accepted_tokens_per_pos[pos] ?? 0) + inc;
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Prometheus text exposition format (version 0.0.4). */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  async snapshot(): Promise<MetricsSnapshot> {
    const mem = process.memoryUsage();
    const cpu = process.cpuUsage();
    return {
      num_requests_running: this.numRunning,
      num_requests_waiting: this.numWaiting,
      kv_cache_usage_perc: this.kvCacheUsage,
      prompt_tokens_total: this.promptTokens,
      generation_tokens_total: this.generationTokens,
      request_success_total: { ...this.finishedByReason },
      num_preemptions_total: this.preemptions,
      jump_forward_tokens_total: this.jumpForwardTokens,
      spec_decode: { ...this.spec, num_accepted_tokens_per_pos: [...this.spec.num_accepted_tokens_per_pos] },
      prefix_cache_queries_total: this.prefixQueries,
      prefix_cache_hits_total: this.prefixHits,
      prefix_cache_hit_requests_total: this.prefixHitRequests,
      prefix_cache_hit_rate: this.prefixQueries > 0 ? this.prefixHits / this.prefixQueries : null,
      rejected_requests_total: { ...this.rejectedByReason },
      client_aborts_total: this.clientAborts,
      engine_steps_total: this.steps,
      time_to_first_token_seconds: this.ttft.summary(),
      inter_token_latency_seconds: this.itl.summary(),
      request_time_per_output_token_seconds: this.tpot.summary(),
      e2e_request_latency_seconds: this.e2e.summary(),
      request_queue_time_seconds: this.queue.summary(),
      request_prefill_time_seconds: this.prefill.summary(),
      request_decode_time_seconds: this.decode.summary(),
      request_prompt_tokens: this.promptLen.summary(),
      request_generation_tokens: this.genLen.summary(),
      iteration_tokens_total: this.iterTokens.summary(),
      batch_size: this.batchSize.summary(),
      process: {
        cpu_user_seconds: cpu.user / 1e6,
        cpu_system_seconds: cpu.system / 1e6,
        resident_memory_bytes: mem.rss,
        heap_used_bytes: mem.heapUsed,
        uptime_seconds: process.uptime(),
      },
    };
  }

  /** Requests finished, any reason. */
  get requestsFinished(): number {
    return Object.values(this.finishedByReason).reduce((a, b) => a + b, 0);
  }

  /** Requests refused for `reason` (all reasons when omitted). */
  rejected(reason?: string): number {
    if (reason !== undefined) return this.rejectedByReason[reason] ?? 0;
    return Object.values(this.rejectedByReason).reduce((a, b) => a + b, 0);
  }
}
