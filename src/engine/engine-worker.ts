import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { SpindleError } from "../errors.js";
import { describeKernels } from "../kernels/kernels.js";
import type { ModelConfig } from "../model/config.js";
import { DEFAULT_BLOCK_SIZE, KVCacheStorage } from "../model/kv-cache.js";
import { loadModel, type Model } from "../model/model.js";
import { readModelCard } from "../model/model-card.js";
import { tuneSmallSplits } from "../model/tune-splits.js";
import type { Tokenizer } from "../tokenizer/index.js";
import { type Clock, EngineCore, type EngineEvent, type EngineOptions, realClock } from "./engine.js";
import {
  DEFAULT_KV_CACHE_BYTES,
  type EngineInfo,
  type EngineInit,
  type EngineStats,
  type FromWorker,
  oneLine,
  type StepInfo,
  type ToWorker,
  toWireError,
} from "./engine-protocol.js";
import { ModelRunner, type Runner } from "./runner.js";
import { DEFAULT_SCHEDULER_OPTIONS } from "./scheduler.js";
import type { RequestSpec } from "./sequence.js";
import { SimRunner } from "./sim-runner.js";

/**
 * The engine worker: the entry of the worker thread that owns the model, the KV
 * cache and the EngineCore. It runs the engine loop — step, post that step's
 * events in one message, yield so that add/abort/stats messages are handled,
 * repeat — and sleeps (no spinning) when there is nothing to do. The main thread
 * talks to it through EngineClient (engine-client.ts); the messages are in
 * engine-protocol.ts.
 */

/** workerData marker: only a worker started by EngineClient runs the loop (importing this file does nothing). */
export const ENGINE_WORKER_MARK = "spindleEngineWorker";

/** How long to wait before retrying when a step found nothing to do although requests remain. */
const IDLE_RETRY_MS = 5;

export interface KVSizing {
  numBlocks?: number;
  kvCacheBytes?: number;
  blockSize?: number;
}

/**
 * Blocks in the KV pool: `numBlocks` if given, else as many as `kvCacheBytes`
 * (default 256 MiB) holds, but no more than maxNumSeqs full contexts need.
 */
export function kvCacheBlocks(
  config: Pick<ModelConfig, "nLayers" | "nKVHeads" | "headDim" | "contextLength">,
  sizing: KVSizing,
  maxNumSeqs: number,
): number {
  const blockSize = sizing.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!(Number.isInteger(blockSize) && blockSize >= 1)) {
    throw new SpindleError(`the KV block size must be a positive integer, got ${blockSize}`);
  }
  if (sizing.numBlocks !== undefined) {
    if (!(Number.isInteger(sizing.numBlocks) && sizing.numBlocks >= 1)) {
      throw new SpindleError(`the number of KV blocks must be a positive integer, got ${sizing.numBlocks}`);
    }
    return sizing.numBlocks;
  }
  const bytes = sizing.kvCacheBytes ?? DEFAULT_KV_CACHE_BYTES;
  const fit = KVCacheStorage.blocksForBudget(config, bytes, blockSize);
  if (!(fit >= 1)) {
    const block = KVCacheStorage.bytesPerToken(config) * blockSize;
    throw new SpindleError(
      `a KV cache of ${bytes} bytes holds no block (one block of ${blockSize} tokens takes ${block} bytes); raise --kv-cache-memory`,
      "kv_cache_too_small",
    );
  }
  const needed = Math.ceil(config.contextLength / blockSize) * maxNumSeqs;
  return Math.min(fit, needed);
}

/** A real clock whose advance() sleeps: SimRunner steps then take their simulated time. */
function pacedClock(): Clock {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  return {
    now: () => performance.now(),
    advance: (ms) => {
      if (ms > 0) Atomics.wait(cell, 0, 0, ms);
    },
  };
}

interface Built {
  runner: Runner;
  /** Resolves when the compute is ready (kernel threads started). */
  ready?: () => Promise<void>;
  tokenizer: Tokenizer | undefined;
  clock: Clock;
  info: EngineInfo;
}

