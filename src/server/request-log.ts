import type { Logger } from "pino";
import type { StepInfo } from "../engine/engine-protocol.js";
import type { RequestRecord } from "./generation.js";
import type { Metrics } from "./metrics.js";

/**
 * The server's three kinds of log line, each one JSON object through pino:
 *
 *  - `request`: one per finished request — who, what, how it ended, and where its time went
 *    (queue, time to first token, total), with its prompt and generation speeds. The prompt
 *    text only with --log-prompts.
 *  - `rejected`: one per request answered with an error before it reached the engine (bad input,
 *    auth, rate limit, queue full, loading, unknown route, body too large or too slow, malformed
 *    HTTP): status, reason code, method, endpoint, client label. Never a body, a prompt or a key.
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

export interface RejectionLogLine {
  status: number;
  /** The error's code as the client got it (invalid_json, queue_full, …), else a name for the status. */
  reason: string;
  /** The field at fault, when the error names one. */
  param?: string;
  /** null when the request line never arrived whole (malformed HTTP, headers too slow). */
  method: string | null;
  /** The path without its query, cut to 200 characters; null as for method. */
  endpoint: string | null;
  /** API key label or client address (as in `request` lines). Never the key. */
  client: string;
  /** The client's X-Request-Id header, when it sent one (printable ASCII, cut to 128 characters). */
  request_id?: string;
}

const STATUS_REASONS: Record<number, string> = {
  400: "invalid_request",
  401: "unauthorized",
  404: "not_found",
  408: "request_timeout",
  413: "body_too_large",
  415: "unsupported_media_type",
  429: "rate_limited",
  431: "headers_too_large",
  500: "internal_error",
  503: "unavailable",
};

/** The reason code of a rejection: the error's own code, or a name for its status. */
export function rejectionReason(status: number, code: string | null | undefined): string {
  return code ?? STATUS_REASONS[status] ?? `http_${status}`;
}

/** A path for the log: no query string (it may carry anything), one line, at most 200 characters. */
export function logPath(url: string): string {
  const q = url.indexOf("?");
  const path = (q < 0 ? url : url.slice(0, q)).replace(/[^\x21-\x7e]/g, "?");
  return path.length > 200 ? `${path.slice(0, 199)}…` : path;
}

/** An X-Request-Id header value fit for the log, or undefined. */
export function logRequestId(v: string | string[] | undefined): string | undefined {
  const s = Array.isArray(v) ? v[0] : v;
  if (s === undefined || s.length === 0) return undefined;
  return s.replace(/[^\x20-\x7e]/g, "?").slice(0, 128);
}

/** One `rejected` line (warn level for a 5xx other than 503, which is load shedding). */
export function logRejection(log: Logger, line: RejectionLogLine): void {
  if (line.status >= 500 && line.status !== 503) log.warn(line, "rejected");
  else log.info(line, "rejected");
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
