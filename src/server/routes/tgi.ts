import { randomInt } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { EngineEvent, FinishInfo } from "../../protocol/events.js";
import { stopOrLength } from "../../protocol/events.js";
import { SamplingParamError, type SamplingParams, validateSamplingParams } from "../../sampling/params.js";
import type { Tokenizer } from "../../tokenizer/index.js";
import { readChoices, startChoices, streamChoices } from "../choices.js";
import type { LoadedModel, ServerContext } from "../context.js";
import { badRequest, errorBody } from "../errors.js";
import { defaultMaxTokens, type GenerationParams } from "../generation.js";
import { DEFAULT_COMPLETION_MAX_TOKENS } from "../openai-schema.js";
import {
  clientOf,
  clientSignal,
  given,
  isObject,
  type Json,
  boolField as sharedBool,
  intField as sharedInt,
  numberField as sharedNumber,
  stopField,
  textField,
} from "../route-helpers.js";
import { sendSSE } from "../sse.js";
import { type StructuredOutput, structuredOutput } from "../structured-output.js";

/**
 * Hugging Face Text Generation Inference's native API, and vLLM's tokenizer endpoints:
 *
 *   POST /generate         {inputs, parameters} → {generated_text, details?}
 *   POST /generate_stream  the same as server-sent events: one per token
 *                          {index, token: {id, text, logprob, special}, generated_text: null, details: null},
 *                          the last with generated_text and details; no [DONE] marker (TGI has none)
 *   POST /tokenize         {prompt | inputs | text | content | messages, …} → {tokens, count, max_model_len}
 *                          (routes/tokenize.ts)
 *   POST /detokenize       {tokens} → {prompt}
 *
 * TGI's sampling rule: greedy unless do_sample is true or a warper is set (temperature ≠ 1,
 * top_k, top_p < 1). A sampled request without a seed gets a random one, reported in details.seed.
 * Extensions: `parameters.ignore_eos` and `parameters.priority` (as in vLLM). `parameters.grammar`
 * ({type: "json", value: schema} or {type: "regex", value: pattern}) constrains the output
 * (structured-output.ts).
 *
 * The simple body, for the minimal clients written against a bare /generate (vLLM's demo server
 * and the like): /generate (and /generate_stream) also take
 *
 *   {prompt, max_tokens?, temperature?, top_p?, top_k?, stop?, seed?, stream?}
 *     → {text, generated_text, finish_reason: "stop" | "length", usage: {prompt_tokens, completion_tokens, total_tokens}}
 *
 * A body is the simple one when it has neither `inputs` nor `parameters` and has any of those fields
 * but `prompt`; `{prompt}` alone or `{prompt, parameters}` stay TGI's (`prompt` is TGI's alias of
 * `inputs`). Mixing the two (a simple field beside `inputs` or `parameters`) is a 400 naming the
 * simple field, except `stream`, which TGI's clients send and TGI's body ignores. Its
 * defaults are OpenAI's and vLLM's: max_tokens 16, temperature 1 (sampled; temperature 0 is greedy).
 * `text` and `generated_text` hold the same completion (without the prompt), so clients of either
 * kind read it. stream: true (always on /generate_stream) answers server-sent events
 * `{text, finish_reason: null}` with each new piece of text, the last one carrying `finish_reason`,
 * `generated_text` (the whole completion) and `usage`; no [DONE] marker, as for TGI's stream.
 */

/** max_new_tokens when the request gives none (capped by the room left in the context). */
export const TGI_DEFAULT_MAX_NEW_TOKENS = 100;
export const TGI_MAX_STOP = 16;
export const TGI_MAX_TOP_N_TOKENS = 20;

/** The top-level fields that make a /generate body the simple one. */
export const SIMPLE_GENERATE_FIELDS = [
  "max_tokens",
  "temperature",
  "top_p",
  "top_k",
  "stop",
  "seed",
  "stream",
];

export interface SimpleGenerateRequest {
  prompt: string;
  ids: number[];
  maxTokens: number;
  sampling: Partial<SamplingParams>;
  stop: string[];
  stream: boolean;
}

/**
 * The simple body's first field present, or undefined for TGI's body. A simple field beside `inputs`
 * or `parameters` is a 400 naming it, except `stream`, which TGI's own clients send (the Python
 * client's `stream: false` to /generate) and which TGI's body ignores.
 */
export function simpleGenerateField(body: unknown): string | undefined {
  if (!isObject(body)) return undefined;
  const tgi = ["inputs", "parameters"].find((f) => given(body[f]));
  if (tgi === undefined) return SIMPLE_GENERATE_FIELDS.find((f) => given(body[f]));
  const simple = SIMPLE_GENERATE_FIELDS.find((f) => f !== "stream" && given(body[f]));
  if (simple !== undefined) {
    throw badRequest(
      `${simple} belongs to the simple body {prompt, ${simple}, …}; with ${tgi} (TGI's body {inputs, parameters}) give it in parameters instead`,
      simple,
    );
  }
  return undefined;
}

