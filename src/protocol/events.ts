import type { SampleResult } from "../sampling/sampler.js";
import type { FinishReason, SeqTimes } from "./request.js";

/**
 * The finish reason the OpenAI, Ollama and TGI-simple protocols know: "stop" when the output ended
 * on its own (EOS, a stop string, a completed grammar), "length" otherwise (max tokens, the context).
 * Aborted and failed requests end with an error instead, so they never reach a finish_reason.
 */
export const stopOrLength = (f: { reason: FinishReason }): "stop" | "length" =>
  f.reason === "stop" ? "stop" : "length";

/** How a request ended, with its counts and times: what responses, metrics and logs are made of. */
export interface FinishInfo {
  reason: FinishReason;
  message?: string;
  /** The end-of-generation token that ended the request (reason "stop" at EOS/EOT), when one did. */
  eogToken?: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  preemptions: number;
  times: SeqTimes;
  /** Times of each sampled token (an end-of-generation token included, though it is not output). */
  tokenTimes: number[];
}

/** What one step of a producer made for one request: new tokens, the text now safe to send, maybe the end. */
export interface EngineEvent {
  id: string;
  tokens: number[];
  text: string;
  /** Per new token, when the request asked for logprobs. */
  logprobs?: SampleResult[];
  /** An embedding request's pooled, L2-normalized vector, on its finishing event (reason "stop"). */
  embedding?: Float32Array;
  finish?: FinishInfo;
}

/** A whole request's output, gathered. */
export interface RequestResult {
  tokens: number[];
  text: string;
  /** An embedding request's vector. */
  embedding?: Float32Array;
  finish: FinishInfo;
}
