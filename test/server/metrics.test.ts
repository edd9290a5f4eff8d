import { Writable } from "node:stream";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StepInfo } from "../../src/engine/engine-protocol.js";
import type { FinishInfo } from "../../src/protocol/events.js";
import type { RequestRecord } from "../../src/server/generation.js";
import { Metrics } from "../../src/server/metrics.js";
import { logRequest, startEngineLog } from "../../src/server/request-log.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

// biome-ignore lint/suspicious/noExplicitAny: response bodies are JSON; the assertions check their shape
type Json = Record<string, any>;

/** A pino logger writing JSON lines into an array. */
function capture(): { log: pino.Logger; lines: Json[] } {
  const lines: Json[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split("\n")) if (l.trim()) lines.push(JSON.parse(l) as Json);
      cb();
    },
  });
  return { log: pino({ level: "info" }, stream), lines };
}

async function until(cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("timed out waiting for a condition");
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * The value of an unlabelled sample (or a sample with exactly these labels) in Prometheus text, not
 * counting the model_name label every sample carries.
 */
function sample(text: string, name: string, labels = ""): number {
  const line = text
    .split("\n")
    .map((l) =>
      l
        .replace(/model_name="[^"]*",?/, "")
        .replace(/,?\}/, "}")
        .replace("{}", ""),
    )
    .find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ""} `));
  if (line === undefined) throw new Error(`no sample ${name}{${labels}}`);
  return Number(line.slice(line.lastIndexOf(" ") + 1));
}

const NAMES = [
  "spindle_num_requests_running",
  "spindle_num_requests_waiting",
  "spindle_kv_cache_usage_perc",
  "spindle_prompt_tokens_total",
  "spindle_generation_tokens_total",
  "spindle_request_success_total",
  "spindle_num_preemptions_total",
  "spindle_prefix_cache_queries_total",
  "spindle_prefix_cache_hits_total",
  "spindle_prefix_cache_hit_requests_total",
  "spindle_rejected_requests_total",
  "spindle_client_aborts_total",
  "spindle_time_to_first_token_seconds",
  "spindle_inter_token_latency_seconds",
  "spindle_request_time_per_output_token_seconds",
  "spindle_e2e_request_latency_seconds",
  "spindle_request_queue_time_seconds",
  "spindle_request_prompt_tokens",
  "spindle_request_generation_tokens",
  "spindle_iteration_tokens_total",
  "spindle_batch_size",
  "spindle_process_cpu_seconds_total",
  "spindle_process_resident_memory_bytes",
  "spindle_nodejs_heap_size_used_bytes",
];

describe("metrics and the request log on a live server", () => {
  let srv: TestServer;
  const cap = capture();

  beforeAll(async () => {
    srv = await startTestServer({ log: cap.log, modelName: "stories260K" });
  });
  afterAll(async () => {
    await srv?.close();
  });

  const complete = async (prompt: string, maxTokens: number) => {
    const res = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "stories260K", prompt, max_tokens: maxTokens, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    return (await res.json()) as Json;
  };
  const metricsText = async () => {
    const res = await fetch(`${srv.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    return res.text();
  };

  const usage = { prompt: 0, completion: 0, requests: 0 };

  it("counts tokens and requests exactly; histograms count each request; JSON matches the text", async () => {
    for (const [prompt, n] of [
      ["Once upon a time", 12],
      ["The little dog", 20],
      ["Lily and Ben went to the park.", 7],
    ] as const) {
      const r = await complete(prompt, n);
      usage.prompt += r.usage.prompt_tokens;
      usage.completion += r.usage.completion_tokens;
      usage.requests++;
    }
    await until(() => srv.server.ctx.metrics.requestsFinished === usage.requests);
    const text = await metricsText();
    for (const name of NAMES) expect(text, name).toMatch(new RegExp(`^# TYPE ${name} `, "m"));
    // Every sample carries the served model's id, as vLLM's do.
    const samples = text.split("\n").filter((l) => l.startsWith("spindle_"));
    expect(samples.length).toBeGreaterThan(20);
    for (const l of samples) expect(l).toContain('model_name="stories260K"');
    expect(sample(text, "spindle_prompt_tokens_total")).toBe(usage.prompt);
    expect(sample(text, "spindle_generation_tokens_total")).toBe(usage.completion);
    expect(sample(text, "spindle_request_success_total", 'finished_reason="length"')).toBe(3);
    expect(sample(text, "spindle_time_to_first_token_seconds_count")).toBe(3);
    expect(sample(text, "spindle_e2e_request_latency_seconds_count")).toBe(3);
    expect(sample(text, "spindle_request_queue_time_seconds_count")).toBe(3);
    expect(sample(text, "spindle_request_time_per_output_token_seconds_count")).toBe(3);
    expect(sample(text, "spindle_request_prompt_tokens_sum")).toBe(usage.prompt);
    expect(sample(text, "spindle_request_generation_tokens_sum")).toBe(usage.completion);
    // One inter-token gap per token after the first.
    expect(sample(text, "spindle_inter_token_latency_seconds_count")).toBe(usage.completion - 3);
    expect(sample(text, "spindle_time_to_first_token_seconds_bucket", 'le="+Inf"')).toBe(3);
    expect(sample(text, "spindle_iteration_tokens_total_sum")).toBeGreaterThanOrEqual(usage.prompt);
    expect(sample(text, "spindle_process_resident_memory_bytes")).toBeGreaterThan(0);

    const json = (await (await fetch(`${srv.url}/metrics?format=json`)).json()) as Json;
    expect(json.prompt_tokens_total).toBe(usage.prompt);
    expect(json.generation_tokens_total).toBe(usage.completion);
    expect(json.request_success_total).toEqual({ length: 3 });
    expect(json.time_to_first_token_seconds.count).toBe(3);
    expect(json.time_to_first_token_seconds.sum).toBeCloseTo(
      sample(text, "spindle_time_to_first_token_seconds_sum"),
      9,
    );
    expect(json.time_to_first_token_seconds.mean).toBeCloseTo(json.time_to_first_token_seconds.sum / 3, 9);
    expect(json.e2e_request_latency_seconds.sum).toBeCloseTo(
      sample(text, "spindle_e2e_request_latency_seconds_sum"),
      9,
    );
    expect(json.prefix_cache_queries_total).toBe(sample(text, "spindle_prefix_cache_queries_total"));
    expect(json.num_requests_running).toBe(0);
    expect(json.process.resident_memory_bytes).toBeGreaterThan(0);
  });

  it("one request line per request, with its numbers and no prompt text", () => {
    const reqs = cap.lines.filter((l) => l.msg === "request");
    expect(reqs).toHaveLength(usage.requests);
    for (const l of reqs) {
      expect(l).toMatchObject({
        endpoint: "/v1/completions",
        client: "127.0.0.1",
        status: 200,
        finish_reason: "length",
      });
      for (const k of [
        "id",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "queue_ms",
        "ttft_ms",
        "latency_ms",
      ]) {
        expect(l[k], k).toBeTypeOf(k === "id" ? "string" : "number");
      }
      for (const k of ["prompt_tps", "gen_tps"]) expect(l[k], k).toBeGreaterThan(0);
      expect(l.preemptions).toBe(0);
      expect(l.ttft_ms).toBeLessThanOrEqual(l.latency_ms);
      expect(l.queue_ms).toBeLessThanOrEqual(l.ttft_ms);
      expect(l).not.toHaveProperty("prompt");
    }
    expect(reqs.reduce((s, l) => s + l.prompt_tokens, 0)).toBe(usage.prompt);
    expect(reqs.reduce((s, l) => s + l.completion_tokens, 0)).toBe(usage.completion);
  });

  it("the prefix-cache hit counter grows for a repeated long prompt; KV usage is back to 0 when idle", async () => {
    const long =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball.";
    const before = await metricsText();
    const hits0 = sample(before, "spindle_prefix_cache_hits_total");
    const queries0 = sample(before, "spindle_prefix_cache_queries_total");
    const hitReqs0 = sample(before, "spindle_prefix_cache_hit_requests_total");
    const first = await complete(long, 3);
    expect(first.usage.prompt_tokens).toBeGreaterThan(32);
    const second = await complete(long, 3);
    await until(() => srv.server.ctx.metrics.generationTokens === usage.completion + 6);
    const after = await metricsText();
    // The second request finds every full block of the prompt but the last token's.
    expect(sample(after, "spindle_prefix_cache_hits_total") - hits0).toBeGreaterThanOrEqual(32);
    // Two lookups; the second surely hits (the first may too: earlier tests' prompts share its start).
    const hitReqs = sample(after, "spindle_prefix_cache_hit_requests_total") - hitReqs0;
    expect(hitReqs).toBeGreaterThanOrEqual(1);
    expect(hitReqs).toBeLessThanOrEqual(2);
    expect(sample(after, "spindle_prefix_cache_queries_total") - queries0).toBeGreaterThanOrEqual(
      2 * first.usage.prompt_tokens - 1,
    );
    expect(second.usage.prompt_tokens).toBe(first.usage.prompt_tokens);
    expect(sample(after, "spindle_kv_cache_usage_perc")).toBe(0);
    expect(sample(after, "spindle_num_requests_running")).toBe(0);
    expect(sample(after, "spindle_num_requests_waiting")).toBe(0);
    const lines = cap.lines.filter((l) => l.msg === "request");
    expect(lines.at(-1)!.cached_tokens).toBeGreaterThanOrEqual(32);
  });

  it("a client that disconnects mid-stream is counted", async () => {
    const ac = new AbortController();
    const res = await fetch(`${srv.url}/generate_stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        inputs: "Once upon a time",
        parameters: { max_new_tokens: 1500, ignore_eos: true },
      }),
      signal: ac.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    ac.abort();
    await until(() => srv.server.ctx.metrics.clientAborts === 1);
    await until(() => (srv.server.ctx.metrics.finishedByReason.abort ?? 0) === 1);
    const text = await metricsText();
    expect(sample(text, "spindle_client_aborts_total")).toBe(1);
    expect(sample(text, "spindle_request_success_total", 'finished_reason="abort"')).toBe(1);
  });
});

describe("--log-prompts", () => {
  it("puts the prompt text in the request line", async () => {
    const cap = capture();
    const srv = await startTestServer({ log: cap.log, logPrompts: true });
    try {
      const res = await fetch(`${srv.url}/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ inputs: "The little dog", parameters: { max_new_tokens: 3 } }),
      });
      expect(res.status).toBe(200);
      await until(() => cap.lines.some((l) => l.msg === "request"));
      const line = cap.lines.find((l) => l.msg === "request")!;
      expect(line).toMatchObject({ endpoint: "/generate", prompt: "The little dog", completion_tokens: 3 });
    } finally {
      await srv.close();
    }
  });
});

