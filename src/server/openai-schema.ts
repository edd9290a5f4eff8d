import type { ChatMessage } from "../chat/template.js";
import type { SamplingParams } from "../sampling/params.js";
import { ApiError, badRequest } from "./errors.js";
import { type StructuredOutput, structuredOutput } from "./structured-output.js";
import { parseToolRequest, type ToolRequest } from "./tool-request.js";

/**
 * Request validation for /v1/completions and /v1/chat/completions, by hand so that every
 * message names the field and says what it must be ("temperature must be a number between 0
 * and 2"). Each error is a 400 in OpenAI's shape with the field in `param`. Fields OpenAI has and
 * Spindle ignores (user, store, metadata, service_tier, …) are accepted; fields whose meaning
 * Spindle cannot honour (json response formats, suffix, …) are refused by name rather than
 * silently ignored. `null` counts as "not given" everywhere, as in OpenAI's API. /v1/completions also
 * takes vLLM's `return_token_ids` and `return_tokens_as_token_ids`.
 */

/** The most choices one request may ask for per prompt. */
export const MAX_N = 16;
/** The most stop strings one request may give (OpenAI: 4; vLLM: unlimited). */
export const MAX_STOP = 16;
/** Top logprobs per token, as in OpenAI (also the engine's limit). */
export const MAX_TOP_LOGPROBS = 20;
/** max_tokens for /v1/completions when the client gives none (OpenAI's default). */
export const DEFAULT_COMPLETION_MAX_TOKENS = 16;

export interface SchemaContext {
  /** The served model id: any other `model` is a 404; a request without `model` gets this one. */
  modelName: string;
  /** Token ids (prompts, logit_bias keys) must be below this. */
  vocabSize: number;
}

/** What both endpoints share. */
export interface CommonRequest {
  model: string;
  /** Choices per prompt, 1..MAX_N. */
  n: number;
  /** Engine sampling parameters, except seed and logprobs (set per choice by the route). */
  sampling: Partial<SamplingParams>;
  /** With n > 1, choice i is sampled with seed + i. */
  seed: number | undefined;
  stop: string[];
  /** undefined: the endpoint's default. */
  maxTokens: number | undefined;
  stream: boolean;
  includeUsage: boolean;
  /** false = ignore_eos. */
  stopAtEog: boolean;
  priority: number;
  user: string | undefined;
  /** What the output must be (response_format, structured_outputs, guided_*, json_schema, grammar). */
  structured: StructuredOutput | undefined;
}

export type Prompt = string | number[];

export interface CompletionRequest extends CommonRequest {
  prompts: Prompt[];
  /** Top logprobs per token (0..20), or undefined when the client wants none. */
  logprobs: number | undefined;
  echo: boolean;
  /** vLLM's `return_token_ids`: each choice carries its `token_ids` (and `prompt_token_ids`). */
  returnTokenIds: boolean;
  /** vLLM's `return_tokens_as_token_ids`: logprob tokens read "token_id:N". */
  tokensAsIds: boolean;
}

export interface ChatRequest extends CommonRequest {
  messages: ChatMessage[];
  /** The client wants logprobs (`logprobs: true`). */
  logprobs: boolean;
  /** How many alternatives per token (0..20) when logprobs is true. */
  topLogprobs: number;
  /** vLLM's chat_template_kwargs: extra template variables. */
  templateVars: Record<string, unknown> | undefined;
  /** tools, tool_choice, parallel_tool_calls (tool-request.ts); undefined without tools. */
  toolRequest: ToolRequest | undefined;
}

type Body = Record<string, unknown>;

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

function given(body: Body, key: string): boolean {
  return body[key] !== undefined && body[key] !== null;
}

