import { SseParser } from "../sse-parser.js";

/**
 * One streaming generation request against an OpenAI-compatible server, timed
 * from the client's side: `performance.now()` when the request is sent, and
 * when each piece of the response body arrives. Every SSE event completed by a
 * piece gets that piece's time. A "token chunk" is an event whose choice
 * carries non-empty text (completions: `text`; chat: `delta.content`, or
 * `delta.reasoning_content`); role-only and usage-only events are not tokens.
 *
 * Output tokens are the final usage event's `completion_tokens` when the
 * server sends one (we ask with `stream_options.include_usage`), else the
 * number of token chunks. Anything that is not a clean stream (HTTP error,
 * network error, an `error` event, no token at all, abort) is a failure with a
 * reason.
 */

export type ApiKind = "completions" | "chat";

export interface Target {
  /** e.g. http://127.0.0.1:8000 (no trailing /v1). */
  baseUrl: string;
  api: ApiKind;
  model: string;
  /** Path override, e.g. /v1/completions. */
  endpoint?: string;
}

export interface BenchRequest {
  prompt: string;
  /** Prompt length in tokens as built (exact with /tokenize, else estimated). */
  promptTokens: number;
  maxTokens: number;
  /** Send ignore_eos: true (exact output lengths). */
  ignoreEos: boolean;
  temperature?: number;
  /** Sent as `priority` when set (lower = more urgent, vLLM's convention). */
  priority?: number;
  apiKey?: string;
  tenant?: string;
  klass?: string;
  /** Sent as `response_format` (structured output). */
  responseFormat?: Record<string, unknown>;
}

export interface StreamResult {
  ok: boolean;
  /** Short reason, for counting failures ("HTTP 503 queue_full", "network error: ..."). */
  error?: string;
  /** The full message behind `error`. */
  errorDetail?: string;
  status?: number;
  /** performance.now() when the request was sent. */
  startedAt: number;
  ttftMs?: number;
  e2eMs?: number;
  /** Arrival of each token chunk, ms after startedAt. */
  chunkTimesMs: number[];
  /** Gaps between consecutive token chunks, ms. */
  itlMs: number[];
  outputTokens: number;
  outputTokensFrom: "usage" | "chunks";
  promptTokens: number;
  promptTokensFrom: "usage" | "request";
  /** Prompt tokens served from the server's prefix cache (usage.prompt_tokens_details.cached_tokens). */
  cachedTokens?: number;
  finishReason?: string;
  /** Queue wait reported by the server in the response, when it does. */
  queueWaitMs?: number;
  /** Generated text length in characters. */
  textChars: number;
}

export interface SendOptions {
  signal?: AbortSignal;
  /** Clock in ms (default performance.now). */
  now?: () => number;
  /** Extra fields merged into the request body. */
  extraBody?: Record<string, unknown>;
}

export function endpointOf(t: Target): string {
  return t.endpoint ?? (t.api === "chat" ? "/v1/chat/completions" : "/v1/completions");
}

export function joinUrl(base: string, path: string): string {
  return `${base.replace(/\/+$/, "")}${path.startsWith("/") ? "" : "/"}${path}`;
}

export function requestBody(
  t: Target,
  r: BenchRequest,
  extra?: Record<string, unknown>,
): Record<string, unknown> {
  const body: Record<string, unknown> = {
    model: t.model,
    max_tokens: r.maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  };
  if (t.api === "chat") body.messages = [{ role: "user", content: r.prompt }];
  else body.prompt = r.prompt;
  if (r.ignoreEos) body.ignore_eos = true;
  if (r.temperature !== undefined) body.temperature = r.temperature;
  if (r.priority !== undefined) body.priority = r.priority;
  if (r.responseFormat !== undefined) body.response_format = r.responseFormat;
  return { ...body, ...extra };
}

export function authHeaders(apiKey: string | undefined): Record<string, string> {
  return apiKey ? { authorization: `Bearer ${apiKey}` } : {};
}

const oneLine = (s: string, max = 200) => {
  const t = s.replace(/\s+/g, " ").trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
};