// ---- units: the numbers derived from FinishInfo and StepInfo ----

function finish(over: Partial<FinishInfo> = {}): FinishInfo {
  return {
    reason: "length",
    promptTokens: 10,
    cachedTokens: 4,
    completionTokens: 5,
    preemptions: 1,
    // arrival 1000, scheduled 1020, first token 1100, then tokens every 10 ms.
    times: { arrival: 1000, firstScheduled: 1020, firstToken: 1100, lastToken: 1140, finished: 1141 },
    tokenTimes: [1100, 1110, 1120, 1130, 1140],
    ...over,
  };
}

const record = (f: FinishInfo, over: Partial<RequestRecord> = {}): RequestRecord => ({
  id: "req-1",
  endpoint: "/v1/completions",
  client: "key-abc123",
  status: 200,
  finish: f,
  ...over,
});

function step(over: Partial<StepInfo> = {}): StepInfo {
  return {
    batchSize: 2,
    prefillTokens: 30,
    decodeTokens: 1,
    preempted: 0,
    forcedTokens: 0,
    draftTokens: 0,
    acceptedTokens: 0,
    step: 1,
    stepMs: 3,
    kvUsage: 0.25,
    freeBlocks: 75,
    numBlocks: 100,
    waiting: 3,
    running: 2,
    totalPreemptions: 0,
    prefix: { queries: 0, hits: 0, hitRequests: 0, evictions: 0 },
    ...over,
  };
}