function number(body: Body, key: string, lo: number, hi: number, what = "a number"): number | undefined {
  if (!given(body, key)) return undefined;
  const v = body[key];
  const bounds = Number.isFinite(hi) ? `between ${lo} and ${hi}` : `≥ ${lo}`;
  if (typeof v !== "number" || !Number.isFinite(v) || v < lo || v > hi) {
    throw badRequest(`${key} must be ${what} ${bounds}`, key);
  }
  return v;
}

function integer(body: Body, key: string, lo: number, hi: number): number | undefined {
  if (!given(body, key)) return undefined;
  const v = body[key];
  const bounds = Number.isFinite(hi) ? `between ${lo} and ${hi}` : `≥ ${lo}`;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < lo || v > hi) {
    throw badRequest(`${key} must be an integer ${bounds}`, key);
  }
  return v;
}

function boolean(body: Body, key: string): boolean | undefined {
  if (!given(body, key)) return undefined;
  const v = body[key];
  if (typeof v !== "boolean") throw badRequest(`${key} must be true or false`, key);
  return v;
}

function string(body: Body, key: string): string | undefined {
  if (!given(body, key)) return undefined;
  const v = body[key];
  if (typeof v !== "string") throw badRequest(`${key} must be a string`, key);
  return v;
}

/** A field Spindle cannot honour: refused when given with a value other than the harmless ones. */
function unsupported(body: Body, key: string, why: string, harmless: (v: unknown) => boolean = () => false) {
  if (given(body, key) && !harmless(body[key])) throw badRequest(`${key} is not supported: ${why}`, key);
}

/** `model` must name the served model: 400 when missing or not a string, 404 for another model. */
export function parseModel(body: Body, sc: SchemaContext): string {
  const model = body.model;
  // Left out: the one model this server serves (as vLLM and llama-server allow).
  if (model === undefined || model === null) return sc.modelName;
  if (typeof model !== "string") throw badRequest("model must be a string", "model");
  if (model !== sc.modelName) {
    throw new ApiError(
      404,
      `the model \`${model}\` does not exist; this server serves \`${sc.modelName}\``,
      "not_found_error",
      "model",
      "model_not_found",
    );
  }
  return model;
}

function parseStop(body: Body): string[] {
  if (!given(body, "stop")) return [];
  const v = body.stop;
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || !list.every((s) => typeof s === "string")) {
    throw badRequest("stop must be a string or an array of strings", "stop");
  }
  if (list.length > MAX_STOP) throw badRequest(`stop may hold at most ${MAX_STOP} strings`, "stop");
  if (list.some((s) => s.length === 0)) throw badRequest("stop strings must not be empty", "stop");
  return list as string[];
}

function parseLogitBias(body: Body, vocabSize: number): Map<number, number> | undefined {
  if (!given(body, "logit_bias")) return undefined;
  const v = body.logit_bias;
  if (!isObject(v)) {
    throw badRequest(
      'logit_bias must be an object mapping token ids to biases, e.g. {"50256": -100}',
      "logit_bias",
    );
  }
  const bias = new Map<number, number>();
  for (const [k, b] of Object.entries(v)) {
    const id = /^\d+$/.test(k) ? Number(k) : Number.NaN;
    if (!Number.isSafeInteger(id) || id >= vocabSize) {
      throw badRequest(
        `logit_bias has the key "${k}": keys must be token ids between 0 and ${vocabSize - 1}`,
        "logit_bias",
      );
    }
    if (typeof b !== "number" || !Number.isFinite(b) || b < -100 || b > 100) {
      throw badRequest(`logit_bias["${k}"] must be a number between -100 and 100`, "logit_bias");
    }
    bias.set(id, b);
  }
  return bias.size > 0 ? bias : undefined;
}

/** A choice's engine sampling: the request's, with seed + sampleIndex (choices differ, reproducibly) and the logprobs count. */
export function samplingFor(req: CommonRequest, sampleIndex: number, engineLogprobs: number) {
  return {
    ...req.sampling,
    seed: req.seed === undefined ? undefined : req.seed + sampleIndex,
    logprobs: engineLogprobs,
  };
}