/** "HTTP 503 queue_full" from an OpenAI-shaped error body, else "HTTP 503: <message>". */
export function httpErrorReason(status: number, bodyText: string): { reason: string; detail: string } {
  let message = bodyText;
  let code: string | undefined;
  try {
    const j = JSON.parse(bodyText) as { error?: unknown; message?: unknown; detail?: unknown };
    const e = j.error;
    if (e && typeof e === "object") {
      const eo = e as { message?: unknown; code?: unknown; type?: unknown };
      if (typeof eo.message === "string") message = eo.message;
      if (typeof eo.code === "string" && eo.code) code = eo.code;
      else if (typeof eo.type === "string" && eo.type) code = eo.type;
    } else if (typeof e === "string") message = e;
    else if (typeof j.message === "string") message = j.message;
    else if (typeof j.detail === "string") message = j.detail;
  } catch {
    // not JSON: keep the text
  }
  const detail = `HTTP ${status}: ${oneLine(message)}`;
  return { reason: code ? `HTTP ${status} ${code}` : oneLine(detail, 100), detail };
}

const QUEUE_FIELDS = ["queue_wait_ms", "queue_time_ms", "queue_ms"];

/** A server-reported queue wait in a stream event, if any (top level, `usage`, `spindle`, `timings`). */
export function queueWaitOf(ev: Record<string, unknown>): number | undefined {
  for (const holder of [ev, ev.usage, ev.spindle, ev.timings, ev.metrics]) {
    if (!holder || typeof holder !== "object") continue;
    const h = holder as Record<string, unknown>;
    for (const f of QUEUE_FIELDS) if (typeof h[f] === "number" && Number.isFinite(h[f])) return h[f];
  }
  return undefined;
}

function chunkText(choice: Record<string, unknown>): string {
  if (typeof choice.text === "string") return choice.text;
  const d = choice.delta;
  if (d && typeof d === "object") {
    const dd = d as Record<string, unknown>;
    let s = "";
    if (typeof dd.content === "string") s += dd.content;
    if (typeof dd.reasoning_content === "string") s += dd.reasoning_content;
    if (typeof dd.reasoning === "string") s += dd.reasoning;
    return s;
  }
  return "";
}

const FAILED_FINISH = new Set(["error", "abort", "cancelled", "canceled"]);

export function abortReason(signal: AbortSignal | undefined): string {
  const r = signal?.reason;
  if (typeof r === "string") return r;
  if (r instanceof Error && r.name !== "AbortError") return r.message;
  return "aborted";
}

/**
 * A request's result as it starts (the clock read, nothing received yet) and `fail`, which marks it
 * failed with a reason and ends its timing: what every client (HTTP + SSE, RPC) begins with.
 */
export function startResult(
  r: BenchRequest,
  o: SendOptions,
): { now: () => number; res: StreamResult; fail: (reason: string, detail?: string) => StreamResult } {
  const now = o.now ?? (() => performance.now());
  const res: StreamResult = {
    ok: false,
    startedAt: now(),
    chunkTimesMs: [],
    itlMs: [],
    outputTokens: 0,
    outputTokensFrom: "chunks",
    promptTokens: r.promptTokens,
    promptTokensFrom: "request",
    textChars: 0,
  };
  const fail = (reason: string, detail = reason): StreamResult => {
    res.ok = false;
    res.error = reason;
    res.errorDetail = detail;
    if (res.e2eMs === undefined) res.e2eMs = now() - res.startedAt;
    return res;
  };
  return { now, res, fail };
}

