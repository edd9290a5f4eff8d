import { SpindleError } from "../errors.js";
import type { SamplingParams } from "../sampling/params.js";

/**
 * A generation request as every layer sees it: the server builds one, a backend (the engine, a
 * llama.cpp slot, an upstream) runs it. Prompts are always token ids: templating and tokenizing
 * happen before a request is made.
 *
 * A request is of one of two kinds: `generate` (the default) samples tokens after its prompt;
 * `embed` only computes its prompt (a prefill, never a token sampled) and ends with the prompt's
 * pooled, normalized final hidden state (EngineEvent.embedding); maxTokens does not apply to it.
 */

export type RequestKind = "generate" | "embed";

export type FinishReason = "stop" | "length" | "abort" | "error";

export interface RequestSpec {
  id: string;
  /** Default "generate". */
  kind?: RequestKind;
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

/** A request as submitted: RequestSpec, with the id optional (the backend makes one up). */
export type SubmitSpec = Omit<RequestSpec, "id"> & { id?: string };

export interface SubmitOptions {
  /** Aborting it aborts the request at once (a client disconnect, a timeout). */
  signal?: AbortSignal;
}

/** When a request reached each stage, in its producer's performance.now() milliseconds. */
export interface SeqTimes {
  arrival: number;
  firstScheduled?: number;
  firstToken?: number;
  lastToken?: number;
  finished?: number;
}

/** The model facts a request is checked against. */
export interface RequestLimits {
  contextLength: number;
  vocabSize: number;
}

/**
 * Why a request can never run on a model with this context and vocabulary, or undefined: an empty
 * prompt, max_tokens below 1, a prompt that leaves no room to generate (an embedding's input may
 * fill the context), a token id outside the vocabulary. Every backend refuses alike through it;
 * `invalidCode` is the error code of the invalid-request cases.
 */
export function requestProblem(
  spec: Pick<RequestSpec, "prompt" | "maxTokens" | "kind">,
  limits: RequestLimits,
  invalidCode?: string,
): SpindleError | undefined {
  if (spec.prompt.length === 0) return new SpindleError("the prompt is empty", invalidCode);
  const ctx = limits.contextLength;
  if (spec.kind === "embed") {
    if (spec.prompt.length > ctx) {
      return new SpindleError(
        `the input has ${spec.prompt.length} tokens but the model's context is ${ctx}`,
        "context_length_exceeded",
      );
    }
    return idProblem(spec.prompt, limits.vocabSize, invalidCode);
  }
  if (!(spec.maxTokens >= 1)) return new SpindleError("max_tokens must be at least 1", invalidCode);
  if (spec.prompt.length >= ctx) {
    return new SpindleError(
      `the prompt has ${spec.prompt.length} tokens but the model's context is ${ctx}: at most ${ctx - 1} prompt tokens leave room to generate`,
      "context_length_exceeded",
    );
  }
  return idProblem(spec.prompt, limits.vocabSize, invalidCode);
}

function idProblem(prompt: number[], vocab: number, invalidCode?: string): SpindleError | undefined {
  for (const t of prompt) {
    if (!(Number.isInteger(t) && t >= 0 && t < vocab)) {
      return new SpindleError(`token id ${t} is outside the vocabulary (0..${vocab - 1})`, invalidCode);
    }
  }
  return undefined;
}