function parseCommon(body: Body, sc: SchemaContext): Omit<CommonRequest, "maxTokens"> {
  const model = parseModel(body, sc);
  const structured = structuredOutput(body, "openai");
  const sampling: Partial<SamplingParams> = {};
  const temperature = number(body, "temperature", 0, 2);
  if (temperature !== undefined) sampling.temperature = temperature;
  if (given(body, "top_p")) {
    const p = body.top_p;
    if (typeof p !== "number" || !Number.isFinite(p) || p <= 0 || p > 1) {
      throw badRequest("top_p must be a number greater than 0 and at most 1", "top_p");
    }
    sampling.topP = p;
  }
  if (given(body, "top_k")) {
    const k = body.top_k;
    if (typeof k !== "number" || !Number.isSafeInteger(k) || k < -1) {
      throw badRequest("top_k must be an integer ≥ 1, or -1 or 0 to disable it", "top_k");
    }
    sampling.topK = k;
  }
  const minP = number(body, "min_p", 0, 1);
  if (minP !== undefined) sampling.minP = minP;
  const presence = number(body, "presence_penalty", -2, 2);
  if (presence !== undefined) sampling.presencePenalty = presence;
  const frequency = number(body, "frequency_penalty", -2, 2);
  if (frequency !== undefined) sampling.frequencyPenalty = frequency;
  if (given(body, "repetition_penalty")) {
    const r = body.repetition_penalty;
    if (typeof r !== "number" || !Number.isFinite(r) || r <= 0 || r > 2) {
      throw badRequest(
        "repetition_penalty must be a number greater than 0 and at most 2",
        "repetition_penalty",
      );
    }
    sampling.repetitionPenalty = r;
  }
  const logitBias = parseLogitBias(body, sc.vocabSize);
  if (logitBias) sampling.logitBias = logitBias;

  const n = integer(body, "n", 1, MAX_N) ?? 1;
  const seed = integer(body, "seed", Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER - MAX_N);
  const stream = boolean(body, "stream") ?? false;
  let includeUsage = false;
  if (given(body, "stream_options")) {
    const so = body.stream_options;
    if (!isObject(so)) throw badRequest("stream_options must be an object", "stream_options");
    if (!stream) throw badRequest("stream_options is only allowed when stream is true", "stream_options");
    if (
      so.include_usage !== undefined &&
      so.include_usage !== null &&
      typeof so.include_usage !== "boolean"
    ) {
      throw badRequest("stream_options.include_usage must be true or false", "stream_options.include_usage");
    }
    includeUsage = so.include_usage === true;
  }
  const ignoreEos = boolean(body, "ignore_eos") ?? false;
  const priority = integer(body, "priority", Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER) ?? 0;
  const user = string(body, "user");
  const minTokens = integer(body, "min_tokens", 0, Number.POSITIVE_INFINITY);
  if (minTokens !== undefined && minTokens > 0) {
    throw badRequest("min_tokens is not supported (only 0)", "min_tokens");
  }
  if (given(body, "best_of") && body.best_of !== n) {
    throw badRequest("best_of is not supported: leave it out or set it equal to n", "best_of");
  }
  return {
    model,
    n,
    sampling,
    seed,
    stop: parseStop(body),
    stream,
    includeUsage,
    stopAtEog: !ignoreEos,
    priority,
    user,
    structured,
  };
}

function requireObject(body: unknown): Body {
  if (!isObject(body)) throw badRequest("the request body must be a JSON object");
  return body;
}

function parseMaxTokens(body: Body, key: "max_tokens" | "max_completion_tokens"): number | undefined {
  return integer(body, key, 1, Number.POSITIVE_INFINITY);
}

function isTokenIds(v: unknown): v is number[] {
  return Array.isArray(v) && v.length > 0 && v.every((t) => typeof t === "number");
}