/** Validates a simple /generate body. Throws 400s naming the field. */
export function parseSimpleGenerate(body: Json, tok: Tokenizer): SimpleGenerateRequest {
  const { text: prompt } = textField(body, ["prompt"]);
  if (prompt.length === 0) throw badRequest("prompt must not be empty", "prompt");
  const temperature = sharedNumber(body, "temperature");
  const topP = sharedNumber(body, "top_p");
  const topK = sharedInt(body, "top_k", -1);
  const sampling: Partial<SamplingParams> = {
    ...(temperature !== undefined ? { temperature } : {}),
    ...(topP !== undefined ? { topP } : {}),
    ...(topK !== undefined ? { topK: Math.max(0, topK) } : {}),
    seed: sharedInt(body, "seed", 0),
  };
  try {
    validateSamplingParams(sampling);
  } catch (e) {
    if (e instanceof SamplingParamError) throw badRequest(e.message, e.param);
    throw e;
  }
  return {
    prompt,
    ids: tok.encode(prompt, { addSpecial: true }),
    maxTokens: sharedInt(body, "max_tokens", 1) ?? DEFAULT_COMPLETION_MAX_TOKENS,
    sampling,
    stop: stopField(body, "stop", TGI_MAX_STOP),
    stream: sharedBool(body, "stream") ?? false,
  };
}

export type TgiFinishReason = "length" | "eos_token" | "stop_sequence";

export interface TgiToken {
  id: number;
  text: string;
  logprob: number | null;
  special: boolean;
}

export interface TgiRequest {
  inputs: string;
  /** The field the text came in ("inputs", or "prompt"). */
  inputsField: string;
  prompt: number[];
  maxNewTokens: number;
  sampling: Partial<SamplingParams>;
  /** Reported in details.seed: the seed used when sampling, null when greedy. */
  seed: number | null;
  stop: string[];
  details: boolean;
  decoderInputDetails: boolean;
  returnFullText: boolean;
  topNTokens: number;
  stopAtEog: boolean;
  priority: number;
  /** parameters.grammar. */
  structured: StructuredOutput | undefined;
}

// TGI's sampling fields live under `parameters`: errors name them so.
const numberField = (p: Json, name: string) => sharedNumber(p, name, `parameters.${name}`);
const intField = (p: Json, name: string, min: number, max = Number.MAX_SAFE_INTEGER) =>
  sharedInt(p, name, min, max, `parameters.${name}`);
const boolField = (p: Json, name: string) => sharedBool(p, name, `parameters.${name}`);

/** Validates a /generate body and turns it into engine terms. Throws 400s naming the field. */
export function parseTgiRequest(body: unknown, tok: Tokenizer, contextLength: number): TgiRequest {
  if (!isObject(body)) throw badRequest("the request body must be a JSON object", null);
  const { name, text: inputs } = textField(body, ["inputs", "prompt"]);
  if (inputs.length === 0) throw badRequest(`${name} must not be empty`, name);
  const rawParams = body.parameters ?? {};
  if (!isObject(rawParams)) throw badRequest("parameters must be an object", "parameters");
  const p = rawParams;

  const bestOf = intField(p, "best_of", 1);
  if (bestOf !== undefined && bestOf > 1)
    throw badRequest("best_of > 1 is not supported", "parameters.best_of");
  const structured = structuredOutput(body, "tgi");
  const typicalP = numberField(p, "typical_p");
  if (typicalP !== undefined && typicalP < 1) {
    throw badRequest("typical_p is not supported", "parameters.typical_p");
  }
  if (boolField(p, "watermark")) throw badRequest("watermark is not supported", "parameters.watermark");

  const temperature = numberField(p, "temperature");
  const topK = intField(p, "top_k", 0);
  const topP = numberField(p, "top_p");
  const repetitionPenalty = numberField(p, "repetition_penalty");
  const frequencyPenalty = numberField(p, "frequency_penalty");
  const seedIn = intField(p, "seed", 0);
  const doSample = boolField(p, "do_sample") ?? false;
  const sampling =
    doSample || (temperature !== undefined && temperature !== 1) || (topK ?? 0) > 0 || (topP ?? 1) < 1;
  const seed = sampling ? (seedIn ?? randomInt(0, 2 ** 32)) : null;
  const s: Partial<SamplingParams> = sampling
    ? { temperature: temperature ?? 1, topK, topP, seed: seed ?? undefined }
    : { temperature: 0 };
  if (repetitionPenalty !== undefined) s.repetitionPenalty = repetitionPenalty;
  if (frequencyPenalty !== undefined) s.frequencyPenalty = frequencyPenalty;
  try {
    validateSamplingParams(s);
  } catch (e) {
    if (e instanceof SamplingParamError) throw badRequest(e.message, `parameters.${e.param}`);
    throw e;
  }

  const stop = stopField(p, "stop", TGI_MAX_STOP, "parameters.stop");

  const details = boolField(p, "details") ?? false;
  const decoderInputDetails = boolField(p, "decoder_input_details") ?? false;
  const returnFullText = boolField(p, "return_full_text") ?? false;
  const topNTokens = intField(p, "top_n_tokens", 0, TGI_MAX_TOP_N_TOKENS) ?? 0;
  const ignoreEos = boolField(p, "ignore_eos") ?? false;
  const priority = given(p.priority) ? (intField(p, "priority", -(2 ** 31), 2 ** 31) ?? 0) : 0;
  const truncate = intField(p, "truncate", 1);

  let prompt = tok.encode(inputs, { addSpecial: true });
  if (truncate !== undefined && prompt.length > truncate) prompt = prompt.slice(prompt.length - truncate);
  const maxNewTokens =
    intField(p, "max_new_tokens", 1) ??
    defaultMaxTokens(prompt.length, contextLength, TGI_DEFAULT_MAX_NEW_TOKENS);
  // Token logprobs are reported in details and in every streamed token.
  return {
    inputs,
    inputsField: name,
    prompt,
    maxNewTokens,
    sampling: s,
    seed,
    stop,
    details,
    decoderInputDetails,
    returnFullText,
    topNTokens,
    stopAtEog: !ignoreEos,
    priority,
    structured,
  };
}

