import { UpstreamError } from "../backends/upstream-error.js";
import { SpindleError } from "../errors.js";
import { GrammarError } from "../grammar/constraint.js";
import type { FinishInfo } from "../protocol/events.js";

/**
 * Every error the API returns has OpenAI's shape:
 *   { "error": { "message": "...", "type": "...", "param": "field" | null, "code": "..." | null } }
 * so OpenAI SDKs raise their usual typed errors (BadRequestError, RateLimitError, …), except on
 * routes of other protocols (errorShapeOf): llama-server's native routes (a route's
 * `config.errorShape: "llama-server"`) answer `{ "error": { "code": 400, "message": "...", "type": "..." } }`,
 * and Ollama's /api/ paths `{ "error": "..." }`.
 */

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "not_found_error"
  | "rate_limit_error"
  | "server_overloaded"
  | "server_error";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType = status >= 500 ? "server_error" : "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Seconds, for 429 and 503. */
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/**
 * The error of a request whose generation was admitted and then ended by abort or error (finishError):
 * not a rejection, since the finished request is already in the metrics and the request log.
 */
export class GenerationEndedError extends ApiError {}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, "invalid_request_error", param, code);

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export function errorBody(e: ApiError): ErrorBody {
  // One line, always (clients log it; a multi-line message would read like a stack trace).
  const message = e.message.replace(/\s*[\r\n]+\s*/g, " ").trim() || "error";
  return { error: { message, type: e.type, param: e.param, code: e.code } };
}

/** Which protocol's shape a request's errors have. */
export type ErrorShape = "openai" | "llama-server" | "ollama";

export interface LlamaServerErrorBody {
  error: { code: number; message: string; type: string };
}

/** llama-server's error shape: the HTTP status as `code`, the message, the type. */
export function llamaServerErrorBody(e: ApiError): LlamaServerErrorBody {
  const { message, type } = errorBody(e).error;
  return { error: { code: e.status, message, type } };
}

/** Ollama's error shape: `{ "error": "message" }`. */
export function ollamaErrorBody(e: ApiError): { error: string } {
  return { error: errorBody(e).error.message };
}

/** Whether a request path is Ollama's API. */
export const isOllamaPath = (url: string | undefined) => url !== undefined && /^\/api(\/|\?|$)/.test(url);

/**
 * The shape of a request's errors: its route's `config.errorShape` when it has one, Ollama's under
 * /api/ (also for paths no route matched), OpenAI's everywhere else.
 */
export function errorShapeOf(
  req: { url?: string; routeOptions?: { config?: { errorShape?: ErrorShape } } } | undefined,
): ErrorShape {
  return req?.routeOptions?.config?.errorShape ?? (isOllamaPath(req?.url) ? "ollama" : "openai");
}

export function errorBodyFor(
  shape: ErrorShape,
  e: ApiError,
): ErrorBody | LlamaServerErrorBody | { error: string } {
  if (shape === "llama-server") return llamaServerErrorBody(e);
  if (shape === "ollama") return ollamaErrorBody(e);
  return errorBody(e);
}

/** Maps anything thrown while serving a request to an ApiError; unknown errors become a 500 without details. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof GrammarError) {
    // Normally mapped to the request's field by GenerationService; this is the spec's own.
    return badRequest(err.message, err.field || null, "invalid_grammar");
  }
  if (err instanceof UpstreamError) {
    // The openai backend's upstream: its 4xx as they are, else bad gateway / unavailable / timeout.
    const s = err.status;
    const type: ErrorType =
      s === 429
        ? "rate_limit_error"
        : s === 404
          ? "not_found_error"
          : s === 503
            ? "server_overloaded"
            : s >= 500
              ? "server_error"
              : "invalid_request_error";
    return new ApiError(s, err.message, type, err.param, err.code, s === 503 || s === 429 ? 1 : undefined);
  }
  if (err instanceof SpindleError) {
    const param = (err as { param?: string }).param ?? null;
    if (err.code === "context_length_exceeded") return badRequest(err.message, "prompt", err.code);
    if (err.code === "kv_cache_too_small") return badRequest(err.message, "prompt", err.code);
    if (err.code === "invalid_request_error" || param !== null)
      return badRequest(err.message, param, err.code);
    if (err.code === "chat_template_error") return badRequest(err.message, "messages", err.code);
    return new ApiError(500, err.message, "server_error", null, err.code);
  }
  const e = err as { statusCode?: number; code?: string; message?: string };
  // Fastify's own errors (body parsing, limits, content type).
  if (e.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    return new ApiError(413, "request body is too large", "invalid_request_error", null, "body_too_large");
  }
  if (e.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
    return new ApiError(415, "unsupported content type: send application/json", "invalid_request_error");
  }
  if (e.code === "FST_ERR_CTP_EMPTY_JSON_BODY" || e.code === "FST_ERR_CTP_INVALID_JSON_BODY") {
    return badRequest("the request body is not valid JSON", null, "invalid_json");
  }
  if (typeof e.statusCode === "number" && e.statusCode >= 400 && e.statusCode < 500) {
    return new ApiError(e.statusCode, e.message ?? "bad request");
  }
  return new ApiError(500, "internal server error", "server_error");
}

/** The error a request gets when its generation ended by abort (not the client's: a timeout, shutdown) or error. */
export function finishError(f: FinishInfo): ApiError {
  const why = f.message ?? "aborted";
  if (f.reason === "error")
    return new GenerationEndedError(500, `generation failed: ${why}`, "server_error", null, "engine_error");
  if (/shutting down/.test(why)) {
    return new GenerationEndedError(
      503,
      `the request was aborted: ${why}`,
      "server_overloaded",
      null,
      "shutting_down",
      5,
    );
  }
  return new GenerationEndedError(504, `the request was aborted: ${why}`, "server_error", null, "timeout");
}