/** Token ids of a prompt: each an integer in the vocabulary, else a 400 naming `param`. */
export function checkIds(ids: number[], vocabSize: number, param: string): number[] {
  for (const t of ids) {
    if (!Number.isSafeInteger(t) || t < 0 || t >= vocabSize) {
      throw badRequest(
        `${param} has the token id ${t}: token ids are integers between 0 and ${vocabSize - 1}`,
        param,
      );
    }
  }
  return ids;
}

/** prompt: a string, an array of strings, an array of token ids, or an array of arrays of token ids. */
function parsePrompts(body: Body, vocabSize: number): Prompt[] {
  const p = body.prompt;
  if (p === undefined || p === null) throw badRequest("prompt is required", "prompt");
  const shape =
    "prompt must be a string, an array of strings, an array of token ids, or an array of arrays of token ids";
  if (typeof p === "string") return [p];
  if (!Array.isArray(p) || p.length === 0) throw badRequest(`${shape} (and not empty)`, "prompt");
  if (p.every((x) => typeof x === "string")) return p as string[];
  if (isTokenIds(p)) return [checkIds(p, vocabSize, "prompt")];
  if (p.every(isTokenIds)) return (p as number[][]).map((ids, i) => checkIds(ids, vocabSize, `prompt[${i}]`));
  throw badRequest(shape, "prompt");
}

export function parseCompletionRequest(raw: unknown, sc: SchemaContext): CompletionRequest {
  const body = requireObject(raw);
  const common = parseCommon(body, sc);
  const prompts = parsePrompts(body, sc.vocabSize);
  const logprobs = integer(body, "logprobs", 0, MAX_TOP_LOGPROBS);
  const echo = boolean(body, "echo") ?? false;
  if (echo && logprobs !== undefined) {
    throw badRequest(
      "echo together with logprobs is not supported (prompt logprobs are not computed); use one or the other",
      "echo",
    );
  }
  unsupported(body, "suffix", "Spindle does not do fill-in-the-middle", (v) => v === "");
  const returnTokenIds = boolean(body, "return_token_ids") ?? false;
  const tokensAsIds = boolean(body, "return_tokens_as_token_ids") ?? false;
  return {
    ...common,
    maxTokens: parseMaxTokens(body, "max_tokens"),
    prompts,
    logprobs,
    echo,
    returnTokenIds,
    tokensAsIds,
  };
}

const ROLES = new Set(["system", "user", "assistant", "tool", "developer"]);

/**
 * A tool result (`role: "tool"`) names the call it answers (`tool_call_id`); an assistant turn's
 * `tool_calls` are OpenAI's `{id, type: "function", function: {name, arguments}}` with arguments
 * as JSON text; no other role carries either.
 */
function checkToolFields(m: Body, role: string, param: string): void {
  if (role === "tool" && typeof m.tool_call_id !== "string") {
    throw badRequest(
      `${param}.tool_call_id is required for a tool message (the id of the call it answers)`,
      `${param}.tool_call_id`,
    );
  }
  if (!given(m, "tool_calls")) return;
  if (role !== "assistant") {
    throw badRequest(`${param}.tool_calls is only allowed on assistant messages`, `${param}.tool_calls`);
  }
  const calls = m.tool_calls;
  if (!Array.isArray(calls)) throw badRequest(`${param}.tool_calls must be an array`, `${param}.tool_calls`);
  calls.forEach((c, j) => {
    const at = `${param}.tool_calls[${j}]`;
    if (!isObject(c)) throw badRequest(`${at} must be an object {id, type, function}`, at);
    if (typeof c.id !== "string") throw badRequest(`${at}.id must be a string`, `${at}.id`);
    if (given(c, "type") && c.type !== "function")
      throw badRequest(`${at}.type must be "function"`, `${at}.type`);
    const fn = c.function;
    if (!isObject(fn))
      throw badRequest(`${at}.function must be an object {name, arguments}`, `${at}.function`);
    if (typeof fn.name !== "string" || fn.name.length === 0) {
      throw badRequest(`${at}.function.name must be a non-empty string`, `${at}.function.name`);
    }
    if (typeof fn.arguments !== "string") {
      throw badRequest(`${at}.function.arguments must be a string (JSON text)`, `${at}.function.arguments`);
    }
  });
}