/** The engine's finish → TGI's finish_reason. An end-of-generation token is sampled but not counted. */
export function tgiFinishReason(f: FinishInfo): TgiFinishReason {
  if (f.reason === "stop") return f.tokenTimes.length > f.completionTokens ? "eos_token" : "stop_sequence";
  return "length";
}

/** The model's EOS: the fallback when a finish does not name the end-of-generation token. */
function eosId(m: LoadedModel): number {
  return m.info.eos ?? m.tokenizer.eos ?? m.info.eogTokens[0] ?? 0;
}

/** Turns one engine event into TGI tokens: the event's text goes with its last token. */
function eventTokens(e: EngineEvent, tok: Tokenizer, topN: number): { token: TgiToken; top?: TgiToken[] }[] {
  return e.tokens.map((id, i) => {
    const lp = e.logprobs?.[i];
    const token: TgiToken = {
      id,
      text: i === e.tokens.length - 1 ? e.text : "",
      logprob: lp && Number.isFinite(lp.logprob) ? lp.logprob : null,
      special: tok.isControl(id),
    };
    if (topN === 0 || !lp) return { token };
    const top = lp.topLogprobs.slice(0, topN).map((t) => ({
      id: t.token,
      text: tok.decode([t.token]),
      logprob: Number.isFinite(t.logprob) ? t.logprob : null,
      special: tok.isControl(t.token),
    }));
    return { token, top };
  });
}

function generationParams(r: TgiRequest, req: FastifyRequest, endpoint: string): GenerationParams {
  const wantLogprobs = endpoint === "/generate_stream" || r.details;
  return {
    prompt: r.prompt,
    maxTokens: r.maxNewTokens,
    sampling: { ...r.sampling, logprobs: wantLogprobs ? Math.max(1, r.topNTokens) : 0 },
    stop: r.stop,
    stopAtEog: r.stopAtEog,
    priority: r.priority,
    client: clientOf(req),
    endpoint,
    promptText: r.inputs,
    fields: { prompt: r.inputsField, maxTokens: "parameters.max_new_tokens" },
    structured: r.structured,
  };
}

function prefillDetails(r: TgiRequest, tok: Tokenizer) {
  if (!r.decoderInputDetails) return [];
  return r.prompt.map((id) => ({ id, text: tok.decode([id]), logprob: null }));
}

type TokenWithTop = { token: TgiToken; top?: TgiToken[] };

