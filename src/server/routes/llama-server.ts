import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { engineOf } from "../../backends/engine-backend.js";
import type { FinishInfo } from "../../protocol/events.js";
import { SamplingParamError, type SamplingParams, validateSamplingParams } from "../../sampling/params.js";
import { readChoices, startChoices, streamChoices } from "../choices.js";
import type { LoadedModel, ServerContext } from "../context.js";
import { badRequest, llamaServerErrorBody } from "../errors.js";
import { defaultMaxTokens, type GenerationParams } from "../generation.js";
import {
  boolField,
  clientOf,
  clientSignal,
  given,
  intField,
  isObject,
  type Json,
  numberField,
  stopField,
} from "../route-helpers.js";
import { sendSSE } from "../sse.js";
import { type StructuredOutput, structuredOutput } from "../structured-output.js";
import { spindleVersion } from "./ops.js";
import { tgiFinishReason } from "./tgi.js";

/**
 * llama-server's native API (llama.cpp's tools/server), so that scripts written for it run unchanged:
 *
 *   POST /completion   {prompt, n_predict?, temperature?, top_k?, top_p?, min_p?, seed?, stop?, stream?,
 *   (and /completions)  repeat_penalty?, repeat_last_n?, presence_penalty?, frequency_penalty?,
 *                       ignore_eos?, cache_prompt?, return_tokens?}
 *                      → {index, content, tokens, stop: true, model, tokens_predicted, tokens_evaluated,
 *                         tokens_cached, stop_type, stopping_word, truncated: false, timings}
 *                      stream: server-sent events `{content, stop: false}` with the new text, then one
 *                      `{content: "", stop: true, …the same fields}`; no [DONE] (llama-server sends none)
 *   GET  /props        {default_generation_settings: {n_ctx, params}, total_slots, model_path,
 *                       chat_template, bos_token, eos_token, build_info}
 *
 * Errors have llama-server's shape, `{"error": {"code": 400, "message": "...", "type": "..."}}`
 * (errors.ts), in a stream too (one `data: {"error": …}` event).
 *
 * Field by field:
 * - prompt: a string (tokenized with BOS and with special tokens parsed, as llama-server does) or a
 *   list of token ids (used as they are). Lists of prompts and mixed lists are a 400.
 * - n_predict (or its alias max_tokens): -1 (the default) = until EOS or the end of the context;
 *   otherwise ≥ 1, and the prompt plus n_predict must fit the context (a 400 naming n_predict, as every
 *   route refuses rather than cuts short: `truncated` is always false). 0 is a 400.
 * - Sampling defaults are llama-server's (LLAMA_SERVER_DEFAULTS, also reported by /props):
 *   temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1 over the last 64 tokens.
 *   temperature ≤ 0 is greedy; top_k ≤ 0 turns top-k off; seed -1 (or 4294967295) is a random seed.
 * - cache_prompt is accepted: the prefix cache is always on. n_probs > 0 is refused by name rather
 *   than ignored.
 * - grammar (GBNF) and json_schema (or response_format) constrain the output (structured-output.ts).
 * - stop_type: "eos" (an end-of-generation token), "word" (a stop string: stopping_word names it),
 *   "limit" (n_predict or the context reached).
 * - timings, from the engine's clock: prompt_* is the prefill (first scheduled → first token) over the
 *   prompt tokens not found in the prefix cache; predicted_* runs from the first token to the last
 *   over tokens_predicted tokens (the first token's time is the prompt's, as in llama-server).
 * - tokens: the generated token ids when return_tokens is true, else [].
 */

export const LLAMA_SERVER_DEFAULTS = {
  n_predict: -1,
  temperature: 0.8,
  top_k: 40,
  top_p: 0.95,
  min_p: 0.05,
  repeat_penalty: 1,
  repeat_last_n: 64,
  presence_penalty: 0,
  frequency_penalty: 0,
  seed: -1,
} as const;

/** llama-server's LLAMA_DEFAULT_SEED: a random seed, as -1 is. */
const RANDOM_SEED = 0xffffffff;
export const LLAMA_SERVER_MAX_STOP = 16;

export type StopType = "eos" | "word" | "limit";

export interface LlamaCompletionRequest {
  prompt: number[];
  promptText: string | undefined;
  maxTokens: number;
  /** The field max tokens came in (n_predict, or max_tokens), for errors. */
  maxTokensField: string;
  sampling: Partial<SamplingParams>;
  stop: string[];
  stream: boolean;
  stopAtEog: boolean;
  returnTokens: boolean;
  structured: StructuredOutput | undefined;
}