describe("Metrics (unit)", () => {
  it("derives queue time, TTFT, ITL, TPOT and e2e from the finish times", async () => {
    const m = new Metrics({ processMetrics: false });
    m.onFinish(record(finish()));
    const s = await m.snapshot();
    expect(s.request_queue_time_seconds).toMatchObject({ count: 1 });
    expect(s.request_queue_time_seconds.sum).toBeCloseTo(0.02, 9);
    expect(s.time_to_first_token_seconds.sum).toBeCloseTo(0.1, 9);
    expect(s.inter_token_latency_seconds.count).toBe(4);
    expect(s.inter_token_latency_seconds.sum).toBeCloseTo(0.04, 9);
    expect(s.request_time_per_output_token_seconds.sum).toBeCloseTo(0.01, 9);
    expect(s.e2e_request_latency_seconds.sum).toBeCloseTo(0.141, 9);
    expect(s.request_prefill_time_seconds.sum).toBeCloseTo(0.08, 9);
    expect(s.request_decode_time_seconds.sum).toBeCloseTo(0.04, 9);
    expect(s.prompt_tokens_total).toBe(10);
    expect(s.generation_tokens_total).toBe(5);
    expect(s.request_success_total).toEqual({ length: 1 });
    const text = await m.render();
    expect(sample(text, "spindle_time_to_first_token_seconds_bucket", 'le="0.1"')).toBe(1);
    expect(sample(text, "spindle_time_to_first_token_seconds_bucket", 'le="0.08"')).toBe(0);
    expect(text).not.toContain("spindle_process_cpu");
  });

  it("a request aborted before its prefill counts no prompt tokens and no latencies but e2e", async () => {
    const m = new Metrics({ processMetrics: false });
    m.onFinish(
      record(
        finish({
          reason: "abort",
          completionTokens: 0,
          tokenTimes: [],
          times: { arrival: 0, finished: 500 },
        }),
      ),
    );
    const s = await m.snapshot();
    expect(s.prompt_tokens_total).toBe(0);
    expect(s.time_to_first_token_seconds.count).toBe(0);
    expect(s.request_queue_time_seconds.count).toBe(0);
    expect(s.e2e_request_latency_seconds.sum).toBeCloseTo(0.5, 9);
    expect(s.request_success_total).toEqual({ abort: 1 });
  });

  it("turns the engine's cumulative counters into increments, and survives an engine restart", async () => {
    const m = new Metrics({ processMetrics: false });
    m.onStep(step({ totalPreemptions: 2, prefix: { queries: 100, hits: 32, hitRequests: 1, evictions: 0 } }));
    m.onStep(step({ totalPreemptions: 3, prefix: { queries: 150, hits: 64, hitRequests: 2, evictions: 0 } }));
    // A rebuilt engine starts counting from 0 again.
    m.onStep(step({ totalPreemptions: 1, prefix: { queries: 20, hits: 0, hitRequests: 0, evictions: 0 } }));
    m.onStep(step({ batchSize: 0, prefillTokens: 0, decodeTokens: 0, kvUsage: 0, running: 0, waiting: 0 }));
    const text = await m.render();
    expect(sample(text, "spindle_num_preemptions_total")).toBe(4);
    expect(sample(text, "spindle_prefix_cache_queries_total")).toBe(170);
    expect(sample(text, "spindle_prefix_cache_hits_total")).toBe(64);
    expect(sample(text, "spindle_prefix_cache_hit_requests_total")).toBe(2);
    expect(sample(text, "spindle_iteration_tokens_total_count")).toBe(3);
    expect(sample(text, "spindle_iteration_tokens_total_sum")).toBe(93);
    expect(sample(text, "spindle_batch_size_sum")).toBe(6);
    expect(sample(text, "spindle_kv_cache_usage_perc")).toBe(0);
    expect(sample(text, "spindle_num_requests_running")).toBe(0);
    const s = await m.snapshot();
    expect(s.prefix_cache_hit_rate).toBeCloseTo(64 / 170, 9);
    expect(s.engine_steps_total).toBe(3);
  });

  it("counts rejections by reason and client aborts", async () => {
    const m = new Metrics({ processMetrics: false });
    m.onReject("queue_full", "/v1/completions");
    m.onReject("queue_full", "/generate");
    m.onReject("rate_limited", "/generate");
    m.onAbortedByClient("/generate");
    expect(m.rejected("queue_full")).toBe(2);
    expect(m.rejected()).toBe(3);
    expect(m.clientAborts).toBe(1);
    const text = await m.render();
    expect(sample(text, "spindle_rejected_requests_total", 'reason="queue_full"')).toBe(2);
    expect(sample(text, "spindle_rejected_requests_total", 'reason="rate_limited"')).toBe(1);
    expect(sample(text, "spindle_client_aborts_total")).toBe(1);
  });

  it("two instances do not share a registry", async () => {
    const a = new Metrics();
    const b = new Metrics();
    a.onFinish(record(finish()));
    expect(sample(await a.render(), "spindle_generation_tokens_total")).toBe(5);
    expect(sample(await b.render(), "spindle_generation_tokens_total")).toBe(0);
  });
});

