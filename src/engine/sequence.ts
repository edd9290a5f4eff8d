import { SpindleError } from "../errors.js";
import type { SamplingParams } from "../sampling/params.js";

/**
 * A request inside the engine, and its life as an explicit state machine:
 *
 *   waiting ──schedule──▶ running ──(prefill chunks, then one token per step)──▶ finished
 *      ▲                     │
 *      └──── preempted ◀─────┘   (blocks ran out: KV freed, recomputed later)
 *
 * finished carries a reason: stop (EOS or a stop string), length (max tokens or
 * context), abort (cancelled or timed out), error. Every transition is
 * timestamped, so metrics and logs are derived from the sequence, not kept apart.
 */

export type SeqState = "waiting" | "running" | "finished";
export type FinishReason = "stop" | "length" | "abort" | "error";

export interface RequestSpec {
  id: string;
  /** Prompt token ids (BOS included when the model wants one). */
  prompt: number[];
  maxTokens: number;
  sampling?: Partial<SamplingParams>;
  stop?: string[];
  /** Stop at end-of-generation tokens (default true). */
  stopAtEog?: boolean;
  /** Lower value = more urgent (vLLM's convention). Default 0. */
  priority?: number;
  /** Abort the request this many ms after arrival. */
  timeoutMs?: number;
}

/**
 * Why a request can never run on a model with this context and vocabulary, or undefined: an empty
 * prompt, max_tokens below 1, a prompt that leaves no room to generate, a token id outside the
 * vocabulary. Shared by the engine and the slot backends, so every backend refuses alike;
 * `invalidCode` is the error code of the invalid-request cases.
 */
export function requestProblem(
  spec: RequestSpec,
  limits: { contextLength: number; vocabSize: number },
  invalidCode?: string,
): SpindleError | undefined {
  if (spec.prompt.length === 0) return new SpindleError("the prompt is empty", invalidCode);
  if (!(spec.maxTokens >= 1)) return new SpindleError("max_tokens must be at least 1", invalidCode);
  const ctx = limits.contextLength;
  if (spec.prompt.length >= ctx) {
    return new SpindleError(
      `the prompt has ${spec.prompt.length} tokens but the model's context is ${ctx}: at most ${ctx - 1} prompt tokens leave room to generate`,
      "context_length_exceeded",
    );
  }
  const vocab = limits.vocabSize;
  for (const t of spec.prompt) {
    if (!(Number.isInteger(t) && t >= 0 && t < vocab)) {
      return new SpindleError(`token id ${t} is outside the vocabulary (0..${vocab - 1})`, invalidCode);
    }
  }
  return undefined;
}

export interface SeqTimes {
  arrival: number;
  firstScheduled?: number;
  firstToken?: number;
  lastToken?: number;
  finished?: number;
}

export class Sequence {
  state: SeqState = "waiting";
  finishReason: FinishReason | undefined;
  errorMessage: string | undefined;
  /** prompt followed by every generated token: what the KV cache must hold. */
  readonly tokens: number[];
  readonly promptLength: number;
  /** How many of `tokens` have their K/V in the cache. */
  numComputed = 0;
  /** Prompt tokens served from the prefix cache at (last) admission. */
  cachedTokens = 0;
  /** Block ids covering positions 0 .. numComputed (+ tokens being computed). */
  blockTable: number[] = [];
  /** How many leading blocks of blockTable have had their prefix key computed (and registered if new). */
  numHashedBlocks = 0;
  /** Prefix-cache key of the last of those blocks ("" before the first). */
  prefixKey = "";
  preemptions = 0;
  readonly times: SeqTimes;
  /** Time of each generated token (for inter-token latency). */
  readonly tokenTimes: number[] = [];
  readonly priority: number;

  constructor(
    readonly spec: RequestSpec,
    now: number,
  ) {
    this.tokens = [...spec.prompt];
    this.promptLength = spec.prompt.length;
    this.priority = spec.priority ?? 0;
    this.times = { arrival: now };
  }

  get id(): string {
    return this.spec.id;
  }
  get numOutput(): number {
    return this.tokens.length - this.promptLength;
  }
  get outputTokens(): number[] {
    return this.tokens.slice(this.promptLength);
  }
  /** Tokens whose K/V still has to be computed before the next token can be sampled. */
  get numPending(): number {
    return this.tokens.length - this.numComputed;
  }
  get isFinished(): boolean {
    return this.state === "finished";
  }
}