/** Answers a simple /generate body: whole, or streamed (`stream`). */
async function simpleGenerate(
  ctx: ServerContext,
  req: FastifyRequest,
  reply: FastifyReply,
  endpoint: string,
  forceStream: boolean,
) {
  const m = ctx.service.model(endpoint);
  const r = parseSimpleGenerate(req.body as Json, m.tokenizer);
  const params: GenerationParams = {
    prompt: r.ids,
    maxTokens: r.maxTokens,
    sampling: r.sampling,
    stop: r.stop,
    stopAtEog: true,
    priority: 0,
    client: clientOf(req),
    endpoint,
    promptText: r.prompt,
  };
  const signal = clientSignal(req, reply);
  const streams = await startChoices(ctx, [{ index: 0, prompt: 0, params }], signal);
  let text = "";
  const end = (f: FinishInfo) => ({
    finish_reason: stopOrLength(f),
    generated_text: text,
    usage: {
      prompt_tokens: r.ids.length,
      completion_tokens: f.completionTokens,
      total_tokens: r.ids.length + f.completionTokens,
    },
  });
  if (!(r.stream || forceStream)) {
    const [f] = await readChoices(streams, signal, (_i, e) => {
      text += e.text;
    });
    return { text, ...end(f!) };
  }
  return streamChoices(ctx, reply, streams, signal, {
    doneMarker: false,
    open() {},
    onEvent(_i, e) {
      text += e.text;
      if (e.finish) sendSSE(reply, { text: e.text, ...end(e.finish) });
      else if (e.text.length > 0) sendSSE(reply, { text: e.text, finish_reason: null });
    },
    close() {},
    errorEvent: errorBody,
  });
}

export function registerTgiRoutes(app: FastifyInstance, ctx: ServerContext): void {
  /** A TGI request (`inputs` + `parameters`) checked and admitted: its one choice, started. */
  const start = async (req: FastifyRequest, reply: FastifyReply, endpoint: string) => {
    const m = ctx.service.model(endpoint);
    const r = parseTgiRequest(req.body, m.tokenizer, m.info.contextLength);
    const signal = clientSignal(req, reply);
    const params = generationParams(r, req, endpoint);
    const streams = await startChoices(ctx, [{ index: 0, prompt: 0, params }], signal);
    return { m, r, signal, streams };
  };

  app.post("/generate", async (req, reply) => {
    const endpoint = "/generate";
    if (simpleGenerateField(req.body) !== undefined) return simpleGenerate(ctx, req, reply, endpoint, false);
    const { m, r, signal, streams } = await start(req, reply, endpoint);
    const tokens: TokenWithTop[] = [];
    let text = "";
    const [finish] = await readChoices(streams, signal, (_i, e) => {
      text += e.text;
      if (r.details) tokens.push(...eventTokens(e, m.tokenizer, r.topNTokens));
    });
    const reason = tgiFinishReason(finish!);
    const out: Json = { generated_text: r.returnFullText ? r.inputs + text : text };
    if (r.details) {
      if (reason === "eos_token") {
        tokens.push({ token: { id: finish!.eogToken ?? eosId(m), text: "", logprob: null, special: true } });
      }
      // Text released at the finish (held back for a stop string or a partial character) goes with the last token.
      const joined = tokens.reduce((s, t) => s + t.token.text, "");
      const last = tokens[tokens.length - 1];
      if (last && joined.length < text.length && text.startsWith(joined))
        last.token.text += text.slice(joined.length);
      const d: Json = {
        finish_reason: reason,
        generated_tokens: tokens.length,
        seed: r.seed,
        prefill: prefillDetails(r, m.tokenizer),
        tokens: tokens.map((t) => t.token),
      };
      if (r.topNTokens > 0) d.top_tokens = tokens.map((t) => t.top ?? []);
      out.details = d;
    }
    return out;
  });

  app.post("/generate_stream", async (req, reply) => {
    const endpoint = "/generate_stream";
    if (simpleGenerateField(req.body) !== undefined) return simpleGenerate(ctx, req, reply, endpoint, true);
    const { m, r, signal, streams } = await start(req, reply, endpoint);
    let index = 0;
    let text = "";
    const event = (token: TgiToken, top: TgiToken[] | undefined, final?: Json) => {
      index++;
      const ev: Json = { index, token };
      if (r.topNTokens > 0) ev.top_tokens = top ?? [];
      ev.generated_text = final ? (r.returnFullText ? r.inputs + text : text) : null;
      ev.details = final ?? null;
      sendSSE(reply, ev);
    };
    return streamChoices(ctx, reply, streams, signal, {
      doneMarker: false,
      open() {},
      onEvent(_i, e) {
        text += e.text;
        const toks = eventTokens(e, m.tokenizer, r.topNTokens);
        const f = e.finish;
        if (!f) {
          for (const t of toks) event(t.token, t.top);
          return;
        }
        // The last token carries the final text and details; a finish without a token of its own
        // (an end-of-generation token) is reported as that token, with any text released at the end.
        let last = toks.pop();
        for (const t of toks) event(t.token, t.top);
        if (!last)
          last = { token: { id: f.eogToken ?? eosId(m), text: e.text, logprob: null, special: true } };
        event(last.token, last.top, {
          finish_reason: tgiFinishReason(f),
          generated_tokens: index + 1,
          seed: r.seed,
          input_length: r.prompt.length,
        });
      },
      close() {},
      // Headers are out: the error goes into the stream, TGI's way.
      errorEvent: (e, f) => ({ error: e.message, error_type: f?.reason === "abort" ? e.code : "generation" }),
    });
  });
}
