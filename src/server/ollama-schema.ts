import type { ChatMessage } from "../chat/template.js";
import { SamplingParamError, type SamplingParams, validateSamplingParams } from "../sampling/params.js";
import { ApiError, badRequest } from "./errors.js";
import { given, isObject, type Json } from "./route-helpers.js";
import { type StructuredOutput, structuredOutput } from "./structured-output.js";
import { parseToolRequest, type ToolRequest } from "./tool-request.js";

/**
 * Request validation for Ollama's /api/generate and /api/chat, by hand so that every message names
 * the field ("options.temperature must be a number"). Errors are ApiErrors; under /api/ they go out
 * in Ollama's shape, `{"error": "..."}` (errors.ts). The decisions on each field are in
 * routes/ollama.ts's header.
 */

/** Ollama's default options (api/types.go DefaultOptions), applied where a request gives none. */
export const OLLAMA_DEFAULTS = {
  temperature: 0.8,
  top_k: 40,
  top_p: 0.9,
  min_p: 0,
  repeat_penalty: 1.1,
  repeat_last_n: 64,
} as const;

/*
 * Options about hardware and the runtime (numa, num_batch, num_gpu, main_gpu, low_vram, f16_kv,
 * logits_all, vocab_only, use_mmap, use_mlock, embedding_only, num_thread, num_keep,
 * penalize_newline) are accepted and ignored, like any option Spindle does not know: Ollama itself
 * ignores unknown options.
 */

/** Options that change the output and that Spindle lacks: refused unless at their "off" value. */
const UNSUPPORTED_OPTIONS: Record<string, number> = { mirostat: 0, tfs_z: 1, typical_p: 1 };

export interface OllamaCommon {
  /** The model name as the client wrote it (echoed in responses). */
  model: string;
  stream: boolean;
  /** Engine sampling parameters, seed included (undefined = random). */
  sampling: Partial<SamplingParams>;
  stop: string[];
  /** options.num_predict: a count ≥ 1, or undefined for -1/-2 and absent (fill the context). */
  numPredict: number | undefined;
  /** options.num_ctx, when given (≤ the model's context). */
  numCtx: number | undefined;
  /** format: "json" or a JSON schema. */
  structured: StructuredOutput | undefined;
}

export interface OllamaGenerateRequest extends OllamaCommon {
  prompt: string;
  system: string | undefined;
  raw: boolean;
}

export interface OllamaChatRequest extends OllamaCommon {
  messages: ChatMessage[];
  /** `tools` (Ollama's shape is OpenAI's); always `auto`: Ollama has no tool_choice. */
  tools: ToolRequest | undefined;
}

export interface OllamaSchemaContext {
  modelName: string;
  contextLength: number;
}

/** The model names this server answers to: its name, and the name with Ollama's default tag. */
export function servesModel(name: string, modelName: string): boolean {
  return name === modelName || (!modelName.includes(":") && name === `${modelName}:latest`);
}

/** The `model` field: required, a string, and the served model (404 in Ollama's words otherwise). */
export function parseOllamaModel(body: Json, modelName: string, key = "model"): string {
  const model = body[key];
  if (!given(model)) throw badRequest(`${key} is required`, key);
  if (typeof model !== "string" || model.length === 0)
    throw badRequest(`${key} must be a non-empty string`, key);
  if (!servesModel(model, modelName)) {
    throw new ApiError(404, `model "${model}" not found`, "not_found_error", key, "model_not_found");
  }
  return model;
}

function requireObject(raw: unknown): Json {
  if (!isObject(raw)) throw badRequest("the request body must be a JSON object");
  return raw;
}

function bool(body: Json, key: string, param = key): boolean | undefined {
  const v = body[key];
  if (!given(v)) return undefined;
  if (typeof v !== "boolean") throw badRequest(`${param} must be true or false`, param);
  return v;
}

function str(body: Json, key: string): string | undefined {
  const v = body[key];
  if (!given(v)) return undefined;
  if (typeof v !== "string") throw badRequest(`${key} must be a string`, key);
  return v;
}

function num(o: Json, key: string): number | undefined {
  const v = o[key];
  if (!given(v)) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v))
    throw badRequest(`options.${key} must be a number`, `options.${key}`);
  return v;
}

function int(o: Json, key: string): number | undefined {
  const v = o[key];
  if (!given(v)) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v))
    throw badRequest(`options.${key} must be an integer`, `options.${key}`);
  return v;
}