/** Sends one streaming request and times it. Never throws: failures come back with ok false. */
export async function sendStreaming(t: Target, r: BenchRequest, o: SendOptions = {}): Promise<StreamResult> {
  const { now, res, fail } = startResult(r, o);
  if (o.signal?.aborted) return fail(abortReason(o.signal));

  let response: Response;
  try {
    response = await fetch(joinUrl(t.baseUrl, endpointOf(t)), {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream", ...authHeaders(r.apiKey) },
      body: JSON.stringify(requestBody(t, r, o.extraBody)),
      signal: o.signal,
    });
  } catch (err) {
    if (o.signal?.aborted) return fail(abortReason(o.signal));
    return fail(networkReason(err), `network error: ${String((err as Error)?.message ?? err)}`);
  }
  res.status = response.status;
  if (response.status !== 200) {
    let text = "";
    try {
      text = await response.text();
    } catch {
      // body unreadable: the status says enough
    }
    const e = httpErrorReason(response.status, text);
    return fail(e.reason, e.detail);
  }
  if (!response.body) return fail("empty response body");

  const parser = new SseParser();
  let done = false;
  let usageTokens: number | undefined;
  let lastChunkAt: number | undefined;
  let streamError: { reason: string; detail: string } | undefined;
  const onEvent = (data: string, at: number) => {
    if (done) return;
    if (data.trim() === "[DONE]") {
      done = true;
      return;
    }
    let ev: Record<string, unknown>;
    try {
      ev = JSON.parse(data) as Record<string, unknown>;
    } catch {
      streamError ??= {
        reason: "malformed stream event",
        detail: `malformed stream event: ${oneLine(data)}`,
      };
      return;
    }
    if (ev.error !== undefined && ev.error !== null) {
      const e = httpErrorReason(res.status ?? 200, JSON.stringify({ error: ev.error }));
      streamError ??= {
        reason: `stream error${e.reason.replace(/^HTTP \d+:?/, "").replace(/^ /, ": ")}`,
        detail: e.detail,
      };
      return;
    }
    const qw = queueWaitOf(ev);
    if (qw !== undefined) res.queueWaitMs = qw;
    const usage = ev.usage as Record<string, unknown> | undefined | null;
    if (usage && typeof usage === "object") {
      if (typeof usage.completion_tokens === "number") usageTokens = usage.completion_tokens;
      if (typeof usage.prompt_tokens === "number") {
        res.promptTokens = usage.prompt_tokens;
        res.promptTokensFrom = "usage";
      }
      const details = usage.prompt_tokens_details as Record<string, unknown> | undefined | null;
      if (details && typeof details.cached_tokens === "number") res.cachedTokens = details.cached_tokens;
    }
    const choices = ev.choices;
    if (Array.isArray(choices) && choices.length > 0) {
      const c = choices[0] as Record<string, unknown>;
      const text = chunkText(c);
      if (text.length > 0) {
        const rel = at - res.startedAt;
        if (res.ttftMs === undefined) res.ttftMs = rel;
        else res.itlMs.push(at - lastChunkAt!);
        lastChunkAt = at;
        res.chunkTimesMs.push(rel);
        res.textChars += text.length;
      }
      if (typeof c.finish_reason === "string") res.finishReason = c.finish_reason;
    }
  };

  const reader = response.body.getReader();
  try {
    for (;;) {
      const { value, done: eof } = await reader.read();
      const at = now();
      if (eof) {
        for (const d of parser.end()) onEvent(d, at);
        break;
      }
      for (const d of parser.push(value)) onEvent(d, at);
      if (done) break;
    }
  } catch (err) {
    if (o.signal?.aborted) return fail(abortReason(o.signal));
    return fail(networkReason(err), `stream broken: ${String((err as Error)?.message ?? err)}`);
  } finally {
    if (done) reader.cancel().catch(() => {});
  }
  res.e2eMs = now() - res.startedAt;
  res.outputTokens = usageTokens ?? res.chunkTimesMs.length;
  res.outputTokensFrom = usageTokens !== undefined ? "usage" : "chunks";
  if (streamError) return fail(streamError.reason, streamError.detail);
  if (res.finishReason && FAILED_FINISH.has(res.finishReason))
    return fail(`finish_reason ${res.finishReason}`);
  if (!done && res.finishReason === undefined) return fail("stream ended before [DONE]");
  if (res.ttftMs === undefined) return fail("no token received");
  res.ok = true;
  return res;
}

function networkReason(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  if (cause?.code) return `network error ${cause.code}`;
  const m = String((err as Error)?.message ?? err);
  return `network error: ${oneLine(m, 80)}`;
}
