import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { oneLine, SpindleError } from "../errors.js";
import type { SplitChoice } from "../model/tune-splits.js";
import type { EngineEvent } from "../protocol/events.js";
import { RequestOutput } from "../protocol/output.js";
import type { RequestSpec } from "../protocol/request.js";
import { EngineCore, type EngineOptions } from "./engine.js";
import { type Built, build } from "./engine-build.js";
import {
  type EngineInit,
  type EngineStats,
  type FromWorker,
  type StepInfo,
  type ToWorker,
  toWireError,
} from "./engine-protocol.js";

/**
 * The engine worker: the entry of the worker thread that owns the model, the KV
 * cache and the EngineCore (built from the init message by engine-build.ts, the
 * pool sized by kv-sizing.ts). Its EngineHost runs the engine loop — step, post that step's
 * events in one message, yield so that add/abort/stats messages are handled,
 * repeat — and sleeps (no spinning) when there is nothing to do. The main thread
 * talks to it through EngineClient (engine-client.ts); the messages are in
 * engine-protocol.ts.
 */

/** workerData marker: only a worker started by EngineClient runs the loop (importing this file does nothing). */
export const ENGINE_WORKER_MARK = "spindleEngineWorker";

/** How long to wait before retrying when a step found nothing to do although requests remain. */
const IDLE_RETRY_MS = 5;

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Measuring the decode split (tuneSmallSplits) happens while the engine is idle, never before it
 * is ready: first right after start (a few seconds of decode steps on a big model, which serving
 * need not wait for; until then decode splits, the usual winner), then again once the engine has
 * served and been idle `idleMs` (a measurement taken while the machine was busy, e.g. another
 * server loading beside it, can choose the way 1.5× slower at decode), and after that at most every
 * `everyMs`. A request arriving meanwhile stops it within one decode step (the choice stays, and
 * an interrupted first measurement is due again after the next idle spell).
 */
export const DEFAULT_RETUNE = { idleMs: 2000, everyMs: 600_000 };

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
  private retuneAt = { ...DEFAULT_RETUNE };
  /** When a step last did something, and when the decode split was last measured (undefined: not yet). */
  private lastBusy = 0;
  private lastTuned: number | undefined;
  /** Measurements of the decode split after the first. */
  private retunes = 0;

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
      this.built = build(init, (loaded, total) => this.post({ type: "loading", loaded, total }));
      this.engineOptions = {
        ...init.options,
        tokenizer: this.built.tokenizer,
        clock: this.built.clock,
        drafter: this.built.drafter,
      };
      this.engine = new EngineCore(this.built.runner, this.engineOptions);
      // Kernel threads start in the background; the first step should not wait for them.
      await this.built.ready?.();
      const verifyCost = this.built.info.specVerifyCost;
      if (this.engine.speculator && verifyCost !== undefined) this.engine.speculator.verifyCost = verifyCost;
      if (init.kind === "model") this.retuneAt = { ...this.retuneAt, ...init.retune };
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
        const retuneIn = this.retuneDueIn();
        if (retuneIn !== undefined && retuneIn <= 0) await this.retune();
        else await this.waitForMessage(retuneIn);
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

  /** Milliseconds until the decode split is due to be measured (DEFAULT_RETUNE); undefined: not due. */
  private retuneDueIn(): number | undefined {
    if (!this.built.retune) return undefined;
    const { idleMs, everyMs } = this.retuneAt;
    const now = performance.now();
    if (this.lastTuned === undefined) return this.lastBusy === 0 ? 0 : this.lastBusy + idleMs - now;
    if (this.lastBusy <= this.lastTuned) return undefined;
    return Math.max(this.lastBusy + idleMs, this.retunes > 0 ? this.lastTuned + everyMs : 0) - now;
  }

  private async retune(): Promise<void> {
    const stop = async () => {
      await yieldToEventLoop();
      return this.stopping || this.engine.hasWork();
    };
    let choice: SplitChoice | undefined;
    try {
      choice = await this.built.retune!(stop);
    } catch (err) {
      // E.g. a kernel thread lost mid-measurement: the kernels go on without it, serving goes on.
      process.emitWarning(`measuring the decode split failed: ${oneLine(err)}`);
      choice = undefined;
    }
    if (choice === undefined) {
      // Stopped by a request: due again after the next idle spell. Anything else means there is
      // nothing to measure (any more): never again, rather than over and over.
      if (!this.stopping && !this.engine.hasWork()) this.built.retune = undefined;
      return;
    }
    if (this.lastTuned !== undefined) this.retunes++;
    this.lastTuned = performance.now();
    this.post({ type: "decodeSplits", decodeSplits: { ...choice, retunes: this.retunes } });
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
    this.lastBusy = performance.now();
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
      // The failed step's events so far and the aborts' finishes.
      events = this.engine.takeEvents();
    } catch {
      healthy = false;
    }
    const finished = new Set(events.filter((e) => e.finish).map((e) => e.id));
    const now = this.built.clock.now();
    for (const id of this.inflight) {
      if (finished.has(id)) continue;
      // The engine lost track of it: finished all the same, with what is known.
      const ev: EngineEvent = { id, tokens: [], text: "" };
      new RequestOutput({ prompt: [], maxTokens: 0 }, undefined, 0, { arrival: now }).finish(
        ev,
        now,
        "error",
        message,
      );
      events.push(ev);
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
      spec: e.speculator && {
        ...e.speculator.stats,
        acceptedPerPosition: [...e.speculator.stats.acceptedPerPosition],
      },
    };
  }

  private stats(): EngineStats {
    const e = this.engine;
    const d = this.built.drafter;
    const w = e.blocks.windowPool;
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
      windowPool: w && { window: w.window, numBlocks: w.numBlocks, freeBlocks: w.numFree },
      ...(this.built.info.decodeSplits !== undefined
        ? { decodeSplits: { ...this.built.info.decodeSplits, retunes: this.retunes } }
        : {}),
      stepFailures: this.stepFailures,
      lastStep: this.lastStats,
      draftCache: d && { numBlocks: d.numBlocks, freeBlocks: d.numFreeBlocks, sequences: d.numSequences },
    };
  }
}

if (parentPort && (workerData as Record<string, unknown> | undefined)?.[ENGINE_WORKER_MARK] === true) {
  new EngineHost(parentPort);
}