/** A field Spindle cannot honour: 400 naming it, unless absent or harmless. */
function refuse(body: Json, key: string, why: string, harmless: (v: unknown) => boolean = () => false): void {
  if (given(body[key]) && !harmless(body[key])) throw badRequest(`${key} is not supported: ${why}`, key);
}

const emptyList = (v: unknown) => Array.isArray(v) && v.length === 0;

/** `format`, `think`, `logprobs`, `keep_alive`, `stream`, `options`: what both routes share. */
function parseCommon(body: Json, sc: OllamaSchemaContext): OllamaCommon {
  const model = parseOllamaModel(body, sc.modelName);
  const structured = structuredOutput(body, "ollama");
  refuse(body, "think", "this model does not think (no reasoning output)", (v) => v === false);
  refuse(body, "logprobs", "logprobs are not available on Ollama's API yet", (v) => v === false);
  refuse(body, "top_logprobs", "logprobs are not available on Ollama's API yet", (v) => v === 0);
  // keep_alive: one model stays loaded for the server's life; any value is accepted and ignored.
  const ka = body.keep_alive;
  if (given(ka) && typeof ka !== "string" && typeof ka !== "number")
    throw badRequest("keep_alive must be a duration string or a number of seconds", "keep_alive");
  const stream = bool(body, "stream") ?? true;

  const rawOptions = body.options ?? {};
  if (!isObject(rawOptions)) throw badRequest("options must be an object", "options");
  const o = rawOptions;
  for (const [key, off] of Object.entries(UNSUPPORTED_OPTIONS)) {
    const v = num(o, key);
    if (v !== undefined && v !== off)
      throw badRequest(`options.${key} is not supported (only ${off})`, `options.${key}`);
  }

  const numPredict = int(o, "num_predict");
  if (numPredict !== undefined && numPredict < 1 && numPredict !== -1 && numPredict !== -2) {
    throw badRequest(
      "options.num_predict must be ≥ 1, or -1 (no limit) or -2 (fill the context)",
      "options.num_predict",
    );
  }
  const numCtx = int(o, "num_ctx");
  if (numCtx !== undefined && (numCtx < 1 || numCtx > sc.contextLength)) {
    throw badRequest(
      `options.num_ctx must be between 1 and this model's context length, ${sc.contextLength}; got ${numCtx}`,
      "options.num_ctx",
    );
  }

  const s: Partial<SamplingParams> = {
    temperature: num(o, "temperature") ?? OLLAMA_DEFAULTS.temperature,
    topK: int(o, "top_k") ?? OLLAMA_DEFAULTS.top_k,
    topP: num(o, "top_p") ?? OLLAMA_DEFAULTS.top_p,
    minP: num(o, "min_p") ?? OLLAMA_DEFAULTS.min_p,
    repetitionPenalty: num(o, "repeat_penalty") ?? OLLAMA_DEFAULTS.repeat_penalty,
    penaltyLastN: int(o, "repeat_last_n") ?? OLLAMA_DEFAULTS.repeat_last_n,
  };
  const presence = num(o, "presence_penalty");
  if (presence !== undefined) s.presencePenalty = presence;
  const frequency = num(o, "frequency_penalty");
  if (frequency !== undefined) s.frequencyPenalty = frequency;
  // Ollama's seed -1 (its default) means random.
  const seed = int(o, "seed");
  if (seed !== undefined && seed >= 0) s.seed = seed;
  try {
    validateSamplingParams(s);
  } catch (e) {
    if (e instanceof SamplingParamError) {
      const name = OPTION_NAMES[e.param] ?? e.param;
      throw badRequest(`options.${name} ${e.message.replace(/^\S+\s+/, "")}`, `options.${name}`);
    }
    throw e;
  }

  let stop: string[] = [];
  if (given(o.stop)) {
    const list = typeof o.stop === "string" ? [o.stop] : o.stop;
    if (!Array.isArray(list) || !list.every((x) => typeof x === "string"))
      throw badRequest("options.stop must be a list of strings", "options.stop");
    stop = list.filter((x) => x.length > 0);
  }
  return {
    model,
    stream,
    sampling: s,
    stop,
    numPredict: numPredict !== undefined && numPredict > 0 ? numPredict : undefined,
    numCtx,
    structured,
  };
}

