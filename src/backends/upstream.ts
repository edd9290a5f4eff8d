import { SseParser } from "../sse-parser.js";
import { UpstreamError } from "./upstream-error.js";

/**
 * The HTTP client side of the openai backend, for one upstream OpenAI-compatible server (vLLM,
 * llama-server, another Spindle): its health, its model list, and one streamed /v1/completions
 * request read chunk by chunk. Every failure becomes an UpstreamError with the status the
 * client should get (see upstream-error.ts). Node's own fetch; no client library.
 */

/** One `data:` chunk of a streamed /v1/completions response (the fields the backend reads). */
export interface CompletionChunk {
  choices?: CompletionChunkChoice[];
  usage?: {
    prompt_tokens?: number;
    completion_tokens?: number;
    prompt_tokens_details?: { cached_tokens?: number | null } | null;
  } | null;
  error?: unknown;
}

export interface CompletionChunkChoice {
  index?: number;
  text?: string;
  /** vLLM's `return_token_ids` extension (also Spindle's): the ids of this chunk's text. */
  token_ids?: number[] | null;
  logprobs?: {
    tokens?: string[];
    token_logprobs?: (number | null)[];
    top_logprobs?: (Record<string, number> | null)[] | null;
  } | null;
  finish_reason?: string | null;
  /** vLLM: the stop token id or stop string that ended the choice, when one did. */
  stop_reason?: number | string | null;
}

export interface ModelEntry {
  id: string;
  /** vLLM and Spindle list the context length. */
  maxModelLen?: number;
}