describe("request and engine log lines (unit)", () => {
  it("a request line has the numbers, and the prompt only when given", () => {
    const cap = capture();
    logRequest(cap.log, record(finish()));
    logRequest(cap.log, record(finish(), { promptText: "secret prompt" }));
    logRequest(cap.log, record(finish({ reason: "error", message: "engine step failed: boom" })));
    const [a, b, c] = cap.lines;
    expect(a).toMatchObject({
      level: 30,
      msg: "request",
      id: "req-1",
      endpoint: "/v1/completions",
      client: "key-abc123",
      status: 200,
      finish_reason: "length",
      prompt_tokens: 10,
      cached_tokens: 4,
      completion_tokens: 5,
      queue_ms: 20,
      ttft_ms: 100,
      latency_ms: 141,
      // 6 prompt tokens computed in 80 ms; 4 tokens after the first in 40 ms.
      prompt_tps: 75,
      gen_tps: 100,
      preemptions: 1,
    });
    expect(a).not.toHaveProperty("prompt");
    expect(b!.prompt).toBe("secret prompt");
    expect(c).toMatchObject({ level: 40, finish_reason: "error", message: "engine step failed: boom" });
  });

  it("an engine line per interval, over the interval, only when the engine did something", async () => {
    const cap = capture();
    const m = new Metrics({ processMetrics: false });
    const engine = { lastStep: undefined as StepInfo | undefined };
    const stop = startEngineLog(cap.log, engine, m, { intervalMs: 40 });
    try {
      await new Promise((r) => setTimeout(r, 100));
      expect(cap.lines).toHaveLength(0);
      const s1 = step({
        totalPreemptions: 1,
        prefix: { queries: 40, hits: 10, hitRequests: 1, evictions: 0 },
      });
      m.onStep(s1);
      const s2 = step({
        totalPreemptions: 1,
        prefix: { queries: 40, hits: 10, hitRequests: 1, evictions: 0 },
      });
      m.onStep(s2);
      engine.lastStep = s2;
      await until(() => cap.lines.length >= 1);
      const line = cap.lines[0]!;
      expect(line).toMatchObject({ msg: "engine", running: 2, waiting: 3, kv_usage: 0.25, preemptions: 1 });
      expect(line.prefix_hit_rate).toBeCloseTo(0.25, 3);
      expect(line.prompt_tps).toBeGreaterThan(0);
      expect(line.gen_tps).toBeGreaterThan(0);
      // Nothing since: no more lines.
      await new Promise((r) => setTimeout(r, 150));
      expect(cap.lines).toHaveLength(1);
    } finally {
      stop();
    }
  });
});