function parsePrompt(body: Json, m: LoadedModel): { ids: number[]; text: string | undefined } {
  const p = body.prompt;
  if (!given(p)) throw badRequest('the request needs "prompt": a string or a list of token ids', "prompt");
  if (typeof p === "string") {
    const ids = m.tokenizer.encode(p, { addSpecial: true, parseSpecial: true });
    if (ids.length === 0) throw badRequest("prompt must not be empty", "prompt");
    return { ids, text: p };
  }
  const vocab = m.info.vocabSize;
  if (!Array.isArray(p) || p.length === 0) {
    throw badRequest("prompt must be a string or a non-empty list of token ids", "prompt");
  }
  p.forEach((t, i) => {
    if (typeof t !== "number" || !Number.isSafeInteger(t) || t < 0 || t >= vocab) {
      throw badRequest(
        `prompt[${i}] = ${JSON.stringify(t)} is not a token id (integers 0..${vocab - 1}); lists of prompts are not supported`,
        "prompt",
      );
    }
  });
  return { ids: p as number[], text: undefined };
}

/** Validates a /completion body and turns it into engine terms. Throws 400s naming the field. */
export function parseLlamaCompletion(body: unknown, m: LoadedModel): LlamaCompletionRequest {
  if (!isObject(body)) throw badRequest("the request body must be a JSON object", null);
  const prompt = parsePrompt(body, m);
  const maxTokensField = given(body.n_predict) || !given(body.max_tokens) ? "n_predict" : "max_tokens";
  const nPredict = intField(body, maxTokensField, -1) ?? LLAMA_SERVER_DEFAULTS.n_predict;
  if (nPredict === 0) {
    throw badRequest(
      `${maxTokensField} must be -1 (until EOS or the end of the context) or at least 1`,
      maxTokensField,
    );
  }
  const maxTokens = nPredict === -1 ? defaultMaxTokens(prompt.ids.length, m.info.contextLength) : nPredict;

  const structured = structuredOutput(body, "llama-server");
  const nProbs = intField(body, "n_probs", 0) ?? 0;
  if (nProbs > 0) throw badRequest("n_probs is not supported (only 0)", "n_probs");
  boolField(body, "cache_prompt"); // accepted (the prefix cache is always on), still checked

  const d = LLAMA_SERVER_DEFAULTS;
  const temperature = numberField(body, "temperature") ?? d.temperature;
  const topK = intField(body, "top_k", Number.MIN_SAFE_INTEGER) ?? d.top_k;
  const seed = intField(body, "seed", Number.MIN_SAFE_INTEGER) ?? d.seed;
  const sampling: Partial<SamplingParams> = {
    temperature: Math.max(0, temperature),
    topK: Math.max(0, topK),
    topP: numberField(body, "top_p") ?? d.top_p,
    minP: numberField(body, "min_p") ?? d.min_p,
    repetitionPenalty: numberField(body, "repeat_penalty") ?? d.repeat_penalty,
    penaltyLastN: intField(body, "repeat_last_n", -1) ?? d.repeat_last_n,
    presencePenalty: numberField(body, "presence_penalty") ?? d.presence_penalty,
    frequencyPenalty: numberField(body, "frequency_penalty") ?? d.frequency_penalty,
    seed: seed < 0 || seed === RANDOM_SEED ? undefined : seed,
  };
  try {
    validateSamplingParams(sampling);
  } catch (e) {
    if (e instanceof SamplingParamError) {
      const field =
        { repetition_penalty: "repeat_penalty", penalty_last_n: "repeat_last_n" }[e.param] ?? e.param;
      throw badRequest(e.message, field);
    }
    throw e;
  }
  return {
    prompt: prompt.ids,
    promptText: prompt.text,
    maxTokens,
    maxTokensField,
    sampling,
    stop: stopField(body, "stop", LLAMA_SERVER_MAX_STOP),
    stream: boolField(body, "stream") ?? false,
    stopAtEog: !(boolField(body, "ignore_eos") ?? false),
    returnTokens: boolField(body, "return_tokens") ?? false,
    structured,
  };
}

export function stopType(f: FinishInfo): StopType {
  const r = tgiFinishReason(f);
  return r === "eos_token" ? "eos" : r === "stop_sequence" ? "word" : "limit";
}

/**
 * The stop string that ended a generation: the one found first in the decoded tokens (the text
 * sent stops right before it). "" when it did not end at a stop string.
 */
function stoppingWord(f: FinishInfo, stop: string[], decoded: string): string {
  if (stopType(f) !== "word") return "";
  let best = "";
  let at = Number.POSITIVE_INFINITY;
  for (const s of stop) {
    const i = decoded.indexOf(s);
    if (i >= 0 && (i < at || (i === at && s.length > best.length))) {
      best = s;
      at = i;
    }
  }
  return best;
}

export interface LlamaTimings {
  prompt_n: number;
  prompt_ms: number;
  prompt_per_token_ms: number;
  prompt_per_second: number;
  predicted_n: number;
  predicted_ms: number;
  predicted_per_token_ms: number;
  predicted_per_second: number;
}

