import { Worker, type WorkerOptions } from "node:worker_threads";
import { oneLine, SpindleError } from "../errors.js";
import { abortOnSignal, EventStream, type RequestStream, type Settle } from "../protocol/event-stream.js";
import type { SubmitOptions, SubmitSpec } from "../protocol/request.js";
import { workerEntry } from "../worker-entry.js";
import {
  type DecodeSplits,
  type EngineInfo,
  type EngineInit,
  type EngineStats,
  type FromWorker,
  fromWireError,
  type StepInfo,
  type ToWorker,
} from "./engine-protocol.js";

/**
 * The main thread's side of the engine: EngineClient starts the engine worker
 * (engine-worker.ts), submits requests and hands each one back as a stream of
 * its events. The worker posts one message per engine step with the events of
 * every request in it; the dispatcher here splits that message into the
 * per-request queues, so there is no message per token. Nothing here computes:
 * the main thread's event loop stays free for HTTP.
 */

export type { EngineInfo, EngineInit, EngineStats, StepInfo } from "./engine-protocol.js";

export interface StartOptions {
  /** Extra options for the Worker (resourceLimits, env, stdout…). */
  worker?: Omit<WorkerOptions, "workerData">;
  /** How long close() waits for the worker to finish before terminating it (default 5000 ms). */
  closeTimeoutMs?: number;
  /** Called while the worker reads the model's weights: bytes loaded so far, of total. */
  onLoadProgress?: (loaded: number, total: number) => void;
  /** Aborting it before ready stops the worker (the model half loaded) and start() rejects. */
  signal?: AbortSignal;
}

type State = "running" | "closing" | "closed" | "dead";

