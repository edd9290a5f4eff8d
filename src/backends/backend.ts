import type { EmbeddingInfo, StepInfo } from "../engine/engine-protocol.js";
import type { RequestStream } from "../protocol/event-stream.js";
import type { SubmitOptions, SubmitSpec } from "../protocol/request.js";
import type { Tokenizer } from "../tokenizer/index.js";

/**
 * What the serving layer (src/server) talks to: something that takes a request
 * in token ids with sampling parameters and gives back a stream of events
 * (tokens, text, finish). Spindle's admission control, rate limits, request log
 * and request metrics sit in front of every backend alike; what differs is who
 * computes the tokens:
 *
 *   local     the in-process engine (worker thread, continuous batching, paged KV)  engine-backend.ts
 *   sim       the same engine with the simulated runner: no model compute           engine-backend.ts
 *   llamacpp  llama.cpp in process through node-llama-cpp                           llamacpp-backend.ts
 *   openai    one or more upstream OpenAI-compatible servers over HTTP              openai-backend.ts
 *
 * local and sim queue and prioritise inside the engine's scheduler. llamacpp
 * and openai have a fixed number of slots (sequences in llama.cpp's context,
 * requests in flight per upstream); their requests wait for a slot in a
 * SlotQueue (slot-queue.ts) that orders them with the same policies.
 *
 * Every event's times (FinishInfo.times, tokenTimes) are on one clock per
 * request, so differences (TTFT, ITL) are right whatever the clock's origin.
 */

export type BackendKind = "local" | "sim" | "llamacpp" | "openai";

export const BACKEND_KINDS: readonly BackendKind[] = ["local", "sim", "llamacpp", "openai"];

/** What the HTTP layer needs to know about the model behind a backend. */
export interface BackendInfo {
  kind: BackendKind;
  /** Longest prompt + completion, tokens. */
  contextLength: number;
  vocabSize: number;
  bos?: number;
  eos?: number;
  /** End-of-generation token ids. */
  eogTokens: number[];
  chatTemplate?: string;
  /**
   * Embedding requests (RequestSpec.kind "embed"): the vector length and pooling; absent when the
   * backend computes none (llamacpp and openai: their requests are refused).
   */
  embeddings?: EmbeddingInfo;
  /** Facts for the "ready" log line and /health (numBlocks, upstream URLs, thread count…). */
  details: Record<string, unknown>;
  /** Things an operator should know, logged once at start. */
  warnings?: string[];
}

/** Requests waiting for a slot and holding one, for the queue gauges of backends without an engine. */
export interface QueueState {
  waiting: number;
  running: number;
}

export interface Backend {
  readonly info: BackendInfo;
  /** The model's tokenizer, read from its GGUF: routes tokenize prompts and render chat templates with it. */
  readonly tokenizer: Tokenizer;
  /**
   * Starts one generation. Never throws: a request the backend refuses, or a backend that
   * is down, fails the stream (iteration throws a SpindleError). Aborting `opts.signal`
   * aborts the request; the stream then ends with finish reason "abort".
   */
  submit(spec: SubmitSpec, opts?: SubmitOptions): RequestStream;
  /** Engine step stats (local, sim). Returns the unsubscribe function. */
  onStep?(cb: (s: StepInfo) => void): () => void;
  /**
   * Facts the engine measures after ready (local: the decode split), merged into info.details
   * before `cb` sees them. Returns the unsubscribe function.
   */
  onMeasured?(cb: (facts: Record<string, unknown>) => void): () => void;
  /** The latest engine step (local, sim), for the periodic engine log line. */
  readonly lastStep?: StepInfo;
  /** Queue changes (llamacpp, openai). Returns the unsubscribe function. */
  onQueue?(cb: (q: QueueState) => void): () => void;
  /** Live state for /health (upstream health, slots in use…). */
  health?(): Record<string, unknown>;
  /** Aborts what is in flight (streams end with reason "abort") and releases everything. Idempotent. */
  close(): Promise<void>;
}