/** llama-server's timings from a finish (the engine's performance.now() milliseconds). */
export function llamaTimings(f: FinishInfo): LlamaTimings {
  const t = f.times;
  const span = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined ? 0 : Math.max(0, b - a);
  const promptN = f.promptTokens - f.cachedTokens;
  const promptMs = span(t.firstScheduled ?? t.arrival, t.firstToken);
  const predictedN = f.completionTokens;
  const predictedMs = span(t.firstToken, t.lastToken);
  return {
    prompt_n: promptN,
    prompt_ms: promptMs,
    prompt_per_token_ms: promptN > 0 ? promptMs / promptN : 0,
    prompt_per_second: promptMs > 0 ? (1000 * promptN) / promptMs : 0,
    predicted_n: predictedN,
    predicted_ms: predictedMs,
    predicted_per_token_ms: predictedN > 0 ? predictedMs / predictedN : 0,
    predicted_per_second: predictedMs > 0 ? (1000 * predictedN) / predictedMs : 0,
  };
}

/** Sequences served at once: the engine's running cap, llama.cpp's sequences, or the upstream slots. */
function totalSlots(m: LoadedModel): number {
  const engine = engineOf(m.backend);
  if (engine) return engine.info.scheduler.maxNumSeqs;
  const d = m.info.details;
  if (typeof d.parallel === "number") return d.parallel;
  if (typeof d.upstreamConcurrency === "number" && Array.isArray(d.upstreams))
    return d.upstreamConcurrency * d.upstreams.length;
  return 1;
}

async function completion(ctx: ServerContext, req: FastifyRequest, reply: FastifyReply, endpoint: string) {
  const m = ctx.service.model(endpoint);
  const r = parseLlamaCompletion(req.body, m);
  const params: GenerationParams = {
    prompt: r.prompt,
    maxTokens: r.maxTokens,
    sampling: r.sampling,
    stop: r.stop,
    stopAtEog: r.stopAtEog,
    priority: 0,
    client: clientOf(req),
    endpoint,
    promptText: r.promptText,
    fields: { prompt: "prompt", maxTokens: r.maxTokensField },
    structured: r.structured,
  };
  const signal = clientSignal(req, reply);
  const streams = await startChoices(ctx, [{ index: 0, prompt: 0, params }], signal);
  const tokens: number[] = [];
  const final = (f: FinishInfo): Json => ({
    model: ctx.opts.modelName,
    tokens_predicted: f.completionTokens,
    tokens_evaluated: f.promptTokens,
    tokens_cached: f.cachedTokens,
    stop_type: stopType(f),
    stopping_word: stoppingWord(f, r.stop, m.tokenizer.decode(tokens)),
    truncated: false,
    timings: llamaTimings(f),
  });

  if (!r.stream) {
    let content = "";
    const [f] = await readChoices(streams, signal, (_i, e) => {
      content += e.text;
      tokens.push(...e.tokens);
    });
    return {
      index: 0,
      content,
      tokens: r.returnTokens ? tokens : [],
      stop: true,
      ...final(f!),
    };
  }
  return streamChoices(ctx, reply, streams, signal, {
    doneMarker: false,
    open() {},
    onEvent(_i, e) {
      tokens.push(...e.tokens);
      if (e.text.length > 0 || (r.returnTokens && e.tokens.length > 0)) {
        sendSSE(reply, {
          index: 0,
          content: e.text,
          tokens: r.returnTokens ? e.tokens : [],
          stop: false,
        });
      }
      if (e.finish) sendSSE(reply, { index: 0, content: "", tokens: [], stop: true, ...final(e.finish) });
    },
    close() {},
    errorEvent: llamaServerErrorBody,
  });
}

export function registerLlamaServerRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const config = { errorShape: "llama-server" as const };
  for (const path of ["/completion", "/completions"]) {
    app.post(path, { config }, (req, reply) => completion(ctx, req, reply, path));
  }

  app.get("/props", { config }, async () => {
    const m = ctx.service.model("/props");
    const tok = m.tokenizer;
    const d = LLAMA_SERVER_DEFAULTS;
    return {
      default_generation_settings: {
        n_ctx: m.info.contextLength,
        params: {
          n_predict: d.n_predict,
          temperature: d.temperature,
          top_k: d.top_k,
          top_p: d.top_p,
          min_p: d.min_p,
          repeat_penalty: d.repeat_penalty,
          repeat_last_n: d.repeat_last_n,
          presence_penalty: d.presence_penalty,
          frequency_penalty: d.frequency_penalty,
          seed: RANDOM_SEED,
          stop: [],
          ignore_eos: false,
          stream: false,
          n_probs: 0,
          cache_prompt: true,
        },
      },
      total_slots: totalSlots(m),
      model_path: m.modelPath ?? null,
      model_alias: ctx.opts.modelName,
      chat_template: m.chatTemplate ?? "",
      bos_token: tok.bos !== undefined ? tok.tokenText(tok.bos) : "",
      eos_token: tok.eos !== undefined ? tok.tokenText(tok.eos) : "",
      build_info: `spindle ${spindleVersion()} (${m.info.kind} backend)`,
    };
  });
}