export function parseMessages(body: Body): ChatMessage[] {
  const list = body.messages;
  if (list === undefined || list === null) throw badRequest("messages is required", "messages");
  if (!Array.isArray(list) || list.length === 0) {
    throw badRequest("messages must be a non-empty array of messages", "messages");
  }
  return list.map((m, i): ChatMessage => {
    const param = `messages[${i}]`;
    if (!isObject(m)) throw badRequest(`${param} must be an object with a role and content`, param);
    const role = m.role;
    if (typeof role !== "string" || !ROLES.has(role)) {
      throw badRequest(
        `${param}.role must be one of system, user, assistant, tool, developer; got ${JSON.stringify(role ?? null)}`,
        `${param}.role`,
      );
    }
    const content = m.content;
    if (content === undefined || content === null) {
      if (role !== "assistant") throw badRequest(`${param}.content is required`, `${param}.content`);
    } else if (Array.isArray(content)) {
      content.forEach((part, j) => {
        const type = isObject(part) ? part.type : undefined;
        if (type !== "text") {
          throw badRequest(
            `${param}.content[${j}] has type ${JSON.stringify(type ?? null)}: only "text" content parts are supported`,
            `${param}.content`,
          );
        }
        if (typeof (part as Body).text !== "string") {
          throw badRequest(`${param}.content[${j}].text must be a string`, `${param}.content`);
        }
      });
    } else if (typeof content !== "string") {
      throw badRequest(`${param}.content must be a string or an array of text parts`, `${param}.content`);
    }
    if (m.name !== undefined && m.name !== null && typeof m.name !== "string") {
      throw badRequest(`${param}.name must be a string`, `${param}.name`);
    }
    checkToolFields(m, role, param);
    // Templates rarely know "developer" (OpenAI's newer name for system): render it as system.
    return {
      ...m,
      role: role === "developer" ? "system" : role,
      content: (content ?? null) as ChatMessage["content"],
    };
  });
}

export function parseChatRequest(raw: unknown, sc: SchemaContext): ChatRequest {
  const body = requireObject(raw);
  const common = parseCommon(body, sc);
  const messages = parseMessages(body);
  const maxTokens = parseMaxTokens(body, "max_completion_tokens") ?? parseMaxTokens(body, "max_tokens");
  const logprobs = boolean(body, "logprobs") ?? false;
  const topLogprobs = integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS);
  if (topLogprobs !== undefined && !logprobs) {
    throw badRequest("top_logprobs requires logprobs to be true", "top_logprobs");
  }
  const toolRequest = parseToolRequest(body);
  unsupported(
    body,
    "functions",
    "the deprecated functions field is not supported; use tools",
    (v) => Array.isArray(v) && v.length === 0,
  );
  unsupported(
    body,
    "function_call",
    "the deprecated function_call field is not supported; use tool_choice",
    (v) => v === "none",
  );
  unsupported(body, "audio", "Spindle serves text models");
  if (given(body, "modalities")) {
    const m = body.modalities;
    if (!Array.isArray(m) || m.some((x) => x !== "text")) {
      throw badRequest('modalities is not supported beyond ["text"]', "modalities");
    }
  }
  let templateVars: Record<string, unknown> | undefined;
  if (given(body, "chat_template_kwargs")) {
    if (!isObject(body.chat_template_kwargs)) {
      throw badRequest("chat_template_kwargs must be an object", "chat_template_kwargs");
    }
    templateVars = body.chat_template_kwargs;
  }
  return {
    ...common,
    maxTokens,
    messages,
    logprobs,
    topLogprobs: topLogprobs ?? 0,
    templateVars,
    toolRequest,
  };
}
