import { oneLine, SpindleError } from "../errors.js";
import { GrammarError } from "../grammar/constraint.js";
import type { KVCacheType } from "../kernels/kernels.js";
import type { ModelConfig } from "../model/config.js";
import type { PoolingType } from "../model/pooling.js";
import type { SplitChoice } from "../model/tune-splits.js";
import type { EngineEvent } from "../protocol/events.js";
import type { RequestSpec } from "../protocol/request.js";
import { SamplingParamError } from "../sampling/params.js";
import type { PrefixCacheStats, WindowPool } from "./block-manager.js";
import type { EngineOptions, StepStats } from "./engine.js";
import type { SchedulerOptions } from "./scheduler.js";
import type { SimRunnerOptions } from "./sim-runner.js";
import type { SpecStats } from "./speculation.js";

/**
 * The messages between the main thread (engine-client.ts) and the engine
 * worker (engine-worker.ts). Everything here crosses a structured clone.
 *
 *   main → worker   init (once, first) · add · abort · stats · shutdown
 *   worker → main   loading (weights read so far, while init runs) · ready | error (answer to
 *                   init) · step (one per engine step:
 *                   every event of that step, batched, plus step stats) ·
 *                   rejected (an add the engine refused) · stats · closed
 *
 * Requests are routed by RequestSpec.id. Times inside events (FinishInfo.times,
 * tokenTimes) are the worker's performance.now(); EngineInfo.timeOrigin turns them
 * into wall-clock time (or EngineClient.clockOffsetMs into the main thread's).
 */

/**
 * Engine options that can cross to the worker (no clock, no tokenizer, no drafter: the worker supplies
 * those, the drafter from `speculative.draftModel`).
 */
export type WorkerEngineOptions = Omit<EngineOptions, "clock" | "tokenizer" | "drafter">;

export interface ModelEngineInit {
  kind: "model";
  modelPath: string;
  /** KV blocks in the pool; takes precedence over kvCacheBytes. */
  numBlocks?: number;
  /** KV memory budget (default 256 MiB), capped to what maxNumSeqs full contexts need. */
  kvCacheBytes?: number;
  /** Tokens per KV block (default 16). */
  blockSize?: number;
  /** `--kv-cache-type`: the KV cache's element type (default f32); the byte budget holds twice the blocks in f16. */
  kvCacheType?: KVCacheType;
  /** `--ctx-size`: caps each sequence's context (at most the model's) and sizes the KV pool (kv-sizing.ts). */
  contextLength?: number;
  options?: WorkerEngineOptions;
  /** When the decode split is measured again (engine-worker.ts DEFAULT_RETUNE); tests shorten it. */
  retune?: { idleMs?: number; everyMs?: number };
  /** `--decode-split on|off`: the decode split fixed, never measured; absent: measured while idle. */
  decodeSplit?: "on" | "off";
}

export interface SimEngineInit {
  kind: "sim";
  sim: SimRunnerOptions;
  options?: WorkerEngineOptions;
  /** Sleep each step's simulated duration, so the simulated engine runs at a realistic pace. Default false. */
  pace?: boolean;
  /**
   * A GGUF whose tokenizer the simulator speaks (its weights are not read): events then carry
   * text, stop strings apply, and vocabulary size, context length and end-of-generation tokens
   * (never emitted) come from it, overriding `sim`.
   */
  tokenizerPath?: string;
}

export type EngineInit = ModelEngineInit | SimEngineInit;

export type ModelSummary = Pick<
  ModelConfig,
  "arch" | "name" | "dim" | "nLayers" | "nHeads" | "nKVHeads" | "headDim" | "ffnDim"
> & { weightBytes: number };

/** What the worker reports once it is ready. */
export interface EngineInfo {
  kind: "model" | "sim";
  modelPath?: string;
  /** Model kind only. */
  model?: ModelSummary;
  /** Model kind only: the compute kernels, e.g. "wasm kernels (relaxed build), 2 threads". */
  kernels?: string;
  numBlocks: number;
  /** A Gemma model's sliding-window layers' own KV pool: their window and its blocks. */
  windowPool?: WindowPool;
  blockSize: number;
  /** KV cache memory in bytes (model kind; 0 for the simulator). */
  kvCacheBytes: number;
  /** The KV cache's element type (model kind). */
  kvCacheType?: KVCacheType;
  vocabSize: number;
  contextLength: number;
  bos?: number;
  eos?: number;
  /** End-of-generation token ids. */
  eogTokens: number[];
  hasChatTemplate: boolean;
  chatTemplate?: string;
  /** What embedding requests return (vector length, pooling); absent when the model computes none. */
  embeddings?: EmbeddingInfo;
  scheduler: SchedulerOptions;
  prefixCaching: boolean;
  /** The worker's performance.timeOrigin: engine times + timeOrigin = Unix ms. */
  timeOrigin: number;
  /**
   * Whether decode-sized matmuls are split over the kernel threads, as last measured
   * (tuneSmallSplits: decode steps each way, first while idle right after ready); absent with one
   * thread and until measured. Logged, because a machine busy during that measurement can make it
   * choose the slower way.
   */
  decodeSplits?: SplitChoice;
  /**
   * Speculative decoding: what verifying one draft token costs relative to a one-token decode step,
   * as given (`--spec-token-cost`) or measured after start.
   */
  specVerifyCost?: number;
  /** Speculative decoding with a draft model: its file, shape, and the measured cost of a draft token. */
  draftModel?: { path: string; model: ModelSummary; tokenCost: number; kvCacheBytes: number };
  /** Things an operator should know (logged at start), e.g. a KV cache that did not fit kernel memory. */
  warnings?: string[];
}