export class EngineClient {
  private readonly streams = new Map<string, EventStream>();
  private readonly pendingStats = new Map<number, Settle<EngineStats>>();
  private readonly stepListeners = new Set<(s: StepInfo) => void>();
  private readonly splitListeners = new Set<(s: DecodeSplits) => void>();
  private state: State = "running";
  /** Why the client can no longer take requests (closed, or the worker died). */
  private endError: SpindleError | undefined;
  private closing: Promise<void> | undefined;
  /** Resolves when the worker thread has exited. */
  private readonly exited: Promise<number>;
  private nextStatsId = 1;
  private nextRequestId = 1;
  /** Step messages received (each carries the events of one engine step). */
  stepMessages = 0;
  /** The stats of the most recent step. */
  lastStep: StepInfo | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly info: EngineInfo,
    private readonly closeTimeoutMs: number,
  ) {
    worker.on("message", (m: FromWorker) => this.onMessage(m));
    let crash: Error | undefined;
    worker.on("error", (err) => {
      crash = err;
    });
    this.exited = new Promise((resolve) =>
      worker.on("exit", (code) => {
        this.onExit(code, crash);
        resolve(code);
      }),
    );
    this.updateRef();
  }

  /** Starts the worker and waits until the model is loaded. Throws the worker's SpindleError if it cannot start. */
  static async start(init: EngineInit, opts: StartOptions = {}): Promise<EngineClient> {
    const worker = new Worker(workerEntry(import.meta.url, "engine-worker"), {
      ...opts.worker,
      workerData: { spindleEngineWorker: true },
    });
    const info = await new Promise<EngineInfo>((resolve, reject) => {
      let crash: Error | undefined;
      const cleanup = () => {
        worker.off("message", onMessage);
        worker.off("error", onError);
        worker.off("exit", onExit);
        opts.signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        cleanup();
        void worker.terminate();
        reject(new SpindleError("the engine's start was cancelled", "engine_start_failed"));
      };
      const onMessage = (m: FromWorker) => {
        if (m.type === "loading") {
          opts.onLoadProgress?.(m.loaded, m.total);
        } else if (m.type === "ready") {
          cleanup();
          resolve(m.info);
        } else if (m.type === "error") {
          cleanup();
          void worker.terminate();
          reject(fromWireError(m.error));
        }
      };
      const onError = (err: Error) => {
        crash = err;
      };
      const onExit = (code: number) => {
        cleanup();
        reject(
          new SpindleError(
            `the engine worker exited before it was ready (${crash ? oneLine(crash) : `exit code ${code}`})`,
            "engine_start_failed",
          ),
        );
      };
      worker.on("message", onMessage);
      worker.on("error", onError);
      worker.on("exit", onExit);
      if (opts.signal?.aborted) return onAbort();
      opts.signal?.addEventListener("abort", onAbort);
      worker.postMessage({ type: "init", init } satisfies ToWorker);
    });
    return new EngineClient(worker, info, opts.closeTimeoutMs ?? 5000);
  }

  /** Add this to a time in engine events (the worker's performance.now()) to get the main thread's performance.now(). */
  get clockOffsetMs(): number {
    return this.info.timeOrigin - performance.timeOrigin;
  }

  /** Requests submitted and not yet finished. */
  get openStreams(): number {
    return this.streams.size;
  }

  private post(msg: ToWorker): void {
    this.worker.postMessage(msg);
  }

  submit(spec: SubmitSpec, opts: SubmitOptions = {}): RequestStream {
    const id = spec.id ?? `spindle-${this.nextRequestId++}`;
    const stream = new EventStream(id, (rid, message) => this.abortRequest(rid, message));
    if (this.state !== "running") {
      stream.fail(this.endError ?? new SpindleError("the engine is closed", "engine_closed"));
      return stream;
    }
    if (this.streams.has(id)) {
      stream.fail(new SpindleError(`request id ${id} is already in use`, "invalid_request_error"));
      return stream;
    }
    this.streams.set(id, stream);
    let unhook = () => {};
    stream.onEnd = () => {
      unhook();
      if (this.streams.get(id) === stream) this.streams.delete(id);
      this.updateRef();
    };
    this.updateRef();
    try {
      this.post({ type: "add", spec: { ...spec, id } });
    } catch (err) {
      stream.fail(
        new SpindleError(
          `request ${id} cannot be sent to the engine: ${oneLine(err)}`,
          "invalid_request_error",
        ),
      );
      return stream;
    }
    unhook = abortOnSignal(stream, opts.signal);
    return stream;
  }

  /** Aborts a request by id (its stream ends with finish reason "abort"). */
  abortRequest(id: string, message?: string): void {
    if (this.state === "running" && this.streams.has(id)) this.post({ type: "abort", id, message });
  }

  /** The engine's state now (between two steps). */
  stats(): Promise<EngineStats> {
    if (this.state !== "running") {
      return Promise.reject(this.endError ?? new SpindleError("the engine is closed", "engine_closed"));
    }
    const reqId = this.nextStatsId++;
    const p = new Promise<EngineStats>((resolve, reject) =>
      this.pendingStats.set(reqId, { resolve, reject }),
    );
    this.updateRef();
    this.post({ type: "stats", reqId });
    return p;
  }

  /** Calls `cb` with the stats of every engine step (for metrics). Returns the unsubscribe function. */
  onStep(cb: (s: StepInfo) => void): () => void {
    this.stepListeners.add(cb);
    return () => this.stepListeners.delete(cb);
  }

  /** Each measurement of the decode split (the first comes after ready; info.decodeSplits is updated first). */
  onDecodeSplits(cb: (s: DecodeSplits) => void): () => void {
    this.splitListeners.add(cb);
    return () => this.splitListeners.delete(cb);
  }

  /** Aborts every request (their streams end with reason "abort"), then stops the worker. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    if (this.state === "running") {
      this.state = "closing";
      this.worker.ref();
      // The worker aborts what is in flight (those finish events arrive first), says "closed" and exits by itself.
      this.post({ type: "shutdown" });
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((r) => (timer = setTimeout(r, this.closeTimeoutMs)));
      await Promise.race([this.exited, timeout]);
      clearTimeout(timer);
      await this.worker.terminate(); // no-op once it has exited
    }
    this.end(new SpindleError("the engine is closed", "engine_closed"), "closed");
  }

  private end(err: SpindleError, state: State): void {
    if (this.state === "closed" || this.state === "dead") return;
    this.state = state;
    this.endError = err;
    for (const s of [...this.streams.values()]) s.fail(err);
    this.streams.clear();
    for (const p of this.pendingStats.values()) p.reject(err);
    this.pendingStats.clear();
  }

  private onExit(code: number, crash: Error | undefined): void {
    if (this.state === "closing") return;
    const why = crash ? oneLine(crash) : `exit code ${code}`;
    this.end(new SpindleError(`the engine worker stopped unexpectedly (${why})`, "engine_crashed"), "dead");
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case "step": {
        this.stepMessages++;
        for (const e of m.events) this.streams.get(e.id)?.deliver(e);
        this.lastStep = m.stats;
        callEach(this.stepListeners, m.stats, "onStep");
        break;
      }
      case "rejected":
        this.streams.get(m.id)?.fail(fromWireError(m.error));
        break;
      case "stats": {
        const p = this.pendingStats.get(m.reqId);
        this.pendingStats.delete(m.reqId);
        p?.resolve(m.stats);
        this.updateRef();
        break;
      }
      case "decodeSplits": {
        const { retunes: _, ...choice } = m.decodeSplits;
        this.info.decodeSplits = choice;
        callEach(this.splitListeners, m.decodeSplits, "onDecodeSplits");
        break;
      }
      case "closed":
      case "ready":
      case "error":
        break;
    }
  }

  /** The worker keeps the process alive only while something waits on it. */
  private updateRef(): void {
    if (this.state !== "running") return;
    if (this.streams.size > 0 || this.pendingStats.size > 0) this.worker.ref();
    else this.worker.unref();
  }
}

/** Calls every listener with `arg`; one that throws is reported as a warning, not let into the message loop. */
function callEach<T>(listeners: Set<(arg: T) => void>, arg: T, what: string): void {
  for (const cb of listeners) {
    try {
      cb(arg);
    } catch (err) {
      process.emitWarning(`an ${what} listener threw: ${oneLine(err)}`);
    }
  }
}
