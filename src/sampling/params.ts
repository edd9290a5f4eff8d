import { SpindleError } from "../errors.js";

/** How the next token is chosen. Defaults: see defaultSamplingParams(). */
export interface SamplingParams {
  /** 0 = greedy; default 1. Range 0..2. */
  temperature: number;
  /** Keep only the k most likely tokens; 0 or < 0 = off. */
  topK: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches p; 1 = off. Range 0..1. */
  topP: number;
  /** Drop tokens less likely than minP times the most likely one; 0 = off. Range 0..1. */
  minP: number;
  /** 1 = off. llama.cpp / HF semantics: divide positive logits by it, multiply negative ones. */
  repetitionPenalty: number;
  /** 0 = off. OpenAI semantics: subtract once from each token present in the window. Range -2..2. */
  presencePenalty: number;
  /** 0 = off. OpenAI semantics: subtract count × penalty from each token in the window. Range -2..2. */
  frequencyPenalty: number;
  /** How many of the most recent tokens the penalties look at; default 64; -1 = the whole context; 0 = none. */
  penaltyLastN: number;
  /** Token id → bias added to its logit. -100 or less (or -Infinity) bans the token. Range -100..100. */
  logitBias: Map<number, number> | undefined;
  /** Seed for the sampler's RNG; undefined = seeded from crypto random. */
  seed: number | undefined;
  /** 0 = report only the chosen token's logprob; n (1..20) = also the n most likely tokens. */
  logprobs: number;
}

/** A bias at or below this bans the token (OpenAI: "-100 should result in a ban"). */
export const BAN_BIAS = -100;
export const MAX_LOGPROBS = 20;

export function defaultSamplingParams(): SamplingParams {
  return {
    temperature: 1,
    topK: 0,
    topP: 1,
    minP: 0,
    repetitionPenalty: 1,
    presencePenalty: 0,
    frequencyPenalty: 0,
    penaltyLastN: 64,
    logitBias: undefined,
    seed: undefined,
    logprobs: 0,
  };
}

/**
 * A bad sampling parameter. `param` is the request's field name (snake_case, as in the
 * OpenAI / vLLM API: `top_p`, `logit_bias`…), so the HTTP layer can report it as-is.
 */
export class SamplingParamError extends SpindleError {
  constructor(
    readonly param: string,
    message: string,
  ) {
    super(message, "invalid_request_error");
    this.name = "SamplingParamError";
  }
}

function fail(param: string, problem: string): never {
  throw new SamplingParamError(param, `${param} ${problem}`);
}

function num(v: unknown, param: string): number {
  if (typeof v !== "number" || Number.isNaN(v)) fail(param, "must be a number");
  return v;
}

function range(v: unknown, param: string, lo: number, hi: number): number {
  const n = num(v, param);
  if (!(n >= lo && n <= hi)) fail(param, `must be between ${lo} and ${hi}`);
  return n;
}

function int(v: unknown, param: string): number {
  const n = num(v, param);
  if (!Number.isSafeInteger(n)) fail(param, "must be an integer");
  return n;
}

/**
 * Fills in defaults and checks every field. Throws SamplingParamError (a SpindleError) whose
 * one-line message names the field, e.g. "temperature must be between 0 and 2".
 * Fields that are undefined take their default. Bias values ≤ -100 become -Infinity (a ban).
 */
export function validateSamplingParams(p: Partial<SamplingParams>): SamplingParams {
  const d = defaultSamplingParams();
  const out: SamplingParams = { ...d };
  if (p.temperature !== undefined) out.temperature = range(p.temperature, "temperature", 0, 2);
  if (p.topK !== undefined) out.topK = int(p.topK, "top_k");
  if (p.topP !== undefined) out.topP = range(p.topP, "top_p", 0, 1);
  if (p.minP !== undefined) out.minP = range(p.minP, "min_p", 0, 1);
  if (p.repetitionPenalty !== undefined) {
    const r = num(p.repetitionPenalty, "repetition_penalty");
    if (!(r > 0 && Number.isFinite(r))) fail("repetition_penalty", "must be a positive number");
    out.repetitionPenalty = r;
  }
  if (p.presencePenalty !== undefined)
    out.presencePenalty = range(p.presencePenalty, "presence_penalty", -2, 2);
  if (p.frequencyPenalty !== undefined) {
    out.frequencyPenalty = range(p.frequencyPenalty, "frequency_penalty", -2, 2);
  }
  if (p.penaltyLastN !== undefined) {
    const n = int(p.penaltyLastN, "penalty_last_n");
    if (n < -1) fail("penalty_last_n", "must be -1 (whole context) or a count of tokens ≥ 0");
    out.penaltyLastN = n;
  }
  if (p.logitBias !== undefined) {
    if (!(p.logitBias instanceof Map)) fail("logit_bias", "must map token ids to numbers");
    const bias = new Map<number, number>();
    for (const [tok, b] of p.logitBias) {
      if (typeof tok !== "number" || !Number.isSafeInteger(tok) || tok < 0) {
        fail("logit_bias", `has a bad token id ${String(tok)}: token ids are integers ≥ 0`);
      }
      if (typeof b !== "number" || Number.isNaN(b) || b > 100 || (b < -100 && b !== -Infinity)) {
        fail("logit_bias", `value for token ${tok} must be between -100 and 100`);
      }
      bias.set(tok, b <= BAN_BIAS ? -Infinity : b);
    }
    out.logitBias = bias.size > 0 ? bias : undefined;
  }
  if (p.seed !== undefined) out.seed = int(p.seed, "seed");
  if (p.logprobs !== undefined) {
    const n = int(p.logprobs, "logprobs");
    if (n < 0 || n > MAX_LOGPROBS) fail("logprobs", `must be between 0 and ${MAX_LOGPROBS}`);
    out.logprobs = n;
  }
  return out;
}