/** "http://host:port/v1/" → "http://host:port": the paths below add /v1 themselves. */
export function normalizeBase(url: string): string {
  let u = url.trim();
  if (!/^https?:\/\//i.test(u)) u = `http://${u}`;
  u = u.replace(/\/+$/, "");
  if (u.endsWith("/v1")) u = u.slice(0, -3);
  return u.replace(/\/+$/, "");
}

function headers(apiKey: string | undefined, json: boolean): Record<string, string> {
  const h: Record<string, string> = {};
  if (apiKey) h.authorization = `Bearer ${apiKey}`;
  if (json) h["content-type"] = "application/json";
  return h;
}

/** The first `code` along an error's cause chain (ECONNREFUSED, UND_ERR_SOCKET…). */
function causeCode(err: unknown): string | undefined {
  let e: unknown = err;
  for (let depth = 0; depth < 5 && e !== null && typeof e === "object"; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") return code;
    const errors = (e as { errors?: unknown }).errors;
    if (Array.isArray(errors) && errors.length > 0) {
      const inner = causeCode(errors[0]);
      if (inner) return inner;
    }
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

const TIMEOUT_CODES = new Set(["UND_ERR_HEADERS_TIMEOUT", "UND_ERR_BODY_TIMEOUT", "UND_ERR_CONNECT_TIMEOUT"]);
/**
 * Failures that say nobody is there. A reset is not among them: a kept-alive connection the server
 * closed just as it was reused is not a dead server.
 */
const DOWN_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** What a failed fetch means: timeouts → 504; anything else (refused, reset, DNS) → 503 unreachable. */
export function connectionError(base: string, err: unknown): UpstreamError {
  const code = causeCode(err);
  const connection = code !== undefined && DOWN_CODES.has(code);
  if (code && TIMEOUT_CODES.has(code)) {
    return new UpstreamError(`upstream ${base} timed out (${code})`, 504, "upstream_timeout", { connection });
  }
  return new UpstreamError(
    `upstream ${base} is unreachable (${code ?? (err instanceof Error ? err.message : String(err))})`,
    503,
    "upstream_unreachable",
    { connection, stale: !connection },
  );
}

/** The connection broke while the response body was being read. */
function midStreamError(base: string, err: unknown): UpstreamError {
  const code = causeCode(err);
  if (code && TIMEOUT_CODES.has(code)) {
    return new UpstreamError(`upstream ${base} stopped sending (${code})`, 504, "upstream_timeout");
  }
  return new UpstreamError(
    `upstream ${base} closed the connection mid-stream (${code ?? (err instanceof Error ? err.message : String(err))})`,
    502,
    "bad_gateway",
  );
}

/** The message, type, code and param of an error body in OpenAI's, vLLM's or llama-server's shape. */
function errorFields(data: unknown): { message?: string; code?: string; param?: string } {
  if (data === null || typeof data !== "object") return {};
  const outer = data as Record<string, unknown>;
  const e = (typeof outer.error === "object" && outer.error !== null ? outer.error : outer) as Record<
    string,
    unknown
  >;
  return {
    message:
      typeof e.message === "string" ? e.message : typeof outer.error === "string" ? outer.error : undefined,
    code: typeof e.code === "string" ? e.code : undefined,
    param: typeof e.param === "string" ? e.param : undefined,
  };
}

/** A non-2xx answer as the client should see it. */
export async function httpError(base: string, res: Response): Promise<UpstreamError> {
  let text = "";
  try {
    text = await res.text();
  } catch {
    // The body is only for the message.
  }
  let f: ReturnType<typeof errorFields> = {};
  try {
    f = errorFields(JSON.parse(text));
  } catch {
    f = { message: text.trim().slice(0, 300) || undefined };
  }
  const what = `HTTP ${res.status}${f.message ? `: ${f.message}` : ""}`;
  const s = res.status;
  if (s === 401 || s === 403) {
    // The gateway's own credentials are wrong: not the client's doing.
    return new UpstreamError(`upstream ${base} refused the gateway's API key (${what})`, 502, "bad_gateway");
  }
  if (s >= 400 && s < 500) {
    return new UpstreamError(
      f.message ?? `upstream ${base} answered ${what}`,
      s,
      f.code ?? "upstream_error",
      {
        param: f.param ?? null,
      },
    );
  }
  if (s === 503) return new UpstreamError(`upstream ${base} is unavailable (${what})`, 503);
  if (s === 504) return new UpstreamError(`upstream ${base} timed out (${what})`, 504);
  return new UpstreamError(`upstream ${base} failed (${what})`, 502);
}

/**
 * Whether the upstream is up: GET /health answers 2xx; an upstream without /health (404, 405) is
 * up when GET /v1/models answers 2xx. Throws an UpstreamError saying why not.
 */
export async function probe(base: string, apiKey: string | undefined, signal: AbortSignal): Promise<void> {
  let res: Response;
  try {
    res = await fetch(`${base}/health`, { headers: headers(apiKey, false), signal });
  } catch (err) {
    throw connectionError(base, err);
  }
  await res.arrayBuffer().catch(() => undefined);
  if (res.ok) return;
  if (res.status === 404 || res.status === 405) {
    await listModels(base, apiKey, signal);
    return;
  }
  throw new UpstreamError(`upstream ${base} is not ready (GET /health: HTTP ${res.status})`, 503);
}

/** GET /v1/models: the ids the upstream serves, first first. */
export async function listModels(
  base: string,
  apiKey: string | undefined,
  signal: AbortSignal,
): Promise<ModelEntry[]> {
  let res: Response;
  try {
    res = await fetch(`${base}/v1/models`, { headers: headers(apiKey, false), signal });
  } catch (err) {
    throw connectionError(base, err);
  }
  if (!res.ok) throw await httpError(base, res);
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    throw new UpstreamError(`upstream ${base}: GET /v1/models did not answer JSON`, 502);
  }
  const data = (body as { data?: unknown }).data;
  if (!Array.isArray(data)) throw new UpstreamError(`upstream ${base}: GET /v1/models has no data list`, 502);
  return data
    .filter((m): m is { id: string; max_model_len?: unknown } => typeof m?.id === "string")
    .map((m) => ({
      id: m.id,
      maxModelLen: typeof m.max_model_len === "number" ? m.max_model_len : undefined,
    }));
}

/** How long the body may stay open after `data: [DONE]` before the backend hangs up. */
const AFTER_DONE_MS = 1000;

/**
 * POST /v1/completions with `body` (which must ask for `stream: true`), yielding each chunk as it
 * arrives. Returns once the response has ended (normally after `data: [DONE]`: whether the stream
 * was complete is for the caller to judge by its finish_reason); throws an UpstreamError for a
 * refused connection, a non-2xx answer, an error event, a malformed event or a broken connection.
 * Aborting `signal` aborts the request (the upstream sees the connection close): the generator
 * then throws whatever fetch throws for an abort; the caller checks its signal.
 */
export async function* streamCompletion(
  base: string,
  body: Record<string, unknown>,
  apiKey: string | undefined,
  signal: AbortSignal,
): AsyncGenerator<CompletionChunk> {
  let res: Response;
  try {
    res = await fetch(`${base}/v1/completions`, {
      method: "POST",
      headers: { ...headers(apiKey, true), accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (signal.aborted) throw err;
    throw connectionError(base, err);
  }
  if (!res.ok) throw await httpError(base, res);
  const type = res.headers.get("content-type") ?? "";
  if (!res.body || !type.includes("text/event-stream")) {
    await res.arrayBuffer().catch(() => undefined);
    throw new UpstreamError(`upstream ${base} did not stream (content-type "${type}")`, 502);
  }
  const reader = res.body.getReader();
  const parser = new SseParser();
  let done = false;
  let ended = false;
  let hangUp: NodeJS.Timeout | undefined;
  try {
    while (!ended) {
      let r: Awaited<ReturnType<typeof reader.read>>;
      try {
        r = await reader.read();
      } catch (err) {
        if (signal.aborted) throw err;
        throw midStreamError(base, err);
      }
      ended = r.done;
      for (const data of r.done ? parser.end() : parser.push(r.value)) {
        if (data === "[DONE]") {
          done = true;
          // The body normally ends right after; an upstream that keeps it open is cut off.
          hangUp ??= setTimeout(() => void reader.cancel().catch(() => {}), AFTER_DONE_MS);
          continue;
        }
        if (done) continue;
        let chunk: CompletionChunk;
        try {
          chunk = JSON.parse(data) as CompletionChunk;
        } catch {
          throw new UpstreamError(
            `upstream ${base} sent a malformed stream event: ${JSON.stringify(data.slice(0, 80))}`,
            502,
          );
        }
        if (chunk === null || typeof chunk !== "object") {
          throw new UpstreamError(`upstream ${base} sent a stream event that is not an object`, 502);
        }
        if (chunk.error !== undefined && chunk.error !== null) {
          const f = errorFields(chunk);
          throw new UpstreamError(`upstream ${base} failed mid-stream: ${f.message ?? "unknown error"}`, 502);
        }
        yield chunk;
      }
    }
  } finally {
    if (hangUp) clearTimeout(hangUp);
    if (!ended) await reader.cancel().catch(() => {});
  }
}
