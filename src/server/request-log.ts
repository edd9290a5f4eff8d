import type { Logger } from "pino";
import type { StepInfo } from "../engine/engine-protocol.js";
import type { RequestRecord } from "./generation.js";
import type { Metrics } from "./metrics.js";

/**
 * The server's two kinds of log line, both one JSON object through pino:
 *
 *  - `request`: one per finished request — who, what, how it ended, and where its time went
 *    (queue, time to first token, total), with its prompt and generation speeds. The prompt
 *    text only with --log-prompts.
 *  - `engine`: every 10 s while the engine does something — throughput over the interval,
 *    batch and queue, KV cache usage, prefix cache hit rate, preemptions (vLLM's periodic line).
 */

const round1 = (v: number) => Math.round(v * 10) / 10;
const ms = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined ? null : round1(b - a);
const perSecond = (count: number, millis: number | null) =>
  millis !== null && millis > 0 && count > 0 ? round1((count * 1000) / millis) : null;

export interface RequestLogLine {
  id: string;
  endpoint: string;
  client: string;
  status: number;
  finish_reason: string;
  prompt_tokens: number;
  cached_tokens: number;
  completion_tokens: number;
  /** Arrival → first scheduled. */
  queue_ms: number | null;
  /** Arrival → first token. */
  ttft_ms: number | null;
  /** Arrival → finished. */
  latency_ms: number | null;
  /** Prompt tokens computed (not found in the prefix cache) per second of prefill. */
  prompt_tps: number | null;
  /** Tokens per second after the first one. */
  gen_tps: number | null;
  preemptions: number;
  /** Why it was aborted or failed. */
  message?: string;
  prompt?: string;
}

export function requestLogLine(r: RequestRecord): RequestLogLine {
  const f = r.finish;
  const t = f.times;
  const sampled = Math.max(f.tokenTimes.length, f.completionTokens);
  const line: RequestLogLine = {
    id: r.id,
    endpoint: r.endpoint,
    client: r.client,
    status: r.status,
    finish_reason: f.reason,
    prompt_tokens: f.promptTokens,
    cached_tokens: f.cachedTokens,
    completion_tokens: f.completionTokens,
    queue_ms: ms(t.arrival, t.firstScheduled),
    ttft_ms: ms(t.arrival, t.firstToken),
    latency_ms: ms(t.arrival, t.finished),
    prompt_tps: perSecond(f.promptTokens - f.cachedTokens, ms(t.firstScheduled, t.firstToken)),
    gen_tps: perSecond(sampled - 1, ms(t.firstToken, t.lastToken)),
    preemptions: f.preemptions,
  };
  if (f.message !== undefined && f.reason !== "stop" && f.reason !== "length") line.message = f.message;
  if (r.promptText !== undefined) line.prompt = r.promptText;
  return line;
}

/** One `request` line for a finished request (warn level when it failed). */
export function logRequest(log: Logger, r: RequestRecord): void {
  const line = requestLogLine(r);
  if (r.finish.reason === "error") log.warn(line, "request");
  else log.info(line, "request");
}

export interface EngineLogOptions {
  /** Default 10 000 ms. */
  intervalMs?: number;
}

export interface EngineLogLine {
  /** Prompt tokens computed per second over the interval (prefix-cache hits not included). */
  prompt_tps: number;
  /** Decode tokens per second over the interval. */
  gen_tps: number;
  running: number;
  waiting: number;
  kv_usage: number;
  /** Prefix cache hits / queries over the interval (tokens); null when nothing was looked up. */
  prefix_hit_rate: number | null;
  /** Preemptions during the interval. */
  preemptions: number;
}

/**
 * Logs an `engine` line every interval, computed over that interval, only when the engine ran a
 * step since the previous line. The timer is unref'd. Returns the function that stops it.
 */
export function startEngineLog(
  log: Logger,
  engine: { readonly lastStep?: StepInfo },
  metrics: Metrics,
  opts: EngineLogOptions = {},
): () => void {
  const intervalMs = opts.intervalMs ?? 10_000;
  const take = () => ({
    at: performance.now(),
    steps: metrics.steps,
    prefill: metrics.stepPrefillTokens,
    decode: metrics.stepDecodeTokens,
    queries: metrics.prefixQueries,
    hits: metrics.prefixHits,
    preemptions: metrics.preemptions,
  });
  let last = take();
  const timer = setInterval(() => {
    const now = take();
    if (now.steps === last.steps) {
      last = now;
      return;
    }
    const sec = (now.at - last.at) / 1000;
    const queries = now.queries - last.queries;
    const s = engine.lastStep;
    const line: EngineLogLine = {
      prompt_tps: round1((now.prefill - last.prefill) / sec),
      gen_tps: round1((now.decode - last.decode) / sec),
      running: s?.running ?? metrics.numRunning,
      waiting: s?.waiting ?? metrics.numWaiting,
      kv_usage: Math.round((s?.kvUsage ?? metrics.kvCacheUsage) * 1000) / 1000,
      prefix_hit_rate: queries > 0 ? Math.round(((now.hits - last.hits) / queries) * 1000) / 1000 : null,
      preemptions: now.preemptions - last.preemptions,
    };
    last = now;
    log.info(line, "engine");
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