function build(init: EngineInit): Built {
  const opts = init.options ?? {};
  const maxNumSeqs = opts.maxNumSeqs ?? DEFAULT_SCHEDULER_OPTIONS.maxNumSeqs;
  const base = {
    scheduler: { ...DEFAULT_SCHEDULER_OPTIONS, ...definedOnly(opts) },
    prefixCaching: opts.prefixCaching ?? true,
    timeOrigin: performance.timeOrigin,
  };
  if (init.kind === "sim") {
    const card = init.tokenizerPath !== undefined ? readModelCard(init.tokenizerPath) : undefined;
    const tok = card?.tokenizer;
    const runner = new SimRunner(
      card
        ? {
            ...init.sim,
            vocabSize: card.vocabSize,
            contextLength: card.contextLength,
            avoid: new Set([...(init.sim.avoid ?? []), ...card.tokenizer.eogTokens]),
          }
        : init.sim,
    );
    return {
      runner,
      tokenizer: tok,
      clock: init.pace ? pacedClock() : realClock,
      info: {
        kind: "sim",
        modelPath: init.tokenizerPath,
        numBlocks: runner.numBlocks,
        blockSize: runner.blockSize,
        kvCacheBytes: 0,
        vocabSize: runner.vocabSize,
        contextLength: runner.contextLength,
        bos: tok?.bos,
        eos: tok?.eos,
        eogTokens: tok ? [...tok.eogTokens].sort((a, b) => a - b) : [],
        hasChatTemplate: card?.chatTemplate !== undefined,
        chatTemplate: card?.chatTemplate,
        ...base,
      },
    };
  }
  if (init.kind !== "model")
    throw new SpindleError(`unknown engine kind ${String((init as { kind: unknown }).kind)}`);
  const model: Model = loadModel(init.modelPath);
  const c = model.config;
  const numBlocks = kvCacheBlocks(c, init, maxNumSeqs);
  const runner = new ModelRunner(model, numBlocks, init.blockSize);
  const tok = model.tokenizer;
  const warnings: string[] = [];
  if (model.transformer.kernels.allocFloat32 && !runner.kv.inKernelMemory) {
    warnings.push(
      `the KV cache (${((runner.numBlocks * runner.blockSize * KVCacheStorage.bytesPerToken(c)) / 2 ** 20).toFixed(0)} MiB) does not fit in the ${model.transformer.kernels.name} kernels' memory next to the weights (4 GiB at most): it lives in plain arrays and attention runs in the slower reference kernel; lower --kv-cache-memory`,
    );
  }
  return {
    runner,
    // Kernel threads up, and whether decode-sized matmuls are split over them measured.
    ready: async () => {
      await tuneSmallSplits(model);
    },
    tokenizer: tok,
    clock: realClock,
    info: {
      kind: "model",
      modelPath: init.modelPath,
      model: {
        arch: c.arch,
        name: c.name,
        dim: c.dim,
        nLayers: c.nLayers,
        nHeads: c.nHeads,
        nKVHeads: c.nKVHeads,
        headDim: c.headDim,
        ffnDim: c.ffnDim,
        weightBytes: model.weightBytes,
      },
      kernels: describeKernels(model.transformer.kernels),
      numBlocks: runner.numBlocks,
      blockSize: runner.blockSize,
      kvCacheBytes: runner.numBlocks * runner.blockSize * KVCacheStorage.bytesPerToken(c),
      vocabSize: c.vocabSize,
      contextLength: c.contextLength,
      bos: tok.bos,
      eos: tok.eos,
      eogTokens: [...tok.eogTokens].sort((a, b) => a - b),
      hasChatTemplate: model.chatTemplate !== undefined,
      chatTemplate: model.chatTemplate,
      warnings,
      ...base,
    },
  };
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

class EngineHost {
  private engine!: EngineCore;
  private built!: Built;
  private engineOptions!: EngineOptions;
  /** Requests added and not yet reported finished. */
  private readonly inflight = new Set<string>();
  private wake: (() => void) | undefined;
  private started = false;
  private stopping = false;
  private stepFailures = 0;
  private lastStats: StepInfo | undefined;

  constructor(private readonly port: MessagePort) {
    port.on("message", (msg: ToWorker) => this.onMessage(msg));
  }

  private post(msg: FromWorker): void {
    this.port.postMessage(msg);
  }

  private onMessage(msg: ToWorker): void {
    switch (msg.type) {
      case "init":
        void this.init(msg.init);
        return;
      case "add":
        this.add(msg);
        break;
      case "abort":
        if (this.started) this.engine.abort(msg.id, msg.message);
        break;
      case "stats":
        if (this.started) this.post({ type: "stats", reqId: msg.reqId, stats: this.stats() });
        return;
      case "shutdown":
        this.shutdown();
        break;
    }
    this.notify();
  }

  private async init(init: EngineInit): Promise<void> {
    if (this.started) return;
    try {
      this.built = build(init);
      this.engineOptions = { ...init.options, tokenizer: this.built.tokenizer, clock: this.built.clock };
      this.engine = new EngineCore(this.built.runner, this.engineOptions);
      // Kernel threads start in the background; the first step should not wait for them.
      await this.built.ready?.();
    } catch (err) {
      this.post({ type: "error", error: toWireError(err, "engine_start_failed") });
      return;
    }
    this.started = true;
    this.post({ type: "ready", info: this.built.info });
    void this.loop();
  }

  private add(msg: { spec: RequestSpec }): void {
    const id = msg.spec?.id;
    try {
      if (!this.started) throw new SpindleError("the engine is not started");
      if (this.stopping) throw new SpindleError("the engine is shutting down", "engine_closed");
      this.engine.add(msg.spec);
      this.inflight.add(id);
    } catch (err) {
      this.post({ type: "rejected", id: String(id), error: toWireError(err, "invalid_request_error") });
    }
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Resolves at the next message, or after `ms` if given. */
  private waitForMessage(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => this.notify(), ms);
      this.wake = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
    });
  }

  private async loop(): Promise<void> {
    while (!this.stopping) {
      if (!this.engine.hasWork()) {
        await this.waitForMessage();
        // Let the rest of a burst of messages in before the first step, so it is batched.
        await yieldToEventLoop();
        continue;
      }
      const at = this.engine.nextWakeup();
      if (at !== undefined) {
        // Window batching: admission opens at `at`; a message (an abort, a request that fills the batch) may change that.
        await this.waitForMessage(Math.max(1, Math.ceil(at - this.built.clock.now())));
        continue;
      }
      const didSomething = this.runStep();
      if (didSomething) await yieldToEventLoop();
      else await this.waitForMessage(IDLE_RETRY_MS);
    }
  }

  /** One engine step and its message. False if the step had nothing to do. */
  private runStep(): boolean {
    const t0 = performance.now();
    let events: EngineEvent[];
    try {
      events = this.engine.step();
    } catch (err) {
      events = this.recover(err);
    }
    const stepMs = performance.now() - t0;
    for (const e of events) if (e.finish) this.inflight.delete(e.id);
    const batchSize = this.engine.lastStep.batchSize;
    if (events.length === 0 && batchSize === 0) return false;
    this.lastStats = this.stepInfo(stepMs);
    this.post({ type: "step", events, stats: this.lastStats });
    return true;
  }

  /**
   * A step threw: finish every request in flight with reason "error", and go on
   * serving — with a fresh engine (same runner, same KV memory) if the old one's
   * state can no longer be trusted.
   */
  private recover(err: unknown): EngineEvent[] {
    this.stepFailures++;
    const message = `engine step failed: ${oneLine(err)}`;
    let events: EngineEvent[] = [];
    let healthy = true;
    try {
      for (const id of this.inflight) this.engine.abort(id, message, "error");
      // Nothing is left to schedule: this returns the failed step's events and the aborts' finishes.
      events = this.engine.step();
    } catch {
      healthy = false;
    }
    const finished = new Set(events.filter((e) => e.finish).map((e) => e.id));
    const now = this.built.clock.now();
    for (const id of this.inflight) {
      if (finished.has(id)) continue;
      const seq = this.engine.get(id);
      events.push({
        id,
        tokens: [],
        text: "",
        finish: {
          reason: "error",
          message,
          promptTokens: seq?.promptLength ?? 0,
          cachedTokens: seq?.cachedTokens ?? 0,
          completionTokens: seq?.numOutput ?? 0,
          preemptions: seq?.preemptions ?? 0,
          times: { ...(seq?.times ?? { arrival: now }), finished: now },
          tokenTimes: seq?.tokenTimes ?? [],
        },
      });
    }
    if (!healthy || this.engine.numUnfinished > 0 || !this.engine.blocks.allFree()) {
      this.engine = new EngineCore(this.built.runner, this.engineOptions);
    }
    return events;
  }

  private shutdown(): void {
    if (this.stopping) return;
    this.stopping = true;
    if (this.started) {
      let events: EngineEvent[] = [];
      try {
        for (const id of this.inflight) this.engine.abort(id, "the engine is shutting down");
        events = this.engine.step();
      } catch (err) {
        events = this.recover(err);
      }
      this.inflight.clear();
      if (events.length > 0) this.post({ type: "step", events, stats: this.stepInfo(0) });
    }
    this.post({ type: "closed" });
    // Nothing else holds the thread: it exits (code 0) once these messages are out.
    this.port.close();
  }

  private stepInfo(stepMs: number): StepInfo {
    const e = this.engine;
    return {
      ...e.lastStep,
      step: e.steps,
      stepMs,
      kvUsage: e.blocks.usage,
      freeBlocks: e.blocks.numFree,
      numBlocks: e.blocks.numBlocks,
      waiting: e.scheduler.waiting.length,
      running: e.scheduler.running.length,
      totalPreemptions: e.scheduler.totalPreemptions,
      prefix: { ...e.prefixStats },
    };
  }

  private stats(): EngineStats {
    const e = this.engine;
    return {
      steps: e.steps,
      waiting: e.scheduler.waiting.length,
      running: e.scheduler.running.length,
      unfinished: e.numUnfinished,
      kvUsage: e.blocks.usage,
      freeBlocks: e.blocks.numFree,
      numBlocks: e.blocks.numBlocks,
      totalPreemptions: e.scheduler.totalPreemptions,
      prefix: { ...e.prefixStats },
      stepFailures: this.stepFailures,
      lastStep: this.lastStats,
    };
  }
}

if (parentPort && (workerData as Record<string, unknown> | undefined)?.[ENGINE_WORKER_MARK] === true) {
  new EngineHost(parentPort);
}