/** SamplingParamError names the engine's fields; Ollama's options name some differently. */
const OPTION_NAMES: Record<string, string> = {
  repetition_penalty: "repeat_penalty",
  penalty_last_n: "repeat_last_n",
};

export function parseOllamaGenerate(raw: unknown, sc: OllamaSchemaContext): OllamaGenerateRequest {
  const body = requireObject(raw);
  const common = parseCommon(body, sc);
  const prompt = str(body, "prompt") ?? "";
  refuse(body, "tools", "tools are for /api/chat", emptyList);
  refuse(body, "suffix", "Spindle does not do fill-in-the-middle", (v) => v === "");
  refuse(body, "images", "Spindle serves text models", emptyList);
  refuse(
    body,
    "template",
    "the model's own chat template is always used (or none, with raw)",
    (v) => v === "",
  );
  refuse(
    body,
    "context",
    "the deprecated context token array is not supported; send the conversation to /api/chat",
    emptyList,
  );
  const system = str(body, "system");
  const raw_ = bool(body, "raw") ?? false;
  if (raw_ && system !== undefined && system !== "")
    throw badRequest("system cannot be used with raw: a raw prompt is not templated", "system");
  return { ...common, prompt, system: system || undefined, raw: raw_ };
}

const ROLES = new Set(["system", "user", "assistant", "tool"]);

/**
 * An assistant turn's earlier calls, Ollama's `[{function: {name, arguments: {...}}}]` (arguments
 * an object, not JSON text): passed to the template as they are (tools-prompt.ts reads both forms).
 */
function checkToolCalls(calls: unknown, p: string): void {
  if (!Array.isArray(calls)) throw badRequest(`${p} must be a list of calls`, p);
  calls.forEach((c, j) => {
    const at = `${p}[${j}]`;
    const fn = isObject(c) ? c.function : undefined;
    if (!isObject(fn))
      throw badRequest(`${at}.function must be an object {name, arguments}`, `${at}.function`);
    if (typeof fn.name !== "string" || fn.name.length === 0)
      throw badRequest(`${at}.function.name must be a non-empty string`, `${at}.function.name`);
    if (given(fn.arguments) && !isObject(fn.arguments))
      throw badRequest(`${at}.function.arguments must be an object`, `${at}.function.arguments`);
  });
}

function parseMessages(body: Json): ChatMessage[] {
  const list = body.messages;
  if (!given(list)) return [];
  if (!Array.isArray(list)) throw badRequest("messages must be a list of messages", "messages");
  return list.map((m, i): ChatMessage => {
    const p = `messages[${i}]`;
    if (!isObject(m)) throw badRequest(`${p} must be an object with a role and content`, p);
    const role = m.role;
    if (typeof role !== "string" || !ROLES.has(role)) {
      throw badRequest(
        `${p}.role must be one of system, user, assistant, tool; got ${JSON.stringify(role ?? null)}`,
        `${p}.role`,
      );
    }
    const content = m.content ?? "";
    if (typeof content !== "string") throw badRequest(`${p}.content must be a string`, `${p}.content`);
    if (given(m.images) && !emptyList(m.images))
      throw badRequest(`${p}.images is not supported: Spindle serves text models`, `${p}.images`);
    const out: ChatMessage = { role, content };
    if (given(m.tool_calls) && !emptyList(m.tool_calls)) {
      if (role !== "assistant")
        throw badRequest(`${p}.tool_calls is only allowed on assistant messages`, `${p}.tool_calls`);
      checkToolCalls(m.tool_calls, `${p}.tool_calls`);
      out.tool_calls = m.tool_calls;
    }
    if (given(m.tool_name)) {
      if (typeof m.tool_name !== "string")
        throw badRequest(`${p}.tool_name must be a string`, `${p}.tool_name`);
      // Templates name a tool result's function `name` (OpenAI's field); Ollama's is tool_name.
      if (role === "tool") Object.assign(out, { tool_name: m.tool_name, name: m.tool_name });
    }
    // `thinking` (a reasoning trace of an earlier answer) is not rendered: templates here have no place for it.
    return out;
  });
}

export function parseOllamaChat(raw: unknown, sc: OllamaSchemaContext): OllamaChatRequest {
  const body = requireObject(raw);
  const common = parseCommon(body, sc);
  // Only `tools`: Ollama has no tool_choice, so the model decides (OpenAI's `auto`, not enforced).
  const tools = parseToolRequest({ tools: body.tools });
  return { ...common, messages: parseMessages(body), tools };
}