/** The embeddings a model computes: their length and how positions are pooled. */
export interface EmbeddingInfo {
  length: number;
  pooling: PoolingType;
}

/** Sent with every step: the step's own numbers and the engine's state after it. */
export interface StepInfo extends StepStats {
  /** Engine steps run so far (this one included). */
  step: number;
  /** Wall time of the step in the worker, ms. */
  stepMs: number;
  /** Fraction of KV blocks in use (cached-but-free blocks count as free). */
  kvUsage: number;
  freeBlocks: number;
  numBlocks: number;
  waiting: number;
  running: number;
  totalPreemptions: number;
  prefix: PrefixCacheStats;
  /** Speculative decoding's counters since the engine started; absent when it is off. */
  spec?: SpecStats;
}

export interface EngineStats {
  steps: number;
  waiting: number;
  running: number;
  /** Requests the engine holds (waiting + running + finished but not yet reported). */
  unfinished: number;
  kvUsage: number;
  freeBlocks: number;
  numBlocks: number;
  totalPreemptions: number;
  prefix: PrefixCacheStats;
  /** A Gemma model's sliding-window layers' own KV pool (numBlocks, freeBlocks are the other layers'). */
  windowPool?: { window: number; numBlocks: number; freeBlocks: number };
  /** Steps that threw (their requests were finished with reason "error"). */
  stepFailures: number;
  /** Speculative decoding with a draft model: its own KV pool (blocks, free blocks) and the sequences holding some. */
  draftCache?: { numBlocks: number; freeBlocks: number; sequences: number };
  /** Several kernel threads: the decode split now in use, its timings, and how often it was re-measured since start. */
  decodeSplits?: DecodeSplits;
  lastStep?: StepInfo;
}

/** The decode split in use, its timings, and how often it was measured again after the first time. */
export type DecodeSplits = SplitChoice & { retunes: number };

/** An error as it crosses threads. */
export interface WireError {
  name: string;
  message: string;
  code: string;
  /** SamplingParamError's field name; GrammarError's field. */
  param?: string;
  /** GrammarError's reason. */
  reason?: string;
}

export type ToWorker =
  | { type: "init"; init: EngineInit }
  | { type: "add"; spec: RequestSpec }
  | { type: "abort"; id: string; message?: string }
  | { type: "stats"; reqId: number }
  | { type: "shutdown" };

export type FromWorker =
  | { type: "ready"; info: EngineInfo }
  /** While the model loads (before ready): bytes of weights read so far, of total. */
  | { type: "loading"; loaded: number; total: number }
  | { type: "error"; error: WireError }
  | { type: "step"; events: EngineEvent[]; stats: StepInfo }
  | { type: "rejected"; id: string; error: WireError }
  | { type: "stats"; reqId: number; stats: EngineStats }
  /** The decode split was measured (the first time after ready, or again). */
  | { type: "decodeSplits"; decodeSplits: DecodeSplits }
  | { type: "closed" };

export function toWireError(err: unknown, fallbackCode = "internal_error"): WireError {
  const w: WireError = {
    name: err instanceof Error ? err.name : "Error",
    message: oneLine(err),
    code: err instanceof SpindleError ? err.code : fallbackCode,
  };
  if (err instanceof SamplingParamError) w.param = err.param;
  if (err instanceof GrammarError) {
    w.code = "invalid_grammar";
    w.param = err.field;
    w.reason = err.reason;
  }
  return w;
}

/** The error again, on the other side: SamplingParamError and GrammarError keep their fields. */
export function fromWireError(w: WireError): SpindleError | GrammarError {
  if (w.name === "SamplingParamError" && w.param !== undefined)
    return new SamplingParamError(w.param, w.message);
  if (w.name === "GrammarError" && w.param !== undefined)
    return new GrammarError(w.param, w.reason ?? w.message);
  const e = new SpindleError(w.message, w.code);
  if (w.name !== "Error") e.name = w.name;
  return e;
}
